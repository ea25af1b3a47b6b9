//! The decisions of one client session, apart from its socket: a plain struct fed with what
//! happened (a frame read, a verdict on a token, the time) and `now`, answering what to do
//! (ping, warn, close with which code). The pump ([`super::pump`]) owns the WebSocket, the
//! relay link and every await; it asks [`Machine::deadline`] when to wake and hands the
//! machine each event. Token verification (keys may be fetched over HTTP) stays in the pump:
//! its outcome comes in as an event.
//!
//! Time is a value here (`tokio::time::Instant` for the monotonic clock, Unix seconds for the
//! token's `exp`), so the tests drive it by hand and run in milliseconds.

use std::time::Duration;

use rtcd_kit::rate::{Bucket, Quota};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::error::ProtocolError;

use crate::auth::AuthError;
use crate::close::{CloseReason, MediaClose};
use crate::config::{ExpiryPolicy, LimitsConfig};
use crate::policy::Role;
use crate::protocol::{ClientMessage, ServerMessage};
use crate::relay::MediaEnd;

/// Refused `refresh` tokens a session may send before it is closed with
/// `too_many_auth_failures`. Counted per session, not in the per-address failed-auth limiter:
/// the sender already proved a valid token at `join`, and counting per address let one
/// session lock every new join from its address (an office behind one NAT) out with 4006.
/// A few, because a client may retry a refresh its backend got wrong, but a session must not
/// be an unlimited token oracle either.
pub const MAX_REFUSED_REFRESHES: u32 = 3;

/// Far enough never to fire.
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The clock as the machine reads it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Monotonic now (deadlines, idleness, rate).
    pub now: Instant,
    /// Wall-clock now, Unix seconds (the token's `exp` is one).
    pub unix: i64,
}

impl Clock {
    /// The real clock.
    pub fn now() -> Self {
        Clock {
            now: Instant::now(),
            unix: crate::auth::unix_now(),
        }
    }

    /// The monotonic instant at Unix time `at` (now if it has passed).
    fn at(&self, at: i64) -> Instant {
        self.now + Duration::from_secs(at.saturating_sub(self.unix).max(0) as u64)
    }
}

/// A close decided by the machine: the reason (its code and label) and the detail sent in
/// the `error` just before the close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Why (the close code).
    pub reason: CloseReason,
    /// Details for the client, if it can still read them.
    pub detail: Option<String>,
}

impl Close {
    fn new(reason: CloseReason, detail: impl Into<Option<String>>) -> Self {
        Close {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the pump does when the machine's deadline passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timer {
    /// Nothing is due yet (woken early).
    Idle,
    /// Send a WebSocket ping.
    Ping,
    /// Send `token_expiring` for a token expiring at this Unix time.
    TokenExpiring {
        /// The token's `exp`.
        expires_at: i64,
    },
    /// Close the session.
    Close(Close),
}

/// What one read from the client means.
#[derive(Debug)]
pub enum Read {
    /// Nothing to do (a control frame).
    Continue,
    /// A message to handle.
    Message(ClientMessage),
    /// Close; `invalid` when the message could not be read at all (counted as such).
    Close {
        /// The close.
        close: Close,
        /// The frame was not a message.
        invalid: bool,
    },
}

/// Where the session is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; only `join` may come, before the join deadline.
    AwaitingJoin,
    /// Joined but held by the room's policy (`waiting` sent, `joined` not yet).
    Waiting,
    /// In the room.
    Joined,
}

/// The timing and accounting settings a session runs under (from `limits` and `auth`).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `limits.join_timeout_seconds`.
    pub join_timeout: Duration,
    /// `limits.idle_timeout_seconds`.
    pub idle_timeout: Duration,
    /// `limits.ping_interval_seconds`.
    pub ping_interval: Duration,
    /// `limits.max_message_bytes` (for the 4003 detail).
    pub max_message_bytes: usize,
    /// `limits.messages_per_second`.
    pub messages_per_second: u32,
    /// `limits.message_burst`.
    pub message_burst: u32,
    /// `auth.expiry_policy`.
    pub expiry_policy: ExpiryPolicy,
    /// `auth.refresh_warning_seconds`.
    pub refresh_warning_seconds: i64,
    /// `auth.leeway_seconds`.
    pub leeway_seconds: i64,
}

