//! Which session a packet on the shared media port belongs to.
//!
//! Every session shares one UDP port (and one ICE-TCP port), so each packet must be routed to
//! its session before the WebRTC core sees it. Two facts make that possible:
//!
//! * RFC 7983: the first byte tells STUN, DTLS, TURN channel data and RTP / RTCP apart
//!   ([`classify`]); anything else is not ours and is dropped.
//! * ICE: a peer's connectivity checks are STUN Binding requests whose USERNAME is
//!   `<our ufrag>:<their ufrag>`; our ufrag is unique per session, so the first check from a
//!   new address names its session ([`binding_request_local_ufrag`]).
//!
//! [`Demux`] routes by 5-tuple ([`Transport`]) and learns a new 5-tuple from a Binding request
//! naming a registered ufrag. That single rule covers first contact, a peer's address change
//! (its ICE agent sends checks from the new address) and ICE restart (the session registers
//! its new ufrag next to the old one).
//!
//! The table is bounded: at most [`DemuxConfig::max_tuples_per_key`] 5-tuples and
//! [`DemuxConfig::max_ufrags_per_key`] ufrags per session, the oldest evicted, so no peer can
//! grow it. Unknown packets are only counted: the receive loop must stay cheap under a flood.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use super::Transport;

/// The STUN header length (RFC 8489 §5).
pub const STUN_HEADER_LEN: usize = 20;
/// The STUN magic cookie (RFC 8489 §5): tells RFC 5389+ STUN from older or random bytes.
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN message type of a Binding request (method 0x001, class request).
pub const STUN_BINDING_REQUEST: u16 = 0x0001;
/// The USERNAME attribute type.
pub const STUN_ATTR_USERNAME: u16 = 0x0006;
/// The longest USERNAME value RFC 8489 §14.3 allows (in bytes).
pub const STUN_MAX_USERNAME: usize = 513;
/// The longest ufrag rtcd registers (RFC 8839 §5.4: 4 to 256 ice-chars).
pub const MAX_UFRAG_LEN: usize = 256;

/// What a packet on the shared port is, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// 0..=3: STUN (ICE connectivity checks and their responses).
    Stun,
    /// 20..=63: DTLS (the handshake that keys SRTP, and SCTP data channels).
    Dtls,
    /// 64..=79: TURN channel data. rtcd is no TURN server; kept apart so it is not mistaken
    /// for anything else.
    TurnChannel,
    /// 128..=191: RTP or RTCP (multiplexed per RFC 5761; the core tells them apart).
    Rtp,
    /// Anything else (including an empty packet): not ours, drop it.
    Other,
}

/// Classifies a packet by its first byte (RFC 7983). Constant time, no parsing.
pub fn classify(packet: &[u8]) -> PacketKind {
    match packet.first() {
        Some(0..=3) => PacketKind::Stun,
        Some(20..=63) => PacketKind::Dtls,
        Some(64..=79) => PacketKind::TurnChannel,
        Some(128..=191) => PacketKind::Rtp,
        _ => PacketKind::Other,
    }
}

/// Why a packet is not a usable STUN Binding request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Shorter than the 20-byte header.
    #[error("shorter than a STUN header")]
    Truncated,
    /// The two top bits of the message type are not zero.
    #[error("not a STUN message (top bits set)")]
    NotStun,
    /// The magic cookie is wrong (not RFC 5389+ STUN).
    #[error("bad STUN magic cookie")]
    BadCookie,
    /// The header's length is not a multiple of 4 or runs past the end of the packet.
    #[error("bad STUN message length")]
    BadLength,
    /// A STUN message, but not a Binding request (a response, an indication, another method).
    #[error("not a STUN Binding request")]
    NotBindingRequest,
    /// An attribute's length runs past the end of the message.
    #[error("STUN attribute runs past the end of the message")]
    AttributeOverrun,
    /// No USERNAME attribute.
    #[error("no USERNAME attribute")]
    NoUsername,
    /// The USERNAME is too long, not UTF-8, or not `<local ufrag>:<remote ufrag>`.
    #[error("malformed USERNAME attribute")]
    BadUsername,
}

impl StunError {
    /// Whether the packet claimed to be STUN but is broken (as opposed to a well-formed STUN
    /// message that is simply not a Binding request). Counted apart in [`DemuxStats`].
    pub fn is_malformed(self) -> bool {
        !matches!(self, StunError::NotBindingRequest)
    }
}

