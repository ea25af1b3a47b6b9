//! Whole calls in memory: the engine's test clients ([`Client`]) and one [`Rooms`] exchange
//! datagrams through a routing loop, signaling is played by the test, and time is advanced by
//! hand (5 ms steps), so seconds of a call take milliseconds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ManageRequest, Managed, Output, Rooms, SessionKey, Setup};
use crate::engine::Identity;
use crate::engine::testing::{self, Client};
use crate::media::packet::MediaKind;
use crate::metrics::Metrics;
use crate::sfu::events::{RoomEvent, RoomEventKind};
use crate::sfu::session::{SessionCommand, SessionEvent};
use crate::sfu::{
    CallId, JoinRequest, Moderation, Permissions, SessionId, SfuConfig, SfuError, TenantId,
    TokenMeta, TrackKind, UserId,
};

const ALICE: SessionKey = 1;
const BOB: SessionKey = 2;
const CAROL: SessionKey = 3;
/// Alice's camera SSRC.
const CAM: u32 = 0xA0A0;

/// The SFU tests' configuration: small limits, 1 s keyframe interval, 5 s ICE timeouts.
fn config() -> SfuConfig {
    crate::sfu::tests::config()
}

fn everything() -> Permissions {
    Permissions {
        publish_audio: true,
        publish_video: true,
        publish_screen: true,
        subscribe: true,
    }
}

fn request(name: &str, permissions: Permissions) -> JoinRequest {
    JoinRequest {
        tenant: TenantId::new("t"),
        call: CallId::new("c"),
        session: SessionId::new(name),
        user: UserId::new(format!("user-{name}")),
        display_name: name.into(),
        permissions,
        role: "member".into(),
        token: TokenMeta::default(),
    }
}

/// One session's signaling as the test sees it.
#[derive(Default)]
struct Signaling {
    /// Every event, in order.
    events: Vec<SessionEvent>,
    /// Events the harness has looked at (answers, negotiation requests).
    seen: usize,
    /// Receiving sections its client has (audio, video).
    receiving: (u32, u32),
    /// Why it ended, once it has.
    ended: Option<String>,
    /// Ufrags routed to it, in order.
    routes: Vec<String>,
}

/// A call harness: one [`Rooms`], its clients, and what it said.
struct Net {
    rooms: Rooms,
    metrics: Arc<Metrics>,
    /// The worker's forwarded-packets counter (`GET /system`).
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    now: Instant,
    clients: BTreeMap<SessionKey, Client>,
    sessions: HashMap<SessionKey, Signaling>,
    room_events: Vec<RoomEvent>,
    timers: Vec<(Instant, SessionKey)>,
    /// Publishers sending media: (session, kind, SSRC, next sequence number).
    senders: Vec<(SessionKey, MediaKind, u32, u16)>,
    step: u64,
}

impl Net {
    fn new() -> Self {
        let metrics = Metrics::new();
        let forwarded: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let rooms = Rooms::new(Setup {
            index: 0,
            identity: Identity::generate().expect("a certificate"),
            settings: testing::settings(),
            metrics: metrics.clone(),
            config: config(),
            room_events: true,
            forwarded: forwarded.clone(),
        });
        Self {
            rooms,
            metrics,
            forwarded,
            now: Instant::now(),
            clients: BTreeMap::new(),
            sessions: HashMap::new(),
            room_events: Vec::new(),
            timers: Vec::new(),
            senders: Vec::new(),
            step: 0,
        }
    }

    /// `key` joins as `name` with a client at 10.9.0.`key`:6000.
    fn join(&mut self, key: SessionKey, name: &str, permissions: Permissions) {
        self.rooms
            .join(key, request(name, permissions), 1_000, 2_000, self.now)
            .expect("a peer");
        self.clients
            .insert(key, Client::new(&format!("10.9.0.{key}:6000"), self.now));
        self.sessions.insert(key, Signaling::default());
        self.settle();
    }

    fn client(&mut self, key: SessionKey) -> &mut Client {
        self.clients.get_mut(&key).expect("a client")
    }

    fn events(&self, key: SessionKey) -> &[SessionEvent] {
        &self.sessions[&key].events
    }

    /// A receiving section of `kind` more on `key`'s client (for the next offer).
    fn receive(&mut self, key: SessionKey, kind: MediaKind) {
        self.client(key).receive(kind);
        let s = self.sessions.get_mut(&key).expect("a session");
        match kind {
            MediaKind::Audio => s.receiving.0 += 1,
            MediaKind::Video => s.receiving.1 += 1,
        }
    }

    /// `key` publishes its camera (its next offer carries it); it sends once connected.
    fn publish_camera(&mut self, key: SessionKey) {
        self.client(key).publish(MediaKind::Video, CAM);
        self.senders.push((key, MediaKind::Video, CAM, 0));
    }

    /// `key`'s client offers; the answer is applied. Returns the answer.
    fn negotiate(&mut self, key: SessionKey) -> Result<String, SfuError> {
        let now = self.now;
        let sdp = self.client(key).offer(now);
        let from = self.sessions[&key].events.len();
        self.rooms.command(
            key,
            SessionCommand::Offer {
                sdp,
                tracks: HashMap::new(),
            },
            now,
        );
        self.settle();
        let s = self.sessions.get_mut(&key).expect("a session");
        let mut answer = None;
        for e in &s.events[from..] {
            match e {
                SessionEvent::Answer(sdp) => answer = Some(sdp.clone()),
                SessionEvent::Error(e) => return Err(clone_error(e)),
                _ => {}
            }
        }
        s.seen = s.events.len();
        let answer = answer.expect("an answer");
        self.client(key).answer(&answer, now);
        self.settle();
        Ok(answer)
    }

    /// A command of `key`'s signaling stream.
    fn command(&mut self, key: SessionKey, command: SessionCommand) {
        self.rooms.command(key, command, self.now);
        self.settle();
    }

    fn manage(&mut self, request: ManageRequest) -> Result<Managed, SfuError> {
        let answer = self
            .rooms
            .manage(TenantId::new("t"), CallId::new("c"), request, self.now);
        self.settle();
        answer
    }

