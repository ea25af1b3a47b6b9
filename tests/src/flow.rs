//! Continuous-flow checks for browser calls: does every remote track keep flowing, in every
//! page, all the time it should?
//!
//! [`Flow::watch`] installs a sampler in a page: every [`SAMPLE_MS`] it reads
//! `window.rtcd.peerConnection.getStats()` and keeps, per inbound RTP stream, its counter (a
//! video's `framesDecoded`, an audio's `packetsReceived`) under the remote participant and
//! source it belongs to, plus the page's `data-state` / `data-media`. Streams are attributed
//! through the SDK's `window.rtcd.remoteTracks` (mid -> {identity, source, track}) when it
//! exists, else through the demo page's `video[data-participant][data-source]` elements;
//! stats are matched by `mid`, falling back to `trackIdentifier`. Samples are timestamped in
//! the page and buffered there, so a slow WebDriver round trip never looks like a media gap;
//! [`Flow::pull`] (or [`Flow::hold`]) collects them.
//!
//! What should flow comes from the test: who is in the call ([`Flow::watch`], [`Flow::left`])
//! and which of their sources are on ([`Flow::source_on`], [`Flow::source_off`]; camera and
//! microphone start on). Page P expects (I, S) while P and I are in the call and S is on;
//! each such interval must show media within [`Thresholds::start`], then no gap longer than
//! [`Thresholds::gap`] until it ends. The page's own `data-state` / `data-media` and every
//! remote tile's `data-media` must stay `connected` once they were. [`Flow::report`] lists
//! every stall (who, what, when), every state problem, and the time to first remote frame.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::json;

use crate::browser::{BROWSER_STEP, BrowserKind, BrowserPage};

/// How often each page samples its stats (ms).
pub const SAMPLE_MS: u32 = 250;

/// How far before a tile problem its participant's streams are looked at (ms): the SDK calls
/// a stream stalled after 3 s without progress, read every 2 s.
const STILL_BEFORE: f64 = 6000.0;

/// Installs the in-page sampler (idempotent); see the module docs.
const SAMPLER: &str = r#"
if (window.__flow) return true;
const flow = { samples: [], busy: false, error: null };
window.__flow = flow;
const sourceOf = (v, t) => v.dataset.source === 'screen'
  ? (t.kind === 'audio' ? 'screen_audio' : 'screen')
  : (t.kind === 'audio' ? 'microphone' : 'camera');
const tick = async () => {
  if (flow.busy) return;
  flow.busy = true;
  try {
    const c = window.rtcd;
    const pc = c && c.peerConnection;
    const sample = { t: performance.timeOrigin + performance.now(), s: document.body.dataset.state || '',
      m: document.body.dataset.media || '', k: [], l: [],
      f: [...document.querySelectorAll('figure[data-participant]')].map((f) => [f.dataset.participant, f.dataset.media || '']) };
    if (pc) {
      const byTrack = new Map();
      const byMid = new Map();
      if (c.remoteTracks instanceof Map) {
        for (const r of c.remoteTracks.values()) {
          const who = { identity: r.identity, source: r.source };
          if (r.mid != null) byMid.set(String(r.mid), who);
          if (r.track) byTrack.set(r.track.id, who);
        }
      } else {
        for (const v of document.querySelectorAll('video[data-participant]')) {
          if (!(v.srcObject instanceof MediaStream)) continue;
          for (const t of v.srcObject.getTracks()) byTrack.set(t.id, { identity: v.dataset.participant, source: sourceOf(v, t) });
        }
      }
      const midOfTrack = new Map();
      for (const tr of pc.getTransceivers()) {
        if (tr.mid != null && tr.receiver && tr.receiver.track) midOfTrack.set(tr.receiver.track.id, String(tr.mid));
      }
      const stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type !== 'inbound-rtp') return;
        const mid = r.mid != null ? String(r.mid) : midOfTrack.get(r.trackIdentifier);
        const who = (mid != null && byMid.get(mid)) || byTrack.get(r.trackIdentifier);
        if (!who) return;
        const count = r.kind === 'video' ? (r.framesDecoded || 0) : (r.packetsReceived || 0);
        const key = mid != null ? 'mid ' + mid : 'track ' + r.trackIdentifier;
        sample.k.push([who.identity + '/' + who.source, key, count]);
        sample.l.push([who.identity + '/' + who.source, key, r.packetsLost || 0]);
      });
    }
    flow.samples.push(sample);
    if (flow.samples.length > 4000) flow.samples.shift();
  } catch (e) {
    flow.error = String(e && e.message || e);
  } finally {
    flow.busy = false;
  }
};
flow.timer = setInterval(tick, arguments[0]);
tick();
return true;
"#;

/// Takes the samples buffered in the page.
const TAKE: &str = "const f = window.__flow; \
    return f ? { samples: f.samples.splice(0), error: f.error } : { samples: [], error: 'no sampler' };";

/// Wall-clock milliseconds (pages timestamp their samples the same way).
fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Deserialize)]
struct Sample {
    /// Epoch ms.
    t: f64,
    /// `data-state`.
    s: String,
    /// `data-media` ('' when the page does not set it).
    m: String,
    /// `[identity/source, stream key (mid or track id), counter]`.
    k: Vec<(String, String, u64)>,
    /// `[identity/source, stream key, packets lost]` (the browser's cumulative count, which
    /// falls again when late packets come).
    #[serde(default)]
    l: Vec<(String, String, i64)>,
    /// Remote tiles: `[identity, data-media]`.
    #[serde(default)]
    f: Vec<(String, String)>,
}

#[derive(Debug, Deserialize)]
struct Taken {
    samples: Vec<Sample>,
    error: Option<String>,
}

/// One page under watch.
struct Watched {
    name: String,
    kind: BrowserKind,
    identity: String,
    /// When the page started loading (its `performance.timeOrigin`, epoch ms).
    joined: f64,
    left: Option<f64>,
    /// Network outages the test caused ([`Flow::network_lost`] .. [`Flow::network_back`]).
    outages: Vec<(f64, Option<f64>)>,
    samples: Vec<Sample>,
    sampler_error: Option<String>,
}

