//! The one place where SFU and auth errors become gRPC statuses. Messages never carry secrets;
//! authentication failures all read the same so they reveal nothing about which part was wrong.

use rtcd_proto::v1 as pb;
use tonic::Status;

use crate::auth::{AuthError, StoreError};
use crate::lobby::LobbyError;
use crate::moderation::Refusal;
use crate::sfu::SfuError;

/// An SFU error as a gRPC status (also used for the code of in-stream `Error` events).
pub fn from_sfu(e: &SfuError) -> Status {
    match e {
        SfuError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        SfuError::OutOfOrder(m) => Status::failed_precondition(m.clone()),
        SfuError::NotFound => Status::not_found("no such session"),
        SfuError::AlreadyExists => Status::already_exists("session already exists in this call"),
        // The host capacity is typed for the proxy, which places the new room elsewhere.
        SfuError::LimitReached(what) if *what == crate::sfu::HOST_CAPACITY => refused(
            tonic::Code::ResourceExhausted,
            format!("limit reached: {what}"),
            pb::JoinRefusal::HostCapacity,
        ),
        SfuError::LimitReached(what) => {
            Status::resource_exhausted(format!("limit reached: {what}"))
        }
        SfuError::Draining => Status::unavailable("rtcd is shutting down; join another instance"),
        SfuError::Closed => Status::failed_precondition("session closed"),
        SfuError::Media(_) => Status::internal("media engine error"),
        SfuError::Recording(r) => recording_refused(*r),
    }
}

/// A refused recording request: FAILED_PRECONDITION with the typed `RecordingRefused`.
pub fn recording_refused(r: crate::sfu::RecordingRefusal) -> Status {
    use crate::sfu::RecordingRefusal as R;
    let reason = match r {
        R::AlreadyRecording => pb::RecordingRefusal::AlreadyRecording,
        R::NotRecording => pb::RecordingRefusal::NotRecording,
        R::NoRoom => pb::RecordingRefusal::NoRoom,
        R::Disabled => pb::RecordingRefusal::Disabled,
        R::DiskFull => pb::RecordingRefusal::DiskFull,
        R::Encrypted => pb::RecordingRefusal::Encrypted,
        R::StillRecording => pb::RecordingRefusal::StillRecording,
    };
    let details = pb::RecordingRefused {
        reason: reason as i32,
    };
    Status::with_details(
        tonic::Code::FailedPrecondition,
        r.to_string(),
        prost::Message::encode_to_vec(&details).into(),
    )
}

/// An authentication failure as a gRPC status.
pub fn from_auth(e: &AuthError) -> Status {
    match e {
        AuthError::RateLimited { retry_after } => Status::resource_exhausted(format!(
            "too many failed attempts, retry in {} s",
            retry_after.as_secs().max(1)
        )),
        AuthError::Busy => Status::unavailable("authentication is overloaded, retry shortly"),
        AuthError::Store(_) | AuthError::Internal => Status::internal("internal error"),
        AuthError::Forbidden(m) => Status::permission_denied(*m),
        _ => Status::unauthenticated("authentication failed"),
    }
}

/// A refused join or token as a gRPC status: PERMISSION_DENIED with the typed `JoinRefused`
/// (BANNED, REVOKED) as its details, which proxies decide on. The message still starts with
/// "banned" or "revoked", for people, logs and proxies older than the details.
pub fn from_refusal(r: &Refusal) -> Status {
    let denied = |message: String, reason| refused(tonic::Code::PermissionDenied, message, reason);
    match r {
        Refusal::Banned { until } => denied(
            format!("banned from this call until {until}"),
            pb::JoinRefusal::Banned,
        ),
        Refusal::CutOff { issued_before } => denied(
            format!(
                "revoked: this user's tokens issued before {issued_before} are no longer valid"
            ),
            pb::JoinRefusal::Revoked,
        ),
        Refusal::TokenDenied => denied(
            "revoked: this token was revoked".into(),
            pb::JoinRefusal::Revoked,
        ),
    }
}

