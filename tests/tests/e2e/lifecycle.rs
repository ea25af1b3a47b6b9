//! Session lifecycle beyond signaling: a peer whose network dies is removed by ICE failure
//! (configurable timeouts). (Join / publish / leave cycles leaving nothing behind in the real
//! rtcd process are in the long tier, `long/leaks.rs`.)

use rtcd_e2e::daemon::{TestRtcd, metric_value};
use rtcd_e2e::media::{Participant, PeerOptions, all_permissions, eventually};
use rtcd_proto::v1::signaling_client::SignalingClient;
use tonic::transport::Channel;

/// Joins `session` to `call` on a closable socket and publishes audio + video.
async fn vanishable_publisher(
    client: &mut SignalingClient<Channel>,
    auth: &str,
    call: &str,
    session: &str,
) -> anyhow::Result<Participant> {
    let p = Participant::join_with(
        client,
        Some(auth),
        call,
        session,
        all_permissions(),
        PeerOptions {
            closable_socket: true,
            ..Default::default()
        },
    )
    .await?;
    p.add_track("audio").await?;
    p.add_track("video").await?;
    p.renegotiate().await?;
    Ok(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_network_dies_is_removed_with_its_tracks_and_call() -> anyhow::Result<()> {
    // Seconds instead of the default 5 s + 25 s (the healthy peer's media and checks keep it
    // alive well inside that window).
    let rtcd = TestRtcd::start(&[
        ("RTCD_RTC_ICE_DISCONNECTED_TIMEOUT_MS", "1500"),
        ("RTCD_RTC_ICE_FAILED_TIMEOUT_MS", "1500"),
    ])
    .await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let a = vanishable_publisher(&mut client, &auth, "call", "alice").await?;
    let b = vanishable_publisher(&mut client, &auth, "call", "bob").await?;
    eventually("both receive", || {
        a.received("bob", "video") >= 25 && b.received("alice", "video") >= 25
    })
    .await?;
    let negotiations = b.negotiations();

    // Alice's network dies; her gRPC stream stays open, so only ICE can tell.
    a.vanish()?;
    eventually("alice's session closed as failed", || {
        a.closed_because("peer connection failed")
    })
    .await?;
    eventually("alice's stream ends", || a.stream_closed()).await?;
    // Bob loses her two tracks by event and by renegotiation, and keeps his session.
    b.lost_tracks_of("alice", 2, negotiations).await?;
    assert_eq!(rtcd.rtcd.sfu().session_count(), 1);
    assert!(!b.closed_because("peer connection failed"));
    let text = rtcd.rtcd.metrics().encode();
    assert_eq!(
        metric_value(
            &text,
            "rtcd_sfu_tracks_in{client_id=\"tenant-a\",kind=\"video\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // Bob's network dies too: the call is gone.
    b.vanish()?;
    eventually("bob's session closed as failed", || {
        b.closed_because("peer connection failed")
    })
    .await?;
    eventually("no call left", || {
        rtcd.rtcd.sfu().call_count() == 0 && rtcd.rtcd.sfu().session_count() == 0
    })
    .await?;
    let text = rtcd.rtcd.metrics().encode();
    for series in [
        "rtcd_sfu_calls{client_id=\"tenant-a\"}",
        "rtcd_sfu_sessions{client_id=\"tenant-a\"}",
        "rtcd_sfu_tracks_in{client_id=\"tenant-a\",kind=\"audio\"}",
        "rtcd_sfu_tracks_out{client_id=\"tenant-a\",kind=\"video\"}",
    ] {
        assert_eq!(metric_value(&text, series), Some(0.0), "{series}: {text}");
    }
    rtcd.rtcd.shutdown().await;
    Ok(())
}