/// Since when (epoch ms) and in which state something is not `connected`.
type NotConnected<'a> = Option<(f64, &'a str)>;

/// A source of a participant turned on or off by the test.
struct SourceEvent {
    identity: String,
    source: String,
    on: bool,
    at: f64,
}

/// What counts as a stall.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Longest time without growth once media flows.
    pub gap: Duration,
    /// Longest wait for the first growth after a track becomes expected.
    pub start: Duration,
}

impl Thresholds {
    /// The calls tests: every 5 s window must show growth; 15 s to start (or resume).
    pub const CALLS: Self = Self {
        gap: Duration::from_secs(5),
        start: Duration::from_secs(15),
    };
}

/// A track that did not flow when it should have.
#[derive(Debug, Clone)]
pub struct Stall {
    /// The page that should have received it.
    pub observer: String,
    /// Whose track (page name).
    pub remote: String,
    /// `camera`, `microphone`, `screen`...
    pub source: String,
    /// Seconds since the flow started: last growth (or when it became expected).
    pub from: f64,
    /// Seconds since the flow started: next growth (or when it stopped being expected).
    pub to: f64,
    /// No growth at all in the interval.
    pub never_started: bool,
    /// The observer's state / media at the start of the gap, and the streams it saw.
    pub context: String,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.never_started {
            write!(
                f,
                "{} never received {}'s {} in {:.1}-{:.1} s ({})",
                self.observer, self.remote, self.source, self.from, self.to, self.context
            )
        } else {
            write!(
                f,
                "{}: {}'s {} stalled {:.1} s, from {:.1} s to {:.1} s ({})",
                self.observer,
                self.remote,
                self.source,
                self.to - self.from,
                self.from,
                self.to,
                self.context
            )
        }
    }
}

/// Time from a participant's page load (the later of the two pages) to the first frame of a
/// remote camera.
#[derive(Debug, Clone)]
pub struct FirstFrame {
    /// The receiving page.
    pub observer: String,
    /// Its browser.
    pub kind: BrowserKind,
    /// Whose camera.
    pub remote: String,
    /// Load-to-first-frame.
    pub latency: Duration,
}

/// What [`Flow::report`] found.
#[derive(Debug, Default)]
pub struct FlowReport {
    /// Every stall, in time order.
    pub stalls: Vec<Stall>,
    /// Samples where a page in the call was not `connected` (state, or media once it was).
    pub state_problems: Vec<String>,
    /// Time to first remote camera frame, per (observer, remote) pair.
    pub first_frames: Vec<FirstFrame>,
    /// Time from a source turning on (again) to its first media, per observer.
    pub resumes: Vec<(String, Duration)>,
    /// Errors of the in-page sampler.
    pub sampler_errors: Vec<String>,
    /// (observer, remote, source) intervals checked, and the samples they covered.
    pub checked: (usize, usize),
    /// What the test did, with times (seconds since the flow started).
    pub events: Vec<String>,
    /// Streams whose counter went back (a browser that re-created a receiver's stream, and
    /// its statistics with it), per observer: informational, since media health readers
    /// (the SDK) must take such a drop as a restart, not as a stall.
    pub restarts: Vec<String>,
}

impl FlowReport {
    /// True when nothing stalled, no page left `connected`, and the samplers worked.
    pub fn is_clean(&self) -> bool {
        self.stalls.is_empty() && self.state_problems.is_empty() && self.sampler_errors.is_empty()
    }

    /// p50 / p99 (nearest rank) of the first-frame latencies of pages in `kind`.
    pub fn first_frame_percentiles(&self, kind: BrowserKind) -> Option<(Duration, Duration)> {
        let mut all: Vec<Duration> = self
            .first_frames
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.latency)
            .collect();
        percentiles(&mut all)
    }

    /// p50 / p99 of the resume latencies.
    pub fn resume_percentiles(&self) -> Option<(Duration, Duration)> {
        let mut all: Vec<Duration> = self.resumes.iter().map(|r| r.1).collect();
        percentiles(&mut all)
    }
}

/// p50 and p99 by nearest rank.
pub fn percentiles(values: &mut [Duration]) -> Option<(Duration, Duration)> {
    if values.is_empty() {
        return None;
    }
    values.sort();
    let rank = |p: f64| {
        let i = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[i - 1]
    };
    Some((rank(0.50), rank(0.99)))
}

impl fmt::Display for FlowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for kind in [BrowserKind::Chromium, BrowserKind::Firefox] {
            if let Some((p50, p99)) = self.first_frame_percentiles(kind) {
                let n = self.first_frames.iter().filter(|x| x.kind == kind).count();
                writeln!(
                    f,
                    "first remote frame in {kind}: p50 {} ms, p99 {} ms (n={n})",
                    p50.as_millis(),
                    p99.as_millis()
                )?;
            }
        }
        if let Some((p50, p99)) = self.resume_percentiles() {
            writeln!(
                f,
                "media back after a source turned on: p50 {} ms, p99 {} ms (n={})",
                p50.as_millis(),
                p99.as_millis(),
                self.resumes.len()
            )?;
        }
        writeln!(
            f,
            "checked {} expected remote-track intervals over {} samples",
            self.checked.0, self.checked.1
        )?;
        writeln!(f, "events: {}", self.events.join("; "))?;
        if !self.restarts.is_empty() {
            writeln!(f, "counters back: {}", self.restarts.join("; "))?;
        }
        for stall in &self.stalls {
            writeln!(f, "STALL {stall}")?;
        }
        for problem in &self.state_problems {
            writeln!(f, "STATE {problem}")?;
        }
        for error in &self.sampler_errors {
            writeln!(f, "SAMPLER {error}")?;
        }
        Ok(())
    }
}

