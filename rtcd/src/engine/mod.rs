//! The media engine v2 (issue 11): everything that touches the WebRTC library (`rtc`,
//! webrtc-rs's sans-IO core) and the media sockets.
//!
//! Nothing outside this module sees the WebRTC library's types; the SFU talks to the engine
//! through rtcd's own candidate, event and packet types (`sfu::packet`).
//!
//! * [`net`]: rtcd's own network IO (one UDP port for every session, batched system calls,
//!   first-byte demultiplexing and ICE-TCP framing). Pure std / nix / tokio networking: it knows
//!   nothing of the WebRTC library, so it can be tested and measured on its own.
//! * [`peer`]: one client's peer connection, driven by hand: datagrams in, datagrams and events
//!   out, time passed in explicitly, so a whole session runs in a unit test without a socket.
//!
//! Not wired into the running daemon yet: today's SFU still runs on webrtc-rs 0.17
//! (`docs/engine-v2.md` has the plan and what is left).

mod feedback;
pub mod net;
pub mod peer;

pub use peer::{EngineError, Identity, Peer, PeerEvent, PeerSettings};
