//! Capacity mode: how many participants a target carries before it degrades. The room shape
//! is a [`Scenario`] (the `capacity` preset: rooms of 10, one camera each, everyone
//! subscribing); the run starts with [`Ramp::start_rooms`] rooms and adds
//! [`Ramp::step_rooms`] every step. Each step joins its new rooms, waits for them, warms up,
//! then measures a window ([`Scenario::duration`]) with every earlier room still running.
//!
//! A step fails when loss or p99 latency crosses its limit ([`Limits`]), or when some of its
//! participants did not connect; the run stops there, and the capacity is the last passing
//! step's participant count. The load tool is one single-threaded process: when *it* is
//! saturated (its CPU near a full core, sending behind schedule), what the step measured says
//! nothing about the target, so such a step is "client-bound" and is never reported as the
//! target's limit (the capacity is then only a lower bound). The decisions are pure functions
//! ([`plan`], [`judge`], [`client_bound`], [`capacity`]) with unit tests.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::report::Sample;
use super::stats::{Counters, Histogram, Watched, cpu_seconds, memory_kib, window_loss_percent};
use super::{Sampler, Scenario, Snapshot, Target, finish, spawn_joins};

/// How long a step waits for its joins to connect (or fail) before it measures anyway; the
/// participants still missing then fail the step.
const JOIN_WAIT: Duration = Duration::from_secs(60);

/// How the load grows and when it stops.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ramp {
    /// Rooms in the first step.
    pub start_rooms: usize,
    /// Rooms added per step.
    pub step_rooms: usize,
    /// No step goes above this many participants (the last step is cut to fit).
    pub max_participants: usize,
    /// What fails a step.
    pub limits: Limits,
}

/// Step thresholds. The first two are the capacity definition (issue 11: 1 % loss, 200 ms
/// p99); the rest guard the measurement itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Limits {
    /// Sequence-number loss above this (percent) fails the step.
    pub max_loss_percent: f64,
    /// One-way latency p99 above this (ms) fails the step.
    pub max_latency_p99_ms: f64,
    /// Fewer forwarded packets than this share (percent) of what the sent packets should
    /// produce counts as loss: a stream that never arrives has no sequence numbers to miss.
    /// Loose on purpose, because packets in flight at the window's end count as missing.
    pub min_delivered_percent: f64,
    /// The load tool using this much CPU (cores; it is single-threaded, so 1.0 is its limit)
    /// makes the step client-bound.
    pub client_cpu: f64,
    /// The publishers sending less than this share (percent) of their schedule makes the step
    /// client-bound (their frame clocks skip frames when the task runs late).
    pub min_send_percent: f64,
    /// Frames going out later than this (ms, p99) makes the step client-bound.
    pub max_send_lag_p99_ms: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_loss_percent: 1.0,
            max_latency_p99_ms: 200.0,
            min_delivered_percent: 90.0,
            client_cpu: 0.9,
            min_send_percent: 95.0,
            max_send_lag_p99_ms: 50.0,
        }
    }
}

/// The rooms of each step: `start_rooms`, then `step_rooms` more each step, while the
/// participants fit in `max_participants`; a last step at the maximum itself (rounded down to
/// whole rooms) if the steps skipped it. Empty when not even one room fits.
pub fn plan(
    start_rooms: usize,
    step_rooms: usize,
    room_size: usize,
    max_participants: usize,
) -> Vec<usize> {
    let most = max_participants.checked_div(room_size).unwrap_or(0);
    let (start, step) = (start_rooms.max(1), step_rooms.max(1));
    let mut rooms: Vec<usize> = (start..=most).step_by(step).collect();
    if most > 0 && rooms.last() != Some(&most) {
        rooms.push(most);
    }
    rooms
}

/// Why a step passed or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Within every limit.
    Pass,
    /// The load tool, not the target, was saturated: the step says nothing about the target.
    ClientBound,
    /// Some participants of the step did not connect.
    JoinFailed,
    /// Loss above the limit (or too few packets delivered).
    Loss,
    /// Latency p99 above the limit.
    Latency,
}

/// What ended the ramp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Limit {
    /// The target lost packets.
    Loss,
    /// The target delayed packets.
    Latency,
    /// The target did not admit more participants.
    JoinFailed,
    /// The load tool saturated first: the capacity is a lower bound.
    ClientBound,
    /// Every step passed up to the maximum: the capacity is a lower bound.
    Max,
}