    /// Lets the core drain, then carries out its outputs (as the worker does) until quiet.
    fn settle(&mut self) {
        for _ in 0..16 {
            self.rooms.settle(self.now);
            let mut moved = false;
            while let Some((transport, data)) = self.rooms.poll_transmit() {
                moved = true;
                // Datagrams to an address no client has (any more) are lost.
                if let Some(c) = self
                    .clients
                    .values_mut()
                    .find(|c| c.addr() == transport.peer)
                {
                    c.deliver(data, self.now);
                }
            }
            while let Some(output) = self.rooms.poll_output() {
                moved = true;
                match output {
                    Output::Event { key, event } => {
                        if let Some(s) = self.sessions.get_mut(&key) {
                            s.events.push(event);
                        }
                    }
                    Output::Route { key, ufrag } => {
                        if let Some(s) = self.sessions.get_mut(&key) {
                            s.routes.push(ufrag);
                        }
                    }
                    Output::Ended { key, reason, .. } => {
                        self.clients.remove(&key);
                        if let Some(s) = self.sessions.get_mut(&key) {
                            s.ended = Some(reason);
                        }
                    }
                    Output::Room(e) => self.room_events.push(e),
                    Output::Timer { key, at } => self.timers.push((at, key)),
                }
            }
            for (key, client) in &mut self.clients {
                while let Some((transport, data)) = client.poll_transmit() {
                    moved = true;
                    self.rooms.datagram(*key, transport, &data, self.now);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs `ms` of the call in 5 ms steps: timers, media every 30 ms from connected
    /// publishers, and offers where a session was asked for one (as the SDK does).
    fn run(&mut self, ms: u64) {
        for _ in 0..ms / 5 {
            self.now += Duration::from_millis(5);
            self.step += 1;
            let now = self.now;
            let due: Vec<(Instant, SessionKey)> = self
                .timers
                .iter()
                .copied()
                .filter(|(at, _)| *at <= now)
                .collect();
            self.timers.retain(|(at, _)| *at > now);
            for (at, key) in due {
                self.rooms.timeout(key, at, now);
            }
            for c in self.clients.values_mut() {
                c.handle_timeout(now);
            }
            if self.step.is_multiple_of(6) {
                for (key, kind, ssrc, seq) in &mut self.senders {
                    if let Some(c) = self.clients.get_mut(key)
                        && c.connected
                    {
                        c.send(*kind, *ssrc, *seq, now);
                        *seq = seq.wrapping_add(1);
                    }
                }
            }
            self.settle();
            self.answer_requests();
        }
    }

    /// Offers for every session asked to (`NegotiationNeeded`), with enough receiving sections.
    fn answer_requests(&mut self) {
        let keys: Vec<SessionKey> = self.clients.keys().copied().collect();
        for key in keys {
            let s = &self.sessions[&key];
            let wanted = s.events[s.seen..].iter().rev().find_map(|e| match e {
                SessionEvent::NegotiationNeeded { audio, video } => Some((*audio, *video)),
                _ => None,
            });
            let Some((audio, video)) = wanted else {
                continue;
            };
            let (have_audio, have_video) = s.receiving;
            for _ in have_audio..audio {
                self.receive(key, MediaKind::Audio);
            }
            for _ in have_video..video {
                self.receive(key, MediaKind::Video);
            }
            self.negotiate(key).expect("the offer is answered");
        }
    }

    /// Runs until `done` holds (checked every 50 ms), for at most `ms`; returns whether it held.
    fn run_until(&mut self, ms: u64, done: impl Fn(&Net) -> bool) -> bool {
        for _ in 0..ms / 50 {
            if done(self) {
                return true;
            }
            self.run(50);
        }
        done(self)
    }

    /// Packets `key`'s client has received so far.
    fn received(&self, key: SessionKey) -> usize {
        self.clients.get(&key).map_or(0, |c| c.received.len())
    }

    fn room_kinds(&self) -> Vec<&RoomEventKind> {
        self.room_events.iter().map(|e| &e.kind).collect()
    }

    /// Alice publishes her camera, Bob receives it: both connected, and media flowing to Bob.
    fn alice_to_bob() -> Self {
        let mut net = Net::new();
        net.join(ALICE, "alice", everything());
        net.join(BOB, "bob", everything());
        net.publish_camera(ALICE);
        net.negotiate(ALICE).expect("alice's offer is answered");
        net.receive(BOB, MediaKind::Video);
        net.negotiate(BOB).expect("bob's offer is answered");
        // Bob's first frame is alice's next keyframe (every 30 packets).
        assert!(
            net.run_until(3_000, |n| n.received(BOB) > 0),
            "bob receives alice's camera"
        );
        assert!(net.client(ALICE).connected && net.client(BOB).connected);
        net
    }
}

fn clone_error(e: &SfuError) -> SfuError {
    match e {
        SfuError::InvalidArgument(m) => SfuError::InvalidArgument(m.clone()),
        SfuError::LimitReached(what) => SfuError::LimitReached(what),
        SfuError::NotFound => SfuError::NotFound,
        other => SfuError::Media(other.to_string()),
    }
}

fn has(events: &[SessionEvent], what: impl Fn(&SessionEvent) -> bool) -> bool {
    events.iter().any(what)
}

#[test]
fn joining_announces_each_session_to_the_others_and_starts_the_room() {
    let mut net = Net::new();
    net.join(ALICE, "alice", everything());
    net.join(BOB, "bob", everything());
    assert!(has(net.events(ALICE), |e| matches!(e,
        SessionEvent::ParticipantJoined(p) if p.session.as_str() == "bob")));
    assert!(has(net.events(BOB), |e| matches!(e,
        SessionEvent::ParticipantJoined(p) if p.session.as_str() == "alice")));
    let kinds = net.room_kinds();
    assert!(matches!(kinds[0], RoomEventKind::RoomStarted));
    assert!(
        matches!(kinds[1], RoomEventKind::ParticipantJoined(p) if p.session.as_str() == "alice")
    );
    assert!(matches!(kinds[2], RoomEventKind::ParticipantJoined(p) if p.session.as_str() == "bob"));
    let seqs: Vec<u64> = net.room_events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert!(
        net.room_events.iter().all(|e| e.at_ms == 0),
        "the core stamps no wall clock"
    );
    // The first offer is answered and its ufrag routed to the session.
    net.receive(ALICE, MediaKind::Video);
    let answer = net.negotiate(ALICE).expect("answered");
    assert!(answer.contains("a=ice-lite"));
    assert_eq!(net.sessions[&ALICE].routes.len(), 1);
    assert!(answer.contains(&net.sessions[&ALICE].routes[0]));
}

#[test]
fn a_second_session_receives_the_first_ones_track() {
    let mut net = Net::alice_to_bob();
    let bob = net.events(BOB);
    assert!(has(bob, |e| matches!(
        e,
        SessionEvent::NegotiationNeeded { audio: 0, video: 1 }
    )));
    assert!(has(bob, |e| matches!(e,
        SessionEvent::TrackPublished(t) if t.session.as_str() == "alice" && t.kind == TrackKind::Video)));
    assert!(net.room_kinds().iter().any(|k| matches!(
        k,
        RoomEventKind::TrackPublished {
            kind: TrackKind::Video,
            ..
        }
    )),);
    let before = net.received(BOB);
    assert!(before > 0, "bob receives alice's camera");
    net.run(300);
    assert!(net.received(BOB) > before, "and keeps receiving it");
    // Rewritten onto bob's slot: one SSRC, not alice's.
    let ssrcs: std::collections::HashSet<u32> =
        net.client(BOB).received.iter().map(|r| r.ssrc).collect();
    assert_eq!(ssrcs.len(), 1);
    assert!(!ssrcs.contains(&CAM));
    // Alice receives nothing of her own.
    assert_eq!(net.received(ALICE), 0);
}

#[test]
fn leaving_withdraws_the_tracks_frees_the_slot_and_finishes_the_room() {
    let mut net = Net::alice_to_bob();
    let seen = net.events(BOB).len();
    let now = net.now;
    net.rooms.end(ALICE, "leave".into(), now);
    net.settle();
    assert_eq!(net.sessions[&ALICE].ended.as_deref(), Some("leave"));
    let bob = &net.events(BOB)[seen..];
    assert!(has(
        bob,
        |e| matches!(e, SessionEvent::TrackRemoved(t) if t.session.as_str() == "alice")
    ));
    assert!(has(
        bob,
        |e| matches!(e, SessionEvent::ParticipantLeft(p) if p.session.as_str() == "alice")
    ));
    // The slot cools: bob is asked for an offer, whose answer marks it inactive once.
    assert!(has(bob, |e| matches!(
        e,
        SessionEvent::NegotiationNeeded { .. }
    )));
    let answer = net.negotiate(BOB).expect("answered");
    assert!(answer.contains("a=inactive"), "{answer}");
    let kinds = net.room_kinds();
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, RoomEventKind::TrackUnpublished { .. }))
    );
    assert!(kinds.iter().any(|k| matches!(k,
        RoomEventKind::ParticipantLeft { reason, .. } if reason == "leave")));
    let before = net.received(BOB);
    net.run(300);
    assert_eq!(net.received(BOB), before, "nothing more is forwarded");
    // A new publisher's camera goes on the freed slot: no new section asked for.
    net.join(CAROL, "carol", everything());
    net.client(CAROL).publish(MediaKind::Video, 0xC0C0);
    net.senders.push((CAROL, MediaKind::Video, 0xC0C0, 0));
    net.negotiate(CAROL).expect("answered");
    assert!(
        net.run_until(3_000, |n| n.received(BOB) > before),
        "bob receives carol on the same slot"
    );
    assert_eq!(net.sessions[&BOB].receiving, (0, 1));
    // The last two leave: the room finishes and is gone.
    let now = net.now;
    net.rooms.end(BOB, "leave".into(), now);
    net.rooms.end(CAROL, "disconnected".into(), now);
    net.settle();
    assert!(matches!(
        net.room_kinds().last(),
        Some(RoomEventKind::RoomFinished)
    ));
    assert!(matches!(
        net.manage(ManageRequest::Describe),
        Err(SfuError::NotFound)
    ));
}

#[test]
fn muting_stops_forwarding_and_unmuting_resumes_it() {
    let mut net = Net::alice_to_bob();
    net.command(
        ALICE,
        SessionCommand::Mute {
            kind: TrackKind::Video,
            muted: true,
        },
    );
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::MuteChanged {
            kind: TrackKind::Video,
            muted: true,
            ..
        }
    )));
    net.run(100); // what was on the way
    let muted_at = net.received(BOB);
    net.run(500);
    assert_eq!(
        net.received(BOB),
        muted_at,
        "a muted track is not forwarded"
    );
    net.command(
        ALICE,
        SessionCommand::Mute {
            kind: TrackKind::Video,
            muted: false,
        },
    );
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::MuteChanged {
            kind: TrackKind::Video,
            muted: false,
            ..
        }
    )));
    assert!(
        net.run_until(3_000, |n| n.received(BOB) > muted_at),
        "forwarding resumes"
    );
}

