//! Checked against RFC 3711's key derivation vectors and, both ways, against `rtc`'s SRTP
//! context (what protected rtcd's media before, and what webrtc-rs clients run): every profile
//! rtcd offers, headers with CSRCs and extensions, padding, sequence number wraps, RTCP.

use super::*;
use bytes::Bytes;
use rtc::crypto::RTCCryptoProvider;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context as RtcContext;
use std::sync::Arc;

const PROFILES: [ProtectionProfile; 4] = [
    ProtectionProfile::AeadAes128Gcm,
    ProtectionProfile::AeadAes256Gcm,
    ProtectionProfile::Aes128CmHmacSha1_80,
    ProtectionProfile::Aes128CmHmacSha1_32,
];

fn provider() -> Arc<dyn RTCCryptoProvider> {
    rtc::crypto::default_provider().expect("crypto provider")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A master key and salt for `profile`, different per `seed`.
fn master(profile: ProtectionProfile, seed: u8) -> (Vec<u8>, Vec<u8>) {
    let key = (0..profile.key_len() as u8)
        .map(|i| i.wrapping_mul(7) ^ seed)
        .collect();
    let salt = (0..profile.salt_len() as u8)
        .map(|i| i.wrapping_mul(13) ^ seed)
        .collect();
    (key, salt)
}

fn ours(profile: ProtectionProfile, seed: u8) -> Context {
    let (key, salt) = master(profile, seed);
    Context::new(profile, &key, &salt, provider().crypto()).unwrap()
}

fn theirs(profile: ProtectionProfile, seed: u8) -> RtcContext {
    let (key, salt) = master(profile, seed);
    RtcContext::new(
        &key,
        &salt,
        profile,
        Some(rtc::srtp::option::srtp_replay_protection(64)),
        Some(rtc::srtp::option::srtcp_replay_protection(64)),
        provider().crypto(),
    )
    .unwrap()
}

/// An RTP packet as a client sends one: a CSRC or an extension on some, padding on some.
fn rtp(ssrc: u32, seq: u16, n: usize) -> Vec<u8> {
    let mut header = rtc::rtp::header::Header {
        version: 2,
        payload_type: 96,
        sequence_number: seq,
        timestamp: u32::from(seq).wrapping_mul(3000),
        ssrc,
        marker: seq.is_multiple_of(5),
        ..Default::default()
    };
    if seq.is_multiple_of(3) {
        header.csrc = vec![0x0102_0304];
    }
    if seq.is_multiple_of(2) {
        header.extension = true;
        header.extension_profile = 0xBEDE;
        header
            .set_extension(3, Bytes::from_static(&[1, 2, 3]))
            .unwrap();
    }
    let payload: Vec<u8> = (0..n).map(|i| (i as u8).wrapping_add(seq as u8)).collect();
    let mut packet = rtc::rtp::Packet {
        header,
        payload: Bytes::from(payload),
    };
    if seq.is_multiple_of(7) {
        packet.header.padding = true;
    }
    let mut out = vec![0; packet.marshal_size()];
    let n = packet.marshal_to(&mut out).unwrap();
    out.truncate(n);
    out
}

/// A compound RTCP packet from `ssrc` (a receiver report and a PLI).
fn rtcp(ssrc: u32, n: u8) -> Vec<u8> {
    let rr = rtc::rtcp::receiver_report::ReceiverReport {
        ssrc,
        reports: vec![rtc::rtcp::reception_report::ReceptionReport {
            ssrc: 0x5555_0000 | u32::from(n),
            fraction_lost: n,
            total_lost: u32::from(n) * 3,
            last_sequence_number: u32::from(n) * 100,
            jitter: 7,
            last_sender_report: 0,
            delay: 0,
        }],
        ..Default::default()
    };
    let pli = rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication {
        sender_ssrc: ssrc,
        media_ssrc: 0x5555_0000,
    };
    let packets: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(rr), Box::new(pli)];
    rtc::rtcp::packet::marshal(&packets).unwrap().to_vec()
}

fn protect(ctx: &mut Context, plain: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::with_capacity(plain.len() + ctx.rtp_overhead());
    buf.extend_from_slice(plain);
    let capacity = buf.capacity();
    ctx.protect_rtp(&mut buf).unwrap();
    assert_eq!(buf.capacity(), capacity, "the tag fits the room asked for");
    buf.to_vec()
}