/// A validated STUN header (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunHeader {
    /// Message type (method and class).
    pub message_type: u16,
    /// Length of the attributes, in bytes (a multiple of 4).
    pub length: u16,
    /// The 96-bit transaction ID.
    pub transaction_id: [u8; 12],
}

/// Validates a STUN header: at least 20 bytes, top two bits zero, the magic cookie, a length
/// that is a multiple of 4 and fits in the packet. Does not look at the attributes.
pub fn parse_stun_header(packet: &[u8]) -> Result<StunHeader, StunError> {
    let Some(header) = packet.get(..STUN_HEADER_LEN) else {
        return Err(StunError::Truncated);
    };
    let message_type = u16::from_be_bytes([header[0], header[1]]);
    if message_type & 0xC000 != 0 {
        return Err(StunError::NotStun);
    }
    let length = u16::from_be_bytes([header[2], header[3]]);
    if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != STUN_MAGIC_COOKIE {
        return Err(StunError::BadCookie);
    }
    if !length.is_multiple_of(4) || STUN_HEADER_LEN + usize::from(length) > packet.len() {
        return Err(StunError::BadLength);
    }
    let mut transaction_id = [0; 12];
    transaction_id.copy_from_slice(&header[8..20]);
    Ok(StunHeader {
        message_type,
        length,
        transaction_id,
    })
}

/// Our ufrag from a STUN Binding request: the part of USERNAME before the `:`.
///
/// In ICE the USERNAME of a check is `<receiver's ufrag>:<sender's ufrag>` (RFC 8445 §7.2.2),
/// so in the requests rtcd receives the first part is our session's ufrag. Only the header and
/// the attribute framing are validated; MESSAGE-INTEGRITY is the ICE agent's job (the demux
/// hands the packet to the session, whose agent authenticates it). Never allocates.
pub fn binding_request_local_ufrag(packet: &[u8]) -> Result<&str, StunError> {
    let header = parse_stun_header(packet)?;
    if header.message_type != STUN_BINDING_REQUEST {
        return Err(StunError::NotBindingRequest);
    }
    let mut attrs = &packet[STUN_HEADER_LEN..STUN_HEADER_LEN + usize::from(header.length)];
    while !attrs.is_empty() {
        if attrs.len() < 4 {
            return Err(StunError::AttributeOverrun);
        }
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let padded = len.next_multiple_of(4);
        let Some(value) = attrs.get(4..4 + len) else {
            return Err(StunError::AttributeOverrun);
        };
        if kind == STUN_ATTR_USERNAME {
            if len > STUN_MAX_USERNAME {
                return Err(StunError::BadUsername);
            }
            let username = std::str::from_utf8(value).map_err(|_| StunError::BadUsername)?;
            return match username.split_once(':') {
                Some((local, _)) if !local.is_empty() => Ok(local),
                _ => Err(StunError::BadUsername),
            };
        }
        // The last attribute's padding may be missing in sloppy encoders; the length check in
        // the header already guarantees a multiple of 4 overall, so this only skips.
        attrs = attrs.get(4 + padded..).unwrap_or(&[]);
    }
    Err(StunError::NoUsername)
}

/// Limits of the [`Demux`] table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemuxConfig {
    /// 5-tuples remembered per session. A peer has a handful of candidate pairs; more only
    /// grows the table. When full, the oldest unconfirmed tuple is evicted (then the oldest).
    pub max_tuples_per_key: usize,
    /// Ufrags accepted per session: the current one plus the previous one during an ICE
    /// restart (checks with the old credentials may still be in flight). The oldest goes.
    pub max_ufrags_per_key: usize,
}

impl Default for DemuxConfig {
    fn default() -> Self {
        Self {
            max_tuples_per_key: 8,
            max_ufrags_per_key: 2,
        }
    }
}

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<K> {
    /// A known 5-tuple of session `K`.
    Known(K),
    /// A STUN Binding request naming session `K`'s ufrag from a new 5-tuple, which is now
    /// learned (unconfirmed until [`Demux::confirm`]). Give the packet to `K`'s ICE agent.
    Learned(K),
    /// No session: an unknown 5-tuple that is not a Binding request for a registered ufrag.
    /// Counted in [`DemuxStats::unknown`]; drop it.
    Unknown,
    /// Not a WebRTC packet by its first byte (RFC 7983); drop it even from a known 5-tuple.
    Drop,
}

