//! Who may enter a call, and when: wait-for-host, the lobby and guest access.
//!
//! Why here and not in the SFU: a session that waits has no peer connection (it holds no media
//! resources until it is admitted), so the gate sits in front of `Sfu::join`, in the control
//! plane. Why at rtcd and not at the proxy: the room lives on exactly one rtcd host, so that
//! host sees every waiting session and every moderator present whichever proxy replica they
//! came through, and a proxy restart loses nothing.
//!
//! One mutex guards all rooms' lobby state. It is taken only on joins, leaves, decisions and
//! policy changes (never per packet), held for a few map operations, and never across an
//! await. Decisions reach a waiting session through its oneshot; notices to moderators go
//! through each moderator's bounded channel (`NOTICE_CAPACITY`); when one is full the notice
//! is dropped (a moderator that far behind re-reads the lobby with `Rooms.ListLobby`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::{Metrics, OutcomeLabels};
use crate::sfu::{CallId, SessionId, TenantId, UserId};

/// Wait timeout when no policy sets one.
pub use rtcd_proto::rules::DEFAULT_WAIT_TIMEOUT_SECONDS;
/// The role that guest access applies to.
pub use rtcd_proto::rules::GUEST_ROLE;
/// Longest wait a policy may set (a day).
pub use rtcd_proto::rules::MAX_WAIT_TIMEOUT_SECONDS;
/// Sessions one room may hold waiting: beyond it a join is refused (RESOURCE_EXHAUSTED), so a
/// flood of knockers cannot grow the list, nor the notices to every moderator, without bound.
pub use rtcd_proto::rules::MAX_WAITING_PER_ROOM;
/// The role that is a host: never held, gets lobby requests, may admit (the contract's rule).
pub use rtcd_proto::rules::MODERATOR_ROLE as HOST_ROLE;
/// Notices queued per moderator session before new ones are dropped.
pub const NOTICE_CAPACITY: usize = 64;
/// How long a room's memory of whom it admitted outlives its last session and waiter, so
/// that everyone re-entering after a proxy restart (which drops every session at once) does
/// not knock again.
pub const ADMITTED_MEMORY: Duration = Duration::from_secs(600);

/// Who opens a room under `wait_for_host` (`RoomPolicy.opened_by`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opener {
    /// A moderator (the default).
    #[default]
    Moderator,
    /// Anyone who is not a guest.
    Member,
}

impl Opener {
    /// Whether a participant with `role` opens the room.
    pub fn opens(self, role: &str) -> bool {
        match self {
            Opener::Moderator => role == HOST_ROLE,
            Opener::Member => role != GUEST_ROLE,
        }
    }
}

/// A room's entry policy, field by field optional: unset fields fall back to the next source
/// (stored policy over the Join's policy over the defaults in [`Policy::resolve`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPolicy {
    /// Non-moderators wait until a moderator is in the room.
    pub wait_for_host: Option<bool>,
    /// Non-moderators knock and a moderator admits them.
    pub lobby: Option<bool>,
    /// Guests may join.
    pub guests_allowed: Option<bool>,
    /// Longest wait, in seconds.
    pub wait_timeout_seconds: Option<u32>,
    /// Who opens the room under `wait_for_host` (absent in policies stored before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<Opener>,
    /// The room is recorded from its first join (absent in policies stored before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<bool>,
    /// The room's media is end-to-end encrypted by its clients: it is never recorded
    /// (absent in policies stored before it existed). See docs/e2ee.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<bool>,
}

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

    /// Whether the room is end-to-end encrypted (unset: no).
    pub fn encrypted(&self) -> bool {
        self.e2ee.unwrap_or(false)
    }

    /// Whether the room is recorded from its first join (unset: no).
    pub fn recorded(&self) -> bool {
        self.record.unwrap_or(false)
    }

    /// Refuses a timeout outside 1..=[`MAX_WAIT_TIMEOUT_SECONDS`].
    pub fn validate(&self) -> Result<(), LobbyError> {
        rtcd_proto::rules::check_wait_timeout(self.wait_timeout_seconds)
            .map_err(|e| LobbyError::InvalidPolicy(e.to_string()))
    }
}

