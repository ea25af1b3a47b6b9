//! A room's entry policy as a value: who may enter, and when. Its own module, depending on
//! nothing else of the proxy, because the configuration (`[rooms]`), the client protocol, the
//! room service API and the relay all speak it: configuration is read first and must not
//! import what is built from it (room administration, the relay), so dependencies point one
//! way (`rooms` -> `config` -> `room_policy`).

use serde::{Deserialize, Serialize};

/// Who opens a room under `wait_for_host` (docs/protocol.md section 5b).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opener {
    /// A moderator (the default).
    #[default]
    Moderator,
    /// Anyone who is not a guest: members open the room too (signed-in users let guests in).
    Member,
}

/// Who may enter a room, and when (docs/protocol.md, "Waiting rooms and the lobby"). Every
/// field is optional: an unset field takes the next source's value (a policy set through the
/// API or by a moderator, over `[rooms.overrides]`, over `[rooms]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomPolicy {
    /// Those who cannot open the room (`opened_by`) wait until someone who can is in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_host: Option<bool>,
    /// Non-moderators knock and a moderator admits or denies them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lobby: Option<bool>,
    /// Guests (role `guest`) may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guests_allowed: Option<bool>,
    /// Longest wait before the session is closed (1-86400 seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_seconds: Option<u32>,
    /// Who opens the room under `wait_for_host`: `moderator` (default) or `member`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<Opener>,
    /// The media server records the room from its first join, and goes on recording it in a
    /// new segment if the room moves host (docs/api.md, "Recordings"). Setting it from inside
    /// the call needs the `record` permission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<bool>,
    /// The room's media is end-to-end encrypted by its clients (docs/e2ee.md): `joined` says
    /// so, and the media server never records it. It cannot change while anyone is in the
    /// room or waits to enter it, and never goes with `record`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<bool>,
}

/// Longest wait a policy may set (a day), as rtcd enforces: the contract's rule.
pub use rtcd_proto::rules::MAX_WAIT_TIMEOUT_SECONDS;

impl RoomPolicy {
    /// `self`'s set fields over `base`'s.
    pub fn over(self, base: RoomPolicy) -> RoomPolicy {
        RoomPolicy {
            wait_for_host: self.wait_for_host.or(base.wait_for_host),
            lobby: self.lobby.or(base.lobby),
            guests_allowed: self.guests_allowed.or(base.guests_allowed),
            wait_timeout_seconds: self.wait_timeout_seconds.or(base.wait_timeout_seconds),
            opened_by: self.opened_by.or(base.opened_by),
            record: self.record.or(base.record),
            e2ee: self.e2ee.or(base.e2ee),
        }
    }

    /// Refuses a timeout outside 1..=[`MAX_WAIT_TIMEOUT_SECONDS`].
    pub fn validate(&self) -> Result<(), String> {
        rtcd_proto::rules::check_wait_timeout(self.wait_timeout_seconds).map_err(|e| e.to_string())
    }

    /// Whether the policy sets both `record` and `e2ee`, which no room may have (the media
    /// server cannot read what it would record). A change through the API or by a moderator
    /// is refused by the media server, over what is stored (`encrypted`); the configuration is
    /// checked with this when it is loaded.
    pub fn records_encrypted(&self) -> bool {
        self.record == Some(true) && self.e2ee == Some(true)
    }
}