#[test]
fn a_session_may_publish_only_what_it_is_permitted_and_losing_it_withdraws_the_track() {
    let mut net = Net::new();
    let listener = Permissions {
        subscribe: true,
        ..Permissions::default()
    };
    net.join(ALICE, "alice", listener);
    net.join(BOB, "bob", everything());
    net.publish_camera(ALICE);
    net.negotiate(ALICE).expect("answered");
    net.receive(BOB, MediaKind::Video);
    net.negotiate(BOB).expect("answered");
    net.run(1_000);
    // Refused when the track opens: an error for alice, nothing for bob.
    assert!(has(net.events(ALICE), |e| matches!(
        e,
        SessionEvent::Error(SfuError::InvalidArgument(_))
    )));
    assert!(!has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::TrackPublished(_)
    )));
    assert_eq!(net.received(BOB), 0);

    // Bob publishes with permission, then loses it: the track stops at once.
    net.publish_camera(BOB);
    net.receive(ALICE, MediaKind::Video);
    net.negotiate(BOB).expect("answered");
    net.negotiate(ALICE).expect("answered");
    assert!(
        net.run_until(3_000, |n| n.received(ALICE) > 0),
        "alice receives bob's camera"
    );
    net.command(BOB, SessionCommand::UpdatePermissions(listener));
    assert!(has(
        net.events(ALICE),
        |e| matches!(e, SessionEvent::TrackRemoved(t) if t.session.as_str() == "bob")
    ));
    assert!(net.room_kinds().iter().any(|k| matches!(
        k,
        RoomEventKind::TrackUnpublished {
            kind: TrackKind::Video,
            ..
        }
    )));
    net.run(100);
    let stopped_at = net.received(ALICE);
    net.run(500);
    assert_eq!(net.received(ALICE), stopped_at);
}