/// A policy with every field decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// See [`RoomPolicy::wait_for_host`].
    pub wait_for_host: bool,
    /// See [`RoomPolicy::lobby`].
    pub lobby: bool,
    /// See [`RoomPolicy::guests_allowed`].
    pub guests_allowed: bool,
    /// See [`RoomPolicy::wait_timeout_seconds`].
    pub wait_timeout: Duration,
    /// See [`RoomPolicy::opened_by`].
    pub opened_by: Opener,
}

impl Policy {
    /// The defaults for unset fields: nobody waits, guests are allowed (a room without a
    /// policy behaves as before policies existed).
    pub fn resolve(p: RoomPolicy) -> Policy {
        Policy {
            wait_for_host: p.wait_for_host.unwrap_or(false),
            lobby: p.lobby.unwrap_or(false),
            guests_allowed: p.guests_allowed.unwrap_or(true),
            opened_by: p.opened_by.unwrap_or_default(),
            wait_timeout: Duration::from_secs(u64::from(
                p.wait_timeout_seconds
                    .unwrap_or(DEFAULT_WAIT_TIMEOUT_SECONDS)
                    .clamp(1, MAX_WAIT_TIMEOUT_SECONDS),
            )),
        }
    }
}

/// Why a join or a policy change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LobbyError {
    /// A guest joined a room that does not allow guests.
    #[error("guests not allowed in this room")]
    GuestsNotAllowed,
    /// A policy field is out of range.
    #[error("{0}")]
    InvalidPolicy(String),
    /// The room already holds [`MAX_WAITING_PER_ROOM`] waiting sessions.
    #[error("lobby full: at most {MAX_WAITING_PER_ROOM} people may wait to enter a room")]
    Full,
    /// A policy change would turn end-to-end encryption on or off while someone is in the
    /// room or waits to enter it (docs/e2ee.md, "Turning it on and off").
    #[error(
        "end-to-end encryption cannot be turned on or off while anyone is in the room or waits to enter it"
    )]
    E2eeLocked,
}

/// What a waiting session waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// A moderator to arrive.
    Host,
    /// A moderator to admit it.
    Lobby,
}

impl WaitReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Host => "host",
            WaitReason::Lobby => "lobby",
        }
    }

    /// The `SessionClosed` reason when the wait times out.
    pub fn timeout_reason(self) -> &'static str {
        match self {
            WaitReason::Host => "host timeout",
            WaitReason::Lobby => "lobby timeout",
        }
    }
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Enter.
    Admitted,
    /// A moderator said no.
    Denied,
    /// Guests were turned off while it waited.
    Refused,
    /// rtcd is shutting down: rejoin (another host).
    Shutdown,
}

impl Decision {
    /// The `SessionClosed` reason for a decision that closes the session.
    pub fn close_reason(self) -> Option<&'static str> {
        match self {
            Decision::Admitted => None,
            Decision::Denied => Some("lobby denied"),
            Decision::Refused => Some("guests not allowed"),
            Decision::Shutdown => Some("shutdown"),
        }
    }

    fn outcome(self) -> Outcome {
        match self {
            Decision::Admitted => Outcome::Admitted,
            Decision::Denied => Outcome::Denied,
            Decision::Refused => Outcome::Refused,
            Decision::Shutdown => Outcome::Shutdown,
        }
    }
}

/// Why a session left the waiting list, as moderators are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Admitted.
    Admitted,
    /// Denied.
    Denied,
    /// Gave up or disconnected.
    Left,
    /// Waited too long.
    Timeout,
    /// Guests were turned off.
    Refused,
    /// rtcd shut down.
    Shutdown,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Denied => "denied",
            Outcome::Left => "left",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Shutdown => "shutdown",
        }
    }
}

/// Someone who wants to enter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entrant {
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    /// Its display name.
    pub display_name: String,
    /// Its role.
    pub role: String,
}