impl Limit {
    /// The label the reports use.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Loss => "loss",
            Limit::Latency => "latency",
            Limit::JoinFailed => "join failed",
            Limit::ClientBound => "client-bound",
            Limit::Max => "max",
        }
    }
}

/// One process of the target in one step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepProcess {
    /// "rtcd", "proxy", "janus", "udp-relay".
    pub name: String,
    /// CPU seconds per second over the window (1.0 = one core).
    pub cores: Option<f64>,
    /// RSS at the window's end.
    pub rss_mib: Option<f64>,
}

/// What one step measured, and its verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// 1-based.
    pub step: usize,
    /// Rooms running.
    pub rooms: usize,
    /// Participants attempted (all rooms so far).
    pub participants: usize,
    /// Participants connected.
    pub connected: u64,
    /// Participants whose join failed.
    pub failed: u64,
    /// Length of the measurement window.
    pub window_seconds: f64,
    /// Packets per second the connected publishers were scheduled to send.
    pub scheduled_pps: f64,
    /// Packets per second they sent.
    pub sent_pps: f64,
    /// Packets per second the subscribers received.
    pub forwarded_pps: f64,
    /// Packets per second the sent ones should have produced (sent x fan-out).
    pub expected_forwarded_pps: f64,
    /// Forwarded in percent of expected (None when nothing was sent).
    pub delivered_percent: Option<f64>,
    /// Loss in the window from sequence numbers.
    pub loss_percent: f64,
    /// One-way latency median in the window.
    pub latency_p50_ms: Option<f64>,
    /// One-way latency p99 in the window.
    pub latency_p99_ms: Option<f64>,
    /// How late the load tool's frames went out (p99).
    pub send_lag_p99_ms: Option<f64>,
    /// The target's processes together (cores).
    pub target_cores: Option<f64>,
    /// The target's processes together (RSS at the window's end).
    pub target_rss_mib: Option<f64>,
    /// Per process.
    pub processes: Vec<StepProcess>,
    /// The load tool's CPU (cores).
    pub client_cores: Option<f64>,
    /// Pass, or why not.
    pub verdict: Verdict,
    /// The measurement behind a failing verdict (empty on a pass).
    pub reason: String,
}

/// Why `step` is client-bound, if it is: the load tool's CPU at its limit, its publishers
/// sending behind schedule, or its frames going out late.
pub fn client_bound(step: &Step, limits: &Limits) -> Option<String> {
    if let Some(cores) = step.client_cores
        && cores >= limits.client_cpu
    {
        return Some(format!(
            "load tool at {cores:.2} cores (limit {:.2})",
            limits.client_cpu
        ));
    }
    if step.scheduled_pps > 0.0 {
        let sent = 100.0 * step.sent_pps / step.scheduled_pps;
        if sent < limits.min_send_percent {
            return Some(format!(
                "load tool sent {sent:.1} % of its schedule (limit {:.0} %)",
                limits.min_send_percent
            ));
        }
    }
    if let Some(lag) = step.send_lag_p99_ms
        && lag > limits.max_send_lag_p99_ms
    {
        return Some(format!(
            "load tool's frames went out {lag:.1} ms late (p99; limit {:.0} ms)",
            limits.max_send_lag_p99_ms
        ));
    }
    None
}

/// The verdict on a measured step and its reason. A saturated client trumps everything else
/// (what it measured is not the target's doing); then failed joins, loss, latency.
pub fn judge(step: &Step, limits: &Limits) -> (Verdict, String) {
    if let Some(why) = client_bound(step, limits) {
        return (Verdict::ClientBound, why);
    }
    if step.connected < step.participants as u64 {
        return (
            Verdict::JoinFailed,
            format!(
                "{} of {} connected ({} failed)",
                step.connected, step.participants, step.failed
            ),
        );
    }
    if step.loss_percent > limits.max_loss_percent {
        return (
            Verdict::Loss,
            format!(
                "{:.2} % loss (limit {:.2} %)",
                step.loss_percent, limits.max_loss_percent
            ),
        );
    }
    if let Some(delivered) = step.delivered_percent
        && delivered < limits.min_delivered_percent
    {
        return (
            Verdict::Loss,
            format!(
                "{delivered:.1} % of the expected packets delivered (limit {:.0} %)",
                limits.min_delivered_percent
            ),
        );
    }
    if let Some(p99) = step.latency_p99_ms
        && p99 > limits.max_latency_p99_ms
    {
        return (
            Verdict::Latency,
            format!(
                "latency p99 {p99:.1} ms (limit {:.0} ms)",
                limits.max_latency_p99_ms
            ),
        );
    }
    (Verdict::Pass, String::new())
}

