//! The one place where room-management failures become gRPC statuses.

use tonic::Status;

use super::RoomsError;
use crate::sfu::SfuError;
use crate::webhook::WebhookError;

/// A room-management failure as a gRPC status. Messages name what was wrong with the request,
/// never another tenant's state (their rooms are NOT_FOUND like absent ones).
pub fn from_rooms(e: &RoomsError) -> Status {
    match e {
        RoomsError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        RoomsError::NotFound(what) => Status::not_found(*what),
        RoomsError::Sfu(SfuError::NotFound) => Status::not_found("no such room or participant"),
        RoomsError::Sfu(e) => crate::grpc::status::from_sfu(e),
        RoomsError::Store(e) => crate::grpc::status::from_store(e),
        // The operator's switch, not the caller's mistake.
        RoomsError::Webhooks(WebhookError::Disabled) => Status::failed_precondition(e.to_string()),
        RoomsError::Webhooks(e) => Status::invalid_argument(e.to_string()),
        RoomsError::Lobby(e) => crate::grpc::status::from_lobby(e),
        RoomsError::OutOfRange(m) => Status::out_of_range(m.clone()),
    }
}

/// A short, fixed label for the audit line's outcome.
pub fn outcome(e: &RoomsError) -> &'static str {
    match e {
        RoomsError::InvalidArgument(_) => "invalid_argument",
        RoomsError::NotFound(_) | RoomsError::Sfu(SfuError::NotFound) => "not_found",
        RoomsError::Sfu(e) => e.kind(),
        RoomsError::Store(_) => "store_error",
        RoomsError::Webhooks(_) => "webhooks_refused",
        RoomsError::Lobby(crate::lobby::LobbyError::E2eeLocked) => "e2ee_locked",
        RoomsError::Lobby(_) | RoomsError::OutOfRange(_) => "invalid_argument",
    }
}