/// A waiting session as `Rooms.ListLobby` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    /// Who.
    pub entrant: Entrant,
    /// What for.
    pub reason: WaitReason,
    /// Since when (Unix milliseconds).
    pub since_ms: i64,
}

/// What moderators are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Someone knocks.
    Request(Entrant),
    /// A knocker left the lobby.
    Left(Entrant, Outcome),
}

/// A moderator's end of its notice queue (every session has one; boxed slots:
/// [`rtcd_kit::queue`]).
pub type NoticeSender = rtcd_kit::queue::Sender<Notice>;

/// The gate's answer to a join.
#[derive(Debug)]
pub enum Gate {
    /// Go in now.
    Enter,
    /// Wait; the ticket says for what and resolves with the decision.
    Wait(Ticket),
}

struct Waiting {
    waiter: Waiter,
    decide: oneshot::Sender<Decision>,
}

struct Member {
    user: UserId,
    role: String,
    notices: NoticeSender,
}

#[derive(Default)]
struct Room {
    /// The policy of the last Join (the proxy's defaults for this room).
    join_policy: RoomPolicy,
    /// The stored override, as last applied.
    stored: RoomPolicy,
    members: HashMap<SessionId, Member>,
    waiting: Vec<Waiting>,
    admitted: HashSet<UserId>,
    empty_since: Option<Instant>,
    /// How waits ended since the metrics last counted them ([`Rooms::touch`]).
    ended: Vec<Outcome>,
}

impl Room {
    fn policy(&self) -> Policy {
        Policy::resolve(self.stored.over(self.join_policy))
    }

    /// Whether someone who opens the room (under `policy`) is in it.
    fn is_open(&self, policy: &Policy) -> bool {
        self.members
            .values()
            .any(|m| policy.opened_by.opens(&m.role))
    }

    fn tell_hosts(&self, notice: &Notice) {
        for m in self.members.values().filter(|m| m.role == HOST_ROLE) {
            if m.notices.try_send(notice.clone()).is_err() {
                tracing::debug!(user = %m.user, "lobby notice dropped: the moderator's queue is full");
            }
        }
    }

    /// Ends the waits of the sessions `pick` selects with `decision`.
    fn decide(&mut self, pick: impl Fn(&Waiter) -> bool, decision: Decision) -> usize {
        let (chosen, kept): (Vec<_>, Vec<_>) =
            self.waiting.drain(..).partition(|w| pick(&w.waiter));
        self.waiting = kept;
        let n = chosen.len();
        for w in chosen {
            self.ended.push(decision.outcome());
            if decision == Decision::Admitted {
                self.admitted.insert(w.waiter.entrant.user.clone());
            }
            if w.waiter.reason == WaitReason::Lobby {
                self.tell_hosts(&Notice::Left(w.waiter.entrant.clone(), decision.outcome()));
            }
            // A waiter whose session just ended has dropped its receiver: nothing to do.
            let _ = w.decide.send(decision);
        }
        n
    }

    /// Someone who opens the room is present: everyone waiting for a host enters.
    fn opened(&mut self) {
        self.decide(|w| w.reason == WaitReason::Host, Decision::Admitted);
    }

    /// A moderator is present: the room opens, and it learns who knocks.
    fn host_arrived(&mut self, notices: &NoticeSender) {
        self.opened();
        for w in &self.waiting {
            let _ = notices.try_send(Notice::Request(w.waiter.entrant.clone()));
        }
    }