/// A refusal at the room's door, typed (`JoinRefused` in the details): guests not allowed
/// (PERMISSION_DENIED, GUESTS_NOT_ALLOWED), a full lobby (RESOURCE_EXHAUSTED, LOBBY_FULL).
pub fn from_lobby(e: &LobbyError) -> Status {
    match e {
        LobbyError::GuestsNotAllowed => refused(
            tonic::Code::PermissionDenied,
            e.to_string(),
            pb::JoinRefusal::GuestsNotAllowed,
        ),
        LobbyError::Full => refused(
            tonic::Code::ResourceExhausted,
            e.to_string(),
            pb::JoinRefusal::LobbyFull,
        ),
        LobbyError::InvalidPolicy(_) => Status::invalid_argument(e.to_string()),
        LobbyError::E2eeLocked => {
            let details = pb::PolicyRefused {
                reason: pb::PolicyRefusal::E2eeLocked as i32,
            };
            Status::with_details(
                tonic::Code::FailedPrecondition,
                e.to_string(),
                prost::Message::encode_to_vec(&details).into(),
            )
        }
    }
}

/// A status with `reason` as its typed details (`rtcd.v1.JoinRefused`).
fn refused(code: tonic::Code, message: String, reason: pb::JoinRefusal) -> Status {
    let details = pb::JoinRefused {
        reason: reason as i32,
    };
    Status::with_details(
        code,
        message,
        prost::Message::encode_to_vec(&details).into(),
    )
}

/// A failure of rtcd's database: internal (the detail is logged, not sent).
pub fn from_store(e: &StoreError) -> Status {
    match e {
        // Fail closed (docs/cluster.md): counted and alerted on, not an error per join.
        StoreError::Stale(_) => Status::unavailable(e.to_string()),
        StoreError::Cluster(rtcd_kit::cluster::StoreError::Unavailable(_)) => {
            tracing::warn!(error = %e, "the cluster store is out of reach");
            Status::unavailable("the cluster store is out of reach; retry")
        }
        _ => {
            tracing::error!(error = %e, "store failure");
            Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed refusal a status carries (UNSPECIFIED without details).
    fn refusal(status: &Status) -> pb::JoinRefusal {
        <pb::JoinRefused as prost::Message>::decode(status.details())
            .map(|r| r.reason())
            .unwrap_or_default()
    }

    #[test]
    fn refusals_a_proxy_acts_on_are_typed_and_keep_their_prose() {
        let banned = from_refusal(&Refusal::Banned { until: 7 });
        assert_eq!(banned.code(), tonic::Code::PermissionDenied);
        assert!(banned.message().starts_with("banned"));
        assert_eq!(refusal(&banned), pb::JoinRefusal::Banned);
        for r in [Refusal::CutOff { issued_before: 7 }, Refusal::TokenDenied] {
            let s = from_refusal(&r);
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            assert!(s.message().starts_with("revoked"));
            assert_eq!(refusal(&s), pb::JoinRefusal::Revoked);
        }
        let guests = from_lobby(&LobbyError::GuestsNotAllowed);
        assert_eq!(guests.code(), tonic::Code::PermissionDenied);
        assert!(guests.message().starts_with("guests not allowed"));
        assert_eq!(refusal(&guests), pb::JoinRefusal::GuestsNotAllowed);
        let full = from_lobby(&LobbyError::Full);
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert_eq!(refusal(&full), pb::JoinRefusal::LobbyFull);
        let capacity = from_sfu(&SfuError::LimitReached(crate::sfu::HOST_CAPACITY));
        assert_eq!(capacity.code(), tonic::Code::ResourceExhausted);
        assert!(capacity.message().contains("host capacity for new rooms"));
        assert_eq!(refusal(&capacity), pb::JoinRefusal::HostCapacity);
        // A refused policy change is typed, and does not read as a recording refusal.
        let locked = from_lobby(&LobbyError::E2eeLocked);
        assert_eq!(locked.code(), tonic::Code::FailedPrecondition);
        let policy = <pb::PolicyRefused as prost::Message>::decode(locked.details()).unwrap();
        assert_eq!(policy.reason(), pb::PolicyRefusal::E2eeLocked);
        let recording = <pb::RecordingRefused as prost::Message>::decode(locked.details()).unwrap();
        assert_eq!(recording.reason(), pb::RecordingRefusal::Unspecified);
        let encrypted = from_sfu(&SfuError::Recording(
            crate::sfu::RecordingRefusal::Encrypted,
        ));
        assert_eq!(encrypted.code(), tonic::Code::FailedPrecondition);
        let r = <pb::RecordingRefused as prost::Message>::decode(encrypted.details()).unwrap();
        assert_eq!(r.reason(), pb::RecordingRefusal::Encrypted);
        // Any other limit is a plain refusal.
        let other = from_sfu(&SfuError::LimitReached("tracks per session"));
        assert_eq!(refusal(&other), pb::JoinRefusal::Unspecified);
    }
}
