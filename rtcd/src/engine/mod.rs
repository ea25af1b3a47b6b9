//! The media engine: everything that touches the WebRTC library (`rtc`, webrtc-rs's sans-IO
//! core) and the media sockets.
//!
//! Nothing outside this module sees the WebRTC library's types; the SFU talks to the engine
//! through rtcd's own candidate, event and packet types (`media::packet`).
//!
//! * [`net`]: rtcd's own network IO (one UDP port for every session, batched system calls,
//!   first-byte demultiplexing and ICE-TCP framing). Pure std / nix / tokio networking: it knows
//!   nothing of the WebRTC library, so it can be tested and measured on its own.
//! * [`bwe`]: send-side bandwidth estimation towards each client (rtcd's own estimator after
//!   draft-ietf-rmcat-gcc, no pacer).
//! * [`peer`]: one client's peer connection, driven by hand: datagrams in, datagrams and events
//!   out, time passed in explicitly, so a whole session runs in a unit test without a socket.
//!   `rtc` does its SDP and ICE; the media path is the engine's own: `dtls` (the handshake
//!   that keys SRTP), `receiving` (which section an arriving stream belongs to), what the
//!   client sends counted for reports and NACKs (`reception`) and for transport-cc feedback
//!   (`arrivals`) in place, and what rtcd sends counted and numbered in place
//!   (`sender_reports`, `bwe`'s transport-cc). No interceptor of `rtc`'s is left on it.
//!
//! `docs/engine-v2.md` has the design, facts about `rtc` found on the way, and what is left.

mod arrivals;
pub mod bwe;
mod dtls;
#[cfg(test)]
mod feedback;
mod nack;
pub mod net;
mod nomination;
pub mod peer;
mod receiving;
mod reception;
mod rtx;
mod sender_reports;
mod srtp;
#[cfg(test)]
pub(crate) mod testing;

/// For the e2e harness's webrtc-rs peers, whose NACK generator has the defect rtcd's own
/// (`reception`) does not: a test client that stops NACKing at every renegotiation would blame
/// rtcd for its own holes.
pub use nack::StableNackGenerator;
pub use peer::{EngineError, Identity, Peer, PeerEvent, PeerSettings};