/// Counters of [`Demux::route`]; plain integers (the demux has one owner, the receive loop).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    /// Packets routed by a known 5-tuple.
    pub known: u64,
    /// 5-tuples learned from Binding requests.
    pub learned: u64,
    /// 5-tuples evicted because a session had too many.
    pub evicted: u64,
    /// Packets from unknown 5-tuples that named no registered session.
    pub unknown: u64,
    /// Of those, STUN packets that were malformed (bad header, attribute overrun, ...).
    pub malformed_stun: u64,
    /// Packets dropped by their first byte.
    pub dropped: u64,
}

/// Why a ufrag cannot be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DemuxError {
    /// Another session already has this ufrag (ufrags must be unique per port to route).
    #[error("ufrag already registered to another session")]
    UfragTaken,
    /// Empty, longer than [`MAX_UFRAG_LEN`], or containing `:` (which splits USERNAME).
    #[error("invalid ufrag")]
    InvalidUfrag,
}

#[derive(Debug, Clone, Copy)]
struct Tuple {
    transport: Transport,
    confirmed: bool,
}

#[derive(Debug, Default)]
struct KeyState {
    ufrags: VecDeque<Box<str>>,
    tuples: VecDeque<Tuple>,
}

/// The routing table of one shared media port: ufrag → session and 5-tuple → session.
///
/// `K` is the engine's session handle (e.g. a worker index plus a slot). The table has one
/// owner (the receive loop), hence `&mut self` and no locks. Routing a packet never allocates;
/// registering a ufrag or learning a tuple may (bounded by the per-key limits).
#[derive(Debug)]
pub struct Demux<K> {
    config: DemuxConfig,
    ufrags: HashMap<Box<str>, K>,
    tuples: HashMap<Transport, K>,
    keys: HashMap<K, KeyState>,
    stats: DemuxStats,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Self::new(DemuxConfig::default())
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// An empty table with these limits (each limit at least 1).
    pub fn new(config: DemuxConfig) -> Self {
        Self {
            config: DemuxConfig {
                max_tuples_per_key: config.max_tuples_per_key.max(1),
                max_ufrags_per_key: config.max_ufrags_per_key.max(1),
            },
            ufrags: HashMap::new(),
            tuples: HashMap::new(),
            keys: HashMap::new(),
            stats: DemuxStats::default(),
        }
    }

    /// Registers our local `ufrag` for session `key`, when the session is created and again
    /// on each ICE restart. Previous ufrags of `key` stay routable (checks with the old
    /// credentials may still arrive) until more than `max_ufrags_per_key` are registered,
    /// then the oldest is forgotten. Registering a ufrag `key` already has is a no-op.
    pub fn register(&mut self, key: K, ufrag: &str) -> Result<(), DemuxError> {
        if ufrag.is_empty() || ufrag.len() > MAX_UFRAG_LEN || ufrag.contains(':') {
            return Err(DemuxError::InvalidUfrag);
        }
        match self.ufrags.get(ufrag) {
            Some(owner) if *owner == key => return Ok(()),
            Some(_) => return Err(DemuxError::UfragTaken),
            None => {}
        }
        let state = self.keys.entry(key).or_default();
        state.ufrags.push_back(ufrag.into());
        self.ufrags.insert(ufrag.into(), key);
        while state.ufrags.len() > self.config.max_ufrags_per_key {
            if let Some(old) = state.ufrags.pop_front() {
                self.ufrags.remove(&old);
            }
        }
        Ok(())
    }

    /// Stops routing by `ufrag` (e.g. once an ICE restart has completed). Returns its session.
    pub fn retire_ufrag(&mut self, ufrag: &str) -> Option<K> {
        let key = self.ufrags.remove(ufrag)?;
        if let Some(state) = self.keys.get_mut(&key) {
            state.ufrags.retain(|u| &**u != ufrag);
        }
        Some(key)
    }

    /// The session that registered `ufrag` (ICE-TCP asks this before keeping a connection).
    pub fn key_of_ufrag(&self, ufrag: &str) -> Option<K> {
        self.ufrags.get(ufrag).copied()
    }