#[test]
fn losing_the_subscription_stops_every_slot_and_regaining_it_asks_for_the_tracks() {
    let mut net = Net::alice_to_bob();
    let publish_only = Permissions {
        subscribe: false,
        ..everything()
    };
    net.command(BOB, SessionCommand::UpdatePermissions(publish_only));
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::TrackRemoved(_)
    )));
    net.run(100);
    let stopped_at = net.received(BOB);
    net.run(500);
    assert_eq!(net.received(BOB), stopped_at);
    let seen = net.events(BOB).len();
    net.command(BOB, SessionCommand::UpdatePermissions(everything()));
    net.run(1_000);
    assert!(has(&net.events(BOB)[seen..], |e| matches!(
        e,
        SessionEvent::TrackPublished(_)
    )));
    assert!(net.received(BOB) > stopped_at);
}

#[test]
fn moderators_mute_ask_update_describe_remove_and_end() {
    let mut net = Net::alice_to_bob();
    let alice = UserId::new("user-alice");
    // Mute: the track stops, alice is told it was a moderator, bob sees the mute.
    let n = net.manage(ManageRequest::Moderate(Moderation::Mute {
        user: alice.clone(),
        kind: TrackKind::Video,
    }));
    assert!(matches!(n, Ok(Managed::Sessions(1))));
    assert!(has(net.events(ALICE), |e| matches!(
        e,
        SessionEvent::MutedByModerator {
            kind: TrackKind::Video
        }
    )));
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::MuteChanged { muted: true, .. }
    )));
    net.run(100);
    let muted_at = net.received(BOB);
    net.run(300);
    assert_eq!(net.received(BOB), muted_at);
    // Describe shows it muted.
    let Ok(Managed::Room(room)) = net.manage(ManageRequest::Describe) else {
        panic!("a room");
    };
    assert_eq!(room.call.as_str(), "c");
    assert_eq!(room.created_at_ms, 1_000);
    let names: Vec<&str> = room
        .participants
        .iter()
        .map(|p| p.session.as_str())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert_eq!(room.participants[0].joined_at_ms, 2_000);
    assert_eq!(room.participants[0].tracks.len(), 1);
    assert!(room.participants[0].tracks[0].muted);
    // Request unmute changes nothing but asks.
    net.manage(ManageRequest::Moderate(Moderation::RequestUnmute {
        user: alice.clone(),
        kind: TrackKind::Video,
    }))
    .expect("applied");
    assert!(has(net.events(ALICE), |e| matches!(
        e,
        SessionEvent::UnmuteRequested {
            kind: TrackKind::Video
        }
    )));
    // Update: new role and permissions.
    net.manage(ManageRequest::Moderate(Moderation::Update {
        user: UserId::new("user-bob"),
        role: "viewer".into(),
        permissions: everything(),
    }))
    .expect("applied");
    assert!(has(net.events(BOB), |e| matches!(e,
        SessionEvent::PermissionsChanged { role, .. } if role == "viewer")));
    // The others are told Bob's new role (their menus follow it); Bob is not.
    assert!(has(net.events(ALICE), |e| matches!(e,
        SessionEvent::ParticipantUpdated(p) if p.user.as_str() == "user-bob" && p.role == "viewer")));
    assert!(!has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::ParticipantUpdated(_)
    )));
    // An unknown user is not found.
    assert!(matches!(
        net.manage(ManageRequest::Moderate(Moderation::Mute {
            user: UserId::new("nobody"),
            kind: TrackKind::Audio,
        })),
        Err(SfuError::NotFound)
    ));
    // Remove (banned): announced, then the usual leave.
    net.manage(ManageRequest::Moderate(Moderation::Remove {
        user: alice,
        banned_until: Some(99),
    }))
    .expect("applied");
    assert_eq!(net.sessions[&ALICE].ended.as_deref(), Some("banned"));
    let kinds = net.room_kinds();
    let removed = kinds
        .iter()
        .position(|k| {
            matches!(
                k,
                RoomEventKind::ParticipantRemoved {
                    banned_until: Some(99),
                    ..
                }
            )
        })
        .expect("removal announced");
    let left = kinds
        .iter()
        .position(
            |k| matches!(k, RoomEventKind::ParticipantLeft { reason, .. } if reason == "banned"),
        )
        .expect("and left");
    assert!(removed < left);
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::ParticipantLeft(_)
    )));
    // End: everyone goes.
    net.join(CAROL, "carol", everything());
    assert!(matches!(
        net.manage(ManageRequest::Moderate(Moderation::End)),
        Ok(Managed::Sessions(2))
    ));
    assert_eq!(net.sessions[&BOB].ended.as_deref(), Some("room ended"));
    assert_eq!(net.sessions[&CAROL].ended.as_deref(), Some("room ended"));
    assert!(matches!(
        net.room_kinds().last(),
        Some(RoomEventKind::RoomFinished)
    ));
}

#[test]
fn an_ice_restart_routes_the_new_ufrag_and_media_follows_the_new_path() {
    let mut net = Net::alice_to_bob();
    assert_eq!(net.sessions[&BOB].routes.len(), 1);
    net.client(BOB).move_and_restart_ice("10.9.0.22:6001");
    net.negotiate(BOB).expect("answered");
    let routes = &net.sessions[&BOB].routes;
    assert_eq!(routes.len(), 2, "the restart's new ufrag is routed");
    assert_ne!(routes[0], routes[1]);
    let before = net.received(BOB);
    net.run(1_000);
    assert!(net.client(BOB).connected);
    assert!(
        net.received(BOB) > before,
        "media reaches bob at his new address"
    );
}