    /// Applies the current policy to those waiting (after a policy change).
    fn reapply(&mut self) {
        let policy = self.policy();
        if !policy.guests_allowed {
            self.decide(|w| w.entrant.role == GUEST_ROLE, Decision::Refused);
        }
        if !policy.lobby {
            // Without a lobby, knockers are held only as long as wait-for-host holds them.
            let hold = policy.wait_for_host && !self.is_open(&policy);
            if !hold {
                self.decide(|_| true, Decision::Admitted);
            } else {
                // Those who open the room now (`opened_by` changed) are not held; once
                // present, they let in the rest.
                self.decide(
                    |w| policy.opened_by.opens(&w.entrant.role),
                    Decision::Admitted,
                );
                for w in &mut self.waiting {
                    w.waiter.reason = WaitReason::Host;
                }
            }
        } else if !policy.wait_for_host {
            self.decide(|w| w.reason == WaitReason::Host, Decision::Admitted);
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.waiting.is_empty()
    }

    fn is_empty_since(&self, now: Instant) -> Option<Duration> {
        self.empty_since.map(|t| now.duration_since(t))
    }
}

type RoomKey = (TenantId, CallId);

#[derive(Default)]
struct Rooms {
    rooms: HashMap<RoomKey, Room>,
    last_sweep: Option<Instant>,
    metrics: Option<Arc<Metrics>>,
}

impl Rooms {
    /// Forgets rooms empty for longer than [`ADMITTED_MEMORY`], at most once a minute.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(60))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.rooms
            .retain(|_, r| r.is_empty_since(now).is_none_or(|d| d < ADMITTED_MEMORY));
    }

    /// After every change to a room: counts the waits that ended, and notes when the room
    /// became empty (for [`Rooms::sweep`]).
    fn touch(&mut self, key: &RoomKey) {
        if let Some(room) = self.rooms.get_mut(key) {
            if let Some(m) = &self.metrics {
                for outcome in room.ended.drain(..) {
                    m.lobby_waiting.dec();
                    m.lobby_ended
                        .get_or_create(&OutcomeLabels {
                            outcome: outcome.as_str(),
                        })
                        .inc();
                }
            } else {
                room.ended.clear();
            }
            room.empty_since = if room.is_empty() {
                Some(room.empty_since.unwrap_or_else(Instant::now))
            } else {
                None
            };
        }
    }
}

/// The entry gates of every room on this host. Cheap to clone.
#[derive(Clone, Default)]
pub struct Lobby {
    inner: Arc<Mutex<Rooms>>,
}

