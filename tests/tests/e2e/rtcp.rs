//! RTCP through rtcd with real webrtc-rs peers: NACKs answered from rtcd's retransmission
//! buffer, sender reports to subscribers and receiver reports to publishers.
//!
//! webrtc-rs 0.21 facts these tests rest on (`rtc` 0.21.1, under the async `webrtc` 0.21.1):
//! `register_default_interceptors` installs a NACK generator and responder, sender and receiver
//! reports (about once a second, `rtc-interceptor` `report/{sender,receiver}.rs`) and the TWCC
//! receiver. The default video codecs each come with an RTX codec, so a subscriber's section
//! offers RTX and rtcd answers its NACK with an RTX packet (own SSRC, original sequence number in
//! front of the payload); the subscriber's `rtc` turns it back into the original packet before
//! the track sees it (`peer_connection/handler/endpoint.rs`), so the payload counter arrives
//! twice. A copy on the original SSRC would be dropped by the SRTP replay window (on by default),
//! so the subscriber that checks the retransmission turns replay protection off as well
//! (`SettingEngineBuilder::with_srtp_replay_protection_window(0)`). Inbound RTCP stops at the end
//! of the interceptor chain; the participants count PLIs and reports with an interceptor of
//! their own (`media::RtcpTap`).

use std::time::Duration;

use rtcd_e2e::daemon::{TestRtcd, metric_sum};
use rtcd_e2e::media::{
    PATIENCE, Participant, PeerOptions, all_permissions, eventually, keeps_flowing,
};

/// Packets a flow must deliver before the checks start.
const ENOUGH: u64 = 25;

/// Alice publishes audio + video; Bob only subscribes (with `bob` options). Returns both once
/// Bob receives Alice.
async fn alice_and_bob(
    rtcd: &TestRtcd,
    options: PeerOptions,
) -> anyhow::Result<(Participant, Participant)> {
    let auth = rtcd.register("tenant-rtcp").await?;
    let mut client = rtcd.client().await?;
    let alice =
        Participant::join(&mut client, Some(&auth), "call", "alice", all_permissions()).await?;
    alice.add_track("audio").await?;
    alice.add_track("video").await?;
    alice.renegotiate().await?;
    let bob = Participant::listener(&mut client, &auth, "call", "bob", options).await?;
    eventually("bob receives alice", || {
        bob.received("alice", "audio") >= ENOUGH && bob.received("alice", "video") >= ENOUGH
    })
    .await?;
    Ok((alice, bob))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_nack_is_answered_from_rtcds_retransmission_buffer() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let (_alice, bob) = alice_and_bob(
        &rtcd,
        PeerOptions {
            accept_replays: true,
            ..Default::default()
        },
    )
    .await?;
    // Bob already has the packet he NACKs: only a retransmission by rtcd can bring it again.
    // One NACK a second until a copy arrives (a NACK is one unreliable datagram).
    let mut nacked = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let answered = loop {
        nacked.push(bob.nack_latest("alice", "video").await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let flow = bob.flows().remove("alice/video").expect("flow exists");
        if let Some(n) = flow.repeated.iter().find(|n| nacked.contains(n)) {
            break *n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retransmission of any of {nacked:?}; repeats seen {:?}",
            flow.repeated
        );
    };
    eprintln!("packet {answered} retransmitted after NACKs for {nacked:?}");
    // The forwarding itself is undisturbed.
    keeps_flowing(
        &bob,
        &["alice/audio", "alice/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

/// A NACK for a packet older than the retransmission window cannot be answered: the subscriber
/// can only recover from a keyframe, so rtcd asks the publisher for one at once (a browser asks
/// by itself only seconds later). An answerable NACK asks for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_rtcd_cannot_answer_asks_the_publisher_for_a_keyframe() -> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[("RTCD_RTC_NACK_BUFFER_MS", "500")]).await?;
    let (alice, bob) = alice_and_bob(&rtcd, PeerOptions::default()).await?;
    let (old, _) = bob.flows()["alice/video"].latest.expect("a packet");
    // Past the window, and past the joining keyframe requests.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = alice.plis();
    bob.nack("alice", "video", old).await?;
    eventually("a keyframe request reaches alice", || alice.plis() > before).await?;
    let metrics = rtcd.rtcd.metrics().encode();
    assert_eq!(
        metric_sum(
            &metrics,
            "rtcd_sfu_nack_unrepairable_total{client_id=\"tenant-rtcp\""
        ),
        1.0,
        "{metrics}"
    );
    // An answerable NACK: retransmitted, no keyframe request (the throttle has long passed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = alice.plis();
    bob.nack_latest("alice", "video").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        alice.plis(),
        before,
        "a repairable loss asked for a keyframe"
    );
    keeps_flowing(
        &bob,
        &["alice/audio", "alice/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_sender_reports_and_publishers_get_receiver_reports() -> anyhow::Result<()>
{
    let rtcd = TestRtcd::start(&[]).await?;
    let (alice, bob) = alice_and_bob(&rtcd, PeerOptions::default()).await?;
    let flows = bob.flows();
    let audio = flows["alice/audio"].ssrc;
    let video = flows["alice/video"].ssrc;
    // Several reports each (about one a second), for exactly the SSRCs Bob receives from rtcd.
    eventually("sender reports for both forwarded tracks", || {
        bob.sender_reports(audio) >= 3 && bob.sender_reports(video) >= 3
    })
    .await?;
    // What they say holds up (rtcd counts them itself, not rtc's interceptor): counts that
    // grow, an RTP clock that runs with the media against the reports' own wall clock, and that
    // wall clock the host's. The harness stamps 960 ticks of audio and 3000 of video every 20 ms:
    // 48 kHz, and 150 kHz for its video (a 90 kHz clock sent at 50 frames a second), which is
    // what a report's RTP time must follow (it extrapolates from the latest frame forwarded).
    for (kind, ssrc, rate) in [("audio", audio, 48_000.0), ("video", video, 150_000.0)] {
        let history = bob.sender_report_history(ssrc);
        for pair in history.windows(2) {
            let (a, b) = (&pair[0].1, &pair[1].1);
            assert!(
                b.packet_count > a.packet_count && b.octet_count > a.octet_count,
                "{kind}: counts must grow between reports: {a:?} then {b:?}"
            );
        }
        let ((_, first), (_, last)) = (&history[0], &history[history.len() - 1]);
        let wall = |ntp: u64| (ntp >> 32) as f64 + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
        let seconds = wall(last.ntp_time) - wall(first.ntp_time);
        let ticks = f64::from(last.rtp_time.wrapping_sub(first.rtp_time));
        assert!(seconds >= 1.5, "{kind}: reports {seconds} s apart");
        let measured = ticks / seconds;
        assert!(
            (measured / rate - 1.0).abs() < 0.1,
            "{kind}: the reports' RTP time runs at {measured:.0} ticks a second, the media at {rate}"
        );
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        let reported = wall(last.ntp_time) - 2_208_988_800.0;
        assert!(
            (unix - reported).abs() < 10.0,
            "{kind}: the last report's NTP time is {reported}, the host's {unix}"
        );
    }
    // rtcd, as the receiver of Alice's tracks, reports on each of her SSRCs.
    eventually("receiver reports for both published tracks", || {
        alice.receiver_reports("audio") >= 2 && alice.receiver_reports("video") >= 2
    })
    .await?;
    rtcd.rtcd.shutdown().await;
    Ok(())
}
