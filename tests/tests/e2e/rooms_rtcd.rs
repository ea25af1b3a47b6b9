//! Room management at rtcd (`rtcd.v1.Rooms`) over real gRPC with real webrtc-rs peers: room
//! listings with roles, permissions, tracks and mute state; moderator mute and unmute
//! requests; tenant isolation; removal with a ban that survives a restart; live permission
//! changes that stop a track at once; ending a room; revocation by cut-off, token ID and on a
//! token refresh; malformed requests.

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    Participant, all_permissions, authorized, eventually, publisher, subscribe_only,
};
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::rooms_client::RoomsClient;
use rtcd_proto::v1::server_signal::Signal;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tonic::Code;
use tonic::transport::Channel;

/// Packets a flow must deliver before a check (~1 s at 50 pps).
const ENOUGH: u64 = 50;

async fn rooms(rtcd: &TestRtcd) -> anyhow::Result<RoomsClient<Channel>> {
    Ok(RoomsClient::connect(format!("http://{}", rtcd.grpc_addr())).await?)
}

/// A join of user `user-<user>` with a role and, if given, a token's (`issued_at`,
/// `token_id`); [`join`] names the session.
fn join_as(
    call: &str,
    user: &str,
    role: &str,
    permissions: pb::Permissions,
    token: Option<(i64, &str)>,
) -> pb::Join {
    pb::Join {
        call_id: call.into(),
        session_id: String::new(),
        user_id: format!("user-{user}"),
        display_name: user.into(),
        permissions: Some(permissions),
        role: role.into(),
        token: token.map(|(issued_at, id)| pb::TokenInfo {
            issued_at,
            token_id: id.into(),
            expires_at: 0,
        }),
        policy: None,
    }
}

/// Joins `message` as session `session` (also the payload tag of its tracks).
async fn join(
    client: &mut SignalingClient<Channel>,
    auth: &str,
    session: &str,
    message: pb::Join,
) -> Result<Participant, tonic::Status> {
    let message = pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Join(pb::Join {
            session_id: session.into(),
            ..message
        })),
    };
    Participant::join_message(client, Some(auth), session, message, Default::default()).await
}

/// Waits until `p` has been told its session closed for `reason`.
async fn closed_for(p: &Participant, reason: &str) -> anyhow::Result<()> {
    eventually(&format!("{} closed for {reason}", p.session), || {
        p.saw(|e| matches!(e, Signal::SessionClosed(c) if c.reason == reason))
    })
    .await
}

async fn get_room(
    rooms: &mut RoomsClient<Channel>,
    auth: &str,
    call: &str,
) -> Result<pb::Room, tonic::Status> {
    let req = pb::GetRoomRequest {
        call_id: call.into(),
    };
    Ok(rooms
        .get_room(authorized(req, Some(auth)))
        .await?
        .into_inner())
}