impl std::fmt::Debug for Lobby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lobby").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Lobby {
    /// An empty lobby.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty lobby that reports to the daemon's metrics (`rtcd_lobby_*`).
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        let lobby = Self::default();
        lobby.rooms().metrics = Some(metrics);
        lobby
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        // Every critical section is a few map operations that cannot panic halfway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether `entrant` enters `call` now, waits, or is refused. `join_policy` is
    /// the proxy's policy for the room (from the Join), `stored` the one set at rtcd.
    pub fn enter(
        &self,
        tenant: &TenantId,
        call: &CallId,
        entrant: Entrant,
        join_policy: RoomPolicy,
        stored: RoomPolicy,
    ) -> Result<Gate, LobbyError> {
        let mut rooms = self.rooms();
        rooms.sweep(Instant::now());
        let key = (tenant.clone(), call.clone());
        let room = rooms.rooms.entry(key.clone()).or_default();
        room.join_policy = join_policy;
        room.stored = stored;
        let policy = room.policy();
        if entrant.role == HOST_ROLE {
            rooms.touch(&key);
            return Ok(Gate::Enter);
        }
        if entrant.role == GUEST_ROLE && !policy.guests_allowed {
            rooms.touch(&key);
            return Err(LobbyError::GuestsNotAllowed);
        }
        let reason = if policy.lobby {
            let known = room.admitted.contains(&entrant.user)
                || room.members.values().any(|m| m.user == entrant.user);
            (!known).then_some(WaitReason::Lobby)
        } else if policy.wait_for_host
            && !policy.opened_by.opens(&entrant.role)
            && !room.is_open(&policy)
        {
            Some(WaitReason::Host)
        } else {
            None
        };
        let Some(reason) = reason else {
            rooms.touch(&key);
            return Ok(Gate::Enter);
        };
        if room.waiting.len() >= MAX_WAITING_PER_ROOM {
            return Err(LobbyError::Full);
        }
        let (decide, decision) = oneshot::channel();
        let waiter = Waiter {
            entrant: entrant.clone(),
            reason,
            since_ms: now_ms(),
        };
        if reason == WaitReason::Lobby {
            room.tell_hosts(&Notice::Request(entrant.clone()));
        }
        room.waiting.push(Waiting { waiter, decide });
        room.empty_since = None;
        if let Some(m) = &rooms.metrics {
            m.lobby_waiting.inc();
        }
        Ok(Gate::Wait(Ticket {
            lobby: self.clone(),
            key,
            session: entrant.session,
            reason,
            timeout: policy.wait_timeout,
            decision,
            done: false,
        }))
    }

    /// Registers an admitted session for as long as the returned guard lives: moderators get
    /// the lobby's notices on `notices`, and the first one in admits those waiting for a host.
    pub fn present(
        &self,
        tenant: &TenantId,
        call: &CallId,
        entrant: &Entrant,
        notices: NoticeSender,
    ) -> Presence {
        let key = (tenant.clone(), call.clone());
        let mut rooms = self.rooms();
        let room = rooms.rooms.entry(key.clone()).or_default();
        if entrant.role == HOST_ROLE {
            room.host_arrived(&notices);
        } else if room.policy().opened_by.opens(&entrant.role) {
            room.opened();
        }
        room.members.insert(
            entrant.session.clone(),
            Member {
                user: entrant.user.clone(),
                role: entrant.role.clone(),
                notices,
            },
        );
        rooms.touch(&key);
        Presence {
            lobby: self.clone(),
            key,
            session: entrant.session.clone(),
        }
    }

    /// A user's role changed live (`Rooms.UpdateParticipant`): a promoted moderator becomes a
    /// host at once, a demoted one stops being one.
    pub fn set_role(&self, tenant: &TenantId, call: &CallId, user: &UserId, role: &str) {
        let key = (tenant.clone(), call.clone());
        let mut rooms = self.rooms();
        let Some(room) = rooms.rooms.get_mut(&key) else {
            return;
        };
        let mut promoted = Vec::new();
        for m in room.members.values_mut().filter(|m| &m.user == user) {
            if role == HOST_ROLE && m.role != HOST_ROLE {
                promoted.push(m.notices.clone());
            }
            m.role = role.to_owned();
        }
        for notices in promoted {
            room.host_arrived(&notices);
        }
        let policy = room.policy();
        if policy.wait_for_host && room.is_open(&policy) {
            room.opened();
        }
        rooms.touch(&key);
    }

    /// Whether anyone waits to enter `call` or is registered in it here.
    pub fn has_room(&self, tenant: &TenantId, call: &CallId) -> bool {
        self.rooms()
            .rooms
            .get(&(tenant.clone(), call.clone()))
            .is_some_and(|r| !r.is_empty())
    }

    /// The policy the last Join of `call` here carried (the proxy's configuration for the
    /// room); unset fields when none came (the room was never opened here, or was forgotten).
    pub fn join_policy(&self, tenant: &TenantId, call: &CallId) -> RoomPolicy {
        self.rooms()
            .rooms
            .get(&(tenant.clone(), call.clone()))
            .map_or_else(RoomPolicy::default, |r| r.join_policy)
    }

    /// The sessions waiting to enter `call`, oldest first.
    pub fn waiting(&self, tenant: &TenantId, call: &CallId) -> Vec<Waiter> {
        let rooms = self.rooms();
        rooms
            .rooms
            .get(&(tenant.clone(), call.clone()))
            .map(|r| r.waiting.iter().map(|w| w.waiter.clone()).collect())
            .unwrap_or_default()
    }

    /// Admits `user` (every waiting session, and later joins while the room lives). Returns
    /// the sessions admitted now; admitting twice is not an error.
    pub fn admit(&self, tenant: &TenantId, call: &CallId, user: &UserId) -> usize {
        let key = (tenant.clone(), call.clone());
        let mut rooms = self.rooms();
        let room = rooms.rooms.entry(key.clone()).or_default();
        room.admitted.insert(user.clone());
        let n = room.decide(|w| &w.entrant.user == user, Decision::Admitted);
        rooms.touch(&key);
        n
    }

    /// Denies `user`: every waiting session of theirs is closed ("lobby denied"), and an
    /// earlier admission is forgotten. Returns the sessions denied.
    pub fn deny(&self, tenant: &TenantId, call: &CallId, user: &UserId) -> usize {
        let key = (tenant.clone(), call.clone());
        let mut rooms = self.rooms();
        let Some(room) = rooms.rooms.get_mut(&key) else {
            return 0;
        };
        room.admitted.remove(user);
        let n = room.decide(|w| &w.entrant.user == user, Decision::Denied);
        rooms.touch(&key);
        n
    }

    /// The stored policy of `call` changed: applies it to those waiting now.
    pub fn policy_changed(&self, tenant: &TenantId, call: &CallId, stored: RoomPolicy) {
        let key = (tenant.clone(), call.clone());
        let mut rooms = self.rooms();
        if let Some(room) = rooms.rooms.get_mut(&key) {
            room.stored = stored;
            room.reapply();
        }
        rooms.touch(&key);
    }

    /// Ends every wait with reason "shutdown" (rtcd shuts down: those waiting rejoin
    /// elsewhere at once instead of waiting for a host that can no longer let them in).
    pub fn close_all(&self) {
        let mut rooms = self.rooms();
        let keys: Vec<RoomKey> = rooms.rooms.keys().cloned().collect();
        for key in keys {
            if let Some(room) = rooms.rooms.get_mut(&key) {
                room.decide(|_| true, Decision::Shutdown);
            }
            rooms.touch(&key);
        }
    }

    /// Takes a waiter off the list (it left or timed out). `None` if it was already decided
    /// (the decision is then in its ticket).
    fn withdraw(&self, key: &RoomKey, session: &SessionId, outcome: Outcome) -> Option<()> {
        let mut rooms = self.rooms();
        let room = rooms.rooms.get_mut(key)?;
        let i = room
            .waiting
            .iter()
            .position(|w| &w.waiter.entrant.session == session)?;
        let w = room.waiting.remove(i);
        room.ended.push(outcome);
        if w.waiter.reason == WaitReason::Lobby {
            room.tell_hosts(&Notice::Left(w.waiter.entrant, outcome));
        }
        rooms.touch(key);
        Some(())
    }
}

