//! Media engine v2 (issue 11): what a join costs rtcd's CPU. One iteration is what rtcd does
//! for a new participant's first offer: a peer connection on the process's shared DTLS
//! certificate, the offer applied (one audio and one video section sent, two of each received)
//! and the answer made. The target is under 0.5 ms. `identity` shows what generating a
//! certificate per peer (as webrtc-rs 0.17's engine does) would add.
//!
//! `join, Chromium's offer` applies a real browser's first offer instead
//! (`tests/fixtures/chromium-offer.sdp`: Debian's headless Chromium 156: microphone and camera
//! `sendrecv` plus one more receiving audio and video section, with all of Chromium's codecs;
//! rtcd trims what it cannot answer first).
//!
//! Run: `cargo bench -p rtcd-e2e --bench engine`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtcd::engine::net::{Protocol, Transport};
use rtcd::engine::{Identity, Peer, PeerSettings};

/// A browser-like offer: camera and microphone sent, two cameras and two microphones received.
fn offer() -> String {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .build(Instant::now())
        .unwrap();
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        pc.add_transceiver_from_kind(kind, None).unwrap();
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )
        .unwrap();
    }
    pc.create_offer(None).unwrap().sdp
}

fn bench(c: &mut Criterion) {
    let identity = Identity::generate().unwrap();
    let address = "10.9.0.1:5000".parse().unwrap();
    let settings = PeerSettings {
        candidates: vec![Transport {
            local: address,
            peer: address,
            protocol: Protocol::Udp,
        }],
        disconnected_timeout: Duration::from_secs(5),
        failed_timeout: Duration::from_secs(25),
        estimation: true,
        departures: None,
    };
    let offer = offer();
    c.bench_function("join (peer + offer -> answer)", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut peer = Peer::new(&identity, &settings, now).unwrap();
            peer.apply_offer(&offer, now).unwrap()
        })
    });
    let chromium = include_str!("../fixtures/chromium-offer.sdp");
    c.bench_function("join, Chromium's offer", |b| {
        b.iter(|| {
            let now = Instant::now();
            let mut peer = Peer::new(&identity, &settings, now).unwrap();
            peer.apply_offer(chromium, now).unwrap()
        })
    });
    c.bench_function("identity (a DTLS certificate)", |b| {
        b.iter(|| Identity::generate().unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).sample_size(50);
    targets = bench
}
criterion_main!(benches);