fn unprotect(ctx: &mut Context, protected: &[u8]) -> Result<Vec<u8>, SrtpError> {
    let mut buf = protected.to_vec();
    let end = ctx.unprotect_rtp(&mut buf)?;
    buf.truncate(end);
    Ok(buf)
}

#[test]
fn key_derivation_matches_rfc_3711_appendix_b3() {
    let provider = provider();
    let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
    let salt = hex("0EC675AD498AFEEBB6960B3AABE6");
    let crypto = provider.crypto();
    assert_eq!(
        derive(crypto, LABEL_RTP_ENCRYPTION, &key, &salt, 16).unwrap(),
        hex("C61E7A93744F39EE10734AFE3FF7A087")
    );
    assert_eq!(
        derive(crypto, LABEL_RTP_SALT, &key, &salt, 14).unwrap(),
        hex("30CBBC08863D8C85D49DB34A9AE1")
    );
    assert_eq!(
        derive(crypto, LABEL_RTP_AUTH, &key, &salt, 20).unwrap(),
        hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
    );
}

#[test]
fn what_rtc_protects_is_accepted_and_what_we_protect_rtc_accepts() {
    for profile in PROFILES {
        // Sequence numbers crossing a wrap: the rollover counter must agree on both sides.
        let seqs = (65_500u16..=65_535).chain(0..200);
        let (mut our_tx, mut our_rx) = (ours(profile, 1), ours(profile, 1));
        let (mut rtc_tx, mut rtc_rx) = (theirs(profile, 1), theirs(profile, 1));
        for (i, seq) in seqs.enumerate() {
            let plain = rtp(0x1111_2222, seq, 40 + i % 1100);
            let protected = protect(&mut our_tx, &plain);
            let by_rtc = rtc_tx.encrypt_rtp(&plain).unwrap();
            assert_eq!(
                protected,
                by_rtc.to_vec(),
                "{profile:?} seq {seq}: same ciphertext"
            );
            let opened = rtc_rx.decrypt_rtp(&protected).unwrap();
            assert_eq!(
                opened.to_vec(),
                plain,
                "{profile:?} seq {seq}: rtc opens ours"
            );
            assert_eq!(
                unprotect(&mut our_rx, &by_rtc).unwrap(),
                plain,
                "{profile:?} seq {seq}: we open rtc's"
            );
        }
    }
}

#[test]
fn srtcp_agrees_with_rtc_both_ways() {
    for profile in PROFILES {
        let (mut our_tx, mut our_rx) = (ours(profile, 2), ours(profile, 2));
        let (mut rtc_tx, mut rtc_rx) = (theirs(profile, 2), theirs(profile, 2));
        for n in 0..50u8 {
            let plain = rtcp(0xAAAA_0000 + u32::from(n % 3), n);
            let mut buf = BytesMut::with_capacity(plain.len() + our_tx.rtcp_overhead());
            buf.extend_from_slice(&plain);
            let capacity = buf.capacity();
            our_tx.protect_rtcp(&mut buf).unwrap();
            assert_eq!(buf.capacity(), capacity);
            assert_eq!(
                rtc_rx.decrypt_rtcp(&buf).unwrap().to_vec(),
                plain,
                "{profile:?}"
            );

            let mut theirs = rtc_tx.encrypt_rtcp(&plain).unwrap().to_vec();
            let end = our_rx.unprotect_rtcp(&mut theirs).unwrap();
            assert_eq!(&theirs[..end], &plain[..], "{profile:?}");
        }
    }
}

