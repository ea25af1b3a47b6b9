//! Answers a client's first nominating check on a new candidate pair.
//!
//! `rtc` 0.21.1's controlled ICE agent (rtcd is ICE-lite, always controlled) does not answer a
//! Binding request carrying USE-CANDIDATE on a pair it has not validated yet: it sends a
//! triggered check of its own instead and answers only the client's *next* nominating check,
//! once its own check has succeeded. RFC 8445 §7.3.1.4 wants every valid request answered, and
//! a lite agent sends no checks at all (§2.5). A client that nominates at once (aiortc, and any
//! client right after an ICE restart, when every pair is new) therefore waits for its
//! retransmission timer: 100 ms to 0.5 s without a selected pair, and media sent meanwhile is
//! lost both ways. Seen with aiortc after an ICE restart in 10 of 10 runs.
//!
//! [`NominationReplay`] remembers the latest nominating request and, when the client's success
//! response to rtc's triggered check arrives (which is what validates the pair), feeds the
//! request to rtc once more: rtc now answers it (same transaction, so the client's pending check
//! completes) and selects the pair, one round trip after the first check instead of one
//! retransmission timeout. A request rtc had answered already is answered again, which STUN
//! allows (a retransmitted request gets the same answer).

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::net::Transport;
use super::net::demux::{STUN_HEADER_LEN, parse_stun_header};

/// STUN Binding success response (RFC 8489 §5: method 0x001, class success).
const BINDING_SUCCESS: u16 = 0x0101;
/// STUN Binding request.
const BINDING_REQUEST: u16 = 0x0001;
/// The USE-CANDIDATE attribute (RFC 8445 §16.1).
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// A remembered request older than this is not replayed (the client has retransmitted or
/// given up on it by then).
const MAX_AGE: Duration = Duration::from_secs(2);

/// See the module docs.
#[derive(Debug, Default)]
pub(super) struct NominationReplay {
    pending: Option<(Transport, BytesMut, Instant)>,
}

impl NominationReplay {
    /// Looks at a datagram before it goes to rtc. Returns a remembered request to feed to rtc
    /// again right after this datagram, if this is the success response that validates its pair.
    pub(super) fn inbound(
        &mut self,
        transport: &Transport,
        data: &[u8],
        now: Instant,
    ) -> Option<(Transport, BytesMut)> {
        let Ok(header) = parse_stun_header(data) else {
            return None;
        };
        match header.message_type {
            BINDING_REQUEST if has_use_candidate(data, header.length) => {
                self.pending = Some((*transport, BytesMut::from(data), now));
                None
            }
            BINDING_SUCCESS => {
                let (t, request, at) = self.pending.take()?;
                let fresh = now.saturating_duration_since(at) <= MAX_AGE;
                (fresh && t == *transport).then_some((t, request))
            }
            _ => None,
        }
    }
}

/// Whether a datagram is a Binding request that nominates its pair (USE-CANDIDATE).
pub(super) fn is_nominating(data: &[u8]) -> bool {
    parse_stun_header(data)
        .is_ok_and(|h| h.message_type == BINDING_REQUEST && has_use_candidate(data, h.length))
}

/// Whether a STUN message's attributes (`length` bytes after the header) include
/// USE-CANDIDATE. Framing errors read as "no".
fn has_use_candidate(data: &[u8], length: u16) -> bool {
    let Some(mut attrs) = data.get(STUN_HEADER_LEN..STUN_HEADER_LEN + usize::from(length)) else {
        return false;
    };
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        if kind == ATTR_USE_CANDIDATE {
            return true;
        }
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        attrs = attrs.get(4 + len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::net::Protocol;

    fn udp(port: u16) -> Transport {
        Transport {
            local: "10.0.0.1:3478".parse().unwrap(),
            peer: format!("10.0.0.2:{port}").parse().unwrap(),
            protocol: Protocol::Udp,
        }
    }

    fn stun(message_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().next_multiple_of(4), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&message_type.to_be_bytes());
        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn a_nominating_request_is_replayed_once_after_the_success_that_validates_its_pair() {
        let mut replay = NominationReplay::default();
        let now = Instant::now();
        let nominate = stun(
            BINDING_REQUEST,
            &[(0x0006, b"ours:theirs"), (ATTR_USE_CANDIDATE, b"")],
        );
        let success = stun(BINDING_SUCCESS, &[]);
        assert!(replay.inbound(&udp(1), &nominate, now).is_none());
        // A response from another address validates another pair.
        assert!(replay.inbound(&udp(2), &success, now).is_none());
        let replay_nominate = stun(
            BINDING_REQUEST,
            &[(0x0006, b"ours:theirs"), (ATTR_USE_CANDIDATE, b"")],
        );
        assert!(replay.inbound(&udp(1), &replay_nominate, now).is_none());
        let (t, again) = replay.inbound(&udp(1), &success, now).unwrap();
        assert_eq!((t, &again[..]), (udp(1), &replay_nominate[..]));
        // Once only.
        assert!(replay.inbound(&udp(1), &success, now).is_none());
    }

    #[test]
    fn plain_checks_stale_requests_and_other_packets_are_not_replayed() {
        let mut replay = NominationReplay::default();
        let now = Instant::now();
        let plain = stun(BINDING_REQUEST, &[(0x0006, b"ours:theirs")]);
        let success = stun(BINDING_SUCCESS, &[]);
        assert!(replay.inbound(&udp(1), &plain, now).is_none());
        assert!(replay.inbound(&udp(1), &success, now).is_none());
        let nominate = stun(BINDING_REQUEST, &[(ATTR_USE_CANDIDATE, b"")]);
        assert!(replay.inbound(&udp(1), &nominate, now).is_none());
        assert!(
            replay
                .inbound(&udp(1), &success, now + MAX_AGE + Duration::from_millis(1))
                .is_none()
        );
        // RTP, DTLS, truncated or mis-framed STUN: nothing.
        for junk in [&[0x80u8, 96, 0, 1][..], &[22, 254, 253], &[0, 1, 0, 8]] {
            assert!(replay.inbound(&udp(1), junk, now).is_none());
        }
        let mut overrun = stun(BINDING_REQUEST, &[(0x0006, b"abcd")]);
        overrun[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert!(!has_use_candidate(&overrun, 8));
    }
}
