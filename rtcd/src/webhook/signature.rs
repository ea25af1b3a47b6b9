//! The `Rtcd-Signature` header: what rtcd puts on every webhook request and how a receiver
//! checks it (`docs/webhooks.md` has the same check in Python and Node).
//!
//! `Rtcd-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is the lowercase hex
//! HMAC-SHA256, keyed with the tenant's secret, of `"<t>.<raw body>"`. The timestamp is that
//! of the attempt (a retry is signed anew), so a receiver can refuse old requests and a
//! captured request cannot be replayed after the tolerance. Several `v1=` entries may appear;
//! one matching is enough (room for signing with two secrets while one is rotated).

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Rtcd-Signature";
/// The header carrying the event id (the same as the body's `id`), for deduplication without
/// parsing the body.
pub const EVENT_ID_HEADER: &str = "Rtcd-Event-Id";
/// How old (or how far in the future) a signature's timestamp may be by default: what the
/// docs tell receivers to enforce.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a signature was refused. Deliberately coarse: a receiver answers all of them with 400
/// or 401 and learns nothing more from the distinction than which check to look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// No `t=` or no `v1=`, or a `t=` that is not a number.
    #[error("malformed Rtcd-Signature header")]
    Malformed,
    /// `t` is further from `now` than the tolerance (a replay, or a badly skewed clock).
    #[error("Rtcd-Signature timestamp outside the tolerance")]
    Stale,
    /// No `v1=` matches the body under this secret.
    #[error("Rtcd-Signature does not match")]
    Mismatch,
}

/// The lowercase hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn digest(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// The `Rtcd-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", digest(secret, timestamp, body))
}

/// Checks a received `Rtcd-Signature` `header` against the raw `body`: the timestamp must be
/// within `tolerance` of `now` (Unix seconds) and one `v1=` must equal the HMAC, compared in
/// constant time. What a receiver written in Rust calls; the tests check rtcd's own requests
/// with it.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if now.abs_diff(timestamp) > tolerance.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let expected = digest(secret, timestamp, body);
    // Every candidate is compared (no early exit), each in constant time.
    let matched = candidates.iter().fold(false, |found, candidate| {
        found | bool::from(candidate.as_bytes().ct_eq(expected.as_bytes()))
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_names_its_timestamp() {
        let body = br#"{"id":"evt_1","type":"room_started"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="), "{header}");
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        verify(SECRET, &header, body, 1_700_000_010, DEFAULT_TOLERANCE).unwrap();
        // Clock skew either way within the tolerance is fine.
        verify(SECRET, &header, body, 1_699_999_900, DEFAULT_TOLERANCE).unwrap();
    }

    #[test]
    fn tampering_a_wrong_secret_and_staleness_are_refused() {
        let body = br#"{"id":"evt_1","seq":1}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        let now = 1_700_000_001;
        assert_eq!(
            verify(
                SECRET,
                &header,
                br#"{"id":"evt_1","seq":2}"#,
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                b"another-secret-0123456789abcdef01",
                &header,
                body,
                now,
                DEFAULT_TOLERANCE
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, body, 1_700_000_301, DEFAULT_TOLERANCE),
            Err(SignatureError::Stale)
        );
        // The timestamp is signed: moving it forward breaks the signature.
        let moved = header.replace("t=1700000000", "t=1700000300");
        assert_eq!(
            verify(SECRET, &moved, body, 1_700_000_300, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        for malformed in ["", "v1=abc", "t=1700000000", "t=soon,v1=abc"] {
            assert_eq!(
                verify(SECRET, malformed, body, now, DEFAULT_TOLERANCE),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn any_matching_v1_is_enough() {
        let body = b"{}";
        let good = sign(SECRET, 100, body);
        let v1 = good.split_once(",v1=").unwrap().1;
        let header = format!("t=100,v1={},v1={v1}", "0".repeat(64));
        verify(SECRET, &header, body, 100, DEFAULT_TOLERANCE).unwrap();
    }

    /// The vector `docs/webhooks.md` gives (computed independently with Python's `hmac`).
    #[test]
    fn documented_vector() {
        assert_eq!(
            sign(
                b"0123456789abcdef0123456789abcdef",
                1_700_000_000,
                br#"{"id":"evt_0"}"#
            ),
            "t=1700000000,v1=e49abeae89eacca131b9e31f2ea6eaa80e1dcf1d603a0ed2359ce26056b2d20a"
        );
    }
}
