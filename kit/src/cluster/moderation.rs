//! Moderation decisions in the cluster store, as both daemons read them: the key layout, the
//! records, and the one rule a join or a token refresh is refused by. rtcd writes them (it owns
//! moderation, per tenant) and checks every join against its copy; the proxies check their own
//! copy too, so a banned or revoked user is refused before placement and a revoked refresh is
//! refused before `refreshed` is said (docs/cluster.md).
//!
//! | key (under the deployment prefix)          | value                              |
//! |--------------------------------------------|------------------------------------|
//! | `moderation/bans/<tenant>/<call>/<user>`   | [`BanRecord`]                      |
//! | `moderation/cutoffs/<tenant>/<user>`       | [`CutOffRecord`]                   |
//! | `moderation/tokens/<tenant>/<token id>`    | [`DeniedRecord`]                   |
//! | `moderation/policies/<tenant>/<call>`      | rtcd's stored room policy          |
//!
//! Each ID is one path segment: `%` and `/` in it are written `%25` and `%2F`, so a tenant's
//! (or a call's) entries form one prefix and no ID runs into the next. The records are the JSON
//! rtcd's sled store keeps, so a host moving into the cluster mode copies them as they are.

use serde::{Deserialize, Serialize};

use super::{Entry, Replica};

/// Every moderation key starts with it (one watched copy holds them all).
pub const PREFIX: &str = "moderation/";
/// Bans: `<tenant>/<call>/<user>`.
pub const BANS: &str = "moderation/bans/";
/// Identity cut-offs: `<tenant>/<user>`.
pub const CUTOFFS: &str = "moderation/cutoffs/";
/// Denied token IDs: `<tenant>/<token id>`.
pub const TOKENS: &str = "moderation/tokens/";
/// Stored room policies: `<tenant>/<call>`.
pub const POLICIES: &str = "moderation/policies/";
/// A room's recording in progress, for the host the room moves to: `<tenant>/<call>`.
pub const RECORDINGS: &str = "moderation/recordings/";

/// A room records: the host that records it refreshes this while it does, and a host that
/// opens the room soon after the refreshes stop (its host died, the room moved) continues the
/// same recording in a new segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingRecord {
    /// Format version (1).
    pub v: u32,
    /// The recording.
    pub recording_id: String,
    /// The segment being written.
    pub segment: u32,
    /// Who started it.
    pub started_by: String,
    /// When its first segment started (Unix milliseconds).
    pub started_at_ms: i64,
    /// Its latest refresh (Unix milliseconds).
    pub updated_at_ms: i64,
}

/// A ban in force until `until` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// Format version (1).
    pub v: u32,
    /// Expiry.
    pub until: i64,
    /// As the moderator gave it.
    pub reason: String,
    /// When it was made.
    pub created_at: i64,
}

/// A user's tokens issued before `issued_before` (Unix seconds) are revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutOffRecord {
    /// Format version (1).
    pub v: u32,
    /// The cut-off.
    pub issued_before: i64,
}

/// A token ID on the deny-list until `expires_at` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedRecord {
    /// Format version (1).
    pub v: u32,
    /// Expiry of the entry (the token's own).
    pub expires_at: i64,
}

/// Why a join or a token refresh is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user is banned from the call until this time (Unix seconds).
    Banned {
        /// Expiry.
        until: i64,
    },
    /// The user's tokens issued before this time (Unix seconds) are revoked.
    CutOff {
        /// The cut-off.
        issued_before: i64,
    },
    /// This token's ID is on the deny-list.
    TokenDenied,
}

impl Refusal {
    /// The `SessionClosed` reason of a session this refusal ends ("banned" or "revoked").
    pub fn close_reason(&self) -> &'static str {
        match self {
            Refusal::Banned { .. } => "banned",
            Refusal::CutOff { .. } | Refusal::TokenDenied => "revoked",
        }
    }
}

/// Whether a token issued at `issued_at` (Unix seconds; 0 = the token does not say) is revoked
/// by a cut-off at `issued_before`. A token that does not say when it was issued cannot prove
/// it is newer, so any cut-off revokes it.
pub fn revoked_by(issued_at: i64, issued_before: i64) -> bool {
    issued_at == 0 || issued_at < issued_before
}