/// Polls GetRoom until `check` holds (or fails with the last answer).
async fn room_until(
    rooms: &mut RoomsClient<Channel>,
    auth: &str,
    call: &str,
    what: &str,
    check: impl Fn(&pb::Room) -> bool,
) -> anyhow::Result<pb::Room> {
    let deadline = tokio::time::Instant::now() + rtcd_e2e::media::PATIENCE;
    loop {
        let room = get_room(rooms, auth, call).await?;
        if check(&room) {
            return Ok(room);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {room:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status code of a call that must fail.
fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    r.expect_err("the call must fail").code()
}

fn participant<'a>(room: &'a pb::Room, session: &str) -> Option<&'a pb::ParticipantInfo> {
    room.participants.iter().find(|p| p.session_id == session)
}

fn kinds(p: Option<&pb::ParticipantInfo>) -> Vec<(i32, bool)> {
    let mut out: Vec<(i32, bool)> = p
        .map(|p| p.tracks.iter().map(|t| (t.kind, t.muted)).collect())
        .unwrap_or_default();
    out.sort_unstable();
    out
}

fn mute_req(call: &str, user: &str, kind: pb::TrackKind) -> pb::MuteTrackRequest {
    pb::MuteTrackRequest {
        call_id: call.into(),
        user_id: user.into(),
        kind: kind as i32,
    }
}

/// Announces a screen share, then publishes it (the order a client must use).
async fn share_screen(p: &Participant) -> anyhow::Result<()> {
    p.send(pb::client_signal::Signal::ScreenShare(pb::ScreenShare {
        on: true,
        track_id: "screen".into(),
    }))
    .await?;
    p.add_track("screen").await?;
    p.renegotiate().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_room_lists_roles_permissions_tracks_and_moderator_mutes() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let alice = join(
        &mut client,
        &auth,
        "alice",
        join_as("call", "alice", "moderator", all_permissions(), None),
    )
    .await?;
    alice.add_track("audio").await?;
    alice.add_track("video").await?;
    alice.renegotiate().await?;
    let bob = join(
        &mut client,
        &auth,
        "bob",
        join_as("call", "bob", "guest", subscribe_only(), None),
    )
    .await?;
    bob.receive_only().await?;
    eventually("bob receives alice", || {
        bob.received("alice", "audio") >= ENOUGH && bob.received("alice", "video") >= ENOUGH
    })
    .await?;

    let list = rooms
        .list_rooms(authorized(pb::ListRoomsRequest {}, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(list.rooms.len(), 1, "{list:?}");
    assert_eq!(
        (
            list.rooms[0].call_id.as_str(),
            list.rooms[0].participant_count
        ),
        ("call", 2)
    );
    assert!(list.rooms[0].participants.is_empty(), "counts only");
    assert!(list.rooms[0].created_at_ms > 0);

    let audio = pb::TrackKind::Audio as i32;
    let video = pb::TrackKind::Video as i32;
    let room = room_until(&mut rooms, &auth, "call", "alice's two tracks", |r| {
        kinds(participant(r, "alice")).len() == 2
    })
    .await?;
    assert_eq!(room.participant_count, 2);
    assert_eq!(room.created_at_ms, list.rooms[0].created_at_ms);
    let sessions: Vec<&str> = room
        .participants
        .iter()
        .map(|p| p.session_id.as_str())
        .collect();
    assert_eq!(sessions, ["alice", "bob"], "by join time");
    let a = participant(&room, "alice").expect("alice listed");
    assert_eq!(
        (a.user_id.as_str(), a.display_name.as_str(), a.role.as_str()),
        ("user-alice", "alice", "moderator")
    );
    assert_eq!(a.permissions, Some(all_permissions()));
    assert!(a.joined_at_ms >= room.created_at_ms);
    assert_eq!(kinds(Some(a)), [(audio, false), (video, false)]);
    assert!(a.tracks.iter().all(|t| t.track_id.starts_with("alice-")));
    let b = participant(&room, "bob").expect("bob listed");
    assert_eq!(b.role, "guest");
    assert_eq!(b.permissions, Some(subscribe_only()));
    assert!(b.tracks.is_empty());

    // A moderator mutes alice's microphone: rtcd drops it, alice is told, bob sees the change.
    let muted = rooms
        .mute_track(authorized(
            mute_req("call", "user-alice", pb::TrackKind::Audio),
            Some(&auth),
        ))
        .await?
        .into_inner();
    assert_eq!(muted.sessions, 1);
    eventually("alice told", || {
        alice.saw(|e| matches!(e, Signal::MutedByModerator(m) if m.kind == audio && m.muted))
    })
    .await?;
    eventually("bob sees the mute", || {
        bob.saw(|e| {
            matches!(e, Signal::MuteChanged(m)
            if m.session_id == "alice" && m.kind == audio && m.muted)
        })
    })
    .await?;
    let room = get_room(&mut rooms, &auth, "call").await?;
    assert_eq!(
        kinds(participant(&room, "alice")),
        [(audio, true), (video, false)]
    );
    let v0 = bob.received("alice", "video");
    eventually("video continues", || {
        bob.received("alice", "video") > v0 + 10
    })
    .await?;
    let a0 = bob.received("alice", "audio");
    let v1 = bob.received("alice", "video");
    eventually("video continues more", || {
        bob.received("alice", "video") > v1 + 50
    })
    .await?;
    assert_eq!(bob.received("alice", "audio"), a0, "muted audio forwarded");

    // Asking to unmute changes nothing but tells alice; she unmutes herself.
    let asked = rooms
        .request_unmute(authorized(
            mute_req("call", "user-alice", pb::TrackKind::Audio),
            Some(&auth),
        ))
        .await?
        .into_inner();
    assert_eq!(asked.sessions, 1);
    eventually("alice asked", || {
        alice.saw(|e| matches!(e, Signal::UnmuteRequested(m) if m.kind == audio))
    })
    .await?;
    let room = get_room(&mut rooms, &auth, "call").await?;
    assert_eq!(kinds(participant(&room, "alice"))[0], (audio, true));
    alice
        .send(pb::client_signal::Signal::Mute(pb::Mute {
            kind: audio,
            muted: false,
        }))
        .await?;
    eventually("audio resumes", || bob.received("alice", "audio") > a0 + 20).await?;
    let room = get_room(&mut rooms, &auth, "call").await?;
    assert_eq!(
        kinds(participant(&room, "alice")),
        [(audio, false), (video, false)]
    );

    // Nobody of that name: NOT_FOUND.
    let err = rooms
        .mute_track(authorized(
            mute_req("call", "user-nobody", pb::TrackKind::Audio),
            Some(&auth),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_cannot_see_or_touch_a_room() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth_a = rtcd.register("tenant-a").await?;
    let auth_b = rtcd.register("tenant-b").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let alice = join(
        &mut client,
        &auth_a,
        "alice",
        join_as(
            "call",
            "alice",
            "member",
            all_permissions(),
            Some((100, "j1")),
        ),
    )
    .await?;
    get_room(&mut rooms, &auth_a, "call").await?;

    let b = Some(auth_b.as_str());
    let get = pb::GetRoomRequest {
        call_id: "call".into(),
    };
    assert_eq!(
        code(rooms.get_room(authorized(get, b)).await),
        Code::NotFound
    );
    let remove = pb::RemoveParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        ..Default::default()
    };
    assert_eq!(
        code(rooms.remove_participant(authorized(remove, b)).await),
        Code::NotFound
    );
    let end = pb::EndRoomRequest {
        call_id: "call".into(),
    };
    assert_eq!(
        code(rooms.end_room(authorized(end, b)).await),
        Code::NotFound
    );
    let mute = mute_req("call", "user-alice", pb::TrackKind::Audio);
    assert_eq!(
        code(rooms.mute_track(authorized(mute.clone(), b)).await),
        Code::NotFound
    );
    assert_eq!(
        code(rooms.request_unmute(authorized(mute, b)).await),
        Code::NotFound
    );
    let update = pb::UpdateParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        role: "x".into(),
        permissions: None,
    };
    assert_eq!(
        code(rooms.update_participant(authorized(update, b)).await),
        Code::NotFound
    );
    let list = rooms
        .list_rooms(authorized(pb::ListRoomsRequest {}, b))
        .await?
        .into_inner();
    assert!(list.rooms.is_empty(), "{list:?}");
    // B's revocations and bans live in B's namespace only.
    let revoke = pb::RevokeRequest {
        user_id: "user-alice".into(),
        issued_before: 1_000,
        token_id: "j1".into(),
        token_expires_at: 0,
    };
    let revoked = rooms.revoke(authorized(revoke, b)).await?.into_inner();
    assert_eq!(revoked.sessions_closed, 0);
    let ban = pb::RemoveParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        ban_seconds: 60,
        reason: String::new(),
    };
    let banned = rooms
        .remove_participant(authorized(ban, b))
        .await?
        .into_inner();
    assert_eq!(banned.sessions_closed, 0, "only B's ban was recorded");
    let bans_a = rooms
        .list_bans(authorized(pb::ListBansRequest::default(), Some(&auth_a)))
        .await?
        .into_inner();
    assert!(bans_a.bans.is_empty(), "{bans_a:?}");
    let unban = pb::UnbanRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
    };
    assert_eq!(
        code(rooms.unban(authorized(unban, Some(&auth_a))).await),
        Code::NotFound,
        "A cannot lift B's ban"
    );

    // A's room is intact, and A sees it.
    let room = get_room(&mut rooms, &auth_a, "call").await?;
    assert_eq!(room.participant_count, 1);
    assert!(!alice.stream_closed());
    assert!(!alice.saw(|e| matches!(e, Signal::SessionClosed(_))));
    // The same user may join A's room (B's ban is not A's).
    let again = join(
        &mut client,
        &auth_a,
        "alice2",
        join_as("call", "alice", "member", all_permissions(), None),
    )
    .await;
    assert!(again.is_ok(), "{:?}", again.err());
    rtcd.rtcd.shutdown().await;
    Ok(())
}

/// Starts rtcd on `dir`, waiting out the previous instance's database lock.
async fn start_on(dir: &std::path::Path) -> anyhow::Result<TestRtcd> {
    let overrides = [("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "0")];
    let mut last = None;
    for _ in 0..50 {
        match TestRtcd::start_in(dir, &overrides).await {
            Ok(rtcd) => return Ok(rtcd),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.expect("tried at least once"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_with_a_ban_closes_the_session_and_the_ban_outlives_a_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let rtcd = start_on(dir.path()).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let alice = join(
        &mut client,
        &auth,
        "alice",
        join_as("call", "alice", "member", all_permissions(), None),
    )
    .await?;
    let bob = join(
        &mut client,
        &auth,
        "bob",
        join_as("call", "bob", "member", all_permissions(), None),
    )
    .await?;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let req = pb::RemoveParticipantRequest {
        call_id: "call".into(),
        user_id: "user-bob".into(),
        ban_seconds: 3600,
        reason: "spam".into(),
    };
    let removed = rooms
        .remove_participant(authorized(req, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(removed.sessions_closed, 1);
    assert!(
        (before + 3600..=before + 3602).contains(&removed.banned_until),
        "{removed:?}"
    );
    closed_for(&bob, "banned").await?;
    eventually("alice sees bob leave", || {
        alice.saw(|e| matches!(e, Signal::ParticipantLeft(p) if p.session_id == "bob"))
    })
    .await?;
    let err = join(
        &mut client,
        &auth,
        "bob2",
        join_as("call", "bob", "member", all_permissions(), None),
    )
    .await
    .err()
    .expect("a banned user's join is refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("banned"), "{}", err.message());
    // Another room is not affected.
    join(
        &mut client,
        &auth,
        "bob3",
        join_as("other", "bob", "member", all_permissions(), None),
    )
    .await?;
    let bans = rooms
        .list_bans(authorized(pb::ListBansRequest::default(), Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(bans.bans.len(), 1, "{bans:?}");
    let ban = &bans.bans[0];
    assert_eq!(
        (
            ban.call_id.as_str(),
            ban.user_id.as_str(),
            ban.reason.as_str()
        ),
        ("call", "user-bob", "spam")
    );
    assert_eq!(ban.until, removed.banned_until);
    // Removal without a ban.
    let req = pb::RemoveParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        ..Default::default()
    };
    let removed = rooms
        .remove_participant(authorized(req.clone(), Some(&auth)))
        .await?
        .into_inner();
    assert_eq!((removed.sessions_closed, removed.banned_until), (1, 0));
    closed_for(&alice, "removed").await?;
    let err = rooms
        .remove_participant(authorized(req, Some(&auth)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "nobody left to remove");

    // The ban is on disk: a restarted rtcd on the same directory still refuses bob.
    drop((alice, bob, rooms, client));
    rtcd.stop().await;
    let rtcd = start_on(dir.path()).await?;
    let mut client = rtcd.client().await?;
    let mut rooms = self::rooms(&rtcd).await?;
    let err = join(
        &mut client,
        &auth,
        "bob4",
        join_as("call", "bob", "member", all_permissions(), None),
    )
    .await
    .err()
    .expect("the ban survived the restart");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("banned"), "{}", err.message());
    let unban = pb::UnbanRequest {
        call_id: "call".into(),
        user_id: "user-bob".into(),
    };
    rooms.unban(authorized(unban.clone(), Some(&auth))).await?;
    let err = rooms
        .unban(authorized(unban, Some(&auth)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    join(
        &mut client,
        &auth,
        "bob5",
        join_as("call", "bob", "member", all_permissions(), None),
    )
    .await?;
    rtcd.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_away_screen_rights_stops_the_screen_at_once() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    let bob = Participant::listener(&mut client, &auth, "call", "bob", Default::default()).await?;
    share_screen(&alice).await?;
    eventually("bob receives alice's screen and video", || {
        bob.received("alice", "screen") >= ENOUGH && bob.received("alice", "video") >= ENOUGH
    })
    .await?;

    let permissions = pb::Permissions {
        publish_screen: false,
        ..all_permissions()
    };
    let req = pb::UpdateParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        role: "member".into(),
        permissions: Some(permissions),
    };
    let updated = rooms
        .update_participant(authorized(req, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(updated.sessions, 1);
    eventually("alice told", || {
        alice.saw(|e| {
            matches!(e, Signal::PermissionsChanged(p)
            if p.role == "member" && p.permissions == Some(permissions))
        })
    })
    .await?;
    eventually("bob loses the screen", || {
        bob.saw(|e| {
            matches!(e, Signal::TrackRemoved(t)
            if t.session_id == "alice" && t.kind == pb::TrackKind::Screen as i32)
        })
    })
    .await?;
    // In-flight packets may still land: settle on video progress, then the screen must stand.
    let v0 = bob.received("alice", "video");
    eventually("video continues", || {
        bob.received("alice", "video") > v0 + 10
    })
    .await?;
    let screen = bob.received("alice", "screen");
    let v1 = bob.received("alice", "video");
    eventually("video continues more", || {
        bob.received("alice", "video") > v1 + 50
    })
    .await?;
    assert_eq!(
        bob.received("alice", "screen"),
        screen,
        "screen still forwarded"
    );
    let room = get_room(&mut rooms, &auth, "call").await?;
    let a = participant(&room, "alice").expect("alice listed");
    assert_eq!(a.role, "member");
    assert_eq!(a.permissions, Some(permissions));
    assert!(
        a.tracks
            .iter()
            .all(|t| t.kind != pb::TrackKind::Screen as i32),
        "{a:?}"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_room_closes_every_session() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let mut all = Vec::new();
    for s in ["alice", "bob", "carol"] {
        all.push(
            join(
                &mut client,
                &auth,
                s,
                join_as("call", s, "member", all_permissions(), None),
            )
            .await?,
        );
    }
    let survivor = join(
        &mut client,
        &auth,
        "dave",
        join_as("elsewhere", "dave", "member", all_permissions(), None),
    )
    .await?;
    let req = pb::EndRoomRequest {
        call_id: "call".into(),
    };
    let ended = rooms
        .end_room(authorized(req.clone(), Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(ended.sessions_closed, 3);
    for p in &all {
        closed_for(p, "room ended").await?;
    }
    let err = get_room(&mut rooms, &auth, "call").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rooms
        .end_room(authorized(req, Some(&auth)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = rooms
        .list_rooms(authorized(pb::ListRoomsRequest {}, Some(&auth)))
        .await?
        .into_inner();
    let ids: Vec<&str> = list.rooms.iter().map(|r| r.call_id.as_str()).collect();
    assert_eq!(ids, ["elsewhere"]);
    assert!(!survivor.saw(|e| matches!(e, Signal::SessionClosed(_))));
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_close_sessions_and_are_refused() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let perms = all_permissions;
    let alice = join(
        &mut client,
        &auth,
        "alice",
        join_as("call", "alice", "member", perms(), Some((1_000, "ja"))),
    )
    .await?;
    let alice_new = join(
        &mut client,
        &auth,
        "alice-phone",
        join_as("call", "alice", "member", perms(), Some((3_000, "jp"))),
    )
    .await?;
    let alice_undated = join(
        &mut client,
        &auth,
        "alice-old",
        join_as("call", "alice", "member", perms(), None),
    )
    .await?;

    // A cut-off: the old and the undated token go, the newer one stays.
    let cut = pb::RevokeRequest {
        user_id: "user-alice".into(),
        issued_before: 2_000,
        ..Default::default()
    };
    let revoked = rooms
        .revoke(authorized(cut, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(revoked.sessions_closed, 2);
    closed_for(&alice, "revoked").await?;
    closed_for(&alice_undated, "revoked").await?;
    let err = join(
        &mut client,
        &auth,
        "alice2",
        join_as("call", "alice", "member", perms(), Some((1_500, ""))),
    )
    .await
    .err()
    .expect("an old token is refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("revoked"), "{}", err.message());
    join(
        &mut client,
        &auth,
        "alice3",
        join_as("call", "alice", "member", perms(), Some((2_500, ""))),
    )
    .await?;
    // An earlier cut-off does not replace the later one.
    let lower = pb::RevokeRequest {
        user_id: "user-alice".into(),
        issued_before: 10,
        ..Default::default()
    };
    rooms.revoke(authorized(lower, Some(&auth))).await?;
    let err = join(
        &mut client,
        &auth,
        "alice4",
        join_as("call", "alice", "member", perms(), Some((1_500, ""))),
    )
    .await
    .err()
    .expect("the cut-off was not lowered");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(!alice_new.saw(|e| matches!(e, Signal::SessionClosed(_))));

    // By token ID: the live session admitted by it closes; the token cannot join again.
    let by_id = pb::RevokeRequest {
        token_id: "jp".into(),
        token_expires_at: 4_000_000_000,
        ..Default::default()
    };
    let revoked = rooms
        .revoke(authorized(by_id, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(revoked.sessions_closed, 1);
    closed_for(&alice_new, "revoked").await?;
    let err = join(
        &mut client,
        &auth,
        "alice5",
        join_as("call", "alice", "member", perms(), Some((9_000, "jp"))),
    )
    .await
    .err()
    .expect("a denied token ID is refused");
    assert!(err.message().starts_with("revoked"), "{}", err.message());

    // Token refresh: a refreshed token is recorded (a later revocation of it closes the
    // session), and a revoked one closes the session at once.
    let bob = join(
        &mut client,
        &auth,
        "bob",
        join_as("call", "bob", "member", perms(), Some((5_000, "jb1"))),
    )
    .await?;
    bob.send(pb::client_signal::Signal::Token(pb::TokenInfo {
        issued_at: 6_000,
        token_id: "jb2".into(),
        expires_at: 0,
    }))
    .await?;
    let carol = join(
        &mut client,
        &auth,
        "carol",
        join_as("call", "carol", "member", perms(), Some((5_000, "jc1"))),
    )
    .await?;
    carol
        .send(pb::client_signal::Signal::Token(pb::TokenInfo {
            issued_at: 6_000,
            token_id: "jp".into(),
            expires_at: 0,
        }))
        .await?;
    closed_for(&carol, "revoked").await?;
    // The old ID no longer names bob's session; the new one does.
    let old = pb::RevokeRequest {
        token_id: "jb1".into(),
        ..Default::default()
    };
    // rtcd takes bob's messages in order: once a bad one after the refresh is answered with
    // an error, the refresh has been applied.
    bob.send(pb::client_signal::Signal::Mute(pb::Mute {
        kind: 99,
        muted: true,
    }))
    .await?;
    eventually("bob's marker answered", || !bob.errors().is_empty()).await?;
    let closed = rooms
        .revoke(authorized(old, Some(&auth)))
        .await?
        .into_inner()
        .sessions_closed;
    assert_eq!(closed, 0, "the refreshed token replaced jb1");
    assert!(!bob.saw(|e| matches!(e, Signal::SessionClosed(_))));
    let new = pb::RevokeRequest {
        token_id: "jb2".into(),
        ..Default::default()
    };
    let revoked = rooms
        .revoke(authorized(new, Some(&auth)))
        .await?
        .into_inner();
    assert_eq!(revoked.sessions_closed, 1);
    closed_for(&bob, "revoked").await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unauthenticated_requests_are_refused() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let mut rooms = rooms(&rtcd).await?;
    let _alice = join(
        &mut client,
        &auth,
        "alice",
        join_as("call", "alice", "member", all_permissions(), None),
    )
    .await?;
    let a = Some(auth.as_str());
    let long = "x".repeat(129);

    for call in ["", long.as_str()] {
        let req = pb::GetRoomRequest {
            call_id: call.into(),
        };
        assert_eq!(
            code(rooms.get_room(authorized(req, a)).await),
            Code::InvalidArgument
        );
        let req = pb::EndRoomRequest {
            call_id: call.into(),
        };
        assert_eq!(
            code(rooms.end_room(authorized(req, a)).await),
            Code::InvalidArgument
        );
    }
    for kind in [0, 99] {
        let req = pb::MuteTrackRequest {
            call_id: "call".into(),
            user_id: "user-alice".into(),
            kind,
        };
        assert_eq!(
            code(rooms.mute_track(authorized(req, a)).await),
            Code::InvalidArgument,
            "kind {kind}"
        );
    }
    let remove = |ban_seconds, reason: &str, user: &str| pb::RemoveParticipantRequest {
        call_id: "call".into(),
        user_id: user.into(),
        ban_seconds,
        reason: reason.into(),
    };
    for (req, what) in [
        (remove(366 * 24 * 3600, "", "user-alice"), "ban over a year"),
        (remove(60, &"r".repeat(257), "user-alice"), "long reason"),
        (remove(60, "", ""), "empty user"),
    ] {
        assert_eq!(
            code(rooms.remove_participant(authorized(req, a)).await),
            Code::InvalidArgument,
            "{what}"
        );
    }
    let update = pb::UpdateParticipantRequest {
        call_id: "call".into(),
        user_id: "user-alice".into(),
        role: "r".repeat(33),
        permissions: None,
    };
    assert_eq!(
        code(rooms.update_participant(authorized(update, a)).await),
        Code::InvalidArgument
    );
    for req in [
        pb::RevokeRequest::default(),
        pb::RevokeRequest {
            user_id: "user-alice".into(),
            ..Default::default()
        },
        pb::RevokeRequest {
            issued_before: 5,
            ..Default::default()
        },
        pb::RevokeRequest {
            token_id: long.clone(),
            ..Default::default()
        },
    ] {
        assert_eq!(
            code(rooms.revoke(authorized(req.clone(), a)).await),
            Code::InvalidArgument,
            "{req:?}"
        );
    }
    let bans = pb::ListBansRequest {
        call_id: long.clone(),
    };
    assert_eq!(
        code(rooms.list_bans(authorized(bans, a)).await),
        Code::InvalidArgument
    );
    // Recording requests: a requester over 256 bytes, a bad room (before any disk is
    // touched; this host does not record at all, so the check comes first).
    let start = |call: &str, by: &str| pb::StartRecordingRequest {
        call_id: call.into(),
        requested_by: by.into(),
    };
    let stop = |call: &str, by: &str| pb::StopRecordingRequest {
        call_id: call.into(),
        requested_by: by.into(),
    };
    let by = "b".repeat(257);
    for (call, by) in [("call", by.as_str()), ("", ""), (long.as_str(), "")] {
        assert_eq!(
            code(rooms.start_recording(authorized(start(call, by), a)).await),
            Code::InvalidArgument,
            "start: call {} bytes, requested_by {} bytes",
            call.len(),
            by.len()
        );
        assert_eq!(
            code(rooms.stop_recording(authorized(stop(call, by), a)).await),
            Code::InvalidArgument,
            "stop: call {} bytes, requested_by {} bytes",
            call.len(),
            by.len()
        );
    }
    // A bad join field is refused before anything happens.
    let err = join(
        &mut client,
        &auth,
        "bad",
        join_as("call", "bad", &"r".repeat(33), all_permissions(), None),
    )
    .await
    .err()
    .expect("an oversized role is refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing of the above touched alice.
    let room = get_room(&mut rooms, &auth, "call").await?;
    assert_eq!(room.participant_count, 1);

    // Authentication as for signaling; webhooks are not wired yet.
    assert_eq!(
        code(
            rooms
                .list_rooms(authorized(pb::ListRoomsRequest {}, None))
                .await
        ),
        Code::Unauthenticated
    );
    let admin = rtcd_e2e::media::basic("admin", rtcd_e2e::daemon::ADMIN_SECRET);
    assert_eq!(
        code(
            rooms
                .list_rooms(authorized(pb::ListRoomsRequest {}, Some(&admin)))
                .await
        ),
        Code::PermissionDenied
    );
    // Webhook settings: empty turns them off; a loopback URL (not allowed on this host) and a
    // short secret are the caller's mistakes.
    rooms
        .configure_webhooks(authorized(pb::ConfigureWebhooksRequest::default(), a))
        .await?;
    for (url, secret) in [
        (
            "http://127.0.0.1:9/hook",
            "a-long-enough-webhook-secret-0123456789",
        ),
        ("https://hooks.example.com/x", "short"),
        (
            "ftp://hooks.example.com/x",
            "a-long-enough-webhook-secret-0123456789",
        ),
    ] {
        let request = pb::ConfigureWebhooksRequest {
            urls: vec![url.into()],
            secret: secret.into(),
        };
        assert_eq!(
            code(rooms.configure_webhooks(authorized(request, a)).await),
            Code::InvalidArgument,
            "{url}"
        );
    }
    rtcd.rtcd.shutdown().await;
    Ok(())
}
