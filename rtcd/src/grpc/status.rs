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
        SfuError::LimitReached(what) => {
            Status::resource_exhausted(format!("limit reached: {what}"))
        }
        SfuError::Draining => Status::unavailable("rtcd is shutting down; join another instance"),
        SfuError::Closed => Status::failed_precondition("session closed"),
        SfuError::Media(_) => Status::internal("media engine error"),
    }
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

/// A refused join or token as a gRPC status: PERMISSION_DENIED, the message starting with
/// "banned" or "revoked" (proxies and platforms match on that word).
pub fn from_refusal(r: &Refusal) -> Status {
    match r {
        Refusal::Banned { until } => {
            Status::permission_denied(format!("banned from this call until {until}"))
        }
        Refusal::CutOff { issued_before } => Status::permission_denied(format!(
            "revoked: this user's tokens issued before {issued_before} are no longer valid"
        )),
        Refusal::TokenDenied => Status::permission_denied("revoked: this token was revoked"),
    }
}

/// A refusal at the room's door: guests not allowed (PERMISSION_DENIED, which the proxy
/// recognises by its "guests not allowed" prefix), a full lobby (RESOURCE_EXHAUSTED with the
/// typed `JoinRefused` LOBBY_FULL as its details).
pub fn from_lobby(e: &LobbyError) -> Status {
    match e {
        LobbyError::GuestsNotAllowed => Status::permission_denied(e.to_string()),
        LobbyError::Full => refused(
            tonic::Code::ResourceExhausted,
            e.to_string(),
            pb::JoinRefusal::LobbyFull,
        ),
        LobbyError::InvalidPolicy(_) => Status::invalid_argument(e.to_string()),
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
    tracing::error!(error = %e, "store failure");
    Status::internal("internal error")
}
