//! The load tool: C calls x P participants against a target (our proxy + rtcd, Janus, or the raw
//! UDP relay ceiling), identical clients and measurements for each, so that ratios between
//! targets mean something. [`cli`] is its command line (binary `loadgen`); `docs/benchmarks.md`
//! has the scenarios and results.
//!
//! A run: joins ramp at a configured rate (each participant's join time runs from token to ICE
//! connected); once all are in (or failed), a warm-up, then a measurement window over which
//! forwarded packets, loss, latency and the target processes' CPU time are taken. A progress
//! line goes to stderr every second; the result is JSON plus a Markdown summary and an SVG plot.

pub mod capacity;
pub mod cli;
pub mod janus;
pub mod ours;
pub mod peer;
pub mod raw;
pub mod report;
pub mod stats;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use peer::{PeerConfig, PeerOutcome, Source, TrackSpec};
use report::{Report, Sample};
use stats::{Counters, Histogram, LossTotals, Watched, cpu_seconds, memory_kib, percentile};

/// The load shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    /// A label for the report.
    pub name: String,
    /// Calls (rooms).
    pub calls: usize,
    /// Participants per call; everyone subscribes to everything.
    pub participants: usize,
    /// Of those, how many publish audio (the first ones of each call).
    pub audio: usize,
    /// How many publish camera video.
    pub video: usize,
    /// How many share a screen.
    pub screen: usize,
    /// Cameras publish the SDK's three simulcast layers ([`peer::CAMERA_LAYERS`], instead of
    /// one stream at `video_kbps`), and participant `i` of a call takes layer `i % 3` of every
    /// camera it receives: the subscribers are spread evenly over low, middle and high.
    pub simulcast: bool,
    /// Our stack only: every call is recorded (docs/recording.md) from the end of the joins,
    /// through the proxy's room service API: what recording costs beside forwarding.
    pub record: bool,
    /// Camera bitrate (kbit/s of payload).
    pub video_kbps: u32,
    /// Screen share bitrate (kbit/s).
    pub screen_kbps: u32,
    /// Video RTP payload bytes per packet.
    pub video_payload: usize,
    /// Opus payload bytes per packet (50 packets/s).
    pub audio_payload: usize,
    /// Joins per second (0 = all at once, as fast as the target admits them).
    pub join_rate: f64,
    /// Settling time after the last join, before measuring.
    #[serde(with = "secs")]
    pub warmup: Duration,
    /// The measurement window.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// The address clients bind and advertise.
    pub bind_ip: IpAddr,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl Scenario {
    /// Named presets from the load-bench issue; flags override their fields.
    pub fn preset(name: &str) -> Option<Self> {
        let base = Self {
            name: name.to_owned(),
            calls: 1,
            participants: 2,
            audio: 0,
            video: 0,
            screen: 0,
            simulcast: false,
            record: false,
            video_kbps: 1000,
            screen_kbps: 500,
            video_payload: 1100,
            audio_payload: 100,
            join_rate: 20.0,
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(20),
            bind_ip: IpAddr::from([127, 0, 0, 1]),
        };
        Some(match name {
            // 1 call x 50 participants, 2 speaking: audio fan-out.
            "fanout" => Self {
                participants: 50,
                audio: 2,
                ..base
            },
            // 50 one-to-one calls, both publishing audio and video: the per-session cost case.
            "one-to-one" => Self {
                calls: 50,
                participants: 2,
                audio: 2,
                video: 2,
                ..base
            },
            // 10 calls x 10, one camera each.
            "rooms" => Self {
                calls: 10,
                participants: 10,
                video: 1,
                ..base
            },
            // 200 joins as fast as the target admits them (4 calls x 50), no media.
            "storm" => Self {
                calls: 4,
                participants: 50,
                join_rate: 0.0,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(3),
                ..base
            },
            // Video fan-out 16 (the 125k pkt/core-s target): 4 calls, each one 4 Mbit/s
            // camera to 16 subscribers, ~29k forwarded pkt/s.
            "fanout16" => Self {
                calls: 4,
                participants: 17,
                video: 1,
                video_kbps: 4000,
                ..base
            },
            // Simulcast (issue 28): 4 calls x 20, two publishers each with audio and a
            // three-layer camera (the SDK's q / h / f), everyone taking one layer (i % 3) of
            // the other's camera. Warm-up long enough for every view (and its keyframe) to
            // take effect after the last join.
            "simulcast" => Self {
                calls: 4,
                participants: 20,
                audio: 2,
                video: 2,
                simulcast: true,
                warmup: Duration::from_secs(6),
                ..base
            },
            // The same shape without simulcast: each camera one 1.5 Mbit/s stream (the `f`
            // layer's rate), everyone receiving it. Beside `simulcast`, it tells what taking
            // one of three layers costs against forwarding a single stream.
            "simulcast-single" => Self {
                calls: 4,
                participants: 20,
                audio: 2,
                video: 2,
                video_kbps: 1500,
                warmup: Duration::from_secs(6),
                ..base
            },
            // The capacity mode's room shape (`capacity`): rooms of 10, one
            // camera each; the ramp sets the number of rooms, each step measures 10 s.
            "capacity" => Self {
                participants: 10,
                video: 1,
                duration: Duration::from_secs(10),
                ..base
            },
            // The test suite's smoke run.
            "smoke" => Self {
                participants: 3,
                audio: 3,
                video: 1,
                screen: 1,
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(3),
                ..base
            },
            _ => return None,
        })
    }

    /// Total participants.
    pub fn total(&self) -> usize {
        self.calls * self.participants
    }

    /// What participant `index` of a call publishes.
    pub fn tracks_for(&self, index: usize) -> Vec<TrackSpec> {
        let mut tracks = Vec::new();
        if index < self.audio {
            tracks.push(TrackSpec {
                source: Source::Microphone,
                packets_per_second: 50,
                payload_bytes: self.audio_payload,
                frames_per_second: 50,
                layer: None,
            });
        }
        if index < self.video && self.simulcast {
            tracks.extend((0..peer::CAMERA_LAYERS.len()).map(|l| self.layer_spec(l)));
        }
        let video = |source, kbps: u32, fps| TrackSpec {
            source,
            packets_per_second: ((kbps as usize * 1000 / 8) / self.video_payload).max(1) as u32,
            payload_bytes: self.video_payload,
            frames_per_second: fps,
            layer: None,
        };
        if index < self.video && !self.simulcast {
            tracks.push(video(Source::Camera, self.video_kbps, 30));
        }
        if index < self.screen {
            tracks.push(video(Source::Screen, self.screen_kbps, 15));
        }
        tracks
    }

    /// Simulcast layer `layer` of a camera: the layer's frame rate and bitrate
    /// ([`peer::CAMERA_LAYERS`]), each frame in as few packets of at most `video_payload`
    /// bytes as it takes, of equal size (an encoder's frame at the layer's bitrate).
    pub fn layer_spec(&self, layer: usize) -> TrackSpec {
        let l = peer::CAMERA_LAYERS[layer];
        let fps = l.frames_per_second.max(1);
        let frame_bytes = (l.kbps as usize * 1000 / 8 / fps as usize).max(1);
        let per_frame = frame_bytes.div_ceil(self.video_payload.max(1)).max(1);
        TrackSpec {
            source: Source::Camera,
            packets_per_second: per_frame as u32 * fps,
            payload_bytes: frame_bytes.div_ceil(per_frame).max(peer::STAMP_BYTES + 32),
            frames_per_second: fps,
            layer: Some(layer),
        }
    }

    /// The simulcast layer participant `index` of a call takes (None: no simulcast).
    pub fn receive_layer(&self, index: usize) -> Option<usize> {
        self.simulcast.then_some(index % peer::CAMERA_LAYERS.len())
    }

    /// Forwarded packets per second the scenario should produce once everyone is connected.
    pub fn expected_forwarded_pps(&self) -> f64 {
        self.expected().0
    }

    /// Of [`Scenario::expected_forwarded_pps`], the packets of each simulcast layer.
    pub fn expected_forwarded_pps_by_layer(&self) -> [f64; 3] {
        self.expected().1
    }

    /// (all, per simulcast layer) forwarded packets per second: every participant receives
    /// every other's tracks, of a simulcast camera only the layer it takes.
    fn expected(&self) -> (f64, [f64; 3]) {
        let mut all = 0.0;
        let mut layers = [0.0; 3];
        let published: Vec<Vec<TrackSpec>> =
            (0..self.participants).map(|j| self.tracks_for(j)).collect();
        for i in 0..self.participants {
            let wanted = self.receive_layer(i);
            for (j, tracks) in published.iter().enumerate() {
                if j == i {
                    continue;
                }
                for t in tracks {
                    let pps = t.packets_per_second as f64;
                    match t.layer {
                        None => all += pps,
                        Some(l) if wanted.is_none_or(|w| w == l) => {
                            all += pps;
                            layers[l] += pps;
                        }
                        Some(_) => {}
                    }
                }
            }
        }
        let calls = self.calls as f64;
        (all * calls, layers.map(|l| l * calls))
    }
}