#[test]
fn candidates_before_the_first_offer_wait_and_are_bounded() {
    let mut net = Net::new();
    net.join(ALICE, "alice", everything());
    let candidate = |i: u16| {
        SessionCommand::Candidate(crate::sfu::Candidate {
            candidate: format!(
                "candidate:{i} 1 udp 2130706431 10.9.0.1 {} typ host",
                7000 + i
            ),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        })
    };
    for i in 0..64 {
        net.command(ALICE, candidate(i));
    }
    assert!(!has(net.events(ALICE), |e| matches!(
        e,
        SessionEvent::Error(_)
    )));
    net.command(ALICE, candidate(64));
    assert!(has(net.events(ALICE), |e| matches!(
        e,
        SessionEvent::Error(SfuError::LimitReached(_))
    )));
}

#[test]
fn metrics_follow_sessions_tracks_and_packets() {
    let mut net = Net::alice_to_bob();
    let sfu = &net.metrics.sfu;
    let tenant = crate::sfu::tenant_label(&TenantId::new("t"));
    let video = crate::metrics::KindLabels {
        client_id: "t".into(),
        kind: "video",
    };
    let muted = crate::metrics::ReasonLabels {
        client_id: "t".into(),
        reason: "muted",
    };
    assert_eq!(sfu.sessions.get_or_create(&tenant).get(), 2);
    assert_eq!(sfu.tracks_in.get_or_create(&video).get(), 1);
    assert_eq!(sfu.tracks_out.get_or_create(&video).get(), 1);
    let forwarded = sfu.forwarded_packets.get_or_create(&video).get();
    assert!(forwarded > 0);
    assert_eq!(
        net.forwarded.load(std::sync::atomic::Ordering::Relaxed),
        forwarded,
        "the worker's own count agrees"
    );
    assert!(sfu.forwarded_bytes.get_or_create(&video).get() > 0);
    assert_eq!(sfu.dropped_packets.get_or_create(&muted).get(), 0);
    net.command(
        ALICE,
        SessionCommand::Mute {
            kind: TrackKind::Video,
            muted: true,
        },
    );
    net.run(500);
    let sfu = &net.metrics.sfu;
    assert!(sfu.dropped_packets.get_or_create(&muted).get() > 0);
    let now = net.now;
    net.rooms.end(ALICE, "leave".into(), now);
    net.rooms.end(BOB, "leave".into(), now);
    net.settle();
    let sfu = &net.metrics.sfu;
    assert_eq!(sfu.sessions.get_or_create(&tenant).get(), 0);
    assert_eq!(sfu.tracks_in.get_or_create(&video).get(), 0);
    assert_eq!(sfu.tracks_out.get_or_create(&video).get(), 0);
}

/// A simulcast camera's layers, lowest first: (rid, SSRC).
const LAYERS: [(&str, u32); 3] = [("q", 0xA101), ("h", 0xA102), ("f", 0xA103)];
/// Their packets' payload sizes: at a packet per 30 ms, with the allocator's per-packet
/// overhead, about 43, 123 and 309 kbit/s.
const LAYER_BYTES: [usize; 3] = [100, 400, 1100];

impl Net {
    /// Alice publishing a simulcast camera ([`LAYERS`]) that bob (a client made by `bob`)
    /// receives, both connected.
    fn simulcast_alice_to_bob(bob: fn(&str, Instant) -> Client) -> Self {
        let mut net = Net::new();
        net.join(ALICE, "alice", everything());
        net.clients.insert(
            ALICE,
            Client::simulcast(&format!("10.9.0.{ALICE}:6000"), net.now),
        );
        net.join(BOB, "bob", everything());
        net.clients
            .insert(BOB, bob(&format!("10.9.0.{BOB}:6000"), net.now));
        net.client(ALICE).publish_simulcast(&LAYERS);
        net.negotiate(ALICE).expect("alice's offer is answered");
        net.receive(BOB, MediaKind::Video);
        net.negotiate(BOB).expect("bob's offer is answered");
        assert!(net.run_until(2_000, |n| n.clients[&ALICE].connected));
        net
    }

    /// `rounds` packets (30 ms apart) of each of alice's `layers` (indices into [`LAYERS`]),
    /// MID and RID stamped or not; her sequence numbers continue per layer in `seq`.
    fn send_layers(&mut self, layers: &[usize], rounds: u16, stamp: bool, seq: &mut [u16; 3]) {
        for _ in 0..rounds {
            let now = self.now;
            for &i in layers {
                let (rid, ssrc) = LAYERS[i];
                self.client(ALICE)
                    .send_layer(rid, ssrc, seq[i], LAYER_BYTES[i], stamp, now);
                seq[i] = seq[i].wrapping_add(1);
            }
            self.run(30);
        }
    }
}

/// The mid of bob's video section (the one carrying alice's camera).
fn bobs_video_mid(net: &Net) -> String {
    net.rooms.members[&BOB]
        .slots
        .iter()
        .find(|s| !s.audio && s.down.is_some())
        .map(|s| s.mid.clone())
        .expect("bob's video section")
}

/// The source SSRC (alice's layer) bob's video down-track forwards.
fn bobs_layer(net: &Net) -> Option<u32> {
    net.rooms.members[&BOB]
        .slots
        .iter()
        .filter_map(|s| s.down.as_ref())
        .find(|d| d.kind() == MediaKind::Video)
        .map(|d| d.source_ssrc())
}