/// A session's place on a waiting list. Dropping it before a decision takes the session off
/// the list (moderators see `lobby_left` "left").
#[derive(Debug)]
pub struct Ticket {
    lobby: Lobby,
    key: RoomKey,
    session: SessionId,
    /// What it waits for.
    pub reason: WaitReason,
    /// How long it may wait.
    pub timeout: Duration,
    decision: oneshot::Receiver<Decision>,
    done: bool,
}

impl Ticket {
    /// Waits for the decision (cancel-safe: dropping the future keeps the ticket's place).
    pub async fn decided(&mut self) -> Decision {
        let d = (&mut self.decision).await.unwrap_or(Decision::Denied);
        self.done = true;
        d
    }

    /// The wait timed out: leaves the list, unless a decision came first (then returns it).
    pub fn time_out(mut self) -> Option<Decision> {
        self.done = true;
        match self
            .lobby
            .withdraw(&self.key, &self.session, Outcome::Timeout)
        {
            Some(()) => None,
            None => self.decision.try_recv().ok(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.lobby.withdraw(&self.key, &self.session, Outcome::Left);
        }
    }
}

/// An admitted session's registration; dropping it unregisters the session.
#[derive(Debug)]
pub struct Presence {
    lobby: Lobby,
    key: RoomKey,
    session: SessionId,
}

impl Drop for Presence {
    fn drop(&mut self) {
        let mut rooms = self.lobby.rooms();
        if let Some(room) = rooms.rooms.get_mut(&self.key) {
            room.members.remove(&self.session);
        }
        rooms.touch(&self.key);
    }
}

#[cfg(test)]
mod tests;
