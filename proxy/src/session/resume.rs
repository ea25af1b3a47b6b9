//! A media session that outlives its signaling connection (docs/protocol.md section 5c), and
//! the live role changes that outrank a token: what a `join` that resumed an earlier session
//! makes of the grant, what `joined` says about resumption, and whether a `refresh` may
//! replace the role and permissions. A plain struct fed with what the media server answered
//! and what it reported since; the pump holds it with the session's grant.
//!
//! The media server decides whether a `resume` token takes over a parked session (it checks
//! it in constant time against the identity, room and its secret); an unknown or refused one
//! just makes a new session, so "refused" here is a join without [`Resumed`].

use crate::auth::Grant;
use crate::config::Secret;
use crate::policy::{Permissions, Role};
use crate::protocol::Participant;
use crate::relay::Resumed;

/// The resumption side of one joined session.
#[derive(Debug, Default)]
pub struct Resume {
    /// The platform or a moderator set this session's role and permissions (live, or before
    /// a resume): a refresh keeps them instead of the new token's.
    moderated: bool,
    /// Sent in `joined`: what resumes this session after a lost connection.
    token: Option<Secret>,
    /// Set until `joined` is sent when this join resumed an earlier session.
    resumed: Option<Resumed>,
}

/// What `joined` says about resumption.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// `resume_token`: absent when the media server does not offer resumption.
    pub resume_token: Option<Secret>,
    /// `resumed`: this join took over the earlier session.
    pub resumed: bool,
    /// `participants`: with `resumed`, every other participant now.
    pub participants: Option<Vec<Participant>>,
}

impl Resume {
    /// The media server accepted the join: `token` resumes this session later, `resumed` is
    /// the earlier session this join took over (`None`: a new session, the `resume` token
    /// absent, unknown or refused). The session runs with `grant` as the media server has
    /// it: a moderator may have changed the parked session's role or permissions since the
    /// token was issued, and that holds over the token (then the session is `moderated`).
    pub fn on_join(grant: &mut Grant, token: Option<Secret>, resumed: Option<Resumed>) -> Self {
        let mut moderated = false;
        if let Some(r) = &resumed {
            moderated = r.role != grant.role || r.permissions != grant.permissions;
            grant.role = r.role;
            grant.permissions = r.permissions;
        }
        Resume {
            moderated,
            token,
            resumed,
        }
    }

    /// Whether this join resumed an earlier session (until `joined` is sent).
    pub fn resuming(&self) -> bool {
        self.resumed.is_some()
    }

    /// Whether the platform or a moderator set the role and permissions.
    pub fn moderated(&self) -> bool {
        self.moderated
    }

    /// A waiting session was let in; the media server's resume token comes only now.
    pub fn on_admitted(&mut self, token: Option<Secret>) {
        self.token = token;
    }

    /// The platform or a moderator changed the session's role and permissions.
    pub fn on_permissions_changed(
        &mut self,
        grant: &mut Grant,
        role: Role,
        permissions: Permissions,
    ) {
        grant.role = role;
        // The media server does not know `record`: it stays what the token granted.
        let record = grant.permissions.record;
        grant.permissions = permissions;
        grant.permissions.record = record;
        self.moderated = true;
    }

    /// A refresh token verified as `fresh` (already held to the join's ceiling) for a session
    /// holding `current`: the grant it runs with now, and whether the media server is told of
    /// it (`UpdateGrant`). A moderated session keeps its role and permissions: a refresh must
    /// not undo a moderator's downgrade, and the media server already has them.
    pub fn on_refreshed(&self, current: &Grant, mut fresh: Grant) -> (Grant, bool) {
        if self.moderated {
            fresh.role = current.role;
            fresh.permissions = current.permissions;
        }
        (fresh, !self.moderated)
    }