    /// Routes one packet that arrived on `transport`: by 5-tuple first; from an unknown
    /// 5-tuple, a STUN Binding request naming a registered ufrag teaches the table the new
    /// 5-tuple. Never allocates for an unknown or dropped packet.
    pub fn route(&mut self, transport: Transport, packet: &[u8]) -> Route<K> {
        let kind = classify(packet);
        if kind == PacketKind::Other {
            self.stats.dropped += 1;
            return Route::Drop;
        }
        if let Some(key) = self.tuples.get(&transport) {
            self.stats.known += 1;
            return Route::Known(*key);
        }
        if kind == PacketKind::Stun {
            match binding_request_local_ufrag(packet) {
                Ok(ufrag) => {
                    if let Some(key) = self.ufrags.get(ufrag).copied() {
                        self.insert_tuple(key, transport, false);
                        self.stats.learned += 1;
                        return Route::Learned(key);
                    }
                }
                Err(e) if e.is_malformed() => self.stats.malformed_stun += 1,
                Err(_) => {}
            }
        }
        self.stats.unknown += 1;
        Route::Unknown
    }

    /// Adds `transport` to `key` explicitly, confirmed (e.g. a path rtcd itself checks as the
    /// controlling full-ICE agent, whose responses carry no USERNAME). Moves the tuple if
    /// another session had it. Does nothing if `key` has no registered ufrag (it was removed).
    pub fn learn(&mut self, key: K, transport: Transport) {
        if self.keys.contains_key(&key) {
            self.insert_tuple(key, transport, true);
        }
    }

    /// Marks a learned 5-tuple as authenticated (the session's ICE agent accepted a check on
    /// it). Confirmed tuples are evicted last, so a flood of spoofed checks naming a known
    /// ufrag cannot push a session's working path out. Returns false if the tuple is unknown.
    pub fn confirm(&mut self, transport: Transport) -> bool {
        let Some(key) = self.tuples.get(&transport) else {
            return false;
        };
        if let Some(state) = self.keys.get_mut(key) {
            for tuple in state.tuples.iter_mut() {
                if tuple.transport == transport {
                    tuple.confirmed = true;
                    return true;
                }
            }
        }
        false
    }

    /// Forgets one 5-tuple (e.g. its ICE-TCP connection closed). Returns its session.
    pub fn forget(&mut self, transport: Transport) -> Option<K> {
        let key = self.tuples.remove(&transport)?;
        if let Some(state) = self.keys.get_mut(&key) {
            state.tuples.retain(|t| t.transport != transport);
        }
        Some(key)
    }

    /// Forgets session `key`: its ufrags and its 5-tuples.
    pub fn remove(&mut self, key: K) {
        if let Some(state) = self.keys.remove(&key) {
            for ufrag in state.ufrags {
                self.ufrags.remove(&ufrag);
            }
            for tuple in state.tuples {
                self.tuples.remove(&tuple.transport);
            }
        }
    }

