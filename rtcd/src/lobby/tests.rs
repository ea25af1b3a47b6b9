use super::*;
use crate::metrics::{Metrics, OutcomeLabels};

fn t() -> TenantId {
    TenantId::new("tenant")
}

fn c() -> CallId {
    CallId::new("room")
}

fn who(session: &str, user: &str, role: &str) -> Entrant {
    Entrant {
        session: SessionId::new(session),
        user: UserId::new(user),
        display_name: user.to_uppercase(),
        role: role.into(),
    }
}

fn policy(wait_for_host: bool, lobby: bool, guests_allowed: bool) -> RoomPolicy {
    RoomPolicy {
        wait_for_host: Some(wait_for_host),
        lobby: Some(lobby),
        guests_allowed: Some(guests_allowed),
        wait_timeout_seconds: None,
        opened_by: None,
        record: None,
        e2ee: None,
    }
}

fn ticket(gate: Result<Gate, LobbyError>) -> Ticket {
    match gate {
        Ok(Gate::Wait(t)) => t,
        other => panic!("expected to wait, got {other:?}"),
    }
}

fn enters(gate: Result<Gate, LobbyError>) {
    assert!(
        matches!(gate, Ok(Gate::Enter)),
        "expected to enter, got {gate:?}"
    );
}

fn decided_now(t: &mut Ticket) -> Option<Decision> {
    t.decision.try_recv().ok()
}

#[test]
fn no_policy_lets_everyone_in() {
    let lobby = Lobby::new();
    let p = RoomPolicy::default();
    enters(lobby.enter(&t(), &c(), who("s1", "g", GUEST_ROLE), p, p));
    enters(lobby.enter(&t(), &c(), who("s2", "m", "member"), p, p));
}

#[test]
fn wait_for_host_admits_everyone_when_a_moderator_arrives() {
    let lobby = Lobby::new();
    let p = policy(true, false, true);
    let none = RoomPolicy::default();
    let mut a = ticket(lobby.enter(&t(), &c(), who("s1", "alice", "member"), p, none));
    let mut b = ticket(lobby.enter(&t(), &c(), who("s2", "bob", GUEST_ROLE), p, none));
    assert_eq!(a.reason, WaitReason::Host);
    assert_eq!(lobby.waiting(&t(), &c()).len(), 2);
    let host = who("s3", "mod", HOST_ROLE);
    enters(lobby.enter(&t(), &c(), host.clone(), p, none));
    assert_eq!(
        decided_now(&mut a),
        None,
        "entering is not being present yet"
    );
    let (tx, _rx) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let _present = lobby.present(&t(), &c(), &host, tx);
    assert_eq!(decided_now(&mut a), Some(Decision::Admitted));
    assert_eq!(decided_now(&mut b), Some(Decision::Admitted));
    assert!(lobby.waiting(&t(), &c()).is_empty());
    // With a host present, the next one goes straight in.
    enters(lobby.enter(&t(), &c(), who("s4", "carol", "member"), p, none));
}

#[test]
fn when_the_only_moderator_leaves_newcomers_wait_again() {
    let lobby = Lobby::new();
    let p = policy(true, false, true);
    let host = who("s1", "mod", HOST_ROLE);
    let (tx, _rx) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let present = lobby.present(&t(), &c(), &host, tx);
    enters(lobby.enter(&t(), &c(), who("s2", "a", "member"), p, p));
    drop(present);
    let w = ticket(lobby.enter(&t(), &c(), who("s3", "b", "member"), p, p));
    assert_eq!(w.reason, WaitReason::Host);
}