/// Whether bob's packets since `from` are one stream: one SSRC, and the sequence numbers
/// received (retransmissions and padding included) leave no gap. Returns how many distinct.
fn continuous(net: &Net, from: usize) -> Result<usize, String> {
    let received = &net.clients[&BOB].received[from..];
    let Some(first) = received.first() else {
        return Ok(0);
    };
    if let Some(other) = received.iter().find(|r| r.ssrc != first.ssrc) {
        return Err(format!("{first:?} and {other:?}"));
    }
    let mut offsets: Vec<i32> = received
        .iter()
        .map(|r| i32::from(r.sequence.wrapping_sub(first.sequence) as i16))
        .collect();
    offsets.sort_unstable();
    offsets.dedup();
    for pair in offsets.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(format!("a gap after {} (from {first:?})", pair[0]));
        }
    }
    Ok(offsets.len())
}

/// A publisher sending three simulcast layers: bob receives one continuous stream of the best
/// layer (not three, not mixed), moves to a lower layer within a second when the best stops,
/// and back up at its keyframe when it returns, all on his one SSRC without a sequence gap;
/// alice's renegotiation (bob publishes) leaves her layers bound though they no longer carry
/// MID and RID.
#[test]
fn a_subscriber_receives_one_continuous_layer_of_a_simulcast_camera() {
    let mut net = Net::simulcast_alice_to_bob(Client::new);
    let mut seq = [0u16; 3];
    // The layers bind by their MID and RID, then stop carrying them.
    net.send_layers(&[0, 1, 2], 10, true, &mut seq);
    net.send_layers(&[0, 1, 2], 50, false, &mut seq);
    let first = net.received(BOB);
    assert!(first > 0, "bob receives alice's camera");
    assert!(
        first <= 60,
        "one layer, not all three: {first} packets for 60 rounds"
    );
    continuous(&net, 0).unwrap();
    assert_eq!(bobs_layer(&net), Some(LAYERS[2].1), "the best layer");

    // Bob publishes: alice renegotiates (a section to receive bob); her layers keep flowing.
    net.publish_camera(BOB);
    net.negotiate(BOB).expect("bob's second offer is answered");
    net.send_layers(&[0, 1, 2], 40, false, &mut seq);
    let before_stop = net.received(BOB);
    assert!(
        before_stop >= first + 30,
        "alice's layers still reach bob after her renegotiation: {first} -> {before_stop}"
    );
    let top = net.clients[&BOB].received.last().unwrap().ssrc;
    assert_eq!(bobs_layer(&net), Some(LAYERS[2].1));

    // The best layer stops: bob is moved to the next within about a second.
    net.send_layers(&[0, 1], 100, false, &mut seq);
    let stopped = net.received(BOB) - before_stop;
    assert!(
        stopped >= 50,
        "bob gets the middle layer after the top one stopped: {stopped} packets in 3 s"
    );
    assert_eq!(bobs_layer(&net), Some(LAYERS[1].1), "moved down");
    let plis_before_return = net.clients[&ALICE].plis.len();
    // It returns: bob goes back up at its keyframe.
    net.send_layers(&[0, 1, 2], 100, false, &mut seq);
    assert_eq!(bobs_layer(&net), Some(LAYERS[2].1), "back up");
    // Keyframes are asked of the layer bob waits for, and of no layer nobody takes.
    let plis = &net.clients[&ALICE].plis;
    assert!(
        plis[plis_before_return..].contains(&LAYERS[2].1),
        "the returning top layer's keyframe asked for: {plis:x?}"
    );
    assert!(!plis.contains(&LAYERS[0].1), "{plis:x?}");
    let n = continuous(&net, 0).unwrap();
    assert!(net.clients[&BOB].received.iter().all(|r| r.ssrc == top));
    // Every layer's keyframes went out in turn; the three layers' packets (300 x 3) were not
    // all forwarded.
    assert!(n < 400, "one layer at a time: {n}");
}

/// Adaptive stream: bob says how he shows alice's simulcast camera. A small view gets the
/// lowest layer whose picture covers it (sizes read from the layers' keyframes), a larger one a
/// higher layer at its next keyframe with no hold (a view says nothing about the link), a
/// hidden track is paused at once with the reason and resumes when shown again, all on one
/// continuous stream; a view naming another track than the section's is ignored.
#[test]
fn a_subscriber_view_caps_the_layer_and_hiding_pauses_the_track() {
    use crate::sfu::TrackView;
    use crate::sfu::allocation::PauseReason;
    let mut net = Net::simulcast_alice_to_bob(Client::new);
    let mut seq = [0u16; 3];
    net.send_layers(&[0, 1, 2], 10, true, &mut seq);
    net.send_layers(&[0, 1, 2], 50, false, &mut seq);
    assert_eq!(
        bobs_layer(&net),
        Some(LAYERS[2].1),
        "no view: the best layer"
    );
    let mid = bobs_video_mid(&net);
    let view = |track_id: &str, visible: bool, size: Option<(u32, u32)>| {
        SessionCommand::TrackViews(vec![TrackView {
            mid: mid.clone(),
            track_id: track_id.to_owned(),
            visible,
            size,
        }])
    };
    // A thumbnail (320 x 180 device pixels): the quarter layer covers it. Within a keyframe
    // interval of the publisher (30 packets here).
    net.command(BOB, view("", true, Some((320, 180))));
    net.send_layers(&[0, 1, 2], 40, false, &mut seq);
    assert_eq!(bobs_layer(&net), Some(LAYERS[0].1), "the quarter layer");
    // A larger tile, 600 x 400: the half layer is as wide (640 x 360), right away.
    net.command(BOB, view("", true, Some((600, 400))));
    net.send_layers(&[0, 1, 2], 40, false, &mut seq);
    assert_eq!(bobs_layer(&net), Some(LAYERS[1].1), "the half layer");
    // A view of a track the section does not carry changes nothing.
    net.command(BOB, view("someone-else", false, None));
    let paused = |net: &Net, reason| {
        has(
            net.events(BOB),
            |e| matches!(e, SessionEvent::TrackPaused { reason: r, .. } if *r == reason),
        )
    };
    assert!(!paused(&net, Some(PauseReason::Hidden)));
    // Hidden: paused at once, bob is told why, nothing more reaches him.
    net.command(BOB, view("", false, None));
    assert!(paused(&net, Some(PauseReason::Hidden)));
    let hidden = crate::metrics::AdaptiveLabels {
        client_id: "t".into(),
        what: "hidden",
    };
    assert_eq!(
        net.rooms
            .metrics
            .sfu
            .track_pauses
            .get_or_create(&hidden)
            .get(),
        1,
        "counted"
    );
    net.send_layers(&[0, 1, 2], 5, false, &mut seq);
    let frozen = net.received(BOB);
    net.send_layers(&[0, 1, 2], 20, false, &mut seq);
    assert_eq!(net.received(BOB), frozen, "nothing while hidden");
    // Shown again at any size: resumed, at the best layer.
    net.command(BOB, view("", true, None));
    assert!(paused(&net, None), "resumed");
    net.send_layers(&[0, 1, 2], 60, false, &mut seq);
    assert!(net.received(BOB) > frozen + 20, "flowing again");
    assert_eq!(bobs_layer(&net), Some(LAYERS[2].1), "back at the top");
    continuous(&net, 0).unwrap();
    // Too many views in one message: refused.
    let many = SessionCommand::TrackViews(vec![
        TrackView {
            mid: mid.clone(),
            track_id: String::new(),
            visible: true,
            size: None,
        };
        crate::sfu::MAX_TRACK_VIEWS + 1
    ]);
    net.command(BOB, many);
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::Error(SfuError::InvalidArgument(_))
    )));
}

