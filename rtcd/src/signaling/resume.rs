//! Parked sessions and their resumption.
//!
//! Media never passes through the proxy, so a proxy that dies or restarts should not end
//! anyone's call. When a session's stream breaks without a `Leave`, its relay task parks it
//! here for `rtc.resume_grace_seconds`: the peer connection and the forwarding go on, the
//! events the client would have been sent are kept (bounded), and a proxy replica that
//! presents the session's secret (`Resume`) takes it over with a new stream. If nobody does
//! within the grace period, the session ends as it did before this existed ("disconnected").
//!
//! One map under a std mutex, touched only when a session parks, is claimed or gives up:
//! never on the media path and never across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore as _;
use rtcd_proto::v1 as pb;
use subtle::ConstantTimeEq as _;
use tokio::sync::oneshot;
use tonic::Streaming;

use super::{Admitted, Outbound, convert, signal};
use crate::metrics::{Metrics, OutcomeLabels};
use crate::sfu::{CallId, SessionEvent, SessionId, Sfu, TenantId, UserId};

/// Events kept for a parked session before it is given up (a client that far behind rejoins
/// rather than replaying a backlog). Voice activity and participant events are not kept:
/// `Resumed` carries the call as it is now.
pub const PARKED_BACKLOG: usize = 256;

/// A session's resume secret: 256 random bits, base64url. Never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// A fresh secret.
    pub fn random() -> Self {
        use base64::Engine as _;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret, for `Joined.resume_secret` only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in constant time.
    fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a resuming stream brings to a parked session: where its events go now, and where its
/// commands come from.
pub struct Claim {
    /// The new response stream's sender.
    pub tx: Outbound,
    /// The new request stream.
    pub inbound: Streaming<pb::ClientSignal>,
}

/// Who a parked session is, as a `Resume` must name it.
pub struct Parked {
    /// The tenant (the authenticated client): a session is only resumable by its own tenant.
    pub tenant: TenantId,
    /// The call.
    pub call: CallId,
    /// The session.
    pub session: SessionId,
    /// Its user.
    pub user: UserId,
    /// Its secret.
    pub secret: Secret,
    /// The room is end-to-end encrypted (as its `Joined` said; it cannot change while the
    /// session is in the room).
    pub e2ee: bool,
}

struct Spot {
    call: CallId,
    user: UserId,
    secret: Secret,
    claim: oneshot::Sender<Claim>,
}

impl Spot {
    /// Whether a `Resume` naming this call, user and secret is for this session (all three
    /// compared every time: how far a guess got shows in no timing).
    fn fits(&self, call: &CallId, user: &UserId, secret: &str) -> bool {
        self.secret.matches(secret) & (self.call == *call) & (self.user == *user)
    }
}

type Key = (TenantId, SessionId);

/// The parked sessions of this host. Cheap to clone.
#[derive(Clone)]
pub struct Parking {
    grace: Duration,
    spots: Arc<Mutex<HashMap<Key, Spot>>>,
    metrics: Option<Arc<Metrics>>,
}

/// Why a `Resume` was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotResumable {
    /// Resumption is off on this host (`rtc.resume_grace_seconds = 0`).
    Off,
    /// No parked session matches (unknown, expired, still attached, another user or call, or
    /// the secret is wrong: one answer for all, so probing tells nothing).
    NotFound,
}