    /// What the `joined` being sent says; the resumed session's participants go out once.
    pub fn joined(&mut self) -> Joined {
        let resumed = self.resumed.take();
        Joined {
            resume_token: self.token.clone(),
            resumed: resumed.is_some(),
            participants: resumed.map(|r| r.participants),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::{listener, member};
    use crate::protocol::{Identity, RoomName, ServerMessage, SessionId};

    fn grant(role: Role, permissions: Permissions, expires_at: i64) -> Grant {
        Grant {
            identity: Identity::new("kate"),
            tenant: None,
            name: Some("Kate".into()),
            room: RoomName::parse("standup").unwrap(),
            role,
            permissions,
            expires_at,
            key_id: "k1".into(),
            issued_at: Some(expires_at - 600),
            token_id: None,
        }
    }

    fn alice() -> Participant {
        Participant {
            identity: Identity::new("alice"),
            name: Some("Alice".into()),
            role: None,
        }
    }

    fn resumed(role: Role, permissions: Permissions) -> Resumed {
        Resumed {
            participants: vec![alice()],
            role,
            permissions,
        }
    }

    fn token(s: &str) -> Option<Secret> {
        Some(Secret::new(s))
    }

    /// The `joined` a session with `resume` sends, as the client reads it.
    fn joined_json(grant: &Grant, resume: &mut Resume) -> serde_json::Value {
        let r = resume.joined();
        serde_json::to_value(ServerMessage::Joined {
            session_id: SessionId(3),
            room: grant.room.clone(),
            identity: grant.identity.clone(),
            name: grant.name.clone(),
            tenant: None,
            role: grant.role,
            permissions: grant.permissions,
            expires_at: grant.expires_at,
            media: true,
            ice_servers: None,
            ice_servers_expires_at: None,
            resume_token: r.resume_token,
            resumed: r.resumed,
            participants: r.participants,
            e2ee: false,
        })
        .unwrap()
    }

    #[test]
    fn a_resume_with_the_same_grant_goes_on_unmoderated() {
        let mut g = grant(Role::Member, member(), 1000);
        let before = g.clone();
        let mut resume =
            Resume::on_join(&mut g, token("next"), Some(resumed(Role::Member, member())));
        assert_eq!(g, before, "nothing changed while it was parked");
        assert!(resume.resuming());
        assert!(!resume.moderated());
        // `joined` says so once, with the room now, and the token for the next resume.
        let json = joined_json(&g, &mut resume);
        assert_eq!(json["resumed"], true);
        assert_eq!(json["resume_token"], "next");
        assert_eq!(
            json["participants"],
            serde_json::json!([{"identity": "alice", "name": "Alice"}])
        );
        assert!(!resume.resuming());
        assert_eq!(
            resume.joined(),
            Joined {
                resume_token: token("next"),
                resumed: false,
                participants: None,
            }
        );
        // Unmoderated: a refresh brings the new token's role, and the media server is told.
        let (held, update) = resume.on_refreshed(&g, grant(Role::Moderator, listener(), 2000));
        assert_eq!(
            (held.role, held.permissions, held.expires_at),
            (Role::Moderator, listener(), 2000)
        );
        assert!(update);
    }

    #[test]
    fn a_resume_after_a_moderator_changed_the_role_holds_the_change_over_the_token() {
        // The token says member; a moderator made the parked session a listener-only guest.
        let mut g = grant(Role::Member, member(), 1000);
        let resume = Resume::on_join(&mut g, token("t"), Some(resumed(Role::Guest, listener())));
        assert!(resume.moderated());
        assert_eq!((g.role, g.permissions), (Role::Guest, listener()));
        // Permissions alone count too.
        let mut g2 = grant(Role::Member, member(), 1000);
        let r2 = Resume::on_join(&mut g2, None, Some(resumed(Role::Member, listener())));
        assert!(r2.moderated());
        assert_eq!((g2.role, g2.permissions), (Role::Member, listener()));
        // A refresh must not undo it: the new expiry, the moderated role; nothing to update.
        let (held, update) = resume.on_refreshed(&g, grant(Role::Member, member(), 2000));
        assert_eq!(
            (held.role, held.permissions, held.expires_at),
            (Role::Guest, listener(), 2000)
        );
        assert!(!update, "the media server already has the moderated grant");
    }

    #[test]
    fn an_unknown_or_refused_resume_is_a_new_session() {
        // The media server did not take the earlier session over: no `Resumed`.
        let mut g = grant(Role::Member, member(), 1000);
        let before = g.clone();
        let mut resume = Resume::on_join(&mut g, token("fresh"), None);
        assert_eq!(g, before);
        assert!(!resume.resuming());
        assert!(!resume.moderated());
        let json = joined_json(&g, &mut resume);
        assert!(json.get("resumed").is_none(), "absent: a new session");
        assert_eq!(json["resume_token"], "fresh", "the new session's own");
        assert!(json.get("participants").is_none());
        // A media server that does not offer resumption: no `resume_token` at all.
        let mut g = grant(Role::Member, member(), 1000);
        let mut resume = Resume::on_join(&mut g, None, None);
        let json = joined_json(&g, &mut resume);
        assert!(json.get("resume_token").is_none());
        assert!(json.get("resumed").is_none());
    }

    #[test]
    fn a_waiting_session_gets_its_resume_token_when_admitted() {
        let mut g = grant(Role::Member, member(), 1000);
        let mut resume = Resume::on_join(&mut g, None, None);
        resume.on_admitted(token("late"));
        assert_eq!(resume.joined().resume_token, token("late"));
        // As the media server says it: an admission without one clears it.
        resume.on_admitted(None);
        assert_eq!(resume.joined().resume_token, None);
    }

    #[test]
    fn a_live_role_change_marks_the_session_moderated() {
        let mut g = grant(Role::Member, member(), 1000);
        let mut resume = Resume::on_join(&mut g, None, None);
        assert!(!resume.moderated());
        resume.on_permissions_changed(&mut g, Role::Moderator, listener());
        assert!(resume.moderated());
        assert_eq!((g.role, g.permissions), (Role::Moderator, listener()));
        let (held, update) = resume.on_refreshed(&g, grant(Role::Member, member(), 2000));
        assert_eq!((held.role, held.permissions), (Role::Moderator, listener()));
        assert!(!update);
    }
}