/// What to run the scenario against.
#[derive(Debug, Clone)]
pub enum Target {
    /// Our proxy's WebSocket (`ws://host:port/ws`), tokens minted for the spawned proxy's key.
    Ours {
        /// The proxy URL.
        ws_url: String,
    },
    /// The raw UDP relay.
    Raw {
        /// Its address.
        relay: SocketAddr,
    },
    /// Janus's WebSocket API (VideoRoom).
    Janus {
        /// e.g. `ws://127.0.0.1:8188`.
        ws_url: String,
    },
}

impl Target {
    /// The label used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Ours { .. } => "ours",
            Target::Raw { .. } => "raw-udp",
            Target::Janus { .. } => "janus",
        }
    }
}

/// Runs `scenario` against `target`, measuring the `watched` processes. `progress` prints the
/// live line to stderr.
pub async fn run(
    scenario: &Scenario,
    target: &Target,
    watched: &[Watched],
    progress: bool,
) -> anyhow::Result<Report> {
    // The peers' shared DTLS certificate, made before anything is timed.
    let _ = peer::dtls_cert();
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let rss_before = rss_kib(watched);
    let total = scenario.total();
    let mut sampler = Sampler::new(counters.clone(), started, total, progress).await;
    // CPU over the joins: a storm's join times say something about the target only while the
    // load tool's own core keeps up.
    let ramp_cpu_start = (
        cpu_seconds(std::process::id()),
        watched
            .iter()
            .map(|w| cpu_seconds(w.pid))
            .collect::<Vec<_>>(),
    );

    // Ramp: spawn joins at the configured rate while sampling every second.
    let mut tasks = Vec::with_capacity(total);
    spawn_joins(
        scenario,
        target,
        0..total,
        &counters,
        &stop,
        &mut sampler,
        &mut tasks,
    )
    .await;
    // Wait for everyone to be in (or failed), bounded.
    sampler
        .run_for(Duration::from_secs(60), || {
            counters.connected.load(Relaxed) + counters.failed.load(Relaxed) >= total as u64
        })
        .await;
    let ramp_done = started.elapsed();
    let rss_joined = rss_kib(watched);
    let ramp_wall = ramp_done.as_secs_f64().max(1e-9);
    let ramp_client_cores = cpu_seconds(std::process::id())
        .zip(ramp_cpu_start.0)
        .map(|(b, a)| (b - a) / ramp_wall);
    let ramp_target_cores = watched
        .iter()
        .zip(&ramp_cpu_start.1)
        .map(|(w, a)| cpu_seconds(w.pid).zip(*a).map(|(b, a)| b - a))
        .sum::<Option<f64>>()
        .filter(|_| !watched.is_empty())
        .map(|c| c / ramp_wall);

    if scenario.record {
        let Target::Ours { ws_url } = target else {
            anyhow::bail!("--record needs --target ours");
        };
        ours::record_calls(ws_url, scenario.calls).await?;
    }
    sampler.run_for(scenario.warmup, || false).await;

    // Measurement window.
    let window_start = Snapshot::take(&counters, started);
    let cpu_start: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(w.pid)).collect();
    let own_cpu_start = cpu_seconds(std::process::id());
    sampler.run_for(scenario.duration, || false).await;
    let window_end = Snapshot::take(&counters, started);
    let cpu_end: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(w.pid)).collect();
    let own_cpu_end = cpu_seconds(std::process::id());
    let memory: Vec<Option<(u64, u64)>> = watched.iter().map(|w| memory_kib(w.pid)).collect();
    if progress {
        eprintln!();
    }

    let (join_times, loss, errors) = finish(&stop, tasks).await;

    let window = (window_end.at - window_start.at).max(1e-9);
    let forwarded = window_end.received - window_start.received;
    let processes = watched
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let cpu = match (cpu_start[i], cpu_end[i]) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            report::Process {
                name: w.name.clone(),
                cpu_seconds: cpu,
                cpu_per_million_forwarded: cpu
                    .filter(|_| forwarded > 0)
                    .map(|c| c / (forwarded as f64 / 1e6)),
                cpu_utilisation: cpu.map(|c| c / window),
                rss_kib: memory[i].map(|m| m.0),
                peak_rss_kib: memory[i].map(|m| m.1),
                rss_per_session_kib: (total > 0)
                    .then(|| rss_joined[i].saturating_sub(rss_before[i]) as f64 / total as f64),
            }
        })
        .collect();
    let client_cpu = match (own_cpu_start, own_cpu_end) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    Ok(Report {
        scenario: scenario.clone(),
        target: target.name().to_owned(),
        participants: total,
        joined: counters.joined.load(Relaxed),
        connected: join_times.len(),
        failed: counters.failed.load(Relaxed),
        join_ms: report::Quantiles {
            p50: ms(percentile(&join_times, 0.50)),
            p95: ms(percentile(&join_times, 0.95)),
            p99: ms(percentile(&join_times, 0.99)),
            max: ms(join_times.last().copied()),
        },
        ramp_seconds: ramp_done.as_secs_f64(),
        ramp_client_cores,
        ramp_target_cores,
        window_seconds: window,
        sent_pps: (window_end.sent - window_start.sent) as f64 / window,
        forwarded_pps: forwarded as f64 / window,
        forwarded_bits_per_second: (window_end.bytes - window_start.bytes) as f64 * 8.0 / window,
        expected_forwarded_pps: scenario.expected_forwarded_pps(),
        layers: scenario.simulcast.then(|| report::Layers {
            forwarded_pps: [0, 1, 2]
                .map(|l| (window_end.by_layer[l] - window_start.by_layer[l]) as f64 / window),
            expected_pps: scenario.expected_forwarded_pps_by_layer(),
        }),
        loss_percent: loss.percent(),
        loss,
        latency_us: report::LatencyQuantiles {
            p50: Histogram::quantile_between(&window_start.latency, &window_end.latency, 0.50),
            p99: Histogram::quantile_between(&window_start.latency, &window_end.latency, 0.99),
        },
        processes,
        client_cpu_utilisation: client_cpu.map(|c| c / window),
        errors: errors.into_iter().take(20).collect(),
        series: sampler.series,
    })
}