/// The result of a ramp.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Capacity {
    /// Participants of the last passing step (0 if the first failed).
    pub participants: usize,
    /// What ended the ramp.
    pub limit: Limit,
    /// The failing step's reason (empty for [`Limit::Max`]).
    pub detail: String,
    /// Target cores in the last passing step.
    pub cores: Option<f64>,
    /// Target RSS in the last passing step.
    pub rss_mib: Option<f64>,
}

/// The capacity of steps run in order until the first failure: the last passing step before
/// it, and the failure's kind ([`Limit::Max`] when none failed).
pub fn capacity(steps: &[Step]) -> Capacity {
    let failure = steps.iter().position(|s| s.verdict != Verdict::Pass);
    let passed = &steps[..failure.unwrap_or(steps.len())];
    let last = passed.last();
    let (limit, detail) = match failure.map(|i| &steps[i]) {
        None => (Limit::Max, String::new()),
        Some(s) => (
            match s.verdict {
                Verdict::Loss => Limit::Loss,
                Verdict::Latency => Limit::Latency,
                Verdict::JoinFailed => Limit::JoinFailed,
                // Pass cannot be the failure; ClientBound is the only other.
                Verdict::ClientBound | Verdict::Pass => Limit::ClientBound,
            },
            format!("at {} participants: {}", s.participants, s.reason),
        ),
    };
    Capacity {
        participants: last.map_or(0, |s| s.participants),
        limit,
        detail,
        cores: last.and_then(|s| s.target_cores),
        rss_mib: last.and_then(|s| s.target_rss_mib),
    }
}

/// Everything a capacity run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CapacityReport {
    /// The room shape (`calls` is unused: the ramp sets the rooms).
    pub scenario: Scenario,
    /// "ours", "janus", "raw-udp".
    pub target: String,
    /// The ramp and its limits.
    pub ramp: Ramp,
    /// Every step run, in order; the last is the one that stopped the ramp (unless it passed).
    pub steps: Vec<Step>,
    /// The headline.
    pub capacity: Capacity,
    /// Distinct errors the participants reported (up to 20).
    pub errors: Vec<String>,
    /// Per-second samples of the whole run.
    pub series: Vec<Sample>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

impl CapacityReport {
    /// The Markdown summary: the capacity line, then one row per step.
    pub fn markdown(&self) -> String {
        let s = &self.scenario;
        let c = &self.capacity;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "### capacity of {}: rooms of {} ({} audio, {} video, {} screen publishers per room), +{} rooms per step, {:.0} s windows\n",
            self.target,
            s.participants,
            s.audio,
            s.video,
            s.screen,
            self.ramp.step_rooms,
            s.duration.as_secs_f64()
        );
        let bound = if matches!(c.limit, Limit::ClientBound | Limit::Max) {
            "at least "
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "**Capacity: {bound}{} participants** at {} target cores, {} MiB; limited by {}{}\n",
            c.participants,
            opt(c.cores, 2),
            opt(c.rss_mib, 0),
            c.limit.label(),
            if c.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.detail)
            }
        );
        let _ = writeln!(
            out,
            "| step | rooms | participants (connected) | sent / forwarded pkt/s | delivered % | loss % | latency p50 / p99 ms | target cores | target RSS MiB | load tool cores | send lag p99 ms | verdict |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for st in &self.steps {
            let verdict = match st.verdict {
                Verdict::Pass => "pass".to_owned(),
                v => format!(
                    "{}: {}",
                    serde_json::to_value(v)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    st.reason
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {:.0} / {:.0} | {} | {:.2} | {} / {} | {} | {} | {} | {} | {} |",
                st.step,
                st.rooms,
                st.participants,
                st.connected,
                st.sent_pps,
                st.forwarded_pps,
                opt(st.delivered_percent, 1),
                st.loss_percent,
                opt(st.latency_p50_ms, 2),
                opt(st.latency_p99_ms, 2),
                opt(st.target_cores, 2),
                opt(st.target_rss_mib, 0),
                opt(st.client_cores, 2),
                opt(st.send_lag_p99_ms, 1),
                verdict
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "\nErrors:\n");
            for e in &self.errors {
                let _ = writeln!(out, "- {e}");
            }
        }
        out
    }

    /// Writes `<dir>/<stem>.json` and `.md`.
    pub fn write(&self, dir: &Path, stem: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join(format!("{stem}.md")), self.markdown())?;
        Ok(())
    }
}