impl Parking {
    /// Sessions park for `grace` (zero: never; a session ends with its stream).
    pub fn new(grace: Duration, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            grace,
            spots: Arc::default(),
            metrics,
        }
    }

    /// Whether sessions park at all.
    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }

    fn spots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Spot>> {
        self.spots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, outcome: &'static str) {
        if let Some(m) = &self.metrics {
            m.session_resumes
                .get_or_create(&OutcomeLabels { outcome })
                .inc();
        }
    }

    /// Whether a parked session matches, without taking it (a forged or stale `Resume` must
    /// not disturb the session it names).
    pub fn matches(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        call: &CallId,
        user: &UserId,
        secret: &str,
    ) -> Result<(), NotResumable> {
        if !self.enabled() {
            return Err(NotResumable::Off);
        }
        let spots = self.spots();
        let found = spots
            .get(&(tenant.clone(), session.clone()))
            .is_some_and(|s| s.fits(call, user, secret));
        if found {
            Ok(())
        } else {
            drop(spots);
            self.count("refused");
            Err(NotResumable::NotFound)
        }
    }

    /// Takes a parked session over with a new stream: its relay task sends `Resumed` and the
    /// missed events on `claim.tx`, then relays as before. `NotFound` if it is no longer parked
    /// or does not match (the claim, and with it the new stream, is dropped).
    pub fn take(
        &self,
        tenant: &TenantId,
        session: &SessionId,
        call: &CallId,
        user: &UserId,
        secret: &str,
        claim: Claim,
    ) -> Result<(), NotResumable> {
        let mut spots = self.spots();
        let key = (tenant.clone(), session.clone());
        let matching = spots.get(&key).is_some_and(|s| s.fits(call, user, secret));
        if !matching {
            return Err(NotResumable::NotFound);
        }
        let spot = spots
            .remove(&key)
            .expect("checked above, under the same lock");
        // Sent under the lock: the parked task, if it is giving up at this moment, finds its
        // spot gone and waits for this claim instead.
        spot.claim.send(claim).map_err(|_| NotResumable::NotFound)
    }

    /// Holds `admitted` (whose stream broke; `pending` is an event that could not be sent on
    /// it) until a proxy takes it over, the grace period ends, the session ends, or too many
    /// events pile up. Returns the new stream, with `Resumed` and the missed events already
    /// queued on it; `None`: the caller drops the session.
    pub async fn park(
        &self,
        who: &Parked,
        admitted: &mut Admitted,
        sfu: &Sfu,
        pending: Option<pb::ServerSignal>,
    ) -> Option<Claim> {
        let key = (who.tenant.clone(), who.session.clone());
        let (claim_tx, mut claim_rx) = oneshot::channel();
        self.spots().insert(
            key.clone(),
            Spot {
                call: who.call.clone(),
                user: who.user.clone(),
                secret: who.secret.clone(),
                claim: claim_tx,
            },
        );
        let _parked = ParkedGauge::new(self.metrics.clone());
        tracing::debug!(client = %who.tenant, call = %who.call, session = %who.session, "session parked: its stream broke; waiting for a resume");
        let mut missed: VecDeque<pb::ServerSignal> = pending.into_iter().collect();
        let deadline = tokio::time::sleep(self.grace);
        tokio::pin!(deadline);
        let outcome = loop {
            if missed.len() > PARKED_BACKLOG {
                break "overflow";
            }
            tokio::select! {
                claim = &mut claim_rx => match claim {
                    Ok(claim) => return Some(self.hand_over(who, claim, sfu, missed).await),
                    Err(_) => break "ended",
                },
                _ = &mut deadline => break "expired",
                event = admitted.events.recv() => match event {
                    None => break "ended",
                    Some(
                        SessionEvent::VoiceActivity { .. }
                        | SessionEvent::ParticipantJoined(_)
                        | SessionEvent::ParticipantLeft(_)
                        | SessionEvent::ParticipantUpdated(_),
                    ) => {}
                    Some(event) => {
                        let over = matches!(event, SessionEvent::Closed { .. });
                        missed.push_back(convert::event(event));
                        if over {
                            break "ended";
                        }
                    }
                },
                Some(notice) = admitted.notices.recv() => {
                    missed.push_back(pb::ServerSignal { signal: Some(convert::lobby_notice(notice)) });
                }
            }
        };
        let removed = self.spots().remove(&key).is_some();
        if removed {
            self.count(outcome);
            tracing::debug!(client = %who.tenant, call = %who.call, session = %who.session, outcome, "parked session given up");
            return None;
        }
        // Claimed at the moment it gave up: the claim was sent under the lock, so it is there.
        match claim_rx.await {
            Ok(claim) => Some(self.hand_over(who, claim, sfu, missed).await),
            Err(_) => None,
        }
    }

    /// Queues `Resumed` (the call as it is now, and the session's own role and permissions,
    /// which a moderator may have changed meanwhile) and the missed events on the new stream.
    async fn hand_over(
        &self,
        who: &Parked,
        claim: Claim,
        sfu: &Sfu,
        missed: VecDeque<pb::ServerSignal>,
    ) -> Claim {
        self.count("resumed");
        let room = sfu.room(&who.tenant, &who.call).await.ok();
        let participants = room.as_ref().map_or(&[][..], |r| &r.participants[..]);
        let me = participants.iter().find(|p| p.session == who.session);
        let resumed = pb::Resumed {
            session_id: who.session.as_str().to_owned(),
            participants: participants
                .iter()
                .filter(|p| p.session != who.session)
                .map(|p| pb::ParticipantEvent {
                    session_id: p.session.as_str().to_owned(),
                    user_id: p.user.as_str().to_owned(),
                    display_name: p.display_name.clone(),
                    role: p.role.clone(),
                })
                .collect(),
            role: me.map(|p| p.role.clone()).unwrap_or_default(),
            permissions: me.map(|p| convert::permissions_to(p.permissions)),
            e2ee: who.e2ee,
        };
        tracing::info!(target: "audit", client = %who.tenant, call = %who.call, user = %who.user, session = %who.session, action = "resume", missed = missed.len(), "parked session resumed");
        // Errors are left to the relay: a stream that is already gone parks the session again.
        let _ = claim
            .tx
            .send(signal(pb::server_signal::Signal::Resumed(resumed)))
            .await;
        for message in missed {
            if claim.tx.send(Ok(message)).await.is_err() {
                break;
            }
        }
        claim
    }
}