    /// The 5-tuples of `key`, oldest first (diagnostics and tests).
    pub fn tuples_of(&self, key: K) -> impl Iterator<Item = Transport> + '_ {
        self.keys
            .get(&key)
            .into_iter()
            .flat_map(|s| s.tuples.iter().map(|t| t.transport))
    }

    /// Sessions with at least one registered ufrag or tuple.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The counters since creation.
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    fn insert_tuple(&mut self, key: K, transport: Transport, confirmed: bool) {
        if let Some(previous) = self.tuples.insert(transport, key) {
            if previous == key {
                if confirmed {
                    self.confirm(transport);
                }
                return;
            }
            if let Some(state) = self.keys.get_mut(&previous) {
                state.tuples.retain(|t| t.transport != transport);
            }
        }
        let state = self.keys.entry(key).or_default();
        if state.tuples.len() >= self.config.max_tuples_per_key {
            let victim = state.tuples.iter().position(|t| !t.confirmed).unwrap_or(0);
            if let Some(old) = state.tuples.remove(victim) {
                self.tuples.remove(&old.transport);
                self.stats.evicted += 1;
            }
        }
        state.tuples.push_back(Tuple {
            transport,
            confirmed,
        });
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn udp(peer_port: u16) -> Transport {
        Transport::udp(
            addr("127.0.0.1:3478"),
            addr(&format!("127.0.0.1:{peer_port}")),
        )
    }

    /// A STUN message with the given type and raw attributes (type, value), padded.
    fn stun(message_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, value) in attrs {
            body.extend_from_slice(&kind.to_be_bytes());
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&message_type.to_be_bytes());
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    /// A STUN Binding request naming `username` (also the shard's receiver tests' checks).
    pub(crate) fn binding(username: &str) -> Vec<u8> {
        // PRIORITY first, so USERNAME is not the first attribute.
        stun(
            STUN_BINDING_REQUEST,
            &[
                (0x0024, &[0, 0, 0, 1]),
                (STUN_ATTR_USERNAME, username.as_bytes()),
            ],
        )
    }

    #[test]
    fn classify_follows_rfc_7983() {
        for (byte, kind) in [
            (0, PacketKind::Stun),
            (3, PacketKind::Stun),
            (4, PacketKind::Other),
            (19, PacketKind::Other),
            (20, PacketKind::Dtls),
            (63, PacketKind::Dtls),
            (64, PacketKind::TurnChannel),
            (79, PacketKind::TurnChannel),
            (80, PacketKind::Other),
            (127, PacketKind::Other),
            (128, PacketKind::Rtp),
            (191, PacketKind::Rtp),
            (192, PacketKind::Other),
            (255, PacketKind::Other),
        ] {
            assert_eq!(classify(&[byte, 0, 0]), kind, "first byte {byte}");
        }
        assert_eq!(classify(&[]), PacketKind::Other);
    }

    #[test]
    fn binding_request_yields_local_ufrag() {
        assert_eq!(
            binding_request_local_ufrag(&binding("abcd:wxyz")),
            Ok("abcd")
        );
        // Our ufrag is everything before the first colon.
        assert_eq!(binding_request_local_ufrag(&binding("ab:cd:ef")), Ok("ab"));
        // An odd-length username is padded; the parser uses the attribute's own length.
        assert_eq!(binding_request_local_ufrag(&binding("abc:x")), Ok("abc"));
    }

    #[test]
    fn malformed_stun_is_rejected() {
        let good = binding("abcd:wxyz");
        assert_eq!(
            binding_request_local_ufrag(&good[..19]),
            Err(StunError::Truncated)
        );
        // Header length claims more than the datagram holds.
        assert_eq!(
            binding_request_local_ufrag(&good[..good.len() - 4]),
            Err(StunError::BadLength)
        );
        let mut bad_cookie = good.clone();
        bad_cookie[4] ^= 0xff;
        assert_eq!(
            binding_request_local_ufrag(&bad_cookie),
            Err(StunError::BadCookie)
        );
        let mut not_multiple_of_4 = good.clone();
        not_multiple_of_4[3] = (good.len() - 20 - 2) as u8;
        assert_eq!(
            binding_request_local_ufrag(&not_multiple_of_4),
            Err(StunError::BadLength)
        );
        let mut top_bits = good.clone();
        top_bits[0] |= 0x80;
        assert_eq!(
            binding_request_local_ufrag(&top_bits),
            Err(StunError::NotStun)
        );
        // USERNAME's attribute length runs past the end of the message.
        let mut overrun = good.clone();
        let username_len_at = 20 + 8 + 2;
        overrun[username_len_at..username_len_at + 2].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(
            binding_request_local_ufrag(&overrun),
            Err(StunError::AttributeOverrun)
        );
        // A dangling partial attribute header.
        let mut dangling = stun(STUN_BINDING_REQUEST, &[(0x0024, &[0, 0, 0, 1])]);
        dangling.extend_from_slice(&[0, 6, 0, 8]); // USERNAME of 8 bytes, none present
        dangling[3] += 4;
        assert_eq!(
            binding_request_local_ufrag(&dangling),
            Err(StunError::AttributeOverrun)
        );
        let mut dangling_short = stun(STUN_BINDING_REQUEST, &[]);
        dangling_short.extend_from_slice(&[0, 6, 0, 0]);
        dangling_short[3] = 4;
        dangling_short.truncate(22); // the header says 4 bytes of attributes, 2 are present
        assert_eq!(
            binding_request_local_ufrag(&dangling_short),
            Err(StunError::BadLength)
        );
        assert_eq!(
            binding_request_local_ufrag(&stun(STUN_BINDING_REQUEST, &[(0x0024, &[0, 0, 0, 1])])),
            Err(StunError::NoUsername)
        );
        assert_eq!(
            binding_request_local_ufrag(&binding("nocolon")),
            Err(StunError::BadUsername)
        );
        assert_eq!(
            binding_request_local_ufrag(&binding(":remote")),
            Err(StunError::BadUsername)
        );
        let bad_utf8 = stun(
            STUN_BINDING_REQUEST,
            &[(STUN_ATTR_USERNAME, &[0xff, b':', b'a'])],
        );
        assert_eq!(
            binding_request_local_ufrag(&bad_utf8),
            Err(StunError::BadUsername)
        );
        let long = "a".repeat(600) + ":b";
        assert_eq!(
            binding_request_local_ufrag(&binding(&long)),
            Err(StunError::BadUsername)
        );
        // A Binding success response (0x0101) carries no routable ufrag.
        assert_eq!(
            binding_request_local_ufrag(&stun(0x0101, &[(STUN_ATTR_USERNAME, b"a:b")])),
            Err(StunError::NotBindingRequest)
        );
        assert!(!StunError::NotBindingRequest.is_malformed());
        assert!(StunError::BadCookie.is_malformed());
    }

    #[test]
    fn routes_by_learned_tuple_then_by_tuple() {
        let mut demux = Demux::<u32>::default();
        demux.register(1, "aaaa").unwrap();
        demux.register(2, "bbbb").unwrap();
        let rtp = [0x80u8, 96, 0, 1];
        // Media from an unknown tuple: unknown, counted.
        assert_eq!(demux.route(udp(5000), &rtp), Route::Unknown);
        // A check naming session 2 teaches the tuple.
        assert_eq!(
            demux.route(udp(5000), &binding("bbbb:peer")),
            Route::Learned(2)
        );
        assert_eq!(demux.route(udp(5000), &rtp), Route::Known(2));
        // DTLS and STUN from the known tuple go by tuple (even a check naming another ufrag).
        assert_eq!(demux.route(udp(5000), &[22, 254, 253]), Route::Known(2));
        assert_eq!(
            demux.route(udp(5000), &binding("aaaa:peer")),
            Route::Known(2)
        );
        // The same peer address over TCP is another tuple.
        let tcp = Transport::tcp(udp(5000).local, udp(5000).peer);
        assert_eq!(demux.route(tcp, &rtp), Route::Unknown);
        // Not a WebRTC packet: dropped even from a known tuple.
        assert_eq!(demux.route(udp(5000), &[100, 1, 2]), Route::Drop);
        let stats = demux.stats();
        assert_eq!(stats.known, 3);
        assert_eq!(stats.learned, 1);
        assert_eq!(stats.unknown, 2);
        assert_eq!(stats.dropped, 1);
    }

    #[test]
    fn unknown_ufrag_and_bad_stun_are_unknown_and_learn_nothing() {
        let mut demux = Demux::<u32>::default();
        demux.register(1, "aaaa").unwrap();
        assert_eq!(
            demux.route(udp(5000), &binding("zzzz:peer")),
            Route::Unknown
        );
        let mut bad = binding("aaaa:peer");
        bad[5] = 0;
        assert_eq!(demux.route(udp(5000), &bad), Route::Unknown);
        // A response naming our ufrag does not teach a tuple either.
        let response = stun(0x0101, &[(STUN_ATTR_USERNAME, b"aaaa:peer")]);
        assert_eq!(demux.route(udp(5000), &response), Route::Unknown);
        assert_eq!(demux.tuples_of(1).count(), 0);
        let stats = demux.stats();
        assert_eq!((stats.unknown, stats.malformed_stun), (3, 1));
    }

    #[test]
    fn address_change_is_learned_from_checks() {
        let mut demux = Demux::<u32>::default();
        demux.register(1, "aaaa").unwrap();
        assert_eq!(
            demux.route(udp(5000), &binding("aaaa:p")),
            Route::Learned(1)
        );
        // The peer moves (new network): its ICE agent checks from the new address.
        assert_eq!(
            demux.route(udp(6000), &binding("aaaa:p")),
            Route::Learned(1)
        );
        assert_eq!(demux.route(udp(6000), &[0x80, 0]), Route::Known(1));
        assert_eq!(
            demux.tuples_of(1).collect::<Vec<_>>(),
            [udp(5000), udp(6000)]
        );
    }

    #[test]
    fn ice_restart_registers_a_new_ufrag_next_to_the_old() {
        let mut demux = Demux::<u32>::default();
        demux.register(1, "old1").unwrap();
        demux.register(1, "new1").unwrap();
        assert_eq!(
            demux.route(udp(5000), &binding("old1:p")),
            Route::Learned(1)
        );
        assert_eq!(
            demux.route(udp(5001), &binding("new1:p")),
            Route::Learned(1)
        );
        // A second restart pushes the oldest ufrag out (max 2 per key).
        demux.register(1, "new2").unwrap();
        assert_eq!(demux.key_of_ufrag("old1"), None);
        assert_eq!(demux.route(udp(5002), &binding("old1:p")), Route::Unknown);
        assert_eq!(
            demux.route(udp(5003), &binding("new2:p")),
            Route::Learned(1)
        );
        // Retiring the previous one explicitly.
        assert_eq!(demux.retire_ufrag("new1"), Some(1));
        assert_eq!(demux.route(udp(5004), &binding("new1:p")), Route::Unknown);
        // Re-registering the current ufrag is a no-op; another key cannot take it.
        assert_eq!(demux.register(1, "new2"), Ok(()));
        assert_eq!(demux.register(2, "new2"), Err(DemuxError::UfragTaken));
        assert_eq!(demux.register(2, ""), Err(DemuxError::InvalidUfrag));
        assert_eq!(demux.register(2, "a:b"), Err(DemuxError::InvalidUfrag));
        assert_eq!(
            demux.register(2, &"x".repeat(MAX_UFRAG_LEN + 1)),
            Err(DemuxError::InvalidUfrag)
        );
    }

    #[test]
    fn tuples_per_key_are_bounded_oldest_unconfirmed_evicted_first() {
        let mut demux = Demux::<u32>::new(DemuxConfig {
            max_tuples_per_key: 3,
            max_ufrags_per_key: 2,
        });
        demux.register(1, "aaaa").unwrap();
        for port in 5000..5003 {
            demux.route(udp(port), &binding("aaaa:p"));
        }
        assert!(demux.confirm(udp(5000)));
        assert!(!demux.confirm(udp(9999)));
        // A flood of checks from new addresses: 5000 (confirmed) survives, the rest rotate.
        for port in 6000..6100 {
            assert_eq!(
                demux.route(udp(port), &binding("aaaa:p")),
                Route::Learned(1)
            );
        }
        let tuples: Vec<_> = demux.tuples_of(1).collect();
        assert_eq!(tuples, [udp(5000), udp(6098), udp(6099)]);
        assert_eq!(demux.route(udp(5000), &[0x80]), Route::Known(1));
        assert_eq!(demux.route(udp(6000), &[0x80]), Route::Unknown);
        assert_eq!(demux.stats().evicted, 100);
        // All confirmed: the oldest goes.
        assert!(demux.confirm(udp(6098)));
        assert!(demux.confirm(udp(6099)));
        demux.route(udp(7000), &binding("aaaa:p"));
        assert_eq!(
            demux.tuples_of(1).collect::<Vec<_>>(),
            [udp(6098), udp(6099), udp(7000)]
        );
    }

    #[test]
    fn remove_forgets_ufrags_and_tuples() {
        let mut demux = Demux::<u32>::default();
        demux.register(1, "aaaa").unwrap();
        demux.register(2, "bbbb").unwrap();
        demux.route(udp(5000), &binding("aaaa:p"));
        demux.route(udp(5001), &binding("bbbb:p"));
        demux.remove(1);
        assert_eq!(demux.route(udp(5000), &[0x80]), Route::Unknown);
        assert_eq!(demux.route(udp(5002), &binding("aaaa:p")), Route::Unknown);
        assert_eq!(demux.route(udp(5001), &[0x80]), Route::Known(2));
        assert_eq!(demux.len(), 1);
        // The ufrag is free again.
        demux.register(3, "aaaa").unwrap();
        // learn() on a removed key is ignored; on a live key it moves the tuple.
        demux.learn(1, udp(5001));
        assert_eq!(demux.route(udp(5001), &[0x80]), Route::Known(2));
        demux.learn(3, udp(5001));
        assert_eq!(demux.route(udp(5001), &[0x80]), Route::Known(3));
        assert_eq!(demux.tuples_of(2).count(), 0);
        assert_eq!(demux.forget(udp(5001)), Some(3));
        assert_eq!(demux.route(udp(5001), &[0x80]), Route::Unknown);
        demux.remove(2);
        demux.remove(3);
        assert!(demux.is_empty());
    }
}
