//! One session (one client peer connection) as its call sees it.

use rustc_hash::FxHashMap;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::{CallKey, SessionKey};
use crate::engine::Peer;
use crate::engine::peer::{Codec, HeaderExtension, OpenedTrack, SlotId, TrackKey};
use crate::metrics::{KindLabels, Metrics, ReasonLabels};
use crate::sfu::allocation::{Allocator, PauseReason};
use crate::sfu::downtrack::DownTrack;
use crate::sfu::events::EventParticipant;
use crate::sfu::negotiation::{Negotiation, TrackId};
use crate::sfu::{JoinRequest, Participant, SfuError, TrackKind};

/// A receiving section of the client's offer that rtcd sends on.
pub(super) struct MemberSlot {
    pub id: SlotId,
    pub mid: String,
    pub audio: bool,
    pub ssrc: u32,
    /// The slot's RTX SSRC where the client negotiated RTX: NACK answers go there.
    pub rtx_ssrc: Option<u32>,
    pub codecs: Vec<Codec>,
    pub extensions: Vec<HeaderExtension>,
    pub down: Option<DownTrack>,
    /// The best layer (index) of a simulcast track this subscriber may receive now: its
    /// allocator's decision ([`crate::sfu::allocation`]); `usize::MAX` when not limited.
    pub layer_cap: usize,
    /// Why the allocator paused it, while it does (the down-track is paused).
    pub paused: Option<PauseReason>,
    /// How the subscriber shows the slot's track (adaptive stream; reset when the slot
    /// carries another track).
    pub view: View,
}

/// How a subscriber shows one video track it receives (`SessionCommand::TrackViews`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Whether it is shown at all.
    pub visible: bool,
    /// The size it is shown at, in device pixels; `None`: unknown (any layer).
    pub size: Option<(u32, u32)>,
}

impl Default for View {
    /// What a client that never says anything gets: shown, at any size.
    fn default() -> Self {
        Self {
            visible: true,
            size: None,
        }
    }
}

/// One session (one client peer connection).
pub(super) struct Member {
    pub req: JoinRequest,
    pub call: CallKey,
    pub peer: Peer,
    /// The receiving sections rtcd sends on; slot `i` here is slot `i` of `negotiation`.
    pub slots: Vec<MemberSlot>,
    /// Which track each slot carries, what waits, when to ask for an offer.
    pub negotiation: Negotiation,
    /// This session's published tracks, by the peer's track key (the peer's own counter: a
    /// fast hash, looked up per packet; no client picks the keys).
    pub published: FxHashMap<TrackKey, TrackId>,
    /// Every track the client has opened, by mid (a section that sends again is published
    /// again from it).
    pub opened: HashMap<String, OpenedTrack>,
    /// Sections whose track was refused (permission, limit), with the counter of their
    /// discarded packets.
    pub refused: HashMap<String, Counter>,
    /// The sender's track id by mid, from the latest offer (for the legacy screen-share hint).
    pub track_ids: HashMap<String, String>,
    /// The track id `ScreenShare { on: true }` named (legacy clients that declare no kinds).
    pub screen_track_id: Option<String>,
    /// The kinds the client's latest offer declared, by mid.
    pub declared: HashMap<String, TrackKind>,
    /// Mids of the latest offer on which the client sends.
    pub sending_mids: HashSet<String>,
    pub muted: HashSet<TrackKind>,
    pub pending_candidates: Vec<(String, Option<String>, Option<u16>)>,
    /// The sessions this one was told about (`ParticipantJoined`).
    pub announced: HashSet<SessionKey>,
    pub ufrags: HashSet<String>,
    pub created: Instant,
    /// When the session joined (Unix milliseconds).
    pub joined_at_ms: i64,
    pub connected: bool,
    /// The deadline last given out for this session ([`super::Output::Timer`]).
    pub deadline: Option<Instant>,
    /// Which layer of each video track it receives, from its link's bandwidth estimate.
    pub allocator: Allocator,
    /// When the allocator last decided (it decides again at most every
    /// [`super::allocating::ALLOCATE_INTERVAL`] unless the estimate drops).
    pub allocated_at: Option<Instant>,
    /// When its microphone was last heard speaking (its cameras come first for others).
    pub spoke: Option<Instant>,
    /// Probing its link for the allocator's next step up (see `allocating`).
    pub probe: Probe,
}

/// A subscriber's link probe: while `until` is ahead, video packets forwarded to it are
/// followed by RTX copies of themselves whenever what it was sent since `started` (`carried`,
/// media and copies) falls behind the goal with its overshoot; or, when all its video is paused (nothing to copy,
/// `ratio` 0), a resume on trial of its first paused track (`Allocator::try_resume`): that
/// video is itself the probe.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// While a probe runs: when its copies end (a resume on trial: when the trial does). It is
    /// judged then or sooner (`probe_over`, `allocating.rs`).
    pub until: Option<Instant>,
    /// The copies' share of the video the subscriber received when the probe started (0: a
    /// resume on trial); it bounds how many copies one packet may be followed by.
    pub ratio: f64,
    /// When the copies started.
    pub started: Option<Instant>,
    /// Bytes sent to the subscriber since `started` (RTP headers and payloads).
    pub carried: f64,
    /// The estimate the probe should prove.
    pub goal: u64,
    /// The estimate when it started (how far it moved it).
    pub from: u64,
    /// When the next probe may start, and the wait after that one if it fails.
    pub next: Option<Instant>,
    /// Whether the last probe moved the estimate far (`PROBE_MOVED` times where it started,
    /// `allocating.rs`): the link has room, the next one may aim higher.
    pub moved: bool,
    /// The goal of the last probe that fell short, until the link carries it: no probe aims
    /// higher meanwhile (`probe_goal`, `allocating.rs`).
    pub refused: Option<u64>,
    /// Whether the last probe fell just short of its goal and the next followed soon
    /// (`NEAR_SHARE`, `allocating.rs`): a second near miss in a row backs off like a failure,
    /// unless it still raised the estimate far (`NEAR_CLIMB`).
    pub near_missed: bool,
}