/// A view that comes before rtcd has read the layers' sizes (a tile drawn before the
/// publisher's first keyframes reached rtcd) takes effect once they are read, without another
/// view (seen with the load tool: subscribers stayed on the top layer until their view changed).
#[test]
fn a_view_sent_before_the_layer_sizes_are_known_applies_once_they_are_read() {
    use crate::sfu::TrackView;
    // No estimates (a client without transport-wide feedback; or adaptive video off): only
    // views decide.
    let mut net = Net::simulcast_alice_to_bob(Client::without_congestion_feedback);
    // From sequence number 1: the test client's first keyframes come at 30.
    let mut seq = [1u16; 3];
    net.send_layers(&[0, 1, 2], 10, true, &mut seq);
    let mid = bobs_video_mid(&net);
    net.command(
        BOB,
        SessionCommand::TrackViews(vec![TrackView {
            mid,
            track_id: String::new(),
            visible: true,
            size: Some((320, 180)),
        }]),
    );
    net.send_layers(&[0, 1, 2], 60, false, &mut seq);
    assert_eq!(bobs_layer(&net), Some(LAYERS[0].1), "the quarter layer");
    continuous(&net, 0).unwrap();
}

/// Bob's bandwidth estimate decides his layer of alice's simulcast camera: lowered at once
/// when it drops, paused (and bob told why) when even the lowest layer does not fit, resumed
/// and raised only after the hold, on one continuous stream throughout.
#[test]
fn the_subscriber_estimate_lowers_pauses_and_resumes_a_simulcast_camera() {
    use crate::sfu::allocation::{PauseReason, UPGRADE_HOLD};
    // Bob's estimates are the test's (his client sends no transport-wide feedback).
    let mut net = Net::simulcast_alice_to_bob(Client::without_congestion_feedback);
    let mut seq = [0u16; 3];
    net.send_layers(&[0, 1, 2], 10, true, &mut seq);
    net.send_layers(&[0, 1, 2], 50, false, &mut seq);
    assert_eq!(
        bobs_layer(&net),
        Some(LAYERS[2].1),
        "no estimate: the best layer"
    );

    // 200 kbit/s: the lowest (43k) and the middle (123k) fit, the top (309k) does not.
    let now = net.now;
    net.rooms.on_estimate(BOB, 200_000, now);
    net.send_layers(&[0, 1, 2], 60, false, &mut seq);
    assert_eq!(bobs_layer(&net), Some(LAYERS[1].1), "lowered at once");
    // Dynacast: bob, the only subscriber, needs the middle layer alone; alice is told so once
    // the others have gone unneeded for DYNACAST_HOLD.
    let wanted = |net: &Net| -> Vec<Vec<String>> {
        net.events(ALICE)
            .iter()
            .filter_map(|e| match e {
                SessionEvent::LayersWanted { rids, .. } => Some(rids.clone()),
                _ => None,
            })
            .collect()
    };
    net.send_layers(&[0, 1, 2], 70, false, &mut seq);
    assert_eq!(
        wanted(&net).last(),
        Some(&vec!["h".to_owned()]),
        "{:?}",
        wanted(&net)
    );

    // The estimate is what keeps bob below the top layer: his link is probed with RTX copies
    // of his video (a few seconds after his first estimate), which he drops as duplicates.
    // (Bob's client resolves RTX into the stream it repairs: a copy arrives as a duplicate.)
    let copies = |net: &Net| {
        let received = &net.clients[&BOB].received;
        let distinct: std::collections::HashSet<(u32, u16)> =
            received.iter().map(|r| (r.ssrc, r.sequence)).collect();
        received.len() - distinct.len()
    };
    let before = copies(&net);
    for _ in 0..20 {
        let now = net.now;
        net.rooms.on_estimate(BOB, 200_000, now);
        net.send_layers(&[0, 1, 2], 5, false, &mut seq);
    }
    assert!(
        copies(&net) > before + 5,
        "probed: {} RTX copies",
        copies(&net) - before
    );

    // 20 kbit/s: not even the lowest layer, nor in twice that (a deep shortfall: no grace).
    // Bob is told, and gets nothing more.
    let now = net.now;
    net.rooms.on_estimate(BOB, 20_000, now);
    net.settle();
    let paused_at = net.now;
    assert!(has(net.events(BOB), |e| matches!(
        e,
        SessionEvent::TrackPaused {
            reason: Some(PauseReason::Bandwidth),
            ..
        }
    )));
    net.send_layers(&[0, 1, 2], 5, false, &mut seq);
    let frozen = net.received(BOB);
    net.send_layers(&[0, 1, 2], 20, false, &mut seq);
    assert_eq!(net.received(BOB), frozen, "nothing while paused");

    // The link is back: nothing changes before the hold is over, then the top layer again
    // (at the next decision: estimates come several times a second, decisions at most every
    // ALLOCATE_INTERVAL).
    let mut resumed_after = None;
    while net.now < paused_at + UPGRADE_HOLD + std::time::Duration::from_secs(1) {
        let now = net.now;
        net.rooms.on_estimate(BOB, 2_000_000, now);
        net.settle();
        let resumed = has(net.events(BOB), |e| {
            matches!(e, SessionEvent::TrackPaused { reason: None, .. })
        });
        if resumed && resumed_after.is_none() {
            resumed_after = Some(now - paused_at);
        }
        net.send_layers(&[0, 1, 2], 5, false, &mut seq);
    }
    let resumed_after = resumed_after.expect("resumed");
    assert!(
        resumed_after >= UPGRADE_HOLD
            && resumed_after
                <= UPGRADE_HOLD
                    + super::allocating::ALLOCATE_INTERVAL
                    + std::time::Duration::from_millis(200),
        "resumed {resumed_after:?} after the pause"
    );
    net.send_layers(&[0, 1, 2], 60, false, &mut seq);
    assert!(net.received(BOB) > frozen + 20, "flowing again");
    assert_eq!(bobs_layer(&net), Some(LAYERS[2].1), "back at the top");
    continuous(&net, 0).unwrap();
    // Paused, bob needed no layer (alice was told to stop them all); resumed at the top, the
    // top layer was asked for again at once.
    let told = wanted(&net);
    assert!(told.contains(&Vec::new()), "{told:?}");
    assert_eq!(told.last(), Some(&vec!["f".to_owned()]), "{told:?}");
}

