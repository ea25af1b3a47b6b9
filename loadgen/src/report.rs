//! The result of a run: JSON (everything, for scripts), a Markdown summary (for people and
//! docs/benchmarks.md) and an SVG plot of throughput and latency over the run.

use std::fmt::Write as _;
use std::path::Path;

use super::Scenario;
use super::stats::LossTotals;

/// Join-time quantiles in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Slowest.
    pub max: Option<f64>,
}

/// One-way latency quantiles (send stamp to receipt) in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LatencyQuantiles {
    /// Median.
    pub p50: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

/// CPU and memory of one measured process over the window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Process {
    /// "rtcd", "proxy", "janus", "udp-relay".
    pub name: String,
    /// CPU seconds (user + system) used in the window.
    pub cpu_seconds: Option<f64>,
    /// CPU seconds per million forwarded packets: the efficiency headline.
    pub cpu_per_million_forwarded: Option<f64>,
    /// CPU seconds per second (1.0 = one core busy).
    pub cpu_utilisation: Option<f64>,
    /// RSS at the end of the window.
    pub rss_kib: Option<u64>,
    /// Peak RSS (VmHWM).
    pub peak_rss_kib: Option<u64>,
    /// RSS growth from before the first join to all joined, per participant.
    pub rss_per_session_kib: Option<f64>,
}

/// One second of the run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Connected participants.
    pub connected: u64,
    /// Packets published per second.
    pub sent_pps: f64,
    /// Packets received by subscribers per second.
    pub forwarded_pps: f64,
    /// Payload bits received per second.
    pub forwarded_bps: f64,
    /// Latency median in this second (µs).
    pub latency_p50_us: Option<u64>,
    /// Latency p99 in this second (µs).
    pub latency_p99_us: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The load shape.
    pub scenario: Scenario,
    /// "ours", "janus", "raw-udp".
    pub target: String,
    /// Participants attempted.
    pub participants: usize,
    /// Signaling joins accepted.
    pub joined: u64,
    /// Participants whose media connected.
    pub connected: usize,
    /// Participants that failed.
    pub failed: u64,
    /// Token to ICE connected.
    pub join_ms: Quantiles,
    /// Seconds from the first join to all in.
    pub ramp_seconds: f64,
    /// The load tool's CPU over those seconds (1.0 = a core). Near its core's capacity the
    /// join times measure the load tool, not the target (a 200-join storm on one client core
    /// does: docs/benchmarks.md).
    pub ramp_client_cores: Option<f64>,
    /// The target's processes' CPU over those seconds, together.
    pub ramp_target_cores: Option<f64>,
    /// Length of the measurement window.
    pub window_seconds: f64,
    /// Packets published per second in the window.
    pub sent_pps: f64,
    /// Packets received by subscribers per second in the window.
    pub forwarded_pps: f64,
    /// Payload bits received per second in the window.
    pub forwarded_bits_per_second: f64,
    /// What the scenario should forward with everyone connected.
    pub expected_forwarded_pps: f64,
    /// Simulcast scenarios: forwarded and expected per layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Layers>,
    /// Loss over the whole run, from sequence numbers.
    pub loss_percent: f64,
    /// Loss details.
    pub loss: LossTotals,
    /// Added one-way latency in the window.
    pub latency_us: LatencyQuantiles,
    /// The target's processes.
    pub processes: Vec<Process>,
    /// The load tool's own CPU use (1.0 = a core): above ~0.7 the client may be the limit.
    pub client_cpu_utilisation: Option<f64>,
    /// Distinct errors (up to 20).
    pub errors: Vec<String>,
    /// Per-second samples.
    pub series: Vec<Sample>,
}