/// The watched pages of one call and the test's record of who sends what.
pub struct Flow {
    start: f64,
    pages: Vec<Watched>,
    sources: Vec<SourceEvent>,
}

impl Default for Flow {
    fn default() -> Self {
        Self::new()
    }
}

/// A page's handle in a [`Flow`] (the order of [`Flow::watch`] calls).
pub type PageId = usize;

impl Flow {
    /// An empty flow; times in the report count from now.
    pub fn new() -> Self {
        Self {
            start: now_ms(),
            pages: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Starts watching `page` as `name`: call it right after the call page loaded (the
    /// sampler starts at once, so the first remote frame is timed to within a sample), it
    /// returns once the page joined. Its camera and microphone count as on from its page load.
    pub async fn watch(&mut self, page: &BrowserPage, name: &str) -> anyhow::Result<PageId> {
        page.eval(SAMPLER, json!([SAMPLE_MS])).await?;
        let info = page
            .wait_for(
                "window.rtcd && window.rtcd.session && window.rtcd.session.identity \
                   && { identity: window.rtcd.session.identity, origin: performance.timeOrigin }",
                BROWSER_STEP,
            )
            .await
            .with_context(|| format!("{name} did not join"))?;
        let identity = info["identity"]
            .as_str()
            .with_context(|| format!("{name}: no window.rtcd.session.identity ({info})"))?
            .to_owned();
        let joined = info["origin"].as_f64().unwrap_or_else(now_ms);
        for source in ["camera", "microphone"] {
            self.sources.push(SourceEvent {
                identity: identity.clone(),
                source: source.to_owned(),
                on: true,
                at: joined,
            });
        }
        self.pages.push(Watched {
            name: name.to_owned(),
            kind: page.kind(),
            identity,
            joined,
            left: None,
            outages: Vec::new(),
            samples: Vec::new(),
            sampler_error: None,
        });
        Ok(self.pages.len() - 1)
    }

    /// The page's participant identity.
    pub fn identity(&self, id: PageId) -> &str {
        &self.pages[id].identity
    }

    /// The test turned `source` of page `id` on (unmute, camera on, screen share start):
    /// call it just after doing so; media must follow within [`Thresholds::start`].
    pub fn source_on(&mut self, id: PageId, source: &str) {
        self.source_event(id, source, true);
    }

    /// The test turns `source` of page `id` off: call it just before doing so.
    pub fn source_off(&mut self, id: PageId, source: &str) {
        self.source_event(id, source, false);
    }

    fn source_event(&mut self, id: PageId, source: &str, on: bool) {
        self.sources.push(SourceEvent {
            identity: self.pages[id].identity.clone(),
            source: source.to_owned(),
            on,
            at: now_ms(),
        });
    }

    /// Page `id` leaves the call now: call it just before making it leave (its tracks are
    /// no longer expected from this moment), after a last [`Flow::pull`].
    pub fn left(&mut self, id: PageId) {
        self.pages[id].left = Some(now_ms());
    }

    /// The test takes page `id`'s network away now (its address changes, its path is cut):
    /// nothing to or from it is expected until [`Flow::network_back`], and for
    /// [`Thresholds::start`] after that its media must resume and its states be `connected`
    /// again. Other pages may show media `poor` meanwhile (all they expected came from it).
    pub fn network_lost(&mut self, id: PageId) {
        self.pages[id].outages.push((now_ms(), None));
    }

    /// Page `id`'s connection is back (call it when the page reports ICE connected again).
    pub fn network_back(&mut self, id: PageId) {
        if let Some((_, to @ None)) = self.pages[id].outages.last_mut() {
            *to = Some(now_ms());
        }
    }

    /// The outages of `identity`'s page, closed at `until` when still open.
    fn outages_of(&self, identity: &str, until: f64) -> Vec<(f64, f64)> {
        self.pages
            .iter()
            .filter(|p| p.identity == identity)
            .flat_map(|p| p.outages.iter().map(move |(a, b)| (*a, b.unwrap_or(until))))
            .collect()
    }

    /// Whether `t` falls in an outage of `identity` or within `grace` after its end.
    fn excused(&self, identity: &str, t: f64, grace: f64) -> bool {
        self.outages_of(identity, f64::INFINITY)
            .iter()
            .any(|(a, b)| *a <= t && t < b + grace)
    }

    /// Collects the samples buffered in the pages (`pages[i]` is page `i` of this flow;
    /// pages that left are skipped, so their entry may be any page).
    pub async fn pull(&mut self, pages: &[&BrowserPage]) -> anyhow::Result<()> {
        for (watched, page) in self.pages.iter_mut().zip(pages) {
            if watched.left.is_some() {
                continue;
            }
            let taken: Taken = serde_json::from_value(page.eval(TAKE, json!([])).await?)
                .with_context(|| format!("{}: sampler output", watched.name))?;
            watched.samples.extend(taken.samples);
            if taken.error.is_some() {
                watched.sampler_error = taken.error;
            }
        }
        Ok(())
    }

    /// Waits `duration`, collecting samples every few seconds.
    pub async fn hold(&mut self, pages: &[&BrowserPage], duration: Duration) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + duration;
        loop {
            self.pull(pages).await?;
            let now = tokio::time::Instant::now();
            if now >= end {
                return Ok(());
            }
            tokio::time::sleep((end - now).min(Duration::from_secs(3))).await;
        }
    }

    /// Seconds since the flow started.
    fn rel(&self, t: f64) -> f64 {
        (t - self.start) / 1000.0
    }

    /// Intervals (epoch ms) in which `identity`'s `source` was on, up to `until`.
    fn on_intervals(&self, identity: &str, source: &str, until: f64) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        let mut since: Option<f64> = None;
        for e in self
            .sources
            .iter()
            .filter(|e| e.identity == identity && e.source == source)
        {
            match (e.on, since) {
                (true, None) => since = Some(e.at),
                (false, Some(a)) => {
                    out.push((a, e.at));
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(a) = since {
            out.push((a, until));
        }
        out
    }

    /// Checks every expected (observer, remote, source) interval against the samples.
    pub fn report(&self, thresholds: Thresholds) -> FlowReport {
        let mut report = FlowReport::default();
        let mut events: Vec<(f64, String)> = self
            .sources
            .iter()
            // Camera and microphone on at page load are implied by "loads".
            .filter(|e| {
                !self
                    .pages
                    .iter()
                    .any(|p| p.identity == e.identity && p.joined == e.at)
            })
            .map(|e| {
                let what = if e.on { "on" } else { "off" };
                (
                    e.at,
                    format!("{} {} {what}", self.name_of(&e.identity), e.source),
                )
            })
            .collect();
        for page in &self.pages {
            events.push((page.joined, format!("{} loads", page.name)));
            if let Some(left) = page.left {
                events.push((left, format!("{} leaves", page.name)));
            }
            for (lost, back) in &page.outages {
                events.push((*lost, format!("{} network lost", page.name)));
                if let Some(back) = back {
                    events.push((*back, format!("{} network back", page.name)));
                }
            }
        }
        events.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
        report.events = events
            .into_iter()
            .map(|(t, what)| format!("{:.1} s {what}", self.rel(t)))
            .collect();
        for page in &self.pages {
            for (stream, t, from, to) in Self::counters_back(page, f64::NEG_INFINITY, f64::INFINITY)
            {
                report.restarts.push(format!(
                    "{} {stream} {from} -> {to} at {:.1} s",
                    page.name,
                    self.rel(t)
                ));
            }
        }
        let gap = thresholds.gap.as_secs_f64() * 1000.0;
        let start_grace = thresholds.start.as_secs_f64() * 1000.0;
        for observer in &self.pages {
            if let Some(e) = &observer.sampler_error {
                report
                    .sampler_errors
                    .push(format!("{}: {e}", observer.name));
            }
            let Some(last) = observer.samples.last().map(|s| s.t) else {
                report
                    .sampler_errors
                    .push(format!("{}: no samples", observer.name));
                continue;
            };
            self.check_states(observer, start_grace, &mut report);
            for remote in self
                .pages
                .iter()
                .filter(|p| p.identity != observer.identity)
            {
                let together_from = observer.joined.max(remote.joined);
                let together_to = observer
                    .left
                    .unwrap_or(last)
                    .min(remote.left.unwrap_or(last))
                    .min(last);
                if together_to <= together_from {
                    continue;
                }
                let sources: Vec<String> = {
                    let mut s: Vec<String> = self
                        .sources
                        .iter()
                        .filter(|e| e.identity == remote.identity)
                        .map(|e| e.source.clone())
                        .collect();
                    s.sort();
                    s.dedup();
                    s
                };
                for source in sources {
                    let key = format!("{}/{source}", remote.identity);
                    let outages: Vec<(f64, f64)> = self
                        .outages_of(&observer.identity, together_to)
                        .into_iter()
                        .chain(self.outages_of(&remote.identity, together_to))
                        .collect();
                    for (a, b) in self.on_intervals(&remote.identity, &source, together_to) {
                        let (a, b) = (a.max(together_from), b.min(together_to));
                        // An outage cuts the interval: media resumes after it as after a
                        // source turning on.
                        for (a, b) in without(a, b, &outages) {
                            self.check_interval(
                                observer,
                                remote,
                                &source,
                                &key,
                                (a, b),
                                (gap, start_grace),
                                &mut report,
                            );
                        }
                    }
                }
            }
        }
        report.stalls.sort_by(|x, y| {
            x.from
                .partial_cmp(&y.from)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        report
    }

    #[allow(clippy::too_many_arguments)] // one call site, all of it context for the report
    fn check_interval(
        &self,
        observer: &Watched,
        remote: &Watched,
        source: &str,
        key: &str,
        (a, b): (f64, f64),
        (gap, start_grace): (f64, f64),
        report: &mut FlowReport,
    ) {
        // Growth times: samples where a stream of `key` has a higher counter than in the
        // previous sample (a new stream with frames counts).
        let mut previous: BTreeMap<&str, u64> = BTreeMap::new();
        let mut growth: Vec<f64> = Vec::new();
        for sample in &observer.samples {
            let mut grew = false;
            let mut current = BTreeMap::new();
            for (k, stream, count) in &sample.k {
                if k != key {
                    continue;
                }
                if *count > previous.get(stream.as_str()).copied().unwrap_or(0) {
                    grew = true;
                }
                current.insert(stream.as_str(), *count);
            }
            previous = current;
            if grew && sample.t > a && sample.t <= b {
                growth.push(sample.t);
            }
        }
        report.checked.0 += 1;
        report.checked.1 += observer
            .samples
            .iter()
            .filter(|s| s.t > a && s.t <= b)
            .count();
        let context = |t: f64| self.context_at(observer, key, t);
        let stall = |from: f64, to: f64, never: bool| Stall {
            observer: observer.name.clone(),
            remote: remote.name.clone(),
            source: source.to_owned(),
            from: self.rel(from),
            to: self.rel(to),
            never_started: never,
            context: context(from),
        };
        let Some(&first) = growth.first() else {
            // Too short to judge: it ended before media could have started.
            if b - a > start_grace {
                report.stalls.push(stall(a, b, true));
            }
            return;
        };
        if first - a > start_grace {
            report.stalls.push(stall(a, first, true));
        }
        let latency = Duration::from_secs_f64(((first - a) / 1000.0).max(0.0));
        let initial = (a - observer.joined.max(remote.joined)).abs() < 1.0;
        if initial && source == "camera" {
            report.first_frames.push(FirstFrame {
                observer: observer.name.clone(),
                kind: observer.kind,
                remote: remote.name.clone(),
                latency,
            });
        } else if !initial {
            report.resumes.push((
                format!("{} <- {} {source}", observer.name, remote.name),
                latency,
            ));
        }
        for pair in growth.windows(2) {
            if pair[1] - pair[0] > gap {
                report.stalls.push(stall(pair[0], pair[1], false));
            }
        }
        if let Some(&last) = growth.last()
            && b - last > gap
        {
            report.stalls.push(stall(last, b, false));
        }
    }

    /// The observer's state and the streams of `key` around time `t` (for stall reports).
    fn context_at(&self, observer: &Watched, key: &str, t: f64) -> String {
        let Some(sample) = observer
            .samples
            .iter()
            .find(|s| s.t >= t)
            .or(observer.samples.last())
        else {
            return "no samples".to_owned();
        };
        let streams: Vec<String> = sample
            .k
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, stream, count)| format!("{stream}={count}"))
            .collect();
        format!(
            "state {}, media {}, streams [{}]",
            sample.s,
            if sample.m.is_empty() { "-" } else { &sample.m },
            streams.join(", ")
        )
    }

    /// Every sample in the call where the page was not `connected` (state and media, each
    /// once it first was).
    fn check_states(&self, page: &Watched, start_grace: f64, report: &mut FlowReport) {
        let (mut state_seen, mut media_seen) = (false, false);
        let mut bad: Option<(f64, String)> = None;
        let end = page.left.unwrap_or(f64::INFINITY);
        for sample in page.samples.iter().filter(|s| s.t < end) {
            state_seen |= sample.s == "connected";
            media_seen |= sample.m == "connected";
            // A page whose every expected remote track comes from a page without network
            // is rightly `poor` (the SDK's definition) while that lasts.
            let others_out = sample.m == "poor"
                && self.pages.iter().any(|p| {
                    p.identity != page.identity && self.excused(&p.identity, sample.t, start_grace)
                });
            let ok = (!state_seen || sample.s == "connected")
                && (!media_seen || sample.m == "connected")
                || self.excused(&page.identity, sample.t, start_grace)
                || others_out;
            match (&bad, ok) {
                (None, false) => {
                    bad = Some((sample.t, format!("state {} media {}", sample.s, sample.m)))
                }
                (Some((from, what)), true) => {
                    report.state_problems.push(format!(
                        "{}: {what} from {:.1} s to {:.1} s",
                        page.name,
                        self.rel(*from),
                        self.rel(sample.t)
                    ));
                    bad = None;
                }
                _ => {}
            }
        }
        if let Some((from, what)) = bad {
            report.state_problems.push(format!(
                "{}: {what} from {:.1} s to the end",
                page.name,
                self.rel(from)
            ));
        }
        // Each remote tile's data-media, once it was connected, while the tile exists.
        // Per remote identity: seen connected, and since when (and in what state) it is not.
        let mut tiles: BTreeMap<&str, (bool, NotConnected<'_>)> = BTreeMap::new();
        for sample in page.samples.iter().filter(|s| s.t < end) {
            for (identity, media) in &sample.f {
                let (seen, bad) = tiles.entry(identity.as_str()).or_default();
                *seen |= media == "connected";
                let excused = self.excused(identity, sample.t, start_grace)
                    || self.excused(&page.identity, sample.t, start_grace);
                match (&bad, *seen && media != "connected" && !excused) {
                    (None, true) => *bad = Some((sample.t, media.as_str())),
                    (Some((from, what)), false) => {
                        let window = (*from, sample.t);
                        if !self.starting(page, identity, what, window, start_grace) {
                            report.state_problems.push(format!(
                                "{}: tile of {} media {what} from {:.1} s to {:.1} s{}",
                                page.name,
                                self.name_of(identity),
                                self.rel(*from),
                                self.rel(sample.t),
                                self.still_streams(page, identity, window)
                            ));
                        }
                        *bad = None;
                    }
                    _ => {}
                }
            }
        }
        for (identity, (_, bad)) in tiles {
            if let Some((from, what)) = bad {
                report.state_problems.push(format!(
                    "{}: tile of {} media {what} from {:.1} s to the end",
                    page.name,
                    self.name_of(identity),
                    self.rel(from)
                ));
            }
        }
    }

    /// Whether `observer`'s tile of `identity` being `connecting` from `from` to `to` is
    /// media starting: within `grace` after either page loaded or one of the participant's
    /// sources turned on. (The SDK shows a tile `connected` while nothing of theirs is
    /// expected yet, then `connecting` until it flows.) `poor` and `failed` never are.
    fn starting(
        &self,
        observer: &Watched,
        identity: &str,
        what: &str,
        (from, to): (f64, f64),
        grace: f64,
    ) -> bool {
        let loads = self
            .pages
            .iter()
            .filter(|p| p.identity == identity)
            .map(|p| p.joined)
            .chain([observer.joined]);
        let turned_on = self
            .sources
            .iter()
            .filter(|e| e.identity == identity && e.on)
            .map(|e| e.at);
        what == "connecting"
            && loads
                .chain(turned_on)
                .any(|at| at <= from && to <= at + grace)
    }

    /// Every time a stream's counter fell from one sample to the next within `from..=to`:
    /// (`identity/source key`, when, from, to).
    fn counters_back(page: &Watched, from: f64, to: f64) -> Vec<(String, f64, u64, u64)> {
        let mut last: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut back = Vec::new();
        for sample in page.samples.iter().filter(|s| s.t >= from && s.t <= to) {
            for (who, key, value) in &sample.k {
                if let Some(before) = last.insert((who, key), *value)
                    && *value < before
                {
                    back.push((format!("{who} {key}"), sample.t, before, *value));
                }
            }
        }
        back
    }

    /// What a tile problem needs to be read: which of `identity`'s streams stood still (their
    /// counter not growing) for longer than a second in the [`STILL_BEFORE`] before `window`
    /// and during it, and which lost packets then (the most their loss count rose above its
    /// value at the start, and when), as ` (camera mid 4 still 66.1-69.3 s; microphone mid 3
    /// lost 14 by 68.2 s)`, or nothing.
    fn still_streams(&self, page: &Watched, identity: &str, (from, to): (f64, f64)) -> String {
        let prefix = format!("{identity}/");
        // Per stream (source, key): its last value, since when it has not grown, the longest
        // such stretch.
        type Still = (u64, f64, Option<(f64, f64)>);
        let mut streams: BTreeMap<(String, String), Still> = BTreeMap::new();
        let around = || {
            page.samples
                .iter()
                .filter(move |s| s.t >= from - STILL_BEFORE && s.t <= to)
        };
        for sample in around() {
            for (who, key, value) in &sample.k {
                let Some(source) = who.strip_prefix(&prefix) else {
                    continue;
                };
                let entry = streams
                    .entry((source.to_owned(), key.clone()))
                    .or_insert((*value, sample.t, None));
                if *value != entry.0 {
                    entry.0 = *value;
                    entry.1 = sample.t;
                }
                let still = (entry.1, sample.t);
                if entry.2.is_none_or(|(a, b)| still.1 - still.0 > b - a) {
                    entry.2 = Some(still);
                }
            }
        }
        let mut still: Vec<String> = streams
            .iter()
            .filter_map(|((source, key), (_, _, longest))| {
                let (a, b) = (*longest)?;
                (b - a > 1000.0).then(|| {
                    format!(
                        "{source} {key} still {:.1}-{:.1} s",
                        self.rel(a),
                        self.rel(b)
                    )
                })
            })
            .collect();
        // The page's own silences: a sampler that got nothing for over a second (its reads
        // wait for the browser's statistics) saw no stream stand still meanwhile.
        let times: Vec<f64> = around().map(|s| s.t).collect();
        still.extend(
            times
                .windows(2)
                .filter(|w| w[1] - w[0] > 1000.0)
                .map(|w| format!("no sample {:.1}-{:.1} s", self.rel(w[0]), self.rel(w[1]))),
        );
        // Per stream: its loss count at the start, the most it rose, and when.
        let mut lost: BTreeMap<(&str, &str), (i64, i64, f64)> = BTreeMap::new();
        for sample in around() {
            for (who, key, value) in &sample.l {
                let Some(source) = who.strip_prefix(&prefix) else {
                    continue;
                };
                let entry = lost
                    .entry((source, key.as_str()))
                    .or_insert((*value, 0, sample.t));
                if value - entry.0 > entry.1 {
                    entry.1 = value - entry.0;
                    entry.2 = sample.t;
                }
            }
        }
        still.extend(lost.iter().filter(|(_, (_, rise, _))| *rise > 0).map(
            |((source, key), (_, rise, at))| {
                format!("{source} {key} lost {rise} by {:.1} s", self.rel(*at))
            },
        ));
        still.extend(
            Self::counters_back(page, from - STILL_BEFORE, to)
                .into_iter()
                .filter_map(|(stream, t, before, after)| {
                    let stream = stream.strip_prefix(&prefix)?.to_owned();
                    Some(format!(
                        "{stream} back {before} -> {after} at {:.1} s",
                        self.rel(t)
                    ))
                }),
        );
        if still.is_empty() {
            String::new()
        } else {
            format!(" ({})", still.join("; "))
        }
    }

    /// The page name of a participant identity (the identity if it is not watched).
    fn name_of(&self, identity: &str) -> String {
        self.pages
            .iter()
            .find(|p| p.identity == identity)
            .map_or(identity.to_owned(), |p| p.name.clone())
    }
}

/// `(a, b)` minus the `holes`, as the intervals left (empty ones dropped).
fn without(a: f64, b: f64, holes: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut parts = vec![(a, b)];
    for &(ha, hb) in holes {
        parts = parts
            .into_iter()
            .flat_map(|(x, y)| [(x, y.min(ha)), (x.max(hb), y)])
            .filter(|(x, y)| y > x)
            .collect();
    }
    parts
}

/// What a page's peer connection and call page show right now, for failure reports:
/// connection states, each transceiver (mid, direction, receiver track) and each inbound
/// stream's counters, and which remote tracks the page attributes to whom.
pub async fn diagnose(page: &BrowserPage) -> String {
    let script = r#"
const c = window.rtcd;
const pc = c && c.peerConnection;
const out = { state: document.body.dataset.state, media: document.body.dataset.media,
  reason: document.body.dataset.reason };
if (!pc) { out.pc = null; return out; }
out.pc = { connection: pc.connectionState, ice: pc.iceConnectionState, signaling: pc.signalingState };
out.transceivers = pc.getTransceivers().map((t) => [t.mid, t.direction, t.currentDirection,
  t.receiver.track && t.receiver.track.kind, t.receiver.track && t.receiver.track.id].join(' '));
out.remoteTracks = c.remoteTracks instanceof Map
  ? [...c.remoteTracks.values()].map((r) => [r.mid, r.identity, r.source, r.track && r.track.id].join(' '))
  : null;
out.videos = [...document.querySelectorAll('video[data-participant]')].map((v) =>
  [v.dataset.participant, v.dataset.source || 'camera', v.videoWidth + 'x' + v.videoHeight,
   v.srcObject ? v.srcObject.getTracks().map((t) => t.kind + ':' + t.id).join(',') : 'no stream'].join(' '));
const sections = (d) => d ? d.sdp.split(/\r?\nm=/).slice(1).map((m) => {
  const get = (re) => { const x = m.match(re); return x ? x[1] : '-'; };
  return [m.split(' ')[0], 'mid=' + get(/a=mid:(\S+)/), get(/a=(sendrecv|sendonly|recvonly|inactive)/),
    'msid=' + get(/a=msid:([^\r\n]+)/), 'ssrc=' + get(/a=ssrc:(\d+)/),
    'fid=' + get(/a=ssrc-group:FID ([^\r\n]+)/), 'pt=' + m.split(/\r?\n/)[0].split(' ').slice(3).join(','),
    'vp8=' + get(/a=rtpmap:(\d+) VP8/i), 'port=' + m.split(' ')[1]].join(' ')
    + (/a=bundle-only/.test(m) ? ' bundle-only' : '');
}) : null;
out.local = sections(pc.currentLocalDescription || pc.localDescription);
out.remote = sections(pc.currentRemoteDescription || pc.remoteDescription);
const stats = await pc.getStats();
out.inbound = [];
stats.forEach((r) => {
  if (r.type === 'inbound-rtp') out.inbound.push([r.kind, 'mid=' + r.mid, 'track=' + r.trackIdentifier,
    'frames=' + r.framesDecoded, 'keyframes=' + r.keyFramesDecoded, 'freezes=' + r.freezeCount,
    'packets=' + r.packetsReceived, 'lost=' + r.packetsLost, 'bytes=' + r.bytesReceived,
    'nacks=' + r.nackCount, 'plis=' + r.pliCount, 'firs=' + r.firCount].join(' '));
  if (r.type === 'outbound-rtp') (out.outbound = out.outbound || []).push([r.kind, 'mid=' + r.mid,
    'frames=' + r.framesEncoded, 'keyframes=' + r.keyFramesEncoded, 'packets=' + r.packetsSent,
    'retransmitted=' + r.retransmittedPacketsSent, 'nacks=' + r.nackCount, 'plis=' + r.pliCount,
    'firs=' + r.firCount].join(' '));
  if (r.type === 'candidate-pair' && r.nominated) out.pair = r.state + ' ' + r.localCandidateId + ' ' + r.remoteCandidateId;
});
return out;
"#;
    match page.eval(script, json!([])).await {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_default(),
        Err(e) => format!("(cannot read the page: {e:#})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_000_000.0;

    fn page(name: &str, kind: BrowserKind) -> Watched {
        Watched {
            name: name.to_owned(),
            kind,
            identity: name.to_lowercase(),
            joined: T0,
            left: None,
            outages: Vec::new(),
            samples: Vec::new(),
            sampler_error: None,
        }
    }

    /// A flow of Alice and Bob (both loaded at T0, camera and microphone on); Bob receives
    /// Alice's camera, whose counter grows in every sample for which `grows(t)` holds
    /// (t in seconds), sampled every 250 ms for `secs`. Bob's tile of Alice shows `tile(t)`.
    fn flow(secs: f64, grows: impl Fn(f64) -> bool, tile: impl Fn(f64) -> &'static str) -> Flow {
        flow_losing(secs, grows, tile, |_| 0)
    }

    /// [`flow`], with Alice's microphone at Bob having lost `lost(t)` packets by `t`.
    fn flow_losing(
        secs: f64,
        grows: impl Fn(f64) -> bool,
        tile: impl Fn(f64) -> &'static str,
        lost: impl Fn(f64) -> i64,
    ) -> Flow {
        let mut alice = page("Alice", BrowserKind::Chromium);
        alice.samples.push(Sample {
            t: T0 + secs * 1000.0,
            s: "connected".into(),
            m: "connected".into(),
            k: vec![],
            l: vec![],
            f: vec![],
        });
        let mut bob = page("Bob", BrowserKind::Firefox);
        let mut frames = 0;
        let mut t = 0.0;
        while t <= secs {
            if grows(t) {
                frames += 3;
            }
            bob.samples.push(Sample {
                t: T0 + t * 1000.0,
                s: "connected".into(),
                m: "connected".into(),
                k: vec![("alice/camera".into(), "mid 1".into(), frames)],
                l: vec![("alice/microphone".into(), "mid 0".into(), lost(t))],
                f: vec![("alice".into(), tile(t).into())],
            });
            t += 0.25;
        }
        let mut flow = Flow {
            start: T0,
            pages: vec![alice, bob],
            sources: Vec::new(),
        };
        for identity in ["alice", "bob"] {
            flow.sources.push(SourceEvent {
                identity: identity.into(),
                source: "camera".into(),
                on: true,
                at: T0,
            });
        }
        flow
    }

    fn bob_watches_alice(report: &FlowReport) -> Vec<&Stall> {
        report
            .stalls
            .iter()
            .filter(|s| s.observer == "Bob")
            .collect()
    }

    #[test]
    fn a_gap_longer_than_the_window_is_a_stall_with_its_times() {
        let flow = flow(
            30.0,
            |t| t >= 1.0 && !(10.0..16.5).contains(&t),
            |_| "connected",
        );
        let report = flow.report(Thresholds::CALLS);
        let stalls = bob_watches_alice(&report);
        assert_eq!(stalls.len(), 1, "{report}");
        assert!(!stalls[0].never_started);
        assert_eq!((stalls[0].from, stalls[0].to), (9.75, 16.5));
        assert_eq!(stalls[0].remote, "Alice");
        assert_eq!(stalls[0].source, "camera");
        assert_eq!(
            report.first_frame_percentiles(BrowserKind::Firefox),
            Some((Duration::from_secs(1), Duration::from_secs(1)))
        );
    }

    #[test]
    fn an_outage_excuses_its_gap_and_media_must_resume_after_it() {
        // Bob's network is gone from 10 s to 20 s; media is back at 23 s, tile "reconnecting".
        let grows = |t: f64| t >= 1.0 && !(10.0..23.0).contains(&t);
        let tile = |t: f64| {
            if (10.0..22.0).contains(&t) {
                "poor"
            } else {
                "connected"
            }
        };
        let mut f = flow(60.0, grows, tile);
        f.pages[1]
            .outages
            .push((T0 + 10_000.0, Some(T0 + 20_000.0)));
        let report = f.report(Thresholds::CALLS);
        let bobs = |r: &FlowReport| -> Vec<String> {
            r.state_problems
                .iter()
                .filter(|p| p.starts_with("Bob"))
                .cloned()
                .collect()
        };
        assert!(bob_watches_alice(&report).is_empty(), "{report}");
        assert!(bobs(&report).is_empty(), "{report}");
        assert!(
            report
                .resumes
                .iter()
                .any(|(what, _)| what == "Bob <- Alice camera"),
            "{report}"
        );
        // Without the outage the same samples are a stall and a state problem.
        let f = flow(60.0, grows, tile);
        let report = f.report(Thresholds::CALLS);
        assert_eq!(bob_watches_alice(&report).len(), 1, "{report}");
        assert!(!bobs(&report).is_empty(), "{report}");
        // Media that never comes back after the outage is reported.
        let mut f = flow(60.0, |t| (1.0..10.0).contains(&t), |_| "connected");
        f.pages[1]
            .outages
            .push((T0 + 10_000.0, Some(T0 + 20_000.0)));
        let report = f.report(Thresholds::CALLS);
        assert_eq!(bob_watches_alice(&report).len(), 1, "{report}");
        assert!(bob_watches_alice(&report)[0].never_started, "{report}");
    }

    #[test]
    fn interval_minus_holes() {
        assert_eq!(without(0.0, 10.0, &[]), vec![(0.0, 10.0)]);
        assert_eq!(
            without(0.0, 10.0, &[(2.0, 3.0), (5.0, 6.0)]),
            vec![(0.0, 2.0), (3.0, 5.0), (6.0, 10.0)]
        );
        assert_eq!(without(0.0, 10.0, &[(-1.0, 11.0)]), vec![]);
        assert_eq!(without(0.0, 10.0, &[(8.0, 12.0)]), vec![(0.0, 8.0)]);
        assert_eq!(without(0.0, 10.0, &[(11.0, 12.0)]), vec![(0.0, 10.0)]);
    }

    #[test]
    fn a_gap_within_the_window_is_not() {
        let flow = flow(
            30.0,
            |t| t >= 1.0 && !(10.0..14.5).contains(&t),
            |_| "connected",
        );
        assert!(bob_watches_alice(&flow.report(Thresholds::CALLS)).is_empty());
    }

    #[test]
    fn nothing_is_expected_while_a_source_is_off_and_it_must_come_back() {
        let mut flow = flow(
            40.0,
            |t| t >= 1.0 && !(10.0..22.0).contains(&t),
            |_| "connected",
        );
        for (on, at) in [(false, 10.0), (true, 20.0)] {
            flow.sources.push(SourceEvent {
                identity: "alice".into(),
                source: "camera".into(),
                on,
                at: T0 + at * 1000.0,
            });
        }
        let report = flow.report(Thresholds::CALLS);
        assert!(bob_watches_alice(&report).is_empty(), "{report}");
        assert_eq!(report.resumes.len(), 1);
        assert_eq!(report.resumes[0].1, Duration::from_secs(2));
    }

    #[test]
    fn media_that_never_starts_is_reported() {
        let report = flow(30.0, |_| false, |_| "connecting").report(Thresholds::CALLS);
        let stalls = bob_watches_alice(&report);
        assert_eq!(stalls.len(), 1);
        assert!(stalls[0].never_started);
        assert!(stalls[0].to >= 29.0);
    }

    #[test]
    fn a_tile_may_be_connecting_while_media_starts_but_never_poor() {
        let starting = |t: f64| {
            if (2.0..3.0).contains(&t) {
                "connecting"
            } else {
                "connected"
            }
        };
        let report = flow(30.0, |t| t >= 1.0, starting).report(Thresholds::CALLS);
        assert!(report.state_problems.is_empty(), "{report}");
        let poor = |t: f64| {
            if (20.0..22.0).contains(&t) {
                "poor"
            } else {
                "connected"
            }
        };
        let report = flow(30.0, |t| t >= 1.0, poor).report(Thresholds::CALLS);
        assert_eq!(
            report.state_problems,
            ["Bob: tile of Alice media poor from 20.0 s to 22.0 s"]
        );
        // The report says which stream stood still (here: the camera, 17-21 s).
        let report =
            flow(30.0, |t| t >= 1.0 && !(17.0..21.0).contains(&t), poor).report(Thresholds::CALLS);
        assert_eq!(
            report.state_problems,
            [
                "Bob: tile of Alice media poor from 20.0 s to 22.0 s (camera mid 1 still 16.8-20.8 s)"
            ]
        );
        // And which lost packets: the most the count rose in the window (late packets lower
        // it again), and when; loss before the window is not counted.
        let lost = |t: f64| match t {
            t if t < 10.0 => 5,
            t if t < 18.0 => 7,
            t if t < 21.0 => 30,
            _ => 25,
        };
        let report = flow_losing(30.0, |t| t >= 1.0, poor, lost).report(Thresholds::CALLS);
        assert_eq!(
            report.state_problems,
            [
                "Bob: tile of Alice media poor from 20.0 s to 22.0 s (microphone mid 0 lost 23 by 18.0 s)"
            ]
        );
        // And when the page's sampler got nothing (a browser slow to give its statistics).
        let mut sparse = flow(30.0, |t| t >= 1.0, poor);
        sparse.pages[1]
            .samples
            .retain(|s| !(T0 + 17_900.0..T0 + 19_900.0).contains(&s.t));
        assert_eq!(
            sparse.report(Thresholds::CALLS).state_problems,
            ["Bob: tile of Alice media poor from 20.0 s to 22.0 s (no sample 17.8-20.0 s)"]
        );
        // And when a counter fell (a receive stream the browser made anew): in the tile's
        // problem and in the report's list of such falls.
        let mut restarted = flow(30.0, |t| t >= 1.0, poor);
        for sample in &mut restarted.pages[1].samples {
            if sample.t >= T0 + 19_000.0 {
                sample.k[0].2 -= 217;
            }
        }
        let report = restarted.report(Thresholds::CALLS);
        assert_eq!(
            report.state_problems,
            [
                "Bob: tile of Alice media poor from 20.0 s to 22.0 s (camera mid 1 back 216 -> 2 at 19.0 s)"
            ]
        );
        assert_eq!(
            report.restarts,
            ["Bob alice/camera mid 1 216 -> 2 at 19.0 s"]
        );
        assert!(
            report
                .to_string()
                .contains("counters back: Bob alice/camera"),
            "{report}"
        );
    }
}