impl Probe {
    /// Whether copies are being sent now (a probe with copies, not yet over).
    pub fn copying(&self, now: Instant) -> bool {
        self.ratio > 0.0 && self.until.is_some_and(|u| now < u)
    }

    /// Bytes the link is owed now: what the goal with its overshoot asked for since the probe
    /// started, minus what was sent.
    pub fn owed(&self, now: Instant) -> f64 {
        let rate = self.goal as f64 * super::allocating::PROBE_OVERSHOOT / 8.0;
        self.started.map_or(0.0, |s| {
            rate * now.saturating_duration_since(s).as_secs_f64() - self.carried
        })
    }
}

impl Member {
    pub(super) fn new(
        req: JoinRequest,
        call: CallKey,
        peer: Peer,
        now: Instant,
        joined_at_ms: i64,
    ) -> Self {
        Self {
            req,
            call,
            peer,
            slots: Vec::new(),
            negotiation: Negotiation::default(),
            published: FxHashMap::default(),
            opened: HashMap::new(),
            refused: HashMap::new(),
            track_ids: HashMap::new(),
            screen_track_id: None,
            declared: HashMap::new(),
            sending_mids: HashSet::new(),
            muted: HashSet::new(),
            pending_candidates: Vec::new(),
            announced: HashSet::new(),
            ufrags: HashSet::new(),
            created: now,
            joined_at_ms,
            connected: false,
            deadline: None,
            allocator: Allocator::default(),
            allocated_at: None,
            spoke: None,
            probe: Probe::default(),
        }
    }

    pub(super) fn event_participant(&self) -> EventParticipant {
        EventParticipant {
            session: self.req.session.clone(),
            user: self.req.user.clone(),
            display_name: self.req.display_name.clone(),
            role: self.req.role.clone(),
        }
    }

    pub(super) fn participant(&self) -> Participant {
        Participant {
            session: self.req.session.clone(),
            user: self.req.user.clone(),
            display_name: self.req.display_name.clone(),
            role: self.req.role.clone(),
        }
    }

    /// `rtcd_sfu_tracks_{in,out}` of this session's tenant and `kind`.
    pub(super) fn kind_gauge(&self, metrics: &Metrics, kind: TrackKind, incoming: bool) -> Gauge {
        let labels = KindLabels {
            client_id: self.req.tenant.as_str().to_owned(),
            kind: kind.as_str(),
        };
        let m = &metrics.sfu;
        let family = if incoming {
            &m.tracks_in
        } else {
            &m.tracks_out
        };
        family.get_or_create(&labels).clone()
    }

    pub(super) fn count_error(&self, metrics: &Metrics, e: &SfuError) {
        tracing::debug!(client = %self.req.tenant, session = %self.req.session, error = %e, "session error");
        metrics
            .sfu
            .errors
            .get_or_create(&ReasonLabels {
                client_id: self.req.tenant.as_str().to_owned(),
                reason: e.kind(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A probe owes the link its rate since it started, less what was sent (media and copies
    /// alike), so copies make up for video that runs below what was measured before it; it
    /// copies only while it runs, and a resume on trial (ratio 0) never does.
    #[test]
    fn a_probe_owes_its_rate_since_it_started_less_what_was_sent() {
        let t0 = Instant::now();
        let mut probe = Probe {
            until: Some(t0 + Duration::from_millis(700)),
            ratio: 1.5,
            started: Some(t0),
            goal: 800_000, // 110,000 bytes per second with the overshoot
            ..Probe::default()
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // To a millionth of a byte: the overshoot (1.1) is not exact in binary.
        let about = |owed: f64, bytes: f64| (owed - bytes).abs() < 1e-6;
        assert!(probe.copying(at(0)));
        assert!(
            about(probe.owed(at(100)), 11_000.0),
            "{}",
            probe.owed(at(100))
        );
        probe.carried = 3_000.0; // the media sent so far: copies owe the rest
        assert!(
            about(probe.owed(at(100)), 8_000.0),
            "{}",
            probe.owed(at(100))
        );
        probe.carried = 12_000.0; // ahead of its rate: nothing owed
        assert!(probe.owed(at(100)) < 0.0);
        assert!(!probe.copying(at(700)), "over at `until`");
        probe.ratio = 0.0;
        assert!(!probe.copying(at(100)), "a resume on trial sends no copies");
        assert_eq!(Probe::default().owed(at(100)), 0.0, "never started");
    }
}