/// `rtcd_sessions_parked`, held up while a session is parked.
struct ParkedGauge(Option<Arc<Metrics>>);

impl ParkedGauge {
    fn new(metrics: Option<Arc<Metrics>>) -> Self {
        if let Some(m) = &metrics {
            m.sessions_parked.inc();
        }
        Self(metrics)
    }
}

impl Drop for ParkedGauge {
    fn drop(&mut self) {
        if let Some(m) = &self.0 {
            m.sessions_parked.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_base64url_and_never_printed() {
        let (a, b) = (Secret::random(), Secret::random());
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a.expose(), b.expose());
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(a.matches(a.expose()));
        assert!(!a.matches(b.expose()));
        assert!(!a.matches(""));
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }

    #[test]
    fn a_resume_needs_resumption_on_and_a_parked_session() {
        let off = Parking::new(Duration::ZERO, None);
        let (t, s, c, u) = (
            TenantId::new("t"),
            SessionId::new("s"),
            CallId::new("c"),
            UserId::new("u"),
        );
        assert_eq!(off.matches(&t, &s, &c, &u, "x"), Err(NotResumable::Off));
        let on = Parking::new(Duration::from_secs(5), None);
        assert_eq!(on.matches(&t, &s, &c, &u, "x"), Err(NotResumable::NotFound));
        // A spot as `park` leaves it: the right secret, call and user match; any other does not.
        let secret = Secret::random();
        let (claim_tx, _claim_rx) = oneshot::channel();
        on.spots().insert(
            (t.clone(), s.clone()),
            Spot {
                call: c.clone(),
                user: u.clone(),
                secret: secret.clone(),
                claim: claim_tx,
            },
        );
        assert_eq!(on.matches(&t, &s, &c, &u, secret.expose()), Ok(()));
        let wrong = Secret::random();
        assert!(on.matches(&t, &s, &c, &u, wrong.expose()).is_err());
        assert!(
            on.matches(&t, &s, &CallId::new("c2"), &u, secret.expose())
                .is_err()
        );
        assert!(
            on.matches(&t, &s, &c, &UserId::new("u2"), secret.expose())
                .is_err()
        );
        assert!(
            on.matches(&TenantId::new("t2"), &s, &c, &u, secret.expose())
                .is_err()
        );
    }
}