#[test]
fn lobby_requests_reach_moderators_and_admitting_twice_is_harmless() {
    let lobby = Lobby::new();
    let p = policy(false, true, true);
    let host = who("h1", "mod1", HOST_ROLE);
    let (tx1, mut rx1) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let _h1 = lobby.present(&t(), &c(), &host, tx1);
    let knocker = who("k1", "kate", "member");
    let mut k = ticket(lobby.enter(&t(), &c(), knocker.clone(), p, p));
    assert_eq!(k.reason, WaitReason::Lobby);
    assert_eq!(rx1.try_recv().unwrap(), Notice::Request(knocker.clone()));
    // A second moderator joining learns of the knocker already waiting.
    let (tx2, mut rx2) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let _h2 = lobby.present(&t(), &c(), &who("h2", "mod2", HOST_ROLE), tx2);
    assert_eq!(rx2.try_recv().unwrap(), Notice::Request(knocker.clone()));
    // Both admit at once: one admits the session, the other finds it done.
    assert_eq!(lobby.admit(&t(), &c(), &knocker.user), 1);
    assert_eq!(lobby.admit(&t(), &c(), &knocker.user), 0);
    assert_eq!(decided_now(&mut k), Some(Decision::Admitted));
    let left = Notice::Left(knocker.clone(), Outcome::Admitted);
    assert_eq!(rx1.try_recv().unwrap(), left);
    assert_eq!(rx2.try_recv().unwrap(), left);
    assert!(rx1.try_recv().is_err(), "one lobby_left, not two");
    // Admitted once: re-entering (say after a proxy restart) does not knock again.
    enters(lobby.enter(&t(), &c(), who("k2", "kate", "member"), p, p));
}

#[test]
fn moderators_are_never_held_and_guests_can_be_refused() {
    let lobby = Lobby::new();
    let p = policy(true, true, false);
    enters(lobby.enter(&t(), &c(), who("h", "mod", HOST_ROLE), p, p));
    assert_eq!(
        lobby
            .enter(&t(), &c(), who("g", "guest", GUEST_ROLE), p, p)
            .unwrap_err(),
        LobbyError::GuestsNotAllowed
    );
    // The stored policy overrides the Join's.
    let stored = RoomPolicy {
        guests_allowed: Some(true),
        lobby: Some(false),
        wait_for_host: Some(false),
        ..RoomPolicy::default()
    };
    enters(lobby.enter(&t(), &c(), who("g", "guest", GUEST_ROLE), p, stored));
}

#[test]
fn deny_closes_the_knocker_and_a_knocker_leaving_tells_the_moderators() {
    let lobby = Lobby::new();
    let p = policy(false, true, true);
    let (tx, mut rx) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let _h = lobby.present(&t(), &c(), &who("h", "mod", HOST_ROLE), tx);
    let a = who("a1", "ann", "member");
    let mut ta = ticket(lobby.enter(&t(), &c(), a.clone(), p, p));
    assert_eq!(lobby.deny(&t(), &c(), &a.user), 1);
    assert_eq!(lobby.deny(&t(), &c(), &a.user), 0);
    assert_eq!(decided_now(&mut ta), Some(Decision::Denied));
    assert_eq!(Decision::Denied.close_reason(), Some("lobby denied"));
    let b = who("b1", "ben", "member");
    let tb = ticket(lobby.enter(&t(), &c(), b.clone(), p, p));
    drop(tb);
    let notices: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        notices,
        vec![
            Notice::Request(a.clone()),
            Notice::Left(a, Outcome::Denied),
            Notice::Request(b.clone()),
            Notice::Left(b, Outcome::Left),
        ]
    );
    assert!(lobby.waiting(&t(), &c()).is_empty());
}

#[test]
fn a_timeout_racing_a_decision_keeps_the_decision() {
    let lobby = Lobby::new();
    let p = policy(false, true, true);
    let a = who("a1", "ann", "member");
    let ta = ticket(lobby.enter(&t(), &c(), a.clone(), p, p));
    lobby.admit(&t(), &c(), &a.user);
    assert_eq!(ta.time_out(), Some(Decision::Admitted));
    let tb = ticket(lobby.enter(&t(), &c(), who("b1", "ben", "member"), p, p));
    assert_eq!(tb.time_out(), None);
    assert!(lobby.waiting(&t(), &c()).is_empty());
}

#[test]
fn policy_changes_apply_to_those_waiting() {
    let lobby = Lobby::new();
    let p = policy(false, true, true);
    let none = RoomPolicy::default();
    let mut a = ticket(lobby.enter(&t(), &c(), who("a", "ann", "member"), p, none));
    let mut g = ticket(lobby.enter(&t(), &c(), who("g", "gus", GUEST_ROLE), p, none));
    lobby.policy_changed(
        &t(),
        &c(),
        RoomPolicy {
            guests_allowed: Some(false),
            ..RoomPolicy::default()
        },
    );
    assert_eq!(decided_now(&mut g), Some(Decision::Refused));
    assert_eq!(decided_now(&mut a), None);
    lobby.policy_changed(
        &t(),
        &c(),
        RoomPolicy {
            lobby: Some(false),
            ..RoomPolicy::default()
        },
    );
    assert_eq!(decided_now(&mut a), Some(Decision::Admitted));
}

