//! The media engine: everything that touches the WebRTC library (`rtc`, webrtc-rs's sans-IO
//! core) and the media sockets. Nothing of `rtc` appears in this module's public API: the SFU
//! sees its own candidate, event and packet types.
//!
//! * [`net`] owns the sockets: one UDP port for all sessions, batched receive and send, and the
//!   demultiplexing of datagrams to sessions (by ICE username fragment, then by 5-tuple).
//! * [`peer`] is one client's peer connection, driven by hand: datagrams in, datagrams and events
//!   out, time passed in explicitly, so a whole session runs in a unit test without a socket.

mod feedback;
pub mod net;
pub mod peer;

pub use peer::{EngineError, Identity, Peer, PeerEvent, PeerSettings};
