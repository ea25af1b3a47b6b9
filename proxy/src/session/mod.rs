//! One client WebSocket, from upgrade to close: wait for `join`, verify the token, then apply
//! the permission policy to every message and relay what passes.
//!
//! Two halves: [`machine`] decides (the protocol phase, the join, idle, ping and token
//! deadlines, what a read means, when refused refreshes or a stalled client end the session,
//! whether a close keeps the media session for a resume), fed with events and `now` and
//! unit-tested with time driven by hand, with two siblings for the join's and the room's
//! concerns: [`message`] (what each client message means once joined), [`resume`] (what a resumed join, a live role change and a refresh make of the
//! grant, what `joined` says about resumption) and [`moderation`] (who may moderate, the
//! room action a `moderate` becomes, what the client is told of its result); [`pump`] is the task
//! that owns the socket and the relay link and `select!`s over them, the machine's deadline
//! and the proxy's shutdown, doing what the machine says. Nothing is shared with other
//! sessions except the [`ProxyState`] (limiters, metrics, the per-user session count), so no
//! lock is held across an await.

pub mod machine;
pub mod message;
pub mod moderation;
mod pump;
pub mod resume;

pub use machine::MAX_REFUSED_REFRESHES;
pub use pump::{
    AddressLimiter, ClientSocket, ConnectionSlot, ProxyState, UpgradeTokens, run, socket_config,
};
