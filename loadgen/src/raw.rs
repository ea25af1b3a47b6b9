//! Target "raw": the physical ceiling. A plain UDP relay (`udp-relay`, one thread, `recv_from`
//! then one `send_to` per other member of the call: no ICE, no DTLS, no SRTP, no RTCP) and
//! participants that send the same packet sizes and rates as the WebRTC peers, with a
//! 12-byte RTP header (sequence numbers for loss) and the same stamp (latency).
//!
//! `udp-relay --batched` ([`serve_batched`], compare.sh's target `raw-batched`) is the same
//! relay on rtcd's own batched socket: a `recvmmsg` per batch, the sends grouped by
//! destination into UDP GSO messages, a `sendmmsg` per 64 of them. The plain relay is the ceiling of a
//! naive server; the batched one is the kernel's part of forwarding alone, the floor under
//! any server that batches as rtcd does.
//!
//! Relay protocol: a datagram `JOIN <call>` makes the sender a member of `<call>` (answered with
//! `OK`); any other datagram from a member goes to every other member of its call.
//!
//! Simulcast: `JOIN <call> <layer>` (a digit) makes a member that takes only that layer. A
//! packet of a simulcast layer has bit 3 of its SSRC's last octet set and the layer in the three
//! bits below (the raw participants number their SSRCs so); such a packet goes only to members
//! that take its layer or none in particular. That is the least an SFU must do per packet to
//! select layers (one octet read, one comparison per member), without keyframe-aligned
//! switching or renumbering, which a member that never switches does not need.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket as StdSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rtcd::engine::net::udp::{BatchSocket, RecvBatch, SEND_CHUNK, SendBatch};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::peer::{
    FrameClock, PeerConfig, PeerOutcome, STAMP_BYTES, read_layer, read_stamp, stamp_layer,
};
use super::stats::{Counters, StreamLoss, now_micros};

/// The SRTP auth tag WebRTC adds (HMAC-SHA1-80): raw packets carry as many extra bytes, so the
/// datagrams are the same size as the real ones.
const SRTP_TAG: usize = 10;
const RTP_HEADER: usize = 12;

/// Runs the relay on `socket` forever (the `udp-relay` binary).
pub fn serve(socket: &StdSocket) -> std::io::Result<()> {
    let mut calls = Calls::default();
    let mut to = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf)?;
        let packet = &buf[..n];
        to.clear();
        calls.route(packet, from, &mut to);
        for &(addr, joined) in &to {
            // A full receiver buffer drops the packet, as a real network would.
            let _ = socket.send_to(if joined { JOINED } else { packet }, addr);
        }
    }
}

/// The answer to a `JOIN`.
const JOINED: &[u8] = b"OK";
/// The relay with rtcd's own batched socket (`udp-relay --batched`): it receives and sends
/// through [`BatchSocket`] (`rtcd::engine::net::udp`), as rtcd's media workers do: a blocking
/// `recvmmsg` returns what is queued (at least one datagram); what those datagrams go to is
/// pushed onto a [`SendBatch`] of rtcd's size with [`BatchSocket::queue`] (which sends it
/// when full, as rtcd's workers do) and the rest sent with one [`BatchSocket::send_batch`],
/// which groups it by destination into UDP GSO messages and gives them to `sendmmsg`. Still
/// no ICE, DTLS, SRTP, RTCP or state per stream, so its cost per packet is the kernel's part
/// of forwarding alone, with the system calls and wake-ups shared the way rtcd shares them.
/// Its cost in one scenario against another tells how much of an SFU's difference between
/// them belongs to the kernel (a fan-out shares each receive and wake-up among many sends,
/// and sends runs of a frame's packets to one subscriber as one message; a two-person call
/// can do neither as much), which no code above the socket can change.
pub fn serve_batched(socket: &BatchSocket) -> std::io::Result<()> {
    let mut calls = Calls::default();
    let mut to = Vec::new();
    let mut received = RecvBatch::new();
    let mut sends = SendBatch::new(SEND_CHUNK);
    loop {
        // 0: the read timeout passed, or an ICMP error report came instead of a datagram.
        if socket.recv_batch(&mut received)? == 0 {
            continue;
        }
        for (from, packet) in received.iter() {
            to.clear();
            calls.route(packet, from, &mut to);
            for &(addr, joined) in &to {
                let datagram = if joined { JOINED } else { packet };
                // A full batch is sent first, as rtcd's workers send theirs.
                socket.queue(&mut sends, addr, datagram)?;
            }
        }
        socket.send_batch(&mut sends)?;
    }
}

