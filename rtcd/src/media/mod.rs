//! The media types both the engine and the SFU speak, below both of them: the SFU's own RTP
//! packet ([`packet`]), the little SDP reading the session needs beyond the engine
//! ([`sdp`]) and the VP8 payload descriptor a layer switch renumbers ([`vp8`]).
//!
//! They live here, not in [`crate::sfu`], so that imports point one way: the engine converts
//! its WebRTC library's packets into these types and the SFU decides with them, but the engine
//! imports nothing from the SFU and nothing of the WebRTC library leaves the engine.

pub mod packet;
pub mod sdp;
pub mod vp8;