/// A subscriber whose video is all paused has nothing to probe with (probes are copies of its
/// video), and its estimate cannot grow past what its audio proves: without more, the video
/// stays paused for good, whatever the link carries again (seen in Firefox calls, issue 28:
/// a camera never received for 30 s). So the paused video itself is the probe: resumed for a
/// trial, and paused again when the estimate still does not carry it.
#[test]
fn a_subscriber_with_all_video_paused_tries_it_again() {
    let mut net = Net::simulcast_alice_to_bob(Client::without_congestion_feedback);
    let mut seq = [0u16; 3];
    net.send_layers(&[0, 1, 2], 10, true, &mut seq);
    net.send_layers(&[0, 1, 2], 50, false, &mut seq);
    let paused = |net: &Net, reason: Option<PauseReason>| {
        net.events(BOB)
            .iter()
            .filter(|e| matches!(e, SessionEvent::TrackPaused { reason: r, .. } if *r == reason))
            .count()
    };
    use crate::sfu::allocation::PauseReason;
    // 30 kbit/s, measured again and again: not even the lowest layer fits.
    let start = net.now;
    let mut resumed_at = None;
    while net.now < start + std::time::Duration::from_secs(15) {
        let now = net.now;
        net.rooms.on_estimate(BOB, 30_000, now);
        net.settle();
        if resumed_at.is_none() && paused(&net, None) > 0 {
            resumed_at = Some(now - start);
        }
        net.send_layers(&[0, 1, 2], 5, false, &mut seq);
    }
    assert!(
        paused(&net, Some(PauseReason::Bandwidth)) >= 2,
        "paused, and again after the trial"
    );
    let resumed_at = resumed_at.expect("the paused camera was tried again");
    assert!(
        resumed_at <= std::time::Duration::from_secs(8),
        "tried again {resumed_at:?} after the pause"
    );
}

/// A subscriber's keyframe request inside the PLI interval: answered by the keyframe already
/// asked for while that is on its way, deferred to the interval's end (not dropped) when it
/// came before the request (seen: Bob's Firefox, its pipeline rebuilt by a renegotiation, asked
/// after the keyframe Carol's join had brought; dropped, his picture stood still 3-5 s).
#[test]
fn a_keyframe_request_after_the_last_keyframe_came_is_deferred_not_dropped() {
    let mut net = Net::alice_to_bob();
    // Alice's client sends a keyframe every 30 packets, one packet every 30 ms, and answers
    // no PLI: where the next keyframe falls is known.
    let next_seq = |net: &Net| {
        net.senders
            .iter()
            .find(|(k, kind, _, _)| *k == ALICE && *kind == MediaKind::Video)
            .map(|s| s.3)
            .expect("alice sends video")
    };
    let run_to = |net: &mut Net, residue: u16| {
        while next_seq(net) % 30 != residue {
            net.run(5);
        }
    };
    let plis = |net: &Net| net.clients[&ALICE].plis.len();
    let bobs = net.client(BOB).received.last().expect("bob receives").ssrc;
    net.run(600);

    // Right after a keyframe: bob's request goes out at once; his next one, before any
    // keyframe came, waits for the one on its way (none comes for 800 ms: nothing more).
    run_to(&mut net, 2);
    let before = plis(&net);
    let now = net.now;
    net.client(BOB).send_pli(bobs, now);
    net.run(20);
    assert_eq!(plis(&net), before + 1, "the first request is sent");
    let now = net.now;
    net.client(BOB).send_pli(bobs, now);
    net.run(700);
    assert_eq!(
        plis(&net),
        before + 1,
        "the keyframe on its way answers the second"
    );

    // 300 ms before a keyframe: bob asks (sent), the keyframe comes, he asks again 100 ms
    // later, inside the interval: sent at its end.
    run_to(&mut net, 20);
    let before = plis(&net);
    let first = net.now;
    net.client(BOB).send_pli(bobs, first);
    net.run(20);
    assert_eq!(plis(&net), before + 1);
    run_to(&mut net, 1);
    net.run(100);
    let now = net.now;
    let interval = config().keyframe_interval;
    assert!(now - first < interval);
    net.client(BOB).send_pli(bobs, now);
    net.run(20);
    assert_eq!(plis(&net), before + 1, "not before the interval's end");
    let sent = net.run_until(interval.as_millis() as u64, |n| plis(n) == before + 2);
    assert!(
        sent,
        "the request after the keyframe is sent at the interval's end"
    );
    let after = net.now - first;
    assert!(
        after >= interval && after < interval + Duration::from_millis(100),
        "{after:?}"
    );
}