impl Settings {
    /// From the proxy's configuration.
    pub fn from_config(limits: &LimitsConfig, auth: &crate::config::AuthConfig) -> Self {
        Settings {
            join_timeout: Duration::from_secs(limits.join_timeout_seconds),
            idle_timeout: Duration::from_secs(limits.idle_timeout_seconds),
            ping_interval: Duration::from_secs(limits.ping_interval_seconds),
            max_message_bytes: limits.max_message_bytes,
            messages_per_second: limits.messages_per_second,
            message_burst: limits.message_burst,
            expiry_policy: auth.expiry_policy,
            refresh_warning_seconds: auth.refresh_warning_seconds as i64,
            leeway_seconds: auth.leeway_seconds as i64,
        }
    }
}

/// One session's protocol state.
#[derive(Debug)]
pub struct Machine {
    settings: Settings,
    phase: Phase,
    join_deadline: Instant,
    last_seen: Instant,
    next_ping: Instant,
    /// The session token's `exp`, once joined.
    expires_at: Option<i64>,
    /// `token_expiring` sent for the current token.
    warned: bool,
    /// Refused `refresh` tokens so far (see [`MAX_REFUSED_REFRESHES`]).
    refused_refreshes: u32,
    bucket: Bucket,
    /// A send timed out: the client does not read.
    stalled: bool,
    /// The client's connection dropped without a closing handshake, or the client gave up on
    /// it: the media server keeps the session for a resume.
    vanished: bool,
}

