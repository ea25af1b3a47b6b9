//! One client WebSocket, from upgrade to close: wait for `join`, verify the token, then apply
//! the permission policy to every message and relay what passes.
//!
//! Two halves. The decisions, fed with events and `now`, unit-tested with time driven by
//! hand: [`machine`] (the protocol phase, the join, idle, ping and token deadlines, what a
//! read means, when refused refreshes or a stalled client end the session, which closes keep
//! the media session for a resume, how a media server's end closes), with one sibling per
//! concern: [`message`] (what each client message means once joined), [`event`] (what each
//! media server event means), [`resume`] (what a resumed join, a live role change and a
//! refresh make of the grant; what `joined` says about resumption) and [`moderation`] (who
//! may moderate, the room action a `moderate` becomes, what the client is told of its
//! result). And [`pump`], the task that owns the socket and the relay link and `select!`s
//! over them, the machine's deadline and the proxy's shutdown, doing the IO the decisions
//! name (token verification, the relay join, `rooms::perform`, sends, metrics, audit lines).
//! Nothing is shared with other sessions except the [`ProxyState`] (limiters, metrics, the
//! per-user session count), so no lock is held across an await.

pub mod event;
pub mod machine;
pub mod message;
pub mod moderation;
mod pump;
pub mod resume;

pub use machine::MAX_REFUSED_REFRESHES;
pub use pump::{
    AddressLimiter, ClientSocket, ConnectionSlot, ProxyState, UpgradeTokens, run, socket_config,
};