/// The rule every join (`ban_until` known) and token refresh (`None`) is checked by, on what
/// a store holds for the user: a ban in force first, then a cut-off after the token's
/// `issued_at`, then the token's ID on the deny-list.
pub fn refusal(
    ban_until: Option<i64>,
    cutoff: Option<i64>,
    issued_at: i64,
    denied: bool,
) -> Option<Refusal> {
    if let Some(until) = ban_until {
        return Some(Refusal::Banned { until });
    }
    if let Some(issued_before) = cutoff
        && revoked_by(issued_at, issued_before)
    {
        return Some(Refusal::CutOff { issued_before });
    }
    denied.then_some(Refusal::TokenDenied)
}

/// One ID as a key segment.
fn segment(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

/// A key segment's ID.
fn unsegment(s: &str) -> String {
    s.replace("%2F", "/").replace("%25", "%")
}

/// The key of `kind` (one of the prefixes above) for these IDs.
pub fn key(kind: &str, ids: &[&str]) -> String {
    let mut out = kind.to_owned();
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&segment(id));
    }
    out
}

/// The prefix of every key of `kind` whose first IDs are `ids` (a tenant, a tenant's call).
pub fn key_prefix(kind: &str, ids: &[&str]) -> String {
    format!("{}/", key(kind, ids))
}

/// The IDs of a key of `kind`, if it has `n` of them.
pub fn ids(key: &str, kind: &str, n: usize) -> Option<Vec<String>> {
    let parts: Vec<String> = key.strip_prefix(kind)?.split('/').map(unsegment).collect();
    (parts.len() == n).then_some(parts)
}

/// A record of an entry, or `None` if it does not decode (reported by whoever must act on it).
pub fn decode<T: serde::de::DeserializeOwned>(entry: &Entry) -> Option<T> {
    serde_json::from_slice(&entry.value).ok()
}

/// What a watched copy of [`PREFIX`] says about one user's join or token, by the rule above.
/// Undecodable records count as absent here: the proxies' check is in addition to rtcd's,
/// which reports them.
pub fn refusal_in(
    copy: &Replica,
    tenant: &str,
    call: Option<&str>,
    user: &str,
    issued_at: i64,
    token_id: &str,
    now: i64,
) -> Option<Refusal> {
    let ban_until = call.and_then(|call| {
        copy.get(&key(BANS, &[tenant, call, user]))
            .and_then(|e| decode::<BanRecord>(&e))
            .map(|r| r.until)
            .filter(|until| *until > now)
    });
    let cutoff = copy
        .get(&key(CUTOFFS, &[tenant, user]))
        .and_then(|e| decode::<CutOffRecord>(&e))
        .map(|r| r.issued_before);
    let denied = !token_id.is_empty()
        && copy
            .get(&key(TOKENS, &[tenant, token_id]))
            .and_then(|e| decode::<DeniedRecord>(&e))
            .is_some_and(|r| r.expires_at > now);
    refusal(ban_until, cutoff, issued_at, denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_slashes_and_percents_stay_one_segment() {
        let k = key(BANS, &["t", "a/b%2F", "u/"]);
        assert_eq!(k, "moderation/bans/t/a%2Fb%252F/u%2F");
        assert_eq!(
            ids(&k, BANS, 3).unwrap(),
            vec!["t".to_owned(), "a/b%2F".into(), "u/".into()]
        );
        assert_eq!(ids(&k, BANS, 2), None);
        assert_eq!(ids(&k, CUTOFFS, 3), None);
        assert_eq!(key_prefix(BANS, &["t"]), "moderation/bans/t/");
    }

    #[test]
    fn a_ban_comes_first_then_a_cut_off_then_the_deny_list() {
        assert_eq!(
            refusal(Some(9), Some(5), 1, true),
            Some(Refusal::Banned { until: 9 })
        );
        assert_eq!(
            refusal(None, Some(5), 4, true),
            Some(Refusal::CutOff { issued_before: 5 })
        );
        assert_eq!(
            refusal(None, Some(5), 0, false),
            Some(Refusal::CutOff { issued_before: 5 }),
            "an undated token is older than any cut-off"
        );
        assert_eq!(refusal(None, Some(5), 5, true), Some(Refusal::TokenDenied));
        assert_eq!(refusal(None, Some(5), 5, false), None);
        assert_eq!(Refusal::TokenDenied.close_reason(), "revoked");
    }
}
