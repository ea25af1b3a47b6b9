//! rtcd's own media IO (placeholder until the net module lands).

use std::net::SocketAddr;

/// Which transport a datagram or frame came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP, the normal case.
    Udp,
    /// ICE-TCP (RFC 6544), for networks that block UDP.
    Tcp,
}

/// The 5-tuple of a datagram: our address, the peer's, and the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transport {
    /// Our side (the socket's address).
    pub local: SocketAddr,
    /// The remote side.
    pub peer: SocketAddr,
    /// UDP or TCP.
    pub protocol: Protocol,
}
