//! The client makes every offer (docs/protocol.md §4a), for a minute: a peer that rtcd asks
//! to renegotiate again and again stays connected with media flowing in every window. The
//! long tier's part of `e2e/negotiation.rs` (the same real webrtc-rs peers over the real gRPC
//! service).

use std::time::Duration;

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{RTCPeerConnectionState, eventually, keeps_flowing, publisher};

const WINDOW: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_renegotiated_by_rtcd_for_a_minute_stays_connected_with_media_in_every_window()
-> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-a").await?;
    let mut client = rtcd.client().await?;
    let alice = publisher(&mut client, &auth, "alice").await?;
    let bob = publisher(&mut client, &auth, "bob").await?;
    eventually("alice and bob hear each other", || {
        alice.received("bob", "video") > 20 && bob.received("alice", "video") > 20
    })
    .await?;
    // For a minute, a third participant comes and goes every few seconds: every arrival and
    // departure makes rtcd ask alice and bob for a new offer.
    let checks = async {
        tokio::try_join!(
            keeps_flowing(
                &alice,
                &["bob/audio", "bob/video"],
                Duration::from_secs(60),
                WINDOW
            ),
            keeps_flowing(
                &bob,
                &["alice/audio", "alice/video"],
                Duration::from_secs(60),
                WINDOW
            ),
        )
    };
    let churn = async {
        let mut client = client.clone();
        let started = tokio::time::Instant::now();
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(55) {
            n += 1;
            let carol = publisher(&mut client, &auth, &format!("carol{n}")).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(carol);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        anyhow::Ok(n)
    };
    let (flows, cycles) = tokio::join!(checks, churn);
    flows?;
    let cycles = cycles?;
    for p in [&alice, &bob] {
        assert_eq!(
            p.connection_state(),
            RTCPeerConnectionState::Connected,
            "{}",
            p.session
        );
        assert!(
            p.negotiations() >= 2 * cycles as u64,
            "{}: {} negotiations for {cycles} arrivals and departures",
            p.session,
            p.negotiations()
        );
        assert!(p.errors().is_empty(), "{}: {:?}", p.session, p.errors());
    }
    rtcd.rtcd.shutdown().await;
    Ok(())
}
