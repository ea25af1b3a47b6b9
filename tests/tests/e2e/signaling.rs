//! gRPC signaling: authentication on every RPC, bad input, tenant isolation, drain.

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{
    Participant, all_permissions, authorized, basic, eventually, join, keeps_flowing,
};
use rtcd_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn join_code(rtcd: &TestRtcd, auth: Option<&str>) -> Code {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let session = format!(
        "s{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut client = rtcd.client().await.unwrap();
    match Participant::join(&mut client, auth, "call", &session, all_permissions()).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_rpc_requires_valid_credentials() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_API_SECURITY_SESSION_TTL_SECONDS", "1")]).await?;
    let good = rtcd.register("tenant-a").await?;
    assert_eq!(
        join_code(&rtcd, None).await,
        Code::Unauthenticated,
        "no key"
    );
    let wrong = basic("tenant-a", "a-wrong-key-that-is-long-enough-0123456789");
    assert_eq!(
        join_code(&rtcd, Some(&wrong)).await,
        Code::Unauthenticated,
        "wrong key"
    );
    let unknown = basic("nobody", "a-wrong-key-that-is-long-enough-0123456789");
    assert_eq!(
        join_code(&rtcd, Some(&unknown)).await,
        Code::Unauthenticated,
        "unknown client"
    );
    assert_eq!(
        join_code(&rtcd, Some("Bearer forged")).await,
        Code::Unauthenticated,
        "forged bearer"
    );
    assert_eq!(
        join_code(&rtcd, Some("Digest x")).await,
        Code::Unauthenticated,
        "bad scheme"
    );
    let admin = basic("admin", rtcd_e2e::daemon::ADMIN_SECRET);
    assert_eq!(
        join_code(&rtcd, Some(&admin)).await,
        Code::PermissionDenied,
        "admin is no tenant"
    );
    assert_eq!(
        join_code(&rtcd, Some(&good)).await,
        Code::Ok,
        "basic credentials"
    );

    // A bearer token from the real HTTP /login works, then expires.
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/login", rtcd.rtcd.http_addr()))
        .json(&serde_json::json!({
            "clientID": "tenant-a",
            "authKey": "tenant-a-key-that-is-long-enough-0123456789",
        }))
        .send()
        .await?
        .json()
        .await?;
    let bearer = format!("Bearer {}", login["bearerToken"].as_str().unwrap());
    assert_eq!(
        join_code(&rtcd, Some(&bearer)).await,
        Code::Ok,
        "fresh bearer"
    );
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // The token lives 1 s; poll until it is refused (never sleep-as-assertion).
        let code = join_code(&rtcd, Some(&bearer)).await;
        if code == Code::Unauthenticated {
            break;
        }
        assert_eq!(code, Code::Ok);
        assert!(
            tokio::time::Instant::now() < deadline,
            "bearer never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // CloseSession is authenticated too.
    let mut client = rtcd.client().await?;
    let req = pb::CloseSessionRequest {
        call_id: "call".into(),
        session_id: "s1".into(),
    };
    let err = client
        .close_session(authorized(req, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_rejects_bad_input_with_clear_statuses() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_MAX_SDP_BYTES", "2048")]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;

    // First message not a Join.
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ClientSignal {
        signal: Some(pb::client_signal::Signal::Leave(pb::Leave {})),
    })
    .await?;
    let err = client
        .session(authorized(ReceiverStream::new(rx), Some(&auth)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Empty IDs.
    let (tx, rx) = mpsc::channel(4);
    tx.send(join("", "s", all_permissions())).await?;
    let err = client
        .session(authorized(ReceiverStream::new(rx), Some(&auth)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let p = Participant::join(&mut client, Some(&auth), "call", "s1", all_permissions()).await?;
    // Same session ID twice in one call.
    let dup = Participant::join(&mut client, Some(&auth), "call", "s1", all_permissions()).await;
    assert_eq!(dup.err().map(|s| s.code()), Some(Code::AlreadyExists));

    use pb::client_signal::Signal;
    p.send(Signal::Offer(pb::SessionDescription {
        sdp: "this is not SDP".into(),
        tracks: Default::default(),
    }))
    .await?;
    p.send(Signal::Offer(pb::SessionDescription {
        sdp: format!("v=0\r\n{}", "a=x\r\n".repeat(1000)),
        tracks: Default::default(),
    }))
    .await?;
    // A declared source for a section the offer does not have.
    p.send(Signal::Offer(pb::SessionDescription {
        sdp: "v=0\r\n".into(),
        tracks: [("9".to_owned(), pb::TrackKind::Screen as i32)].into(),
    }))
    .await?;
    p.send(Signal::Join(pb::Join::default())).await?;
    p.send(Signal::Mute(pb::Mute {
        kind: 42,
        muted: true,
    }))
    .await?;
    eventually("five error events", || p.errors().len() >= 5).await?;
    // Messages rejected during conversion are reported before those the session actor
    // rejects, so compare as a multiset.
    let mut codes: Vec<i32> = p.errors().iter().map(|(c, _)| *c).collect();
    codes.sort();
    let mut want = vec![
        Code::InvalidArgument as i32,    // malformed SDP
        Code::InvalidArgument as i32,    // oversized SDP
        Code::InvalidArgument as i32,    // tracks naming a missing section
        Code::FailedPrecondition as i32, // second join
        Code::InvalidArgument as i32,    // unknown kind
    ];
    want.sort();
    assert_eq!(codes, want, "{:?}", p.errors());
    // The session survived all of it.
    assert!(!p.stream_closed());
    assert_eq!(rtcd.rtcd.sfu().session_count(), 1);
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_touch_each_others_calls() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let a = rtcd.register("tenant-a").await?;
    let b = rtcd.register("tenant-b").await?;
    let mut client = rtcd.client().await?;

    let a1 = Participant::join(&mut client, Some(&a), "call", "s1", all_permissions()).await?;
    a1.add_track("audio").await?;
    a1.renegotiate().await?;
    let a2 = Participant::join(&mut client, Some(&a), "call", "s2", all_permissions()).await?;
    a2.receive_only().await?;
    eventually("a2 receives a1", || a2.received("s1", "audio") > 20).await?;

    // B cannot close A's session, even knowing both IDs.
    let err = client
        .close_session(authorized(
            pb::CloseSessionRequest {
                call_id: "call".into(),
                session_id: "s1".into(),
            },
            Some(&b),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // B joining "the same" call and session creates B's own; nothing crosses.
    let b1 = Participant::join(&mut client, Some(&b), "call", "s1", all_permissions()).await?;
    b1.add_track("audio").await?;
    b1.renegotiate().await?;
    let b2 = Participant::join(&mut client, Some(&b), "call", "s2", all_permissions()).await?;
    b2.receive_only().await?;
    eventually("b2 receives b1", || b2.received("s1", "audio") > 20).await?;
    assert_eq!(rtcd.rtcd.sfu().call_count(), 2);
    assert_eq!(rtcd.rtcd.sfu().session_count(), 4);
    // Payload tags are session IDs, identical across tenants: count tracks instead.
    let tracks_seen = |p: &Participant| {
        p.events()
            .iter()
            .filter(|e| matches!(e, pb::server_signal::Signal::TrackPublished(_)))
            .count()
    };
    assert_eq!(tracks_seen(&a2), 1, "a2 sees only a1's track");
    assert_eq!(tracks_seen(&b2), 1, "b2 sees only b1's track");
    assert_eq!(tracks_seen(&a1), 0);
    assert_eq!(tracks_seen(&b1), 0);

    // A closes its own session; B's namesake is untouched.
    client
        .close_session(authorized(
            pb::CloseSessionRequest {
                call_id: "call".into(),
                session_id: "s1".into(),
            },
            Some(&a),
        ))
        .await?;
    eventually("a1 closed", || {
        a1.saw(|e| matches!(e, pb::server_signal::Signal::SessionClosed(c) if c.reason == "closed by client"))
    })
    .await?;
    eventually("a2 told of the removal", || {
        a2.saw(|e| matches!(e, pb::server_signal::Signal::TrackRemoved(t) if t.session_id == "s1"))
    })
    .await?;
    assert!(!b1.saw(|e| matches!(e, pb::server_signal::Signal::SessionClosed(_))));
    assert!(!b2.saw(|e| matches!(e, pb::server_signal::Signal::TrackRemoved(_))));
    eventually("three sessions left", || {
        rtcd.rtcd.sfu().session_count() == 3
    })
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_then_closes_with_reason_shutdown() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_DRAIN_TIMEOUT_SECONDS", "6")]).await?;
    let a = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let p1 = Participant::join(&mut client, Some(&a), "call", "s1", all_permissions()).await?;
    p1.add_track("audio").await?;
    p1.renegotiate().await?;
    let p2 = Participant::join(&mut client, Some(&a), "call", "s2", all_permissions()).await?;
    p2.receive_only().await?;
    eventually("media flows", || p2.received("s1", "audio") > 10).await?;

    let metrics = rtcd.rtcd.metrics_addr().unwrap();
    let health = rtcd.rtcd.health().clone();
    let sfu = rtcd.rtcd.sfu().clone();
    let grpc = rtcd.grpc_addr();
    let (daemon, _dir) = rtcd.split();
    let shutdown = tokio::spawn(daemon.shutdown());
    eventually("not ready", || health.phase() != rtcd::health::Phase::Ready).await?;
    let ready = reqwest::get(format!("http://{metrics}/readyz")).await?;
    assert!(
        !ready.status().is_success(),
        "/readyz while draining: {}",
        ready.status()
    );
    // New joins are refused while the call continues.
    let mut late =
        rtcd_proto::v1::signaling_client::SignalingClient::connect(format!("http://{grpc}"))
            .await?;
    let refused = Participant::join(&mut late, Some(&a), "call", "s3", all_permissions()).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(Code::Unavailable));
    // Media keeps flowing in every window while draining.
    keeps_flowing(
        &p2,
        &["s1/audio"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    // Then the drain timeout closes everyone with reason "shutdown".
    for p in [&p1, &p2] {
        eventually("closed with shutdown", || {
            p.saw(|e| matches!(e, pb::server_signal::Signal::SessionClosed(c) if c.reason == "shutdown"))
        })
        .await?;
    }
    shutdown.await?;
    assert_eq!(sfu.session_count(), 0);
    assert_eq!(sfu.call_count(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_per_call_and_per_client() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[
        ("RTCD_RTC_MAX_SESSIONS_PER_CALL", "2"),
        ("RTCD_RTC_MAX_SESSIONS_PER_CLIENT", "3"),
    ])
    .await?;
    let a = rtcd.register("tenant-a").await?;
    let b = rtcd.register("tenant-b").await?;
    let mut client = rtcd.client().await?;
    let _s1 = Participant::join(&mut client, Some(&a), "c1", "s1", all_permissions()).await?;
    let _s2 = Participant::join(&mut client, Some(&a), "c1", "s2", all_permissions()).await?;
    let full = Participant::join(&mut client, Some(&a), "c1", "s3", all_permissions()).await;
    assert_eq!(
        full.err().map(|s| s.code()),
        Some(Code::ResourceExhausted),
        "per call"
    );
    let _s3 = Participant::join(&mut client, Some(&a), "c2", "s1", all_permissions()).await?;
    let over = Participant::join(&mut client, Some(&a), "c3", "s1", all_permissions()).await;
    assert_eq!(
        over.err().map(|s| s.code()),
        Some(Code::ResourceExhausted),
        "per client"
    );
    // Another tenant is not affected by tenant-a's usage.
    let _b1 = Participant::join(&mut client, Some(&b), "c1", "s1", all_permissions()).await?;
    // A session that ends frees its slot.
    drop(_s1);
    eventually("slot freed", || rtcd.rtcd.sfu().session_count() == 3).await?;
    let _again = Participant::join(&mut client, Some(&a), "c1", "s4", all_permissions()).await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_disconnects_mid_negotiation_leaves_no_orphan() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let a = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    // Gone right after the join.
    let p = Participant::join(&mut client, Some(&a), "call", "s1", all_permissions()).await?;
    drop(p);
    // Gone right after sending an offer (the answer may or may not have been produced).
    let q = Participant::join(&mut client, Some(&a), "call", "s2", all_permissions()).await?;
    q.add_track("audio").await?;
    q.renegotiate().await?;
    eventually("offer answered or in flight", || {
        q.saw(|e| matches!(e, pb::server_signal::Signal::Answer(_)))
    })
    .await?;
    drop(q);
    eventually("no sessions", || rtcd.rtcd.sfu().session_count() == 0).await?;
    eventually("no calls", || rtcd.rtcd.sfu().call_count() == 0).await?;
    let metrics = rtcd.rtcd.metrics().encode();
    assert!(
        metrics.contains("rtcd_sfu_sessions{client_id=\"tenant-a\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rtcd_sfu_calls{client_id=\"tenant-a\"} 0"),
        "{metrics}"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}