impl Machine {
    /// A session connected at `now`.
    pub fn new(settings: Settings, now: Instant) -> Self {
        Machine {
            settings,
            phase: Phase::AwaitingJoin,
            join_deadline: now + settings.join_timeout,
            last_seen: now,
            next_ping: now + settings.ping_interval,
            expires_at: None,
            warned: false,
            refused_refreshes: 0,
            bucket: Bucket::new(
                Quota::per_second(settings.message_burst, settings.messages_per_second),
                now.into_std(),
            ),
            stalled: false,
            vanished: false,
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the client vanished (see the field): its media is kept for a resume.
    pub fn vanished(&self) -> bool {
        self.vanished
    }

    /// Whether the client stopped reading.
    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// Refused refreshes so far.
    pub fn refused_refreshes(&self) -> u32 {
        self.refused_refreshes
    }

    /// When the pump must call [`Machine::on_time`] next.
    pub fn deadline(&self, clock: &Clock) -> Instant {
        let never = clock.now + NEVER;
        let join = match self.phase {
            Phase::AwaitingJoin => self.join_deadline,
            _ => never,
        };
        let (warn, expire) = self.token_deadlines(clock).unwrap_or((never, never));
        join.min(warn).min(expire).min(self.next_ping)
    }

    /// The token's warning and expiry instants, when the session is held to its token.
    fn token_deadlines(&self, clock: &Clock) -> Option<(Instant, Instant)> {
        let expires_at = self.expires_at?;
        if self.settings.expiry_policy != ExpiryPolicy::Refresh {
            return None;
        }
        let warn = if self.warned {
            clock.now + NEVER
        } else {
            clock.at(expires_at - self.settings.refresh_warning_seconds)
        };
        Some((warn, clock.at(expires_at + self.settings.leeway_seconds)))
    }

    /// The time has come for whatever [`Machine::deadline`] named (or earlier: nothing).
    pub fn on_time(&mut self, clock: &Clock) -> Timer {
        if self.phase == Phase::AwaitingJoin && clock.now >= self.join_deadline {
            return Timer::Close(Close::new(
                CloseReason::JoinTimeout,
                format!("no join within {} s", self.settings.join_timeout.as_secs()),
            ));
        }
        if let (Some((warn, expire)), Some(expires_at)) =
            (self.token_deadlines(clock), self.expires_at)
        {
            if clock.now >= expire {
                return Timer::Close(Close::new(
                    CloseReason::Auth(AuthError::Expired {
                        ago: clock.unix - expires_at,
                    }),
                    "the session's token expired without a refresh".to_owned(),
                ));
            }
            if clock.now >= warn {
                self.warned = true;
                return Timer::TokenExpiring { expires_at };
            }
        }
        if clock.now >= self.next_ping {
            // As a tokio interval that delays missed ticks: the next one a period from now.
            self.next_ping = clock.now + self.settings.ping_interval;
            if clock.now.saturating_duration_since(self.last_seen) >= self.settings.idle_timeout {
                return Timer::Close(Close::new(CloseReason::IdleTimeout, None));
            }
            return Timer::Ping;
        }
        Timer::Idle
    }

    /// One read from the client socket (`None`: the stream ended).
    pub fn on_read(&mut self, frame: Option<Result<Message, WsError>>, now: Instant) -> Read {
        let close = |reason, detail: Option<String>| Read::Close {
            close: Close::new(reason, detail),
            invalid: false,
        };
        let message = match frame {
            None => {
                self.vanished = true;
                return close(CloseReason::Normal, None);
            }
            Some(Err(WsError::Capacity(_))) => {
                return close(
                    CloseReason::MessageTooLarge,
                    Some(format!(
                        "messages are limited to {} bytes",
                        self.settings.max_message_bytes
                    )),
                );
            }
            Some(Err(WsError::Utf8(_))) => {
                // §6 promises an `error` before every close the client can still read.
                return close(
                    CloseReason::BadMessage,
                    Some("text frames must be valid UTF-8".into()),
                );
            }
            Some(Err(WsError::Protocol(e))) => {
                // A connection dropped without a closing handshake is the network, not a
                // misbehaving client: it may come back and resume.
                self.vanished |= matches!(e, ProtocolError::ResetWithoutClosingHandshake);
                return close(
                    CloseReason::BadMessage,
                    Some(format!("WebSocket protocol violation: {e}")),
                );
            }
            Some(Err(_)) => {
                // The connection itself failed (reset, I/O error): nobody left to tell.
                self.vanished = true;
                return close(CloseReason::BadMessage, None);
            }
            Some(Ok(m)) => m,
        };
        self.last_seen = now;
        let text = match message {
            Message::Close(frame) => {
                // A client that closes with `idle_timeout` gave up on this connection (it
                // heard nothing) and resumes on another: not a departure.
                self.vanished = frame
                    .as_ref()
                    .is_some_and(|f| u16::from(f.code) == CloseReason::IdleTimeout.code());
                return close(CloseReason::Normal, None);
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Read::Continue,
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        };
        if self.bucket.take(now.into_std()).is_err() {
            return close(
                CloseReason::RateLimited,
                Some(format!(
                    "at most {} messages per second",
                    self.settings.messages_per_second
                )),
            );
        }
        let invalid = |detail: String| Read::Close {
            close: Close::new(CloseReason::BadMessage, detail),
            invalid: true,
        };
        let Some(text) = text else {
            return invalid("only JSON text frames are accepted".into());
        };
        let parsed: ClientMessage = match serde_json::from_str(text.as_str()) {
            Ok(m) => m,
            Err(e) => return invalid(format!("not a valid message: {e}")),
        };
        Read::Message(parsed)
    }

    /// A message other than `join` before the join: the close.
    pub fn before_join(kind: &str) -> Close {
        Close::new(CloseReason::BadMessage, format!("`{kind}` before `join`"))
    }

    /// The token a `join` is verified with: the message's own, else the upgrade's
    /// `Authorization` header, else `?jwt=` when `allow_query` (off: it is never used, but the
    /// refusal then says it is disabled).
    pub fn join_token(
        message: Option<String>,
        header: Option<String>,
        query: Option<String>,
        allow_query: bool,
    ) -> Result<String, Close> {
        let query_present = query.is_some();
        message
            .or(header)
            .or(if allow_query { query } else { None })
            .ok_or_else(|| Self::token_refused(AuthError::Missing, query_present && !allow_query))
    }

    /// The close of a join whose token verification refused it: the token reason's own code
    /// (4100-4120), its text as the detail; a missing token while a `?jwt=` query was sent
    /// says that the query parameter is disabled.
    pub fn token_refused(error: AuthError, query_sent: bool) -> Close {
        let mut detail = error.to_string();
        if error == AuthError::Missing && query_sent {
            detail.push_str(" (the ?jwt= query parameter is disabled on this proxy)");
        }
        Close::new(CloseReason::Auth(error), detail)
    }

    /// The close of a join from an address locked out by failed authentications (its token
    /// is not even checked), retryable after `retry_after`.
    pub fn address_locked_out(retry_after: Duration) -> Close {
        let seconds = retry_after.as_millis().div_ceil(1000).max(1);
        Close::new(
            CloseReason::TooManyAuthFailures,
            format!(
                "too many failed authentications from this address (the token was not checked); retry in {seconds} s"
            ),
        )
    }

    /// The close of a join over the identity's `limits.max_sessions_per_user`.
    pub fn too_many_sessions(max: usize) -> Close {
        Close::new(
            CloseReason::TooManySessions,
            format!("at most {max} sessions per user"),
        )
    }

    /// The join succeeded with a token expiring at `expires_at`; `admitted` false when the
    /// room's policy holds the session first.
    pub fn on_joined(&mut self, expires_at: i64, admitted: bool) {
        self.phase = if admitted {
            Phase::Joined
        } else {
            Phase::Waiting
        };
        self.expires_at = Some(expires_at);
        self.warned = false;
    }

    /// Whether a joined session handles `message` now: while the room's policy holds it, only
    /// `ping`, `leave` and `refresh` (anything else gets `error` `not_admitted`).
    pub fn accepts(&self, message: &ClientMessage) -> bool {
        self.phase != Phase::Waiting
            || matches!(
                message,
                ClientMessage::Ping { .. }
                    | ClientMessage::Leave {}
                    | ClientMessage::Refresh { .. }
            )
    }

    /// The room let the waiting session in.
    pub fn on_admitted(&mut self) {
        if self.phase == Phase::Waiting {
            self.phase = Phase::Joined;
        }
    }

    /// A refresh token was accepted: the session is held to its expiry now, warned anew.
    pub fn on_refreshed(&mut self, expires_at: i64) {
        self.expires_at = Some(expires_at);
        self.warned = false;
    }

    /// A refresh token was refused with `error`. Returns the refusals counted so far and the
    /// close when they reach [`MAX_REFUSED_REFRESHES`]. Unavailable keys are the proxy's
    /// problem, not the client's: not counted.
    pub fn on_refresh_refused(&mut self, error: &AuthError) -> (u32, Option<Close>) {
        if !matches!(error, AuthError::KeysUnavailable(_)) {
            self.refused_refreshes += 1;
        }
        let close = (self.refused_refreshes >= MAX_REFUSED_REFRESHES).then(|| {
            Close::new(
                CloseReason::TooManyAuthFailures,
                format!("{MAX_REFUSED_REFRESHES} refresh tokens refused on this session"),
            )
        });
        (self.refused_refreshes, close)
    }

    /// A frame could not be written in time: the client does not read.
    pub fn on_stalled(&mut self) {
        self.stalled = true;
    }

    /// After handling an event: the close it leaves, if the client stopped reading.
    pub fn after_event(&self) -> Option<Close> {
        self.stalled
            .then(|| Close::new(CloseReason::SlowClient, None))
    }

    /// Whether the media server keeps the session for a resume when this one closes with
    /// `reason` (docs/protocol.md section 5c): when the proxy shuts down (the client
    /// reconnects to another replica), the connection went idle, or the client vanished (its
    /// connection dropped without a close, or it gave up on a silent one). Otherwise the
    /// session is over and the media server is told (`Leave`).
    pub fn keeps_media(&self, reason: &CloseReason) -> bool {
        self.vanished || matches!(reason, CloseReason::GoingAway | CloseReason::IdleTimeout)
    }

    /// The close of a `join` for a room name that is not one (`error` the name's rule).
    pub fn bad_room(error: String) -> Close {
        Close::new(CloseReason::BadMessage, error)
    }

    /// The close of a guest's join when no media server could be asked about the room: the
    /// room's stored policy (kept at the media server) is unknown, so this proxy's configured
    /// one decides who may not come in (docs/protocol.md section 5b), as the media server
    /// would. `None`: the join goes on (without media).
    pub fn guest_refused_offline(role: Role, guests_allowed: Option<bool>) -> Option<Close> {
        (role == Role::Guest && guests_allowed == Some(false)).then(|| {
            Close::new(
                CloseReason::GuestsNotAllowed,
                "guests are not allowed in this room (the media server is unreachable: this \
                 proxy's configured policy applies)"
                    .to_owned(),
            )
        })
    }

    /// The media server ended the session's stream: `end` is its typed reason and `reason`
    /// its prose (`None`: the stream ended without one). What to send before the close
    /// (`media_server_lost` when the media server is gone for this session, then 4008), and
    /// the close ([`crate::close::media_end`] decides which).
    pub fn on_media_closed(end: MediaEnd, reason: Option<&str>) -> (Option<ServerMessage>, Close) {
        match crate::close::media_end(end, reason) {
            MediaClose::Close(reason, detail) => (None, Close::new(reason, detail.to_owned())),
            MediaClose::Lost(message) => (
                Some(ServerMessage::MediaServerLost { message }),
                Close::new(CloseReason::MediaServerLost, None),
            ),
        }
    }

    /// The proxy shuts down.
    pub fn on_shutdown(&self) -> Close {
        Close::new(
            CloseReason::GoingAway,
            "the proxy is shutting down; reconnect".to_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    const S: Duration = Duration::from_secs(1);
    /// The Unix time the tests start at.
    const UNIX: i64 = 1_700_000_000;

    fn settings(expiry_policy: ExpiryPolicy) -> Settings {
        Settings {
            join_timeout: 10 * S,
            idle_timeout: 60 * S,
            ping_interval: 20 * S,
            max_message_bytes: 1024,
            messages_per_second: 2,
            message_burst: 3,
            expiry_policy,
            refresh_warning_seconds: 60,
            leeway_seconds: 30,
        }
    }

    /// A hand-driven clock: both clocks advance together.
    struct Hand {
        start: Instant,
        elapsed: Duration,
    }

    impl Hand {
        fn new() -> Self {
            Hand {
                start: Instant::now(),
                elapsed: Duration::ZERO,
            }
        }
        fn clock(&self) -> Clock {
            Clock {
                now: self.start + self.elapsed,
                unix: UNIX + self.elapsed.as_secs() as i64,
            }
        }
        fn now(&self) -> Instant {
            self.clock().now
        }
        /// Advances to the machine's deadline and fires it.
        fn fire(&mut self, m: &mut Machine) -> Timer {
            let deadline = m.deadline(&self.clock());
            self.elapsed = deadline - self.start;
            m.on_time(&self.clock())
        }
        fn advance(&mut self, by: Duration) {
            self.elapsed += by;
        }
    }

    fn text(s: &str) -> Option<Result<Message, WsError>> {
        Some(Ok(Message::text(s)))
    }

    const PING: &str = r#"{"type":"ping"}"#;
    const JOIN: &str = r#"{"type":"join","room":"r","token":"t"}"#;

    fn close_code(read: Read) -> (u16, Option<String>, bool) {
        match read {
            Read::Close { close, invalid } => (close.reason.code(), close.detail, invalid),
            other => panic!("not a close: {other:?}"),
        }
    }

    fn timer_code(timer: Timer) -> u16 {
        match timer {
            Timer::Close(c) => c.reason.code(),
            other => panic!("not a close: {other:?}"),
        }
    }

    #[test]
    fn no_join_within_the_join_timeout_closes_4001() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        assert_eq!(m.phase(), Phase::AwaitingJoin);
        assert_eq!(m.deadline(&hand.clock()), hand.now() + 10 * S);
        hand.advance(9 * S);
        assert_eq!(m.on_time(&hand.clock()), Timer::Idle, "early: nothing");
        match hand.fire(&mut m) {
            Timer::Close(c) => {
                assert_eq!(c.reason, CloseReason::JoinTimeout);
                assert_eq!(c.reason.code(), 4001);
                assert_eq!(c.detail.as_deref(), Some("no join within 10 s"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_join_stops_the_join_deadline() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        m.on_joined(UNIX + 3600, true);
        assert_eq!(m.phase(), Phase::Joined);
        // Only the ping is due now: at 20 s, not the join deadline at 10 s.
        assert_eq!(hand.fire(&mut m), Timer::Ping);
        assert_eq!(hand.elapsed, 20 * S);
    }

    #[test]
    fn pings_go_out_every_interval_and_silence_closes_4002() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        m.on_joined(UNIX + 86_400, true);
        assert_eq!(hand.fire(&mut m), Timer::Ping);
        assert_eq!(hand.fire(&mut m), Timer::Ping);
        // A pong at 50 s keeps the session: the check at 60 s sees 10 s of silence.
        hand.advance(10 * S);
        assert!(matches!(
            m.on_read(Some(Ok(Message::Pong(Default::default()))), hand.now()),
            Read::Continue
        ));
        assert_eq!(hand.fire(&mut m), Timer::Ping);
        assert_eq!(hand.elapsed, 60 * S);
        assert_eq!(hand.fire(&mut m), Timer::Ping, "80 s: 30 s of silence");
        assert_eq!(hand.fire(&mut m), Timer::Ping, "100 s: 50 s of silence");
        let timer = hand.fire(&mut m);
        assert_eq!(hand.elapsed, 120 * S);
        assert_eq!(timer_code(timer), 4002);
    }

    #[test]
    fn a_late_wake_delays_the_next_ping_by_a_whole_interval() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        m.on_joined(UNIX + 86_400, true);
        hand.advance(25 * S);
        assert_eq!(m.on_time(&hand.clock()), Timer::Ping);
        assert_eq!(m.deadline(&hand.clock()), hand.now() + 20 * S);
    }

    #[test]
    fn refresh_policy_warns_then_closes_4106_after_the_leeway() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Refresh), hand.now());
        m.on_read(Some(Ok(Message::Pong(Default::default()))), hand.now());
        let expires_at = UNIX + 70;
        m.on_joined(expires_at, true);
        // The ping at 20 s comes first; the warning at exp - 60 s = 10 s before it.
        assert_eq!(hand.fire(&mut m), Timer::TokenExpiring { expires_at });
        assert_eq!(hand.elapsed, 10 * S);
        // Warned once: the next deadlines are pings (kept answered), then the expiry at
        // exp + 30 s = 100 s, which wins over the ping due then.
        for at in [20, 40, 60, 80] {
            assert_eq!(hand.fire(&mut m), Timer::Ping);
            assert_eq!(hand.elapsed, at * S);
            m.on_read(Some(Ok(Message::Pong(Default::default()))), hand.now());
        }
        match hand.fire(&mut m) {
            Timer::Close(c) => {
                assert_eq!(hand.elapsed, 100 * S);
                assert_eq!(c.reason, CloseReason::Auth(AuthError::Expired { ago: 30 }));
                assert_eq!(c.reason.code(), 4106);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refresh_moves_the_expiry_and_warns_again() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Refresh), hand.now());
        m.on_joined(UNIX + 70, true);
        assert!(matches!(hand.fire(&mut m), Timer::TokenExpiring { .. }));
        m.on_refreshed(UNIX + 1000);
        // No new warning before exp - 60 s = 940 s; pings meanwhile.
        assert_eq!(hand.fire(&mut m), Timer::Ping);
        let mut warned = None;
        for _ in 0..100 {
            m.on_read(Some(Ok(Message::Pong(Default::default()))), hand.now());
            if let Timer::TokenExpiring { expires_at } = hand.fire(&mut m) {
                warned = Some((expires_at, hand.elapsed));
                break;
            }
        }
        assert_eq!(warned, Some((UNIX + 1000, 940 * S)));
    }

    #[test]
    fn keep_policy_never_warns_nor_closes_for_the_token() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        m.on_joined(UNIX + 5, true);
        for _ in 0..10 {
            m.on_read(Some(Ok(Message::Pong(Default::default()))), hand.now());
            assert_eq!(hand.fire(&mut m), Timer::Ping);
        }
        assert_eq!(hand.elapsed, 200 * S);
    }

    #[test]
    fn reads_close_with_their_codes() {
        let hand = Hand::new();
        let fresh = || Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        let mut m = fresh();
        let (code, detail, _) = close_code(m.on_read(
            Some(Err(WsError::Capacity(
                tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                    size: 2048,
                    max_size: 1024,
                },
            ))),
            hand.now(),
        ));
        assert_eq!(
            (code, detail.as_deref()),
            (4003, Some("messages are limited to 1024 bytes"))
        );
        assert!(!m.vanished());
        let mut m = fresh();
        let (code, detail, invalid) =
            close_code(m.on_read(Some(Ok(Message::Binary(vec![1, 2].into()))), hand.now()));
        assert_eq!(code, 4000);
        assert_eq!(
            detail.as_deref(),
            Some("only JSON text frames are accepted")
        );
        assert!(invalid);
        let mut m = fresh();
        let (code, detail, invalid) = close_code(m.on_read(text("{nope"), hand.now()));
        assert_eq!(code, 4000);
        assert!(detail.unwrap().starts_with("not a valid message"));
        assert!(invalid);
        let mut m = fresh();
        let (code, _, _) = close_code(m.on_read(
            Some(Err(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake,
            ))),
            hand.now(),
        ));
        assert_eq!(code, 4000);
        assert!(
            m.vanished(),
            "a reset is the network: the client may resume"
        );
        let mut m = fresh();
        close_code(m.on_read(
            Some(Err(WsError::Protocol(ProtocolError::NonZeroReservedBits))),
            hand.now(),
        ));
        assert!(!m.vanished(), "a protocol violation is the client's");
        let mut m = fresh();
        let (code, detail, _) = close_code(m.on_read(
            Some(Err(WsError::Io(std::io::ErrorKind::ConnectionReset.into()))),
            hand.now(),
        ));
        assert_eq!((code, detail), (4000, None), "nobody left to tell");
        assert!(m.vanished());
        let mut m = fresh();
        assert_eq!(close_code(m.on_read(None, hand.now())).0, 1000);
        assert!(m.vanished(), "the stream just ended");
    }

