//! The one place where domain errors become HTTP statuses and JSON error bodies.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::auth::AuthError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// Anything the auth service refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl ApiError {
    /// Status, JSON body and, for 429/503, `Retry-After`.
    pub fn into_response(self) -> warp::reply::Response {
        let (status, retry_after) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            ApiError::Auth(e) => match e {
                AuthError::InvalidClientId(_) | AuthError::InvalidKey(_) => {
                    (StatusCode::BAD_REQUEST, None)
                }
                AuthError::Unauthenticated => (StatusCode::UNAUTHORIZED, None),
                AuthError::Forbidden(_) => (StatusCode::FORBIDDEN, None),
                AuthError::Conflict(_) => (StatusCode::CONFLICT, None),
                AuthError::NotFound(_) => (StatusCode::NOT_FOUND, None),
                AuthError::RateLimited { retry_after } => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Some(retry_after.as_secs().max(1)),
                ),
                AuthError::Busy => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
                AuthError::Store(_) | AuthError::Internal => {
                    (StatusCode::INTERNAL_SERVER_ERROR, None)
                }
            },
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
            "internal error".to_owned()
        } else {
            self.to_string()
        };
        let mut response = error(status, &message);
        if let Some(secs) = retry_after {
            response.headers_mut().insert("retry-after", secs.into());
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Basic realm=\"rtcd\""),
            );
        }
        response
    }
}

/// Rejection for a body over `api.http.max_body_bytes` (or one that broke off mid-stream).
#[derive(Debug)]
pub struct BodyTooLarge;

impl warp::reject::Reject for BodyTooLarge {}

/// A JSON reply with `status`.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// The rtcd error shape: `{"code": "<status>", "error": message}`.
pub fn error(status: StatusCode, message: &str) -> warp::reply::Response {
    json(
        status,
        &serde_json::json!({"code": status.as_u16().to_string(), "error": message}),
    )
}

/// Turns warp's own rejections (unknown path, wrong method, body limits) into JSON errors.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "not found".to_owned())
    } else if rejection.find::<BodyTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_owned(),
        )
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed".to_owned(),
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        (StatusCode::BAD_REQUEST, "bad request".to_owned())
    };
    Ok(error(status, &message))
}