/// The relay's calls: members, with the simulcast layer each takes (None: everything).
#[derive(Default)]
struct Calls {
    calls: HashMap<Vec<u8>, Vec<(SocketAddr, Option<u8>)>>,
    member_of: HashMap<SocketAddr, Vec<u8>>,
}

impl Calls {
    /// Where `packet` from `from` goes, onto `to`: (address, whether it is the answer to a
    /// join rather than the packet); see the module doc for the protocol.
    fn route(&mut self, packet: &[u8], from: SocketAddr, to: &mut Vec<(SocketAddr, bool)>) {
        if let Some(join) = packet.strip_prefix(b"JOIN ") {
            let (call, layer) = parse_join(join);
            let members = self.calls.entry(call.to_vec()).or_default();
            members.retain(|(addr, _)| *addr != from);
            members.push((from, layer));
            self.member_of.insert(from, call.to_vec());
            to.push((from, true));
            return;
        }
        let Some(members) = self.member_of.get(&from).and_then(|c| self.calls.get(c)) else {
            return;
        };
        let layer = packet_layer(packet);
        for &(addr, takes) in members {
            if addr != from && (layer.is_none() || takes.is_none() || layer == takes) {
                to.push((addr, false));
            }
        }
    }
}

/// `<call>` or `<call> <layer digit>` of a `JOIN`: the call and the layer taken.
fn parse_join(join: &[u8]) -> (&[u8], Option<u8>) {
    match join {
        [call @ .., b' ', digit] if digit.is_ascii_digit() => (call, Some(digit - b'0')),
        call => (call, None),
    }
}

/// The simulcast layer of a raw packet, from its SSRC (see the module doc); None for a packet
/// of a track without layers or one too short to have an RTP header.
fn packet_layer(packet: &[u8]) -> Option<u8> {
    let last = *packet.get(RTP_HEADER - 1)?;
    (last & 0x08 != 0).then_some(last & 0x07)
}