#[test]
fn promotion_makes_a_host_and_demotion_unmakes_one() {
    let lobby = Lobby::new();
    let p = policy(true, false, true);
    let (tx, _rx) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    let m = who("m", "mia", "member");
    let _pm = lobby.present(&t(), &c(), &m, tx);
    let mut w = ticket(lobby.enter(&t(), &c(), who("w", "wes", "member"), p, p));
    lobby.set_role(&t(), &c(), &m.user, HOST_ROLE);
    assert_eq!(decided_now(&mut w), Some(Decision::Admitted));
    lobby.set_role(&t(), &c(), &m.user, "member");
    let w2 = ticket(lobby.enter(&t(), &c(), who("w2", "wil", "member"), p, p));
    assert_eq!(w2.reason, WaitReason::Host);
}

#[test]
fn timeouts_are_bounded() {
    let bad = RoomPolicy {
        wait_timeout_seconds: Some(0),
        ..RoomPolicy::default()
    };
    assert!(bad.validate().is_err());
    assert_eq!(
        Policy::resolve(RoomPolicy::default()).wait_timeout,
        Duration::from_secs(600)
    );
}

#[test]
fn metrics_count_who_waits_and_how_waits_end() {
    let metrics = Metrics::new();
    let lobby = Lobby::with_metrics(metrics.clone());
    let p = policy(false, true, true);
    let ended = |outcome: &'static str| {
        metrics
            .lobby_ended
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    };
    let a = ticket(lobby.enter(&t(), &c(), who("a", "ann", "member"), p, p));
    let b = ticket(lobby.enter(&t(), &c(), who("b", "ben", "member"), p, p));
    let _c = ticket(lobby.enter(&t(), &c(), who("c", "cy", "member"), p, p));
    assert_eq!(metrics.lobby_waiting.get(), 3);
    lobby.admit(&t(), &c(), &UserId::new("ann"));
    drop(b);
    lobby.deny(&t(), &c(), &UserId::new("cy"));
    assert_eq!(metrics.lobby_waiting.get(), 0);
    assert_eq!(
        (ended("admitted"), ended("left"), ended("denied")),
        (1, 1, 1)
    );
    drop(a);
    assert_eq!(ended("left"), 1, "a decided wait is not counted again");
}

#[test]
fn a_full_lobby_refuses_and_a_shutdown_ends_every_wait() {
    let lobby = Lobby::new();
    let p = policy(false, true, true);
    let mut tickets = Vec::new();
    for i in 0..MAX_WAITING_PER_ROOM {
        let name = format!("u{i}");
        tickets.push(ticket(lobby.enter(
            &t(),
            &c(),
            who(&name, &name, "member"),
            p,
            p,
        )));
    }
    assert_eq!(
        lobby
            .enter(&t(), &c(), who("late", "late", "member"), p, p)
            .unwrap_err(),
        LobbyError::Full
    );
    // Another room is not affected, and moderators still enter the full one.
    let other = CallId::new("other");
    let mut elsewhere = ticket(lobby.enter(&t(), &other, who("o", "o", "member"), p, p));
    enters(lobby.enter(&t(), &c(), who("m", "mod", HOST_ROLE), p, p));
    lobby.close_all();
    assert_eq!(decided_now(&mut elsewhere), Some(Decision::Shutdown));
    assert_eq!(Decision::Shutdown.close_reason(), Some("shutdown"));
    assert!(
        tickets
            .iter_mut()
            .all(|t| decided_now(t) == Some(Decision::Shutdown))
    );
    assert!(lobby.waiting(&t(), &c()).is_empty());
}