/// Spawns participants `range` (numbered across calls: participant `n` is index
/// `n % participants` of call `n / participants`) at the scenario's join rate, sampling every
/// second meanwhile, and adds their tasks to `tasks`.
async fn spawn_joins(
    scenario: &Scenario,
    target: &Target,
    range: std::ops::Range<usize>,
    counters: &Arc<Counters>,
    stop: &CancellationToken,
    sampler: &mut Sampler,
    tasks: &mut Vec<tokio::task::JoinHandle<PeerOutcome>>,
) {
    let gap = if scenario.join_rate > 0.0 {
        Duration::from_secs_f64(1.0 / scenario.join_rate)
    } else {
        Duration::ZERO
    };
    let mut next_join = tokio::time::Instant::now();
    for n in range {
        let (call, index) = (n / scenario.participants, n % scenario.participants);
        if !gap.is_zero() {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_join) => break,
                    _ = sampler.tick() => {}
                }
            }
            next_join += gap;
        }
        let config = PeerConfig {
            publisher: n as u32,
            tracks: scenario.tracks_for(index),
            offer_first: true,
            counts_as_join: true,
            bind_ip: scenario.bind_ip,
            keyframe_interval: Duration::from_secs(2),
            receive_layer: scenario.receive_layer(index),
        };
        tasks.push(tokio::spawn(participant(
            target.clone(),
            call,
            index,
            config,
            counters.clone(),
            stop.clone(),
        )));
    }
}