/// Ramps `scenario`'s rooms against `target` as `ramp` says, measuring the `watched`
/// processes, until a step fails or the maximum is reached. `progress` prints the live line
/// and one line per step to stderr.
pub async fn run(
    scenario: &Scenario,
    ramp: &Ramp,
    target: &Target,
    watched: &[Watched],
    progress: bool,
) -> anyhow::Result<CapacityReport> {
    let room_size = scenario.participants;
    let rooms = plan(
        ramp.start_rooms,
        ramp.step_rooms,
        room_size,
        ramp.max_participants,
    );
    anyhow::ensure!(
        !rooms.is_empty(),
        "a maximum of {} participants holds no room of {room_size}",
        ramp.max_participants
    );
    let sent_per_room: f64 = (0..room_size)
        .flat_map(|i| scenario.tracks_for(i))
        .map(|t| f64::from(t.packets_per_second))
        .sum();
    let per_room = Scenario {
        calls: 1,
        ..scenario.clone()
    };
    // Forwarded packets per sent packet: every other member of the room receives each one.
    let fan_out = if sent_per_room > 0.0 {
        per_room.expected_forwarded_pps() / sent_per_room
    } else {
        0.0
    };

    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let started = Instant::now();
    let most = rooms.last().map_or(0, |r| r * room_size);
    let mut sampler = Sampler::new(counters.clone(), started, most, progress).await;
    let mut tasks = Vec::with_capacity(most);
    let mut steps: Vec<Step> = Vec::new();
    let mut spawned = 0;
    for (i, &step_rooms) in rooms.iter().enumerate() {
        let total = step_rooms * room_size;
        spawn_joins(
            scenario,
            target,
            spawned..total,
            &counters,
            &stop,
            &mut sampler,
            &mut tasks,
        )
        .await;
        spawned = total;
        sampler
            .run_for(JOIN_WAIT, || {
                counters.connected.load(Relaxed) + counters.failed.load(Relaxed) >= total as u64
            })
            .await;
        sampler.run_for(scenario.warmup, || false).await;

        let start = Snapshot::take(&counters, started);
        let cpu_start: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(w.pid)).collect();
        let own_start = cpu_seconds(std::process::id());
        sampler.run_for(scenario.duration, || false).await;
        let end = Snapshot::take(&counters, started);
        let cpu_end: Vec<Option<f64>> = watched.iter().map(|w| cpu_seconds(w.pid)).collect();
        let own_end = cpu_seconds(std::process::id());

        let window = (end.at - start.at).max(1e-9);
        let cores = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / window);
        let processes: Vec<StepProcess> = watched
            .iter()
            .enumerate()
            .map(|(p, w)| StepProcess {
                name: w.name.clone(),
                cores: cores(cpu_start[p], cpu_end[p]),
                rss_mib: memory_kib(w.pid).map(|m| m.0 as f64 / 1024.0),
            })
            .collect();
        let sum = |f: fn(&StepProcess) -> Option<f64>| -> Option<f64> {
            (!processes.is_empty())
                .then(|| processes.iter().map(f).sum::<Option<f64>>())
                .flatten()
        };
        let ms = |us: Option<u64>| us.map(|v| v as f64 / 1000.0);
        let sent_pps = (end.sent - start.sent) as f64 / window;
        let forwarded_pps = (end.received - start.received) as f64 / window;
        let expected_forwarded_pps = sent_pps * fan_out;
        let mut step = Step {
            step: i + 1,
            rooms: step_rooms,
            participants: total,
            connected: counters.connected.load(Relaxed),
            failed: counters.failed.load(Relaxed),
            window_seconds: window,
            scheduled_pps: counters.scheduled_pps.load(Relaxed) as f64,
            sent_pps,
            forwarded_pps,
            expected_forwarded_pps,
            delivered_percent: (expected_forwarded_pps > 0.0)
                .then(|| 100.0 * forwarded_pps / expected_forwarded_pps),
            loss_percent: window_loss_percent(
                end.expected - start.expected,
                end.received - start.received,
            ),
            latency_p50_ms: ms(Histogram::quantile_between(
                &start.latency,
                &end.latency,
                0.50,
            )),
            latency_p99_ms: ms(Histogram::quantile_between(
                &start.latency,
                &end.latency,
                0.99,
            )),
            send_lag_p99_ms: ms(Histogram::quantile_between(
                &start.send_lag,
                &end.send_lag,
                0.99,
            )),
            target_cores: sum(|p| p.cores),
            target_rss_mib: sum(|p| p.rss_mib),
            processes,
            client_cores: cores(own_start, own_end),
            verdict: Verdict::Pass,
            reason: String::new(),
        };
        (step.verdict, step.reason) = judge(&step, &ramp.limits);
        if progress {
            eprintln!(
                "\nstep {}: {} participants, {:.0} pkt/s forwarded, loss {:.2} %, p99 {} ms, target {} cores, load tool {} cores: {:?} {}",
                step.step,
                step.participants,
                step.forwarded_pps,
                step.loss_percent,
                opt(step.latency_p99_ms, 1),
                opt(step.target_cores, 2),
                opt(step.client_cores, 2),
                step.verdict,
                step.reason
            );
        }
        let passed = step.verdict == Verdict::Pass;
        steps.push(step);
        if !passed {
            break;
        }
    }
    let (_, _, errors) = finish(&stop, tasks).await;
    Ok(CapacityReport {
        scenario: scenario.clone(),
        target: target.name().to_owned(),
        ramp: ramp.clone(),
        capacity: capacity(&steps),
        steps,
        errors: errors.into_iter().take(20).collect(),
        series: sampler.series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step of `participants` (all connected) that passes every default limit.
    fn healthy(participants: usize) -> Step {
        Step {
            step: participants / 10,
            rooms: participants / 10,
            participants,
            connected: participants as u64,
            failed: 0,
            window_seconds: 10.0,
            scheduled_pps: 1130.0,
            sent_pps: 1130.0,
            forwarded_pps: 10_170.0,
            expected_forwarded_pps: 10_170.0,
            delivered_percent: Some(100.0),
            loss_percent: 0.0,
            latency_p50_ms: Some(1.0),
            latency_p99_ms: Some(5.0),
            send_lag_p99_ms: Some(1.0),
            target_cores: Some(0.3),
            target_rss_mib: Some(50.0),
            processes: Vec::new(),
            client_cores: Some(0.3),
            verdict: Verdict::Pass,
            reason: String::new(),
        }
    }

    fn judged(mut step: Step) -> Step {
        (step.verdict, step.reason) = judge(&step, &Limits::default());
        step
    }

    #[test]
    fn plan_steps_up_to_the_maximum_and_ends_on_it() {
        assert_eq!(plan(1, 1, 10, 40), vec![1, 2, 3, 4]);
        assert_eq!(plan(5, 5, 10, 200), vec![5, 10, 15, 20]);
        // 5, 15, 25 fit 300; the maximum (30 rooms) is the last step.
        assert_eq!(plan(5, 10, 10, 300), vec![5, 15, 25, 30]);
        // Not a multiple of the room size: whole rooms only.
        assert_eq!(plan(1, 2, 10, 45), vec![1, 3, 4]);
        // A start beyond the maximum is cut to it; no room fits: no step.
        assert_eq!(plan(10, 1, 10, 40), vec![4]);
        assert_eq!(plan(1, 1, 10, 9), Vec::<usize>::new());
        assert_eq!(plan(1, 1, 0, 100), Vec::<usize>::new());
        // Zero start or step means one.
        assert_eq!(plan(0, 0, 10, 30), vec![1, 2, 3]);
    }

    #[test]
    fn a_healthy_step_passes() {
        assert_eq!(judged(healthy(100)).verdict, Verdict::Pass);
    }

    #[test]
    fn loss_and_latency_fail_a_step_only_above_their_limits() {
        let mut s = healthy(100);
        s.loss_percent = 1.0;
        s.latency_p99_ms = Some(200.0);
        assert_eq!(
            judged(s.clone()).verdict,
            Verdict::Pass,
            "limits are inclusive"
        );
        s.loss_percent = 1.01;
        let s = judged(s);
        assert_eq!(s.verdict, Verdict::Loss);
        assert!(s.reason.contains("1.01 % loss"), "{}", s.reason);

        let mut s = healthy(100);
        s.latency_p99_ms = Some(250.0);
        assert_eq!(judged(s).verdict, Verdict::Latency);

        // Loss is named before latency when both are over.
        let mut s = healthy(100);
        s.loss_percent = 5.0;
        s.latency_p99_ms = Some(900.0);
        assert_eq!(judged(s).verdict, Verdict::Loss);
    }

    #[test]
    fn streams_that_never_arrive_count_as_loss() {
        // No sequence gaps (nothing arrived to have them), but half the packets missing.
        let mut s = healthy(100);
        s.forwarded_pps = 5_000.0;
        s.delivered_percent = Some(49.2);
        let s = judged(s);
        assert_eq!(s.verdict, Verdict::Loss);
        assert!(s.reason.contains("49.2 %"), "{}", s.reason);
    }

    #[test]
    fn missing_participants_fail_the_step() {
        let mut s = healthy(100);
        s.connected = 98;
        s.failed = 1;
        let s = judged(s);
        assert_eq!(s.verdict, Verdict::JoinFailed);
        assert_eq!(s.reason, "98 of 100 connected (1 failed)");
    }

    #[test]
    fn a_saturated_client_is_detected_three_ways() {
        let limits = Limits::default();
        assert_eq!(client_bound(&healthy(100), &limits), None);

        let mut cpu = healthy(100);
        cpu.client_cores = Some(0.93);
        assert!(client_bound(&cpu, &limits).is_some_and(|r| r.contains("0.93 cores")));

        let mut behind = healthy(100);
        behind.sent_pps = 1_000.0; // 88.5 % of 1130
        assert!(client_bound(&behind, &limits).is_some_and(|r| r.contains("88.5 %")));

        let mut late = healthy(100);
        late.send_lag_p99_ms = Some(80.0);
        assert!(client_bound(&late, &limits).is_some_and(|r| r.contains("80.0 ms late")));

        // Nothing scheduled (no publishers yet): no send ratio to judge.
        let mut idle = healthy(100);
        (idle.scheduled_pps, idle.sent_pps) = (0.0, 0.0);
        assert_eq!(client_bound(&idle, &limits), None);
    }

    #[test]
    fn a_saturated_client_is_never_blamed_on_the_target() {
        // Loss, latency and failed joins while the client was at its limit: client-bound.
        let mut s = healthy(300);
        s.client_cores = Some(0.99);
        s.loss_percent = 12.0;
        s.latency_p99_ms = Some(800.0);
        s.connected = 290;
        assert_eq!(judged(s).verdict, Verdict::ClientBound);
    }

    #[test]
    fn capacity_is_the_last_passing_step() {
        let mut failing = healthy(300);
        failing.loss_percent = 3.0;
        failing.target_cores = Some(0.97);
        let steps: Vec<Step> = [healthy(100), healthy(200), failing]
            .into_iter()
            .map(judged)
            .collect();
        let c = capacity(&steps);
        assert_eq!(c.participants, 200);
        assert_eq!(c.limit, Limit::Loss);
        assert_eq!(c.cores, Some(0.3), "the CPU of the passing step");
        assert_eq!(c.detail, "at 300 participants: 3.00 % loss (limit 1.00 %)");
    }

    #[test]
    fn capacity_when_nothing_fails_or_the_first_step_does() {
        let steps: Vec<Step> = [healthy(100), healthy(200)]
            .into_iter()
            .map(judged)
            .collect();
        let c = capacity(&steps);
        assert_eq!((c.participants, c.limit), (200, Limit::Max));
        assert!(c.detail.is_empty());

        let mut first = healthy(100);
        first.client_cores = Some(1.0);
        let c = capacity(&[judged(first)]);
        assert_eq!((c.participants, c.limit), (0, Limit::ClientBound));
        assert_eq!(c.cores, None);

        let c = capacity(&[]);
        assert_eq!((c.participants, c.limit), (0, Limit::Max));
    }
}