/// The SSRC of raw track `index` of `publisher` (layer: a simulcast layer, see the module doc).
fn raw_ssrc(publisher: u32, index: usize, layer: Option<usize>) -> u32 {
    let low = match layer {
        Some(l) => 0x08 | (l as u32 & 0x07),
        None => index as u32 & 0x07,
    };
    publisher.wrapping_mul(16).wrapping_add(low)
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
        let join = match config.receive_layer {
            Some(layer) => format!("JOIN {call} {layer}"),
            None => format!("JOIN {call}"),
        };
        socket.send(join.as_bytes()).await?;
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
        layer: Option<usize>,
    }
    let now = Instant::now();
    let mut tracks: Vec<Track> = config
        .tracks
        .iter()
        .enumerate()
        .map(|(i, t)| Track {
            ssrc: raw_ssrc(config.publisher, i, t.layer),
            seq: 0,
            clock: FrameClock::new(t, now),
            bytes: t.payload_bytes,
            layer: t.layer,
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
                let payload = &buf[RTP_HEADER..n - SRTP_TAG];
                let Some((publisher, sent)) = read_stamp(payload) else { continue };
                if let Some(l) = read_layer(payload).and_then(|l| counters.received_by_layer.get(l)) {
                    l.fetch_add(1, Relaxed);
                }
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
                stamp_layer(
                    &mut p[RTP_HEADER..RTP_HEADER + t.bytes],
                    config.publisher,
                    now_micros(),
                    t.layer,
                );
                socket.send(p).await.context("send to the relay")?;
                t.seq = t.seq.wrapping_add(1);
            }
            counters.sent_packets.fetch_add(packets, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both relays over real sockets on loopback: a burst from one member reaches every
    /// other member of its call whole and in order (the batched relay sends a run of equal
    /// datagrams as one GSO message: the kernel must cut it back at the same boundaries), a
    /// layered packet only the members taking its layer, and nothing crosses calls.
    #[test]
    fn both_relays_forward_bursts_whole_and_in_order_within_a_call() {
        for batched in [false, true] {
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            // The relay runs until the test process ends (it has no way to stop).
            let address = if batched {
                let relay = BatchSocket::bind(any, &Default::default()).unwrap();
                let address = relay.local_addr();
                std::thread::spawn(move || serve_batched(&relay));
                address
            } else {
                let relay = StdSocket::bind(any).unwrap();
                let address = relay.local_addr().unwrap();
                std::thread::spawn(move || serve(&relay));
                address
            };
            let member = |join: &str| {
                let s = StdSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.connect(address).unwrap();
                s.send(format!("JOIN {join}").as_bytes()).unwrap();
                let mut buf = [0u8; 16];
                let n = s.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], JOINED);
                s
            };
            let (a, b, c) = (member("c"), member("c"), member("c 1"));
            let other = member("d");
            other
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            // Five full datagrams and a short one (one GSO run), then a layered packet.
            let burst: Vec<Vec<u8>> = (0..6u8)
                .map(|i| vec![i; if i == 5 { 300 } else { 1100 }])
                .collect();
            for p in &burst {
                a.send(p).unwrap();
            }
            let mut layered = vec![9u8; 200];
            layered[RTP_HEADER - 1] = 0x08 | 2; // layer 2: not what c takes
            a.send(&layered).unwrap();
            let mut buf = [0u8; 2048];
            for p in &burst {
                for to in [&b, &c] {
                    let n = to.recv(&mut buf).unwrap();
                    assert!(
                        buf[..n] == p[..],
                        "batched: {batched}: {n} bytes of {} (want {} of {})",
                        buf[0],
                        p.len(),
                        p[0]
                    );
                }
            }
            let n = b.recv(&mut buf).unwrap();
            assert!(buf[..n] == layered[..], "batched: {batched}: {n} bytes");
            c.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(c.recv(&mut buf).is_err(), "c takes layer 1 only");
            assert!(other.recv(&mut buf).is_err(), "another call's member");
        }
    }

    #[test]
    fn joins_name_the_call_and_optionally_a_layer() {
        assert_eq!(parse_join(b"lg-3"), (&b"lg-3"[..], None));
        assert_eq!(parse_join(b"lg-3 2"), (&b"lg-3"[..], Some(2)));
        assert_eq!(parse_join(b"lg 3 x"), (&b"lg 3 x"[..], None));
    }

    #[test]
    fn layered_ssrcs_carry_their_layer_and_plain_ones_none() {
        let packet = |ssrc: u32| {
            let mut p = [0u8; RTP_HEADER];
            p[8..12].copy_from_slice(&ssrc.to_be_bytes());
            p
        };
        for layer in 0..3 {
            let ssrc = raw_ssrc(77, 1 + layer, Some(layer));
            assert_eq!(packet_layer(&packet(ssrc)), Some(layer as u8));
            assert_eq!(ssrc >> 4, 77, "the publisher stays in the high bits");
        }
        for index in 0..3 {
            assert_eq!(packet_layer(&packet(raw_ssrc(77, index, None))), None);
        }
        assert_eq!(packet_layer(&[0u8; 4]), None);
    }
}