/// Stops every participant and collects what they report: join times (sorted), loss over
/// their whole lives, and distinct errors (sorted).
async fn finish(
    stop: &CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<PeerOutcome>>,
) -> (Vec<Duration>, LossTotals, Vec<String>) {
    stop.cancel();
    let mut join_times = Vec::new();
    let mut loss = LossTotals::default();
    let mut errors: Vec<String> = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(outcome)) => {
                let PeerOutcome {
                    join_time,
                    loss: l,
                    error,
                } = outcome;
                join_times.extend(join_time);
                l.add_to(&mut loss);
                errors.extend(error);
            }
            Ok(Err(e)) => errors.push(format!("participant task: {e}")),
            Err(_) => errors.push("participant did not stop within 10 s".into()),
        }
    }
    join_times.sort();
    errors.sort();
    errors.dedup();
    (join_times, loss, errors)
}

async fn participant(
    target: Target,
    call: usize,
    index: usize,
    config: PeerConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> PeerOutcome {
    let room = format!("lg-{call}");
    let identity = format!("lg-{call}-{index}");
    match target {
        Target::Ours { ws_url } => {
            ours::participant(ws_url, identity, room, config, counters, stop).await
        }
        Target::Raw { relay } => raw::participant(relay, room, config, counters, stop).await,
        Target::Janus { ws_url } => {
            janus::participant(ws_url, call, index, config, counters, stop).await
        }
    }
}

struct Snapshot {
    at: f64,
    sent: u64,
    received: u64,
    expected: u64,
    bytes: u64,
    by_layer: [u64; 3],
    latency: Vec<u64>,
    send_lag: Vec<u64>,
}

impl Snapshot {
    fn take(c: &Counters, started: Instant) -> Self {
        Self {
            at: started.elapsed().as_secs_f64(),
            sent: c.sent_packets.load(Relaxed),
            received: c.received_packets.load(Relaxed),
            expected: c.expected_packets.load(Relaxed),
            bytes: c.received_bytes.load(Relaxed),
            by_layer: [0, 1, 2].map(|l| c.received_by_layer[l].load(Relaxed)),
            latency: c.latency.snapshot(),
            send_lag: c.send_lag.snapshot(),
        }
    }
}

/// Current RSS (KiB) of each watched process (0 if it is gone).
fn rss_kib(watched: &[Watched]) -> Vec<u64> {
    watched
        .iter()
        .map(|w| memory_kib(w.pid).map(|m| m.0).unwrap_or(0))
        .collect()
}

/// Samples the counters once a second into the time series (and the progress line).
struct Sampler {
    counters: Arc<Counters>,
    started: Instant,
    total: usize,
    progress: bool,
    tick: tokio::time::Interval,
    last: Snapshot,
    series: Vec<Sample>,
}

impl Sampler {
    async fn new(counters: Arc<Counters>, started: Instant, total: usize, progress: bool) -> Self {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        Self {
            last: Snapshot::take(&counters, started),
            counters,
            started,
            total,
            progress,
            tick,
            series: Vec::new(),
        }
    }

    /// Waits for the next second and samples it (cancel-safe: the wait is an `Interval`).
    async fn tick(&mut self) {
        self.tick.tick().await;
        self.sample();
    }

    /// Samples every second for `length`, or until `done`.
    async fn run_for(&mut self, length: Duration, done: impl Fn() -> bool) {
        let until = tokio::time::Instant::now() + length;
        while !done() && tokio::time::Instant::now() < until {
            self.tick().await;
        }
    }

    fn sample(&mut self) {
        let (counters, last) = (&self.counters, &self.last);
        let now = Snapshot::take(counters, self.started);
        let dt = (now.at - last.at).max(1e-9);
        let s = Sample {
            t: now.at,
            connected: counters.connected.load(Relaxed),
            sent_pps: (now.sent - last.sent) as f64 / dt,
            forwarded_pps: (now.received - last.received) as f64 / dt,
            forwarded_bps: (now.bytes - last.bytes) as f64 * 8.0 / dt,
            latency_p50_us: Histogram::quantile_between(&last.latency, &now.latency, 0.5),
            latency_p99_us: Histogram::quantile_between(&last.latency, &now.latency, 0.99),
        };
        if self.progress {
            let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.1}", v as f64 / 1000.0));
            eprint!(
                "\r[{:>4.0}s] joined {}/{} connected {} failed {} | out {:>7.0} pkt/s in {:>7.0} pkt/s {:>6.1} Mbit/s | latency p50 {} ms p99 {} ms   ",
                s.t,
                counters.joined.load(Relaxed),
                self.total,
                s.connected,
                counters.failed.load(Relaxed),
                s.sent_pps,
                s.forwarded_pps,
                s.forwarded_bps / 1e6,
                ms(s.latency_p50_us),
                ms(s.latency_p99_us),
            );
        }
        self.series.push(s);
        self.last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulcast_layers_follow_the_sdk_rates() {
        let s = Scenario::preset("simulcast").unwrap();
        let layers: Vec<(u32, usize)> = (0..3)
            .map(|l| {
                let t = s.layer_spec(l);
                (t.packets_per_second, t.payload_bytes)
            })
            .collect();
        // q: 50 kbit/s at 15 fps = 416 B a frame, one packet; h: 500 kbit/s at 30 fps =
        // 2,083 B, two packets; f: 1.5 Mbit/s = 6,250 B, six packets (payload <= 1,100 B).
        assert_eq!(layers, vec![(15, 416), (60, 1042), (180, 1042)]);
        for l in 0..3 {
            let t = s.layer_spec(l);
            let kbps = t.packets_per_second as usize * t.payload_bytes * 8 / 1000;
            let want = peer::CAMERA_LAYERS[l].kbps as usize;
            assert!(kbps.abs_diff(want) <= want / 10, "{l}: {kbps}");
        }
        // A publisher: audio, then the camera's three layers, lowest first.
        let tracks = s.tracks_for(0);
        let kinds: Vec<(Source, Option<usize>)> =
            tracks.iter().map(|t| (t.source, t.layer)).collect();
        assert_eq!(
            kinds,
            vec![
                (Source::Microphone, None),
                (Source::Camera, Some(0)),
                (Source::Camera, Some(1)),
                (Source::Camera, Some(2)),
            ]
        );
        assert!(s.tracks_for(2).is_empty());
    }

    #[test]
    fn a_subscriber_is_expected_to_receive_only_its_layer() {
        // One call of 5: participants 0 and 1 publish audio + a simulcast camera; participant
        // i takes layer i % 3.
        let s = Scenario {
            calls: 2,
            participants: 5,
            audio: 2,
            video: 2,
            simulcast: true,
            ..Scenario::preset("simulcast").unwrap()
        };
        let pps: Vec<f64> = (0..3)
            .map(|l| s.layer_spec(l).packets_per_second as f64)
            .collect();
        // Layer takers: 0 -> {0, 3}, 1 -> {1, 4}, 2 -> {2}. Each receives both publishers
        // but itself: participant 0 only 1's camera, 1 only 0's.
        let by_layer = [(1.0 + 2.0) * pps[0], (1.0 + 2.0) * pps[1], 2.0 * pps[2]];
        let audio = (1.0 + 1.0 + 2.0 + 2.0 + 2.0) * 50.0;
        let want: [f64; 3] = by_layer.map(|v| v * 2.0);
        assert_eq!(s.expected_forwarded_pps_by_layer(), want);
        assert_eq!(
            s.expected_forwarded_pps(),
            2.0 * (audio + by_layer.iter().sum::<f64>())
        );
        assert_eq!(s.receive_layer(4), Some(1));

        // Without simulcast nothing changes: everyone receives everything.
        let plain = Scenario::preset("fanout16").unwrap();
        assert_eq!(plain.receive_layer(3), None);
        let camera = plain.tracks_for(0)[0].packets_per_second as f64;
        assert_eq!(plain.expected_forwarded_pps(), 4.0 * 16.0 * camera);
        assert_eq!(plain.expected_forwarded_pps_by_layer(), [0.0; 3]);
    }
}
