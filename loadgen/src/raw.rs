//! Target "raw": the physical ceiling. A plain UDP relay (`udp-relay`, one thread, `recv_from`
//! then one `send_to` per other member of the call: no ICE, no DTLS, no SRTP, no RTCP) and
//! participants that send the same packet sizes and rates as the WebRTC peers, with a
//! 12-byte RTP header (sequence numbers for loss) and the same stamp (latency).
//!
//! Relay protocol: a datagram `JOIN <call>` makes the sender a member of `<call>` (answered with
//! `OK`); any other datagram from a member goes to every other member of its call.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::peer::{FrameClock, PeerConfig, PeerOutcome, STAMP_BYTES, read_stamp, stamp};
use super::stats::{Counters, StreamLoss, now_micros};

/// The SRTP auth tag WebRTC adds (HMAC-SHA1-80): raw packets carry as many extra bytes, so the
/// datagrams are the same size as the real ones.
const SRTP_TAG: usize = 10;
const RTP_HEADER: usize = 12;

/// Runs the relay on `socket` forever (the `udp-relay` binary).
pub fn serve(socket: &StdSocket) -> std::io::Result<()> {
    let mut calls: HashMap<Vec<u8>, Vec<SocketAddr>> = HashMap::new();
    let mut member_of: HashMap<SocketAddr, Vec<u8>> = HashMap::new();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let packet = &buf[..n];
        if let Some(call) = packet.strip_prefix(b"JOIN ") {
            let members = calls.entry(call.to_vec()).or_default();
            if !members.contains(&from) {
                members.push(from);
            }
            member_of.insert(from, call.to_vec());
            let _ = socket.send_to(b"OK", from);
            continue;
        }
        let Some(members) = member_of.get(&from).and_then(|c| calls.get(c)) else {
            continue;
        };
        for to in members {
            if *to != from {
                // A full receiver buffer drops the packet, as a real network would.
                let _ = socket.send_to(packet, *to);
            }
        }
    }
}

/// One raw participant: join the relay's call, publish the configured tracks, count what
/// arrives.
pub async fn participant(
    relay: SocketAddr,
    call: String,
    config: PeerConfig,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> PeerOutcome {
    let started = Instant::now();
    let mut loss = StreamLoss::default();
    let mut join_time = None;
    let result = drive(
        relay,
        &call,
        &config,
        &counters,
        &stop,
        started,
        &mut loss,
        &mut join_time,
    )
    .await;
    if join_time.is_none() {
        counters
            .failed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    PeerOutcome {
        join_time,
        loss,
        error: result.err().map(|e| format!("{e:#}")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    relay: SocketAddr,
    call: &str,
    config: &PeerConfig,
    counters: &Counters,
    stop: &CancellationToken,
    started: Instant,
    loss: &mut StreamLoss,
    join_time: &mut Option<Duration>,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, 0)).await?;
    socket.connect(relay).await?;
    let mut buf = vec![0u8; 2048];
    // Join (retried: UDP may drop the first datagram under load).
    loop {
        socket.send(format!("JOIN {call}").as_bytes()).await?;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)) => {
                if let Ok(n) = r && &buf[..n?] == b"OK" {
                    break;
                }
            }
        }
    }
    *join_time = Some(started.elapsed());
    counters.joined.fetch_add(1, Relaxed);
    counters.connected.fetch_add(1, Relaxed);
    let scheduled: u64 = config
        .tracks
        .iter()
        .map(|t| u64::from(t.packets_per_second))
        .sum();
    counters.scheduled_pps.fetch_add(scheduled, Relaxed);
    let result = publish_and_count(socket, config, counters, stop, loss).await;
    // Its media stops with it.
    counters.scheduled_pps.fetch_sub(scheduled, Relaxed);
    result
}

/// The joined participant's loop: sends its tracks' frames when due, counts what arrives.
async fn publish_and_count(
    socket: UdpSocket,
    config: &PeerConfig,
    counters: &Counters,
    stop: &CancellationToken,
    loss: &mut StreamLoss,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut buf = vec![0u8; 2048];

    struct Track {
        ssrc: u32,
        seq: u16,
        clock: FrameClock,
        bytes: usize,
    }
    let now = Instant::now();
    let mut tracks: Vec<Track> = config
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| Track {
            ssrc: config.publisher.wrapping_mul(16).wrapping_add(i as u32),
            seq: 0,
            clock: FrameClock::new(t, now),
            bytes: t.payload_bytes,
        })
        .collect();
    // Receive-side sequence extension per SSRC: (last 16-bit seq, extended).
    let mut extended: HashMap<u32, (u16, u64)> = HashMap::new();
    let mut packet = vec![0u8; 2048];
    loop {
        let next = tracks.iter().map(|t| t.clock.next()).min();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            r = socket.recv(&mut buf) => {
                let n = r?;
                if n < RTP_HEADER + STAMP_BYTES { continue; }
                let ssrc = u32::from_be_bytes(buf[8..12].try_into()?);
                let seq16 = u16::from_be_bytes(buf[2..4].try_into()?);
                let Some((publisher, sent)) = read_stamp(&buf[RTP_HEADER..n - SRTP_TAG]) else { continue };
                let entry = extended.entry(ssrc).or_insert((seq16, seq16 as u64));
                let delta = seq16.wrapping_sub(entry.0) as i16 as i64;
                entry.1 = (entry.1 as i64 + delta).max(0) as u64;
                entry.0 = seq16;
                let grew = loss.packet(ssrc, publisher, entry.1);
                counters.expected_packets.fetch_add(grew, Relaxed);
                counters.received_packets.fetch_add(1, Relaxed);
                counters.received_bytes.fetch_add((n - RTP_HEADER - SRTP_TAG) as u64, Relaxed);
                counters.latency.record(now_micros().saturating_sub(sent));
            }
            _ = sleep => {}
        }
        let now = Instant::now();
        for t in &mut tracks {
            let frame = t.clock.frames();
            let late = now.saturating_duration_since(t.clock.next());
            let Some(packets) = t.clock.due(now) else {
                continue;
            };
            counters.send_lag.record(late.as_micros() as u64);
            let len = RTP_HEADER + t.bytes + SRTP_TAG;
            for i in 0..packets {
                let p = &mut packet[..len];
                p[0] = 0x80;
                p[1] = 96 | if i + 1 == packets { 0x80 } else { 0 };
                p[2..4].copy_from_slice(&t.seq.to_be_bytes());
                p[4..8].copy_from_slice(&(frame as u32).to_be_bytes());
                p[8..12].copy_from_slice(&t.ssrc.to_be_bytes());
                stamp(
                    &mut p[RTP_HEADER..RTP_HEADER + t.bytes],
                    config.publisher,
                    now_micros(),
                );
                socket.send(p).await.context("send to the relay")?;
                t.seq = t.seq.wrapping_add(1);
            }
            counters.sent_packets.fetch_add(packets, Relaxed);
        }
    }
}