#[test]
fn replays_and_packets_behind_the_window_are_refused_reordering_is_not() {
    for profile in PROFILES {
        let mut tx = ours(profile, 3);
        let mut rx = ours(profile, 3);
        let packets: Vec<Vec<u8>> = (0..100u16)
            .map(|s| protect(&mut tx, &rtp(7, s, 100)))
            .collect();
        // Out of order within the window: all accepted once.
        for i in (0..100)
            .rev()
            .filter(|i| i % 2 == 1)
            .chain((0..100).filter(|i| i % 2 == 0))
        {
            if i >= 99 - 63 {
                assert!(unprotect(&mut rx, &packets[i]).is_ok(), "{profile:?} {i}");
            } else {
                assert!(
                    matches!(
                        unprotect(&mut rx, &packets[i]),
                        Err(SrtpError::TooOld { .. })
                    ),
                    "{profile:?} {i} is behind the window"
                );
            }
        }
        assert!(matches!(
            unprotect(&mut rx, &packets[99]),
            Err(SrtpError::Replay { ssrc: 7, index: 99 })
        ));
        assert!(matches!(
            unprotect(&mut rx, &packets[50]),
            Err(SrtpError::Replay { .. })
        ));
        // SRTCP: the same packet twice.
        let mut buf = BytesMut::from(&rtcp(9, 1)[..]);
        tx.protect_rtcp(&mut buf).unwrap();
        let mut first = buf.to_vec();
        let mut again = buf.to_vec();
        assert!(rx.unprotect_rtcp(&mut first).is_ok());
        assert!(matches!(
            rx.unprotect_rtcp(&mut again),
            Err(SrtpError::Replay { .. })
        ));
    }
}

#[test]
fn tampered_truncated_and_garbage_packets_are_refused_and_leave_no_state() {
    for profile in PROFILES {
        let mut tx = ours(profile, 4);
        let mut rx = ours(profile, 4);
        let good = protect(&mut tx, &rtp(5, 1000, 300));
        for at in [0usize, 13, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert!(
                unprotect(&mut rx, &bad).is_err(),
                "{profile:?} flipped byte {at}"
            );
        }
        for len in 0..good.len() {
            assert!(
                unprotect(&mut rx, &good[..len]).is_err(),
                "{profile:?} cut at {len}"
            );
        }
        // Forged packets far ahead on the same SSRC, or with a keyless SSRC, change nothing.
        let mut forged = good.clone();
        forged[2] = 0x80;
        assert!(unprotect(&mut rx, &forged).is_err());
        assert!(
            rx.rtp_streams.list.is_empty(),
            "{profile:?}: no state from forgeries"
        );
        assert!(unprotect(&mut rx, &good).is_ok());

        for len in 0..40 {
            let mut junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            assert!(rx.unprotect_rtcp(&mut junk).is_err());
            let mut junk: Vec<u8> = (0..len).map(|i| 0x80 | (i * 37) as u8).collect();
            assert!(rx.unprotect_rtp(&mut junk).is_err());
        }
        assert!(rx.rtcp_streams.list.is_empty());
    }
}

#[test]
fn the_rollover_counter_follows_reordering_across_a_wrap() {
    assert_eq!(estimate_index(None, 65_535), Some(65_535));
    assert_eq!(estimate_index(Some(65_535), 2), Some(65_536 + 2));
    assert_eq!(estimate_index(Some(65_536 + 2), 65_534), Some(65_534));
    assert_eq!(
        estimate_index(Some(3 << 16 | 40_000), 100),
        Some(4 << 16 | 100)
    );
    assert_eq!(
        estimate_index(Some(3 << 16 | 10), 60_000),
        Some(2 << 16 | 60_000)
    );
    assert_eq!(
        estimate_index(Some(10), 60_000),
        None,
        "before the first counter"
    );
}

#[test]
fn streams_beyond_the_bound_forget_the_least_recently_used() {
    let mut streams = Streams::default();
    for ssrc in 0..MAX_STREAMS as u32 {
        streams.accept(ssrc, 1);
    }
    streams.accept(0, 200);
    // Far behind (what rtcd sends may resend an old packet): nothing to record, no overflow.
    streams.accept(0, 2);
    streams.accept(1000, 1);
    assert_eq!(streams.list.len(), MAX_STREAMS);
    assert!(streams.get(1).is_none(), "the least recently used went");
    assert!(streams.get(0).is_some() && streams.get(1000).is_some());
}

#[test]
fn header_lengths_are_read_as_written() {
    let plain = rtp(1, 2, 10); // an extension, no CSRC
    assert_eq!(rtp_header_len(&plain), Some(12 + 4 + 4));
    let plain = rtp(1, 3, 10); // a CSRC, no extension
    assert_eq!(rtp_header_len(&plain), Some(16));
    assert_eq!(rtp_header_len(&plain[..11]), None);
    let mut ext = vec![
        0x90, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xBE, 0xDE, 0xFF, 0xFF,
    ];
    assert_eq!(
        rtp_header_len(&ext),
        None,
        "an extension longer than the packet"
    );
    ext.truncate(14);
    assert_eq!(rtp_header_len(&ext), None);
}
