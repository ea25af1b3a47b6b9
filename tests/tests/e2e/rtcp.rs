//! RTCP through rtcd with real webrtc-rs peers: NACKs answered from rtcd's retransmission
//! buffer, sender reports to subscribers and receiver reports to publishers.
//!
//! webrtc-rs 0.21 facts these tests rest on (`rtc` 0.21.1, under the async `webrtc` 0.21.1):
//! `register_default_interceptors` installs a NACK generator and responder, sender and receiver
//! reports (about once a second, `rtc-interceptor` `report/{sender,receiver}.rs`) and the TWCC
//! receiver; a participant built with `PeerOptions::transport_cc` also numbers what it sends
//! (`configure_twcc_sender_only`), so rtcd sends it transport-cc feedback. The default video codecs each come with an RTX codec, so a subscriber's section
//! offers RTX and rtcd answers its NACK with an RTX packet (own SSRC, original sequence number in
//! front of the payload); the subscriber's `rtc` turns it back into the original packet before
//! the track sees it (`peer_connection/handler/endpoint.rs`), so the payload counter arrives
//! twice. A copy on the original SSRC would be dropped by the SRTP replay window (on by default),
//! so the subscriber that checks the retransmission turns replay protection off as well
//! (`SettingEngineBuilder::with_srtp_replay_protection_window(0)`). Inbound RTCP stops at the end
//! of the interceptor chain; the participants count PLIs and reports with an interceptor of
//! their own (`media::RtcpTap`).

use std::time::Duration;

use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
};

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

/// What one transport-cc feedback says: per number from its base, received or not, and the
/// arrival time of its last received packet (us on rtcd's clock).
fn read_feedback(fb: &TransportLayerCc) -> (Vec<bool>, Option<i64>) {
    let mut states = Vec::new();
    for chunk in &fb.packet_chunks {
        match chunk {
            PacketStatusChunk::RunLengthChunk(run) => states.extend(std::iter::repeat_n(
                run.packet_status_symbol,
                usize::from(run.run_length),
            )),
            PacketStatusChunk::StatusVectorChunk(v) => states.extend(v.symbol_list.iter()),
        }
    }
    states.truncate(usize::from(fb.packet_status_count));
    let received: Vec<bool> = states
        .iter()
        .map(|s| *s != SymbolTypeTcc::PacketNotReceived)
        .collect();
    let clock = i64::from(fb.reference_time) * 64_000;
    let last = (!fb.recv_deltas.is_empty())
        .then(|| clock + fb.recv_deltas.iter().map(|d| d.delta).sum::<i64>());
    (received, last)
}

/// A publisher that numbers its packets with the transport-wide sequence number (as browsers
/// do, and as their bandwidth estimators need) gets transport-cc feedback from rtcd on them:
/// about ten a second, all the time, its counter without a gap, no number skipped, nearly
/// every packet received (loopback), and arrival times that run with the wall clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_numbers_its_packets_gets_transport_cc_feedback_on_them()
-> anyhow::Result<()> {
    let rtcd = TestRtcd::start(&[]).await?;
    let auth = rtcd.register("tenant-rtcp").await?;
    let mut client = rtcd.client().await?;
    let numbering = PeerOptions {
        transport_cc: true,
        ..Default::default()
    };
    let alice = Participant::join_with(
        &mut client,
        Some(&auth),
        "call",
        "alice",
        all_permissions(),
        numbering,
    )
    .await?;
    alice.add_track("audio").await?;
    alice.add_track("video").await?;
    alice.renegotiate().await?;
    let bob =
        Participant::listener(&mut client, &auth, "call", "bob", PeerOptions::default()).await?;
    eventually("bob receives alice", || {
        bob.received("alice", "audio") >= ENOUGH && bob.received("alice", "video") >= ENOUGH
    })
    .await?;
    eventually("transport-cc feedback", || {
        !alice.transport_cc_feedback().is_empty()
    })
    .await?;
    // Flowing in every window of two seconds (about 10 a second; at least 5 a second).
    let mut seen = alice.transport_cc_feedback().len();
    for window in 0..3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = alice.transport_cc_feedback().len();
        assert!(
            now >= seen + 10,
            "window {window}: {} feedback messages",
            now - seen
        );
        seen = now;
    }
    keeps_flowing(
        &bob,
        &["alice/audio", "alice/video"],
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await?;
    let feedback = alice.transport_cc_feedback();
    let (mut received, mut lost) = (0usize, 0usize);
    let mut next: Option<u16> = None;
    let mut timeline = Vec::new();
    for pair in feedback.windows(2) {
        assert_eq!(
            pair[1].1.fb_pkt_count,
            pair[0].1.fb_pkt_count.wrapping_add(1),
            "the feedback counter runs without a gap"
        );
    }
    for (at, fb) in &feedback {
        if let Some(next) = next {
            // At or before where the previous one stopped (a late packet is reported again).
            let ahead = fb.base_sequence_number.wrapping_sub(next);
            assert!(
                ahead == 0 || ahead > 0x8000,
                "numbers {next}..{} skipped",
                fb.base_sequence_number
            );
        }
        let (states, last) = read_feedback(fb);
        assert!(
            states.last() == Some(&true),
            "a feedback ends on a received packet"
        );
        received += states.iter().filter(|r| **r).count();
        lost += states.iter().filter(|r| !**r).count();
        next = Some(fb.base_sequence_number.wrapping_add(states.len() as u16));
        timeline.extend(last.map(|us| (*at, us)));
    }
    assert!(received >= 300, "{received} packets reported received");
    assert!(
        lost * 100 <= received,
        "{lost} reported lost of {received} on loopback"
    );
    // rtcd's arrival times run with the wall clock (the feedback left within 100 ms of its last
    // arrival, and loopback adds nothing).
    let (first, last) = (timeline[0], timeline[timeline.len() - 1]);
    let wall = last.0.duration_since(first.0).as_micros() as i64;
    let rtcd_clock = last.1 - first.1;
    assert!(
        (wall - rtcd_clock).abs() < 300_000,
        "arrivals span {rtcd_clock} us on rtcd's clock, {wall} us on ours"
    );
    rtcd.rtcd.shutdown().await;
    Ok(())
}
