//! Secrets in configuration and on the wire (admin secret, auth keys, HS signing secrets,
//! bearer tokens): a wrapper that never prints, compares in constant time, and the one rule
//! for what is too weak to start with.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// A secret string. `{:?}` shows `<redacted>` (or `<unset>` when empty), so a config or
/// request dumped into a log cannot leak it; `==` runs in time independent of where the
/// contents differ. It serializes as is, because a daemon's defaults are serialized to derive
/// its environment variables: never serialize one into a reply or a log.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// The placeholder secrets of `deploy/*.sample.toml`. They are public (in this repository), so
/// a config that still has one must not start: an operator who forgets one edit would
/// otherwise ship a secret anyone can read.
pub const SAMPLE_SECRETS: &[&str] = &["REPLACE-ME-with-at-least-32-random-bytes"];

/// Why `secret` must not be used, if it must not: a sample placeholder (or an edited one,
/// still containing `REPLACE-ME`), shorter than `min_bytes`, or one character repeated
/// (`"xxxx…"`, what a quick test setup types). Both daemons check every configured secret with
/// it at start.
pub fn weakness(secret: &[u8], min_bytes: usize) -> Option<String> {
    let placeholder = SAMPLE_SECRETS.iter().any(|s| s.as_bytes() == secret)
        || secret
            .windows(10)
            .any(|w| w.eq_ignore_ascii_case(b"REPLACE-ME"));
    if placeholder {
        return Some(
            "is the placeholder from the sample config; generate a secret, e.g. \
             `head -c 32 /dev/urandom | base64`"
                .into(),
        );
    }
    if secret.len() < min_bytes {
        return Some(format!(
            "must be at least {min_bytes} bytes, got {} (generate one with `head -c 32 /dev/urandom | base64`)",
            secret.len()
        ));
    }
    if secret.iter().all(|b| *b == secret[0]) {
        return Some("is one character repeated; use random bytes".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_and_compared_by_content() {
        let s = Secret::new("hunter2-hunter2-hunter2-hunter2-x");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Secret::default()), "<unset>");
        assert_eq!(s, Secret::new("hunter2-hunter2-hunter2-hunter2-x"));
        assert_ne!(s, Secret::new("hunter2-hunter2-hunter2-hunter2-y"));
        assert_ne!(s, Secret::new("hunter2"));
    }

    #[test]
    fn weak_secrets_say_why() {
        assert!(
            weakness(SAMPLE_SECRETS[0].as_bytes(), 32)
                .unwrap()
                .contains("placeholder")
        );
        assert!(weakness(b"my-REPLACE-ME-secret-0123456789abcdef", 32).is_some());
        assert!(
            weakness(b"short", 32)
                .unwrap()
                .contains("at least 32 bytes, got 5")
        );
        assert!(weakness(&[b'x'; 40], 32).unwrap().contains("repeated"));
        assert_eq!(weakness(b"0123456789abcdef0123456789abcdef", 32), None);
    }
}