/// Forwarded packets per simulcast layer (index as [`crate::peer::CAMERA_LAYERS`]: q, h, f) in
/// the window, and what the scenario should forward of each (every subscriber receives only
/// the layer it takes).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Layers {
    /// Received per second, by the stamps' layer tags.
    pub forwarded_pps: [f64; 3],
    /// Expected per second.
    pub expected_pps: [f64; 3],
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl Report {
    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let s = &self.scenario;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### {} on {}: {} calls x {} participants ({} audio, {} video, {} screen publishers per call)\n",
            s.name, self.target, s.calls, s.participants, s.audio, s.video, s.screen
        );
        let _ = writeln!(out, "| metric | value |\n|---|---|");
        let _ = writeln!(
            out,
            "| connected / failed | {} / {} of {} |",
            self.connected, self.failed, self.participants
        );
        let _ = writeln!(
            out,
            "| join time (token to ICE connected) p50 / p95 / p99 / max | {} / {} / {} / {} ms |",
            opt(self.join_ms.p50, 1),
            opt(self.join_ms.p95, 1),
            opt(self.join_ms.p99, 1),
            opt(self.join_ms.max, 1)
        );
        let _ = writeln!(
            out,
            "| CPU while joining ({:.1} s) | load tool {} cores, target {} cores busy |",
            self.ramp_seconds,
            opt(self.ramp_client_cores, 2),
            opt(self.ramp_target_cores, 2)
        );
        let _ = writeln!(
            out,
            "| forwarded | {:.0} pkt/s ({:.1} Mbit/s payload; expected {:.0} pkt/s) |",
            self.forwarded_pps,
            self.forwarded_bits_per_second / 1e6,
            self.expected_forwarded_pps
        );
        if let Some(layers) = &self.layers {
            for (l, layer) in crate::peer::CAMERA_LAYERS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "| forwarded of layer {} ({} x {}) | {:.0} pkt/s (expected {:.0}) |",
                    layer.rid,
                    layer.width,
                    layer.height,
                    layers.forwarded_pps[l],
                    layers.expected_pps[l]
                );
            }
        }
        let _ = writeln!(
            out,
            "| loss | {:.2} % (worst stream {:.2} %, {} streams) |",
            self.loss_percent, self.loss.worst_stream_percent, self.loss.streams
        );
        let _ = writeln!(
            out,
            "| one-way latency p50 / p99 | {} / {} ms |",
            opt(self.latency_us.p50.map(|v| v as f64 / 1000.0), 2),
            opt(self.latency_us.p99.map(|v| v as f64 / 1000.0), 2)
        );
        for p in &self.processes {
            let _ = writeln!(
                out,
                "| {} | {} CPU-s per million forwarded, {} cores busy, peak RSS {} MiB, {} KiB RSS per participant |",
                p.name,
                opt(p.cpu_per_million_forwarded, 2),
                opt(p.cpu_utilisation, 2),
                opt(p.peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
                opt(p.rss_per_session_kib, 0)
            );
        }
        let _ = writeln!(
            out,
            "| load tool CPU | {} cores busy |",
            opt(self.client_cpu_utilisation, 2)
        );
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nErrors:\n");
            for e in &self.errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        out
    }

    /// A two-panel SVG: forwarded packets/s (top) and latency p50 / p99 (bottom) over time.
    pub fn svg(&self) -> String {
        let (w, h, pad) = (720.0, 420.0, 50.0);
        let panel = (h - 3.0 * pad) / 2.0;
        let t_max = self.series.last().map_or(1.0, |s| s.t).max(1.0);
        let x = |t: f64| pad + (w - 2.0 * pad) * t / t_max;
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = write!(
            out,
            r#"<text x="{pad}" y="16" font-size="13">{} on {}: forwarded packets/s and one-way latency</text>"#,
            self.scenario.name, self.target
        );
        let mut plot = |top: f64, label: &str, lines: &[(&str, Vec<(f64, f64)>)]| {
            let y_max = lines
                .iter()
                .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
                .fold(0.0f64, f64::max)
                .max(1e-9);
            let _ = write!(
                out,
                r##"<rect x="{pad}" y="{top}" width="{}" height="{panel}" fill="none" stroke="#888"/><text x="4" y="{}">{label}</text><text x="{}" y="{}">{y_max:.0}</text>"##,
                w - 2.0 * pad,
                top - 4.0,
                pad - 46.0,
                top + 10.0
            );
            for (colour, pts) in lines {
                let path: Vec<String> = pts
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), top + panel - panel * v / y_max))
                    .collect();
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                    path.join(" ")
                );
            }
        };
        let fwd: Vec<(f64, f64)> = self.series.iter().map(|s| (s.t, s.forwarded_pps)).collect();
        plot(pad, "forwarded pkt/s", &[("#1f77b4", fwd)]);
        let lat = |f: fn(&Sample) -> Option<u64>| -> Vec<(f64, f64)> {
            self.series
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t, v as f64)))
                .collect()
        };
        plot(
            2.0 * pad + panel,
            "latency µs (p50 green, p99 red)",
            &[
                ("#2ca02c", lat(|s| s.latency_p50_us)),
                ("#d62728", lat(|s| s.latency_p99_us)),
            ],
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{}">seconds (0 to {t_max:.0})</text></svg>"#,
            w / 2.0 - 40.0,
            h - 8.0
        );
        out
    }

    /// Writes `<dir>/<stem>.json`, `.md` and `.svg`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        std::fs::write(dir.join(format!("{stem}.svg")), self.svg())?;
        Ok(())
    }
}
