//! The media engine: everything that touches the WebRTC library and the media sockets.
//!
//! Nothing outside this module sees the WebRTC library's types; the SFU talks to the engine
//! through rtcd's own candidate, event and packet types (issue 11, "a real seam").
//!
//! * [`net`]: rtcd's own network IO (one UDP port for every session, batched system calls,
//!   first-byte demultiplexing and ICE-TCP framing). Pure std / nix / tokio networking: it knows
//!   nothing of the WebRTC library, so it can be tested and measured on its own.

pub mod net;