/// Issue 29 #12: with `opened_by = member`, a signed-in member opens the room (never waits
/// for a host, and lets in the guests waiting for one), while the lobby stays the
/// moderators'; with the default, a member waits like a guest.
#[test]
fn a_member_opens_the_room_when_the_policy_says_so() {
    let (tx, mut notices) = rtcd_kit::queue::channel(NOTICE_CAPACITY);
    // Default: moderators open rooms; a member waits, and their presence opens nothing.
    let lobby = Lobby::new();
    let p = policy(true, false, true);
    let mut guest = ticket(lobby.enter(&t(), &c(), who("g1", "gus", GUEST_ROLE), p, p));
    let mut member = ticket(lobby.enter(&t(), &c(), who("m1", "mia", "member"), p, p));
    assert_eq!(member.reason, WaitReason::Host);
    let _other = lobby.present(&t(), &c(), &who("m0", "max", "member"), tx.clone());
    assert_eq!(decided_now(&mut guest), None);
    assert_eq!(decided_now(&mut member), None);

    // opened_by = member: the member enters at once, and their presence admits the guest.
    let lobby = Lobby::new();
    let p = RoomPolicy {
        opened_by: Some(Opener::Member),
        ..policy(true, false, true)
    };
    let mut guest = ticket(lobby.enter(&t(), &c(), who("g1", "gus", GUEST_ROLE), p, p));
    assert_eq!(guest.reason, WaitReason::Host);
    let mia = who("m1", "mia", "member");
    enters(lobby.enter(&t(), &c(), mia.clone(), p, p));
    assert_eq!(
        decided_now(&mut guest),
        None,
        "entering is not being present yet"
    );
    let present = lobby.present(&t(), &c(), &mia, tx.clone());
    assert_eq!(decided_now(&mut guest), Some(Decision::Admitted));
    enters(lobby.enter(&t(), &c(), who("g2", "gil", GUEST_ROLE), p, p));
    // The member got no lobby notices: the lobby is the moderators'.
    assert!(notices.try_recv().is_err());
    drop(present);
    let late = ticket(lobby.enter(&t(), &c(), who("g3", "gia", GUEST_ROLE), p, p));
    assert_eq!(
        late.reason,
        WaitReason::Host,
        "without a member, guests wait again"
    );

    // A stored opened_by = member over a configured moderator opener opens the room to the
    // members present at once.
    let lobby = Lobby::new();
    let configured = policy(true, false, true);
    let _mia = lobby.present(&t(), &c(), &who("m1", "mia", "member"), tx);
    let mut guest = ticket(lobby.enter(
        &t(),
        &c(),
        who("g1", "gus", GUEST_ROLE),
        configured,
        RoomPolicy::default(),
    ));
    lobby.policy_changed(
        &t(),
        &c(),
        RoomPolicy {
            opened_by: Some(Opener::Member),
            ..RoomPolicy::default()
        },
    );
    assert_eq!(decided_now(&mut guest), Some(Decision::Admitted));
}

#[test]
fn the_join_policy_is_remembered_per_room_and_e2ee_merges_like_any_field() {
    let lobby = Lobby::new();
    assert_eq!(lobby.join_policy(&t(), &c()), RoomPolicy::default());
    let configured = RoomPolicy {
        record: Some(true),
        ..RoomPolicy::default()
    };
    let stored = RoomPolicy {
        e2ee: Some(true),
        ..RoomPolicy::default()
    };
    enters(lobby.enter(&t(), &c(), who("s1", "a", "member"), configured, stored));
    assert_eq!(lobby.join_policy(&t(), &c()), configured);
    assert_eq!(
        lobby.join_policy(&t(), &CallId::new("other")),
        RoomPolicy::default()
    );
    // As it applies: stored over the join's, both set here (rtcd then records nothing).
    let applying = stored.over(configured);
    assert!(applying.encrypted() && applying.recorded());
    // Unset means no.
    assert!(!RoomPolicy::default().encrypted());
    let off = RoomPolicy {
        e2ee: Some(false),
        ..RoomPolicy::default()
    };
    assert!(
        !off.over(stored).encrypted(),
        "a set false wins over true below"
    );
    // Stored policies from before the field read as unset, and unset is not written.
    let old: RoomPolicy = serde_json::from_str(
        r#"{"wait_for_host":null,"lobby":true,"guests_allowed":null,"wait_timeout_seconds":null}"#,
    )
    .unwrap();
    assert_eq!(old.e2ee, None);
    assert!(!serde_json::to_string(&old).unwrap().contains("e2ee"));
}
