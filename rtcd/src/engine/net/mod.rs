//! rtcd's own network IO layer for the media engine.
//!
//! The sans-IO WebRTC core has no UDP mux, so rtcd owns its media sockets and feeds the core.
//! This module is that IO, and nothing else: no WebRTC library type appears here.
//!
//! * [`udp`]: [`udp::BatchSocket`], one bound UDP socket for every session, read with
//!   `recvmmsg` (up to [`udp::RECV_BATCH`] datagrams per system call) and written with
//!   `sendmmsg`, using UDP GSO where consecutive datagrams to one destination allow it.
//! * [`demux`]: RFC 7983 first-byte classification, a minimal STUN Binding-request parser
//!   (the local ICE username fragment) and [`demux::Demux`], the table that routes a packet
//!   to its session by 5-tuple, learning new 5-tuples from ICE checks (address change, ICE
//!   restart).
//! * [`tcp`]: passive ICE-TCP (RFC 6544) on one TCP port, RFC 4571 framing.
//!
//! [`Transport`] names the path a packet took (or must take), for all three.

pub mod demux;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;

use bytes::Bytes;

/// The transport protocol of a media path. ICE candidates are UDP or (passive) TCP; the engine
/// needs to know which to answer on the same path a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// The shared UDP socket ([`udp::BatchSocket`]).
    Udp,
    /// A passive ICE-TCP connection ([`tcp::IceTcpServer`]).
    Tcp,
}

/// One media path as seen from rtcd: our local address, the peer's address and the protocol.
///
/// This is the 5-tuple the [`demux::Demux`] routes by, and the address a reply must be sent
/// from and to. `local` matters even with one socket per protocol: a socket bound to a
/// wildcard address, or the TCP listener, has many local addresses over its lifetime, and a
/// TCP connection is identified by both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transport {
    /// Our side: the bound address of the socket or of the accepted TCP connection.
    pub local: SocketAddr,
    /// The remote side (for UDP: the datagram's source; for TCP: the connection's peer).
    pub peer: SocketAddr,
    /// UDP or TCP.
    pub protocol: Protocol,
}

impl Transport {
    /// A UDP path (shorthand used by the receive loop and tests).
    pub fn udp(local: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            local,
            peer,
            protocol: Protocol::Udp,
        }
    }

    /// A TCP path.
    pub fn tcp(local: SocketAddr, peer: SocketAddr) -> Self {
        Self {
            local,
            peer,
            protocol: Protocol::Tcp,
        }
    }
}

/// A packet received on a media path, owned, for hand-off to the session's worker (the
/// ICE-TCP reader delivers these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The path it arrived on (reply on the same one).
    pub transport: Transport,
    /// The packet (one datagram, or one RFC 4571 frame's payload without its length).
    pub data: Bytes,
}