    #[test]
    fn a_close_frame_is_a_departure_unless_the_client_gave_up_idle() {
        let hand = Hand::new();
        let close = |code: u16| {
            Some(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: "".into(),
            }))))
        };
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        assert_eq!(close_code(m.on_read(close(1000), hand.now())).0, 1000);
        assert!(!m.vanished(), "it left: the media session ends");
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        assert_eq!(close_code(m.on_read(close(4002), hand.now())).0, 1000);
        assert!(
            m.vanished(),
            "it resumes elsewhere: the media session is kept"
        );
    }

    #[test]
    fn over_the_message_rate_closes_4004() {
        let mut hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        // A burst of 3, then 2 per second.
        for _ in 0..3 {
            assert!(matches!(
                m.on_read(text(PING), hand.now()),
                Read::Message(_)
            ));
        }
        let (code, detail, _) = close_code(m.on_read(text(PING), hand.now()));
        assert_eq!(code, 4004);
        assert_eq!(detail.as_deref(), Some("at most 2 messages per second"));
        // Control frames are not counted.
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        for _ in 0..10 {
            assert!(matches!(
                m.on_read(Some(Ok(Message::Ping(Default::default()))), hand.now()),
                Read::Continue
            ));
        }
        // And the bucket refills with time.
        for _ in 0..3 {
            assert!(matches!(
                m.on_read(text(PING), hand.now()),
                Read::Message(_)
            ));
        }
        hand.advance(S);
        for _ in 0..2 {
            assert!(matches!(
                m.on_read(text(PING), hand.now()),
                Read::Message(_)
            ));
        }
    }

    #[test]
    fn only_join_comes_first() {
        let hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        assert!(matches!(
            m.on_read(text(JOIN), hand.now()),
            Read::Message(ClientMessage::Join { .. })
        ));
        let close = Machine::before_join("ping");
        assert_eq!(close.reason.code(), 4000);
        assert_eq!(close.detail.as_deref(), Some("`ping` before `join`"));
    }

    #[test]
    fn join_refusals_close_with_their_codes() {
        // The join's token first, then the header, then the query only when allowed.
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            Machine::join_token(some("j"), some("h"), some("q"), true),
            Ok("j".into())
        );
        assert_eq!(
            Machine::join_token(None, some("h"), some("q"), true),
            Ok("h".into())
        );
        assert_eq!(
            Machine::join_token(None, None, some("q"), true),
            Ok("q".into())
        );
        let missing = Machine::join_token(None, None, some("q"), false).unwrap_err();
        assert_eq!(missing.reason.code(), 4100);
        assert!(
            missing
                .detail
                .unwrap()
                .ends_with("(the ?jwt= query parameter is disabled on this proxy)")
        );
        let missing = Machine::join_token(None, None, None, false).unwrap_err();
        assert_eq!(missing.detail, Some(AuthError::Missing.to_string()));
        // Every token reason closes with its own code, its text as the detail.
        for reason in CloseReason::all() {
            let CloseReason::Auth(e) = reason else {
                continue;
            };
            let close = Machine::token_refused(e.clone(), false);
            assert!((4100..4200).contains(&close.reason.code()), "{e:?}");
            assert_eq!(close.reason, CloseReason::Auth(e.clone()));
            assert_eq!(close.detail, Some(e.to_string()));
        }
        let locked = Machine::address_locked_out(Duration::from_millis(1500));
        assert_eq!(locked.reason.code(), 4006);
        assert!(locked.detail.unwrap().ends_with("retry in 2 s"));
        let locked = Machine::address_locked_out(Duration::ZERO);
        assert!(locked.detail.unwrap().ends_with("retry in 1 s"));
        let many = Machine::too_many_sessions(4);
        assert_eq!(many.reason.code(), 4007);
        assert_eq!(many.detail.as_deref(), Some("at most 4 sessions per user"));
    }

    #[test]
    fn a_waiting_session_takes_only_ping_refresh_and_leave_until_admitted() {
        let hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        m.on_joined(UNIX + 3600, false);
        assert_eq!(m.phase(), Phase::Waiting);
        let parse = |s: &str| serde_json::from_str::<ClientMessage>(s).unwrap();
        assert!(m.accepts(&parse(PING)));
        assert!(m.accepts(&parse(r#"{"type":"leave"}"#)));
        assert!(m.accepts(&parse(r#"{"type":"refresh","token":"t"}"#)));
        let offer = parse(r#"{"type":"offer","sdp":"v=0"}"#);
        assert!(!m.accepts(&offer));
        m.on_admitted();
        assert_eq!(m.phase(), Phase::Joined);
        assert!(m.accepts(&offer));
        // Admitting a session that never waited changes nothing.
        m.on_admitted();
        assert_eq!(m.phase(), Phase::Joined);
    }

    #[test]
    fn refused_refreshes_close_4006_at_the_limit_and_unavailable_keys_do_not_count() {
        let hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Refresh), hand.now());
        m.on_joined(UNIX + 3600, true);
        for n in 1..MAX_REFUSED_REFRESHES {
            assert_eq!(m.on_refresh_refused(&AuthError::BadSignature), (n, None));
            assert_eq!(
                m.on_refresh_refused(&AuthError::KeysUnavailable("down".into())),
                (n, None),
                "not the client's fault"
            );
        }
        let (n, close) = m.on_refresh_refused(&AuthError::WrongRoom);
        assert_eq!(n, MAX_REFUSED_REFRESHES);
        let close = close.expect("closed at the limit");
        assert_eq!(close.reason.code(), 4006);
        assert_eq!(
            close.detail.as_deref(),
            Some("3 refresh tokens refused on this session")
        );
        assert_eq!(m.refused_refreshes(), MAX_REFUSED_REFRESHES);
    }

    #[test]
    fn a_client_that_stops_reading_closes_4009_and_shutdown_1001() {
        let hand = Hand::new();
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        assert_eq!(m.after_event(), None);
        m.on_stalled();
        assert!(m.stalled());
        assert_eq!(m.after_event().map(|c| c.reason.code()), Some(4009));
        let close = m.on_shutdown();
        assert_eq!(close.reason.code(), 1001);
        assert_eq!(
            close.detail.as_deref(),
            Some("the proxy is shutting down; reconnect")
        );
    }

    #[test]
    fn only_a_lost_connection_keeps_the_media_session_for_a_resume() {
        let hand = Hand::new();
        let m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        // 1001 (the proxy drains) and 4002 (silence) lose only the connection.
        assert!(m.keeps_media(&CloseReason::GoingAway));
        assert!(m.keeps_media(&CloseReason::IdleTimeout));
        // Any other close ends the session: a `leave`, a bad message, a token problem, ...
        for reason in CloseReason::all() {
            if !matches!(reason, CloseReason::GoingAway | CloseReason::IdleTimeout) {
                assert!(!m.keeps_media(&reason), "{reason:?}");
            }
        }
        // A connection that dropped (1006, a reset) or a client that gave up on it (its own
        // close 4002) vanished: kept whatever the close the proxy then records.
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        close_code(m.on_read(None, hand.now()));
        assert!(m.keeps_media(&CloseReason::Normal));
        let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
        close_code(m.on_read(
            Some(Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4002),
                reason: "".into(),
            })))),
            hand.now(),
        ));
        assert!(m.keeps_media(&CloseReason::Normal));
        // A client closing 1000 or 1001 (a page closed) left.
        for code in [1000, 1001] {
            let mut m = Machine::new(settings(ExpiryPolicy::Keep), hand.now());
            close_code(m.on_read(
                Some(Ok(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: "".into(),
                })))),
                hand.now(),
            ));
            assert!(!m.keeps_media(&CloseReason::Normal), "{code}");
        }
    }

    #[test]
    fn a_join_for_no_room_closes_4000_and_an_offline_guest_4014() {
        let close = Machine::bad_room("a room is 1-128 characters".into());
        assert_eq!(close.reason.code(), 4000);
        assert_eq!(close.detail.as_deref(), Some("a room is 1-128 characters"));
        let refused = Machine::guest_refused_offline(Role::Guest, Some(false)).unwrap();
        assert_eq!(refused.reason.code(), 4014);
        assert_eq!(
            refused.detail.as_deref(),
            Some(
                "guests are not allowed in this room (the media server is unreachable: this \
                 proxy's configured policy applies)"
            )
        );
        // Only a guest, and only when the configured policy says no guests.
        assert_eq!(Machine::guest_refused_offline(Role::Guest, None), None);
        assert_eq!(
            Machine::guest_refused_offline(Role::Guest, Some(true)),
            None
        );
        assert_eq!(
            Machine::guest_refused_offline(Role::Member, Some(false)),
            None
        );
        assert_eq!(
            Machine::guest_refused_offline(Role::Moderator, Some(false)),
            None
        );
    }

    #[test]
    fn the_media_servers_end_closes_with_its_code_and_a_lost_one_says_so_first() {
        // Removed, banned, ended, turned away, timed out: the code, the detail in `error`.
        let (message, close) = Machine::on_media_closed(MediaEnd::Banned, Some("banned"));
        assert_eq!(message, None);
        assert_eq!(close.reason.code(), 4012);
        assert_eq!(
            close.detail.as_deref(),
            Some("you were removed from the room and banned from it")
        );
        let (message, close) = Machine::on_media_closed(MediaEnd::PeerConnectionFailed, None);
        assert_eq!((message, close.reason.code()), (None, 4010));
        // Gone (the stream ended, a drain, a move): `media_server_lost`, then 4008 bare.
        let (message, close) = Machine::on_media_closed(MediaEnd::Unspecified, None);
        assert_eq!(
            message,
            Some(ServerMessage::MediaServerLost {
                message: "the media server hosting this room is gone; rejoin".into()
            })
        );
        assert_eq!(close, Close::new(CloseReason::MediaServerLost, None));
        let (message, close) = Machine::on_media_closed(MediaEnd::Moved, Some("moved"));
        assert!(matches!(
            message,
            Some(ServerMessage::MediaServerLost { .. })
        ));
        assert_eq!(close.reason.code(), 4008);
    }
}
