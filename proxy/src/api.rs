//! The room service API: HTTP + JSON under `/api/v1/` on the public listener, for the
//! platform's backend (docs/api.md; docs/openapi.json is the machine-readable contract and
//! [`ROUTES`] is kept equal to it by a test).
//!
//! Every request carries `Authorization: Bearer <server token>` ([`crate::auth::api`]): a
//! short-lived JWT signed with a platform key whose `api` claim grants scopes. Actions go
//! through [`crate::rooms::perform`] (the same code in-call moderators use, with its audit
//! line) to the rtcd hosting the room; nothing here holds room state, so any replica serves
//! any request. Errors are the proxy's one HTTP error shape plus a stable `reason`:
//! `{"code": "404", "error": "<message>", "reason": "not_found"}`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use rtcd_kit::listener::PeerAddr;
use rtcd_kit::rate::AddrKey;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::http::{Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::auth::api::{ApiAuthError, ApiGrant, Scope, TokenIssuer, TokenRequest};
use crate::auth::{AuthError, unix_now};
use crate::policy::{Permissions, Role, TrackSource};
use crate::protocol::{Identity, RoomName};
use crate::rooms::{
    Action, Actor, ControlError, RecordingInfo, RecordingRefusal, Revocation, RoomControl,
};
use crate::session::ProxyState;

/// Every route: (method, path template). docs/openapi.json and docs/api.md list exactly these
/// (a test checks both).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/rooms"),
    ("GET", "/api/v1/rooms/{room}"),
    ("POST", "/api/v1/rooms/{room}/end"),
    ("POST", "/api/v1/rooms/{room}/participants/remove"),
    ("POST", "/api/v1/rooms/{room}/participants/mute"),
    ("POST", "/api/v1/rooms/{room}/participants/request_unmute"),
    ("POST", "/api/v1/rooms/{room}/participants/update"),
    ("GET", "/api/v1/rooms/{room}/bans"),
    ("POST", "/api/v1/rooms/{room}/bans/lift"),
    ("POST", "/api/v1/rooms/{room}/tokens"),
    ("GET", "/api/v1/rooms/{room}/lobby"),
    ("POST", "/api/v1/rooms/{room}/lobby/admit"),
    ("POST", "/api/v1/rooms/{room}/lobby/deny"),
    ("GET", "/api/v1/rooms/{room}/policy"),
    ("POST", "/api/v1/rooms/{room}/policy"),
    ("POST", "/api/v1/revocations"),
    ("POST", "/api/v1/rooms/{room}/recordings"),
    ("POST", "/api/v1/rooms/{room}/recordings/stop"),
    ("GET", "/api/v1/rooms/{room}/recordings"),
    ("GET", "/api/v1/rooms/{room}/recordings/{id}"),
    ("DELETE", "/api/v1/rooms/{room}/recordings/{id}"),
    ("GET", "/api/v1/rooms/{room}/recordings/{id}/files/{name}"),
];

/// A refused request: status, stable reason, message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header (a 429).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn into_response(self) -> warp::reply::Response {
        let body = json!({
            "code": self.status.as_u16().to_string(),
            "error": self.message,
            "reason": self.reason,
        });
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match e {
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::Forbidden(_) => StatusCode::FORBIDDEN,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Recording(RecordingRefusal::DiskFull, _) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            // The room's (or the recording's) state says no; the request itself is fine.
            ControlError::Recording(..) => StatusCode::CONFLICT,
            // The room's state (people in it) says no, as for recording refusals.
            ControlError::Policy(..) => StatusCode::CONFLICT,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<ApiAuthError> for ApiError {
    fn from(e: ApiAuthError) -> Self {
        let status = match e {
            ApiAuthError::Token(AuthError::KeysUnavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

/// The API's routes (none when `api.enabled` is off).
pub fn routes(
    state: Arc<ProxyState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let enabled = state.config.api.enabled;
    let max_body = state.config.api.max_body_bytes as u64;
    let issuer = state.token_issuer.clone();
    let context = warp::any().map(move || (state.clone(), issuer.clone()));
    let common = warp::path("api")
        .and(warp::path("v1"))
        .and(crate::server::switched_on(enabled))
        .and(warp::path::tail())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::ext::optional::<PeerAddr>())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::header::optional::<String>("range"))
        .and(context);
    // Every method reaches `serve`, which answers 405 with `Allow` for a known path.
    common.and(warp::method()).and(limited_body(max_body)).then(
        |tail,
         auth,
         peer,
         query: String,
         range: Option<String>,
         ctx,
         method: Method,
         body: Result<bytes::Bytes, ApiError>| {
            let extra = Extra { query, range };
            handle(method, tail, auth, peer, extra, ctx, body)
        },
    )
}

/// The request body, at most `max` bytes, with or without `Content-Length` (an empty POST
/// from `curl -X POST` has none, a chunked one neither): a declared length above `max` is
/// refused before reading, and reading stops as soon as `max` is passed.
fn limited_body(
    max: u64,
) -> impl Filter<Extract = (Result<bytes::Bytes, ApiError>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |declared: Option<u64>, stream| collect_body(declared, stream, max))
}

async fn collect_body<S, B>(
    declared: Option<u64>,
    stream: S,
    max: u64,
) -> Result<bytes::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use bytes::BufMut as _;
    use futures_util::StreamExt as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {max} bytes"),
        )
    };
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if body.len() as u64 + chunk.remaining() as u64 > max {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.put_slice(part);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

type Context = (Arc<ProxyState>, Option<Arc<TokenIssuer>>);

/// What a few routes read besides the path and body: the query string (`segment`) and the
/// `Range` header (file downloads).
#[derive(Debug, Default)]
struct Extra {
    query: String,
    range: Option<String>,
}

async fn handle(
    method: Method,
    tail: warp::path::Tail,
    authorization: Option<String>,
    peer: Option<PeerAddr>,
    extra: Extra,
    (state, issuer): Context,
    body: Result<bytes::Bytes, ApiError>,
) -> warp::reply::Response {
    let peer = peer.map(|p| p.0.ip());
    let body = match body {
        Ok(body) => Some(body),
        Err(e) => return e.into_response(),
    };
    match serve(
        &state,
        issuer.as_deref(),
        &method,
        tail.as_str(),
        (authorization, peer),
        body,
        &extra,
    )
    .await
    {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Authenticates, routes and runs one request.
async fn serve(
    state: &ProxyState,
    issuer: Option<&TokenIssuer>,
    method: &Method,
    path: &str,
    (authorization, peer): (Option<String>, Option<IpAddr>),
    body: Option<bytes::Bytes>,
    extra: &Extra,
) -> Result<warp::reply::Response, ApiError> {
    // Clients may percent-encode a room's `:` or `@`; names are checked after decoding.
    let segments: Vec<std::borrow::Cow<'_, str>> = path
        .split('/')
        .map(|seg| percent_encoding::percent_decode_str(seg).decode_utf8_lossy())
        .collect();
    let segments: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    // Route first (404 / 405 for unknown paths or methods without spending a signature
    // check), then auth.
    let route = match route(method.as_str(), &segments)? {
        Some(route) => route,
        None => {
            let allowed: Vec<&str> = ["GET", "POST", "DELETE"]
                .into_iter()
                .filter(|m| matches!(route(m, &segments), Ok(Some(_))))
                .collect();
            if allowed.is_empty() {
                return Err(not_found());
            }
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("this route takes {}", allowed.join(", ")),
            )
            .into_response();
            if let Ok(value) = warp::http::HeaderValue::from_str(&allowed.join(", ")) {
                response
                    .headers_mut()
                    .insert(warp::http::header::ALLOW, value);
            }
            return Ok(response);
        }
    };
    let grant = authenticate(state, authorization, peer).await?;
    let (scope, room) = route.needs();
    if !grant.has(scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this token lacks the `{}` scope", scope.as_str()),
        ));
    }
    match room {
        Some(room) if !grant.covers(room.as_str()) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "room_not_in_scope",
                "this token's `room` claim does not cover this room",
            ));
        }
        None if grant.room_limited() && matches!(route, Route::Revoke) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "room_not_in_scope",
                "revocations apply to every room: a token limited to some rooms cannot make them",
            ));
        }
        _ => {}
    }
    let actor = Actor::Api {
        subject: grant.subject.clone(),
    };
    let allow_unmute = state.config.api.allow_remote_unmute;
    if let Route::Token(room) = &route {
        return issue_token(issuer, &actor, room, body.as_deref());
    }
    if let Route::RecordingFile { room, id, name } = &route {
        let segment = segment_query(&extra.query)?;
        let head = method == Method::HEAD;
        return recording_file(
            control(state)?,
            room,
            id,
            name,
            segment,
            extra.range.as_deref(),
            head,
        )
        .await;
    }
    // The media server only once the body parsed: a malformed or unknown-field body is a 400
    // whether or not rtcd is reachable.
    let media = || control(state);
    let reply = match &route {
        Route::ListRooms => {
            let mut rooms = media()?.list_rooms().await?;
            rooms.retain(|r| grant.covers(&r.name));
            json!({ "rooms": rooms })
        }
        Route::GetRoom(room) => serde_json::to_value(media()?.get_room(room).await?)
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
        Route::Bans(room) => json!({ "bans": media()?.bans(room).await? }),
        Route::Revoke => {
            let mut revocation: Revocation = parse(body.as_deref())?;
            if revocation.identity.is_none() && revocation.token_id.is_none() {
                return Err(ApiError::bad_request(
                    "give an `identity` (with `issued_before`, default now) and/or a `token_id`",
                ));
            }
            if revocation.identity.is_some() && revocation.issued_before.is_none() {
                revocation.issued_before = Some(unix_now());
            }
            let outcome = crate::rooms::revoke(media()?, &actor, &revocation).await?;
            serde_json::to_value(outcome).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        Route::End(room) => {
            let outcome =
                crate::rooms::perform(media()?, &actor, room, Action::EndRoom, allow_unmute)
                    .await?;
            json!(outcome)
        }
        Route::Remove(room) => {
            let req: RemoveBody = parse(body.as_deref())?;
            let action = Action::Remove {
                identity: identity(req.identity)?,
                ban_seconds: req.ban_seconds,
                reason: req.reason,
            };
            json!(crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?)
        }
        Route::Mute(room) | Route::RequestUnmute(room) => {
            let request = matches!(route, Route::RequestUnmute(_));
            let req: MuteBody = parse(body.as_deref())?;
            let identity = identity(req.identity)?;
            let action = if request {
                Action::RequestUnmute {
                    identity,
                    source: req.source,
                }
            } else {
                Action::Mute {
                    identity,
                    source: req.source,
                }
            };
            json!(crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?)
        }
        Route::Update(room) => {
            let req: UpdateBody = parse(body.as_deref())?;
            if req.permissions.is_some_and(|p| p.record) {
                return Err(ApiError::bad_request(
                    "`record` is granted by join tokens only: the media server cannot change it live",
                ));
            }
            let perms = &state.config.auth.permissions;
            let base = match req.role {
                Role::Moderator => &perms.moderator,
                Role::Member => &perms.member,
                Role::Guest => &perms.guest,
            };
            let action = Action::Update {
                identity: identity(req.identity)?,
                role: req.role,
                permissions: req
                    .permissions
                    .unwrap_or_else(|| Permissions::from_capabilities(base)),
            };
            json!(crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?)
        }
        Route::Unban(room) => {
            let req: IdentityBody = parse(body.as_deref())?;
            let action = Action::Unban {
                identity: identity(req.identity)?,
            };
            json!(crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?)
        }
        Route::Lobby(room) => json!({ "waiting": media()?.lobby(room).await? }),
        Route::Admit(room) | Route::Deny(room) => {
            let req: IdentityBody = parse(body.as_deref())?;
            let identity = identity(req.identity)?;
            let action = if matches!(route, Route::Admit(_)) {
                Action::Admit { identity }
            } else {
                Action::Deny { identity }
            };
            json!(crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?)
        }
        Route::Policy(room) => policy_reply(state, room, media()?.policy(room).await?),
        Route::SetPolicy(room) => {
            let req: PolicyBody = parse(body.as_deref())?;
            let action = Action::SetPolicy {
                change: crate::rooms::RoomPolicy {
                    wait_for_host: req.wait_for_host,
                    lobby: req.lobby,
                    guests_allowed: req.guests_allowed,
                    wait_timeout_seconds: req.wait_timeout_seconds,
                    opened_by: req.opened_by,
                    record: req.record,
                    e2ee: req.e2ee,
                },
                reset: req.reset,
                configured: state.config.rooms.policy_for(room.as_str()),
            };
            crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?;
            policy_reply(state, room, media()?.policy(room).await?)
        }
        Route::StartRecording(room) | Route::StopRecording(room) => {
            let start = matches!(route, Route::StartRecording(_));
            // No body is read: a start or a stop carries nothing, but a body is not refused
            // (an empty JSON object from an HTTP client library is common).
            let action = if start {
                Action::StartRecording
            } else {
                Action::StopRecording
            };
            let outcome =
                crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?;
            let recording = outcome.recording.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "media_unavailable",
                    "the media server answered without the recording",
                )
            })?;
            let status = if start {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            return Ok(
                warp::reply::with_status(warp::reply::json(&recording), status).into_response(),
            );
        }
        Route::Recordings(room) => json!({ "recordings": media()?.recordings(room).await? }),
        Route::Recording { room, id } => {
            let segment = segment_query(&extra.query)?;
            let segments = crate::rooms::of_room(media()?.recording(id).await?, room, id)?;
            serde_json::to_value(pick_segment(segments, segment, None, id)?)
                .map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        Route::DeleteRecording { room, id } => {
            let bytes = crate::rooms::delete_recording(media()?, &actor, room, id).await?;
            json!({ "recording_id": id, "bytes": bytes })
        }
        Route::Token(_) | Route::RecordingFile { .. } => unreachable!("answered above"),
    };
    Ok(warp::reply::json(&reply).into_response())
}

/// The route `method` and the path below `/api/v1/` name, `None` if none does (an invalid
/// room name is a 400).
fn route(method: &str, segments: &[&str]) -> Result<Option<Route>, ApiError> {
    Ok(Some(match (method, segments) {
        ("GET", ["rooms"]) => Route::ListRooms,
        ("POST", ["revocations"]) => Route::Revoke,
        (m, ["rooms", room, rest @ ..]) => {
            let room = RoomName::parse(room).map_err(ApiError::bad_request)?;
            match (m, rest) {
                ("GET", []) => Route::GetRoom(room),
                ("POST", ["end"]) => Route::End(room),
                ("POST", ["participants", "remove"]) => Route::Remove(room),
                ("POST", ["participants", "mute"]) => Route::Mute(room),
                ("POST", ["participants", "request_unmute"]) => Route::RequestUnmute(room),
                ("POST", ["participants", "update"]) => Route::Update(room),
                ("GET", ["bans"]) => Route::Bans(room),
                ("POST", ["bans", "lift"]) => Route::Unban(room),
                ("POST", ["tokens"]) => Route::Token(room),
                ("GET", ["lobby"]) => Route::Lobby(room),
                ("POST", ["lobby", "admit"]) => Route::Admit(room),
                ("POST", ["lobby", "deny"]) => Route::Deny(room),
                ("GET", ["policy"]) => Route::Policy(room),
                ("POST", ["policy"]) => Route::SetPolicy(room),
                ("POST", ["recordings"]) => Route::StartRecording(room),
                ("POST", ["recordings", "stop"]) => Route::StopRecording(room),
                ("GET", ["recordings"]) => Route::Recordings(room),
                ("GET", ["recordings", id]) => Route::Recording {
                    room,
                    id: recording_id(id)?,
                },
                ("DELETE", ["recordings", id]) => Route::DeleteRecording {
                    room,
                    id: recording_id(id)?,
                },
                ("GET" | "HEAD", ["recordings", id, "files", name]) => Route::RecordingFile {
                    room,
                    id: recording_id(id)?,
                    name: file_name(name)?,
                },
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }))
}

enum Route {
    ListRooms,
    GetRoom(RoomName),
    End(RoomName),
    Remove(RoomName),
    Mute(RoomName),
    RequestUnmute(RoomName),
    Update(RoomName),
    Bans(RoomName),
    Unban(RoomName),
    Token(RoomName),
    Revoke,
    Lobby(RoomName),
    Admit(RoomName),
    Deny(RoomName),
    Policy(RoomName),
    SetPolicy(RoomName),
    StartRecording(RoomName),
    StopRecording(RoomName),
    Recordings(RoomName),
    Recording {
        room: RoomName,
        id: String,
    },
    DeleteRecording {
        room: RoomName,
        id: String,
    },
    RecordingFile {
        room: RoomName,
        id: String,
        name: String,
    },
}

impl Route {
    /// The scope it needs and the room it touches.
    fn needs(&self) -> (Scope, Option<&RoomName>) {
        match self {
            Route::ListRooms => (Scope::RoomsRead, None),
            Route::Revoke => (Scope::RoomsAdmin, None),
            Route::GetRoom(r)
            | Route::Bans(r)
            | Route::Lobby(r)
            | Route::Policy(r)
            | Route::Recordings(r)
            | Route::Recording { room: r, .. }
            | Route::RecordingFile { room: r, .. } => (Scope::RoomsRead, Some(r)),
            Route::Token(r) => (Scope::TokensIssue, Some(r)),
            Route::End(r)
            | Route::Remove(r)
            | Route::Mute(r)
            | Route::RequestUnmute(r)
            | Route::Update(r)
            | Route::Unban(r)
            | Route::Admit(r)
            | Route::Deny(r)
            | Route::SetPolicy(r)
            | Route::StartRecording(r)
            | Route::StopRecording(r)
            | Route::DeleteRecording { room: r, .. } => (Scope::RoomsAdmin, Some(r)),
        }
    }
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_route",
        "no such API route (see docs/api.md)",
    )
}

/// Verifies the bearer server token, with the same per-address failed-auth budget as joins
/// (a signature check per guess is what an attacker would make us burn).
async fn authenticate(
    state: &ProxyState,
    authorization: Option<String>,
    peer: Option<IpAddr>,
) -> Result<ApiGrant, ApiError> {
    let key = peer.map(AddrKey::new);
    let token = authorization
        .as_deref()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        // Nothing to verify, so nothing to count: a missing token costs no signature check.
        return Err(ApiAuthError::Token(AuthError::Missing).into());
    };
    if let Some(key) = &key
        && let Err(limited) = state.auth_failure_limiter.check(key, Instant::now())
    {
        // Whole seconds, rounded up: retrying at `Retry-After` finds a token back.
        let seconds = limited.retry_after.as_millis().div_ceil(1000).max(1) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            format!(
                "too many failed authentications from this address (valid tokens included); retry in {seconds} s"
            ),
        );
        e.retry_after = Some(seconds);
        return Err(e);
    }
    let result = state
        .verifier
        .verify_api(
            &token,
            unix_now(),
            state.config.api.max_token_lifetime_seconds,
        )
        .await;
    match result {
        Ok(grant) => Ok(grant),
        Err(e) => {
            if let Some(key) = &key {
                let _ = state.auth_failure_limiter.take(key, Instant::now());
            }
            tracing::info!(target: "audit", peer = &*peer.map(|p| p.to_string()).unwrap_or_default(), reason = e.code(), "API request refused");
            Err(e.into())
        }
    }
}

fn control(state: &ProxyState) -> Result<&dyn RoomControl, ApiError> {
    state
        .relay
        .as_deref()
        .and_then(|r| r.rooms())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "media_unavailable",
                "no media server is configured on this proxy",
            )
        })
}

fn parse<T: serde::de::DeserializeOwned>(body: Option<&[u8]>) -> Result<T, ApiError> {
    serde_json::from_slice(body.unwrap_or_default())
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))
}

fn identity(s: String) -> Result<Identity, ApiError> {
    if s.is_empty() || s.len() > crate::auth::MAX_IDENTITY_BYTES {
        return Err(ApiError::bad_request("`identity` must be 1-128 bytes"));
    }
    Ok(Identity::new(s))
}

/// A recording ID from the path: `rec_` and lowercase base32 as rtcd makes them, checked
/// loosely (1-64 characters of `a-z 0-9 _`); anything else is a 400.
fn recording_id(id: &str) -> Result<String, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(ApiError::bad_request("invalid recording ID"));
    }
    Ok(id.to_owned())
}

/// A file name from the path (after percent-decoding): 1-255 bytes, no directory part.
fn file_name(name: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0']);
    if !ok {
        return Err(ApiError::bad_request("invalid file name"));
    }
    Ok(name.to_owned())
}

/// `?segment=N` (1 or more), if given; other query parameters are refused.
fn segment_query(query: &str) -> Result<Option<u32>, ApiError> {
    let mut segment = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("segment", n)) => match n.parse::<u32>() {
                Ok(n) if n >= 1 => segment = Some(n),
                _ => return Err(ApiError::bad_request("`segment` is a number from 1")),
            },
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{pair}` (only `segment`)"
                )));
            }
        }
    }
    Ok(segment)
}

/// The segment a request means among a recording's (newest first): the one numbered
/// `segment`; without it, the newest whose files list `name` (a file download), else the
/// newest.
fn pick_segment(
    segments: Vec<RecordingInfo>,
    segment: Option<u32>,
    name: Option<&str>,
    id: &str,
) -> Result<RecordingInfo, ApiError> {
    let lists = |s: &RecordingInfo, name: &str| {
        s.files
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f.name == name))
    };
    let index = match (segment, name) {
        (Some(n), _) => segments.iter().position(|s| s.segment == n),
        (None, Some(name)) => segments
            .iter()
            .position(|s| lists(s, name))
            .or((!segments.is_empty()).then_some(0)),
        (None, None) => (!segments.is_empty()).then_some(0),
    };
    match index {
        Some(i) => Ok(segments.into_iter().nth(i).expect("an index of the list")),
        None => Err(ControlError::NotFound(format!(
            "recording {id} of this room has no segment {}",
            segment.unwrap_or(1)
        ))
        .into()),
    }
}

/// The bytes of a `Range` request (RFC 9110 section 14), for a file of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// No usable range: the whole file (200). Also a header this proxy does not serve
    /// partially (several ranges, another unit, bad syntax), which RFC 9110 allows ignoring.
    Full,
    /// Bytes `start..=end` (206).
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// Nothing of the file is in the range (416 with `Content-Range: bytes */size`).
    Unsatisfiable,
}

/// Reads a `Range` header: one `bytes=a-b`, `bytes=a-` or `bytes=-n`. Pure.
fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(header) = header else {
        return ByteRange::Full;
    };
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return ByteRange::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // `-n`: the last n bytes.
        return match number(last) {
            None => ByteRange::Full,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part {
                start: size - n.min(size),
                end: size - 1,
            },
        };
    }
    let Some(start) = number(first) else {
        return ByteRange::Full;
    };
    let end = match (last.is_empty(), number(last)) {
        (true, _) => None,
        (false, Some(end)) if end >= start => Some(end),
        // Not a number, or a last byte before the first: not a valid range, ignored.
        (false, _) => return ByteRange::Full,
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part {
        start,
        end: end.map_or(size - 1, |end| end.min(size - 1)),
    }
}

/// The `Content-Type` of a recording's file, from its extension (`source`: the listed file's,
/// telling a sound-only WebM from a video one).
fn content_type(name: &str, source: Option<crate::policy::TrackSource>) -> &'static str {
    use crate::policy::TrackSource;
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    let audio = matches!(
        source,
        Some(TrackSource::Microphone | TrackSource::ScreenAudio)
    );
    match extension.as_str() {
        "json" => "application/json",
        "webm" if audio => "audio/webm",
        "webm" => "video/webm",
        "mkv" if audio => "audio/x-matroska",
        "mkv" => "video/x-matroska",
        "ogg" | "opus" => "audio/ogg",
        _ => "application/octet-stream",
    }
}

/// `GET` / `HEAD .../recordings/{id}/files/{name}`: the file's bytes streamed from the media
/// server that holds them, never held whole here; one range (206) or the whole file (200).
async fn recording_file(
    control: &dyn RoomControl,
    room: &RoomName,
    id: &str,
    name: &str,
    segment: Option<u32>,
    range: Option<&str>,
    head: bool,
) -> Result<warp::reply::Response, ApiError> {
    let segments = crate::rooms::of_room(control.recording(id).await?, room, id)?;
    let segment = pick_segment(segments, segment, Some(name), id)?;
    let source = segment
        .files
        .as_ref()
        .and_then(|f| f.iter().find(|f| f.name == name))
        .and_then(|f| f.source);
    // The size now (a file being written grows): the first chunk of a one-byte read says it.
    let size = control
        .read_recording_file(&segment, name, 0, 1)
        .await?
        .size;
    let range = parse_range(range, size);
    let (start, length) = match range {
        ByteRange::Full => (0, size),
        ByteRange::Part { start, end } => (start, end - start + 1),
        ByteRange::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {size} bytes"),
            )
            .into_response();
            response.headers_mut().insert(
                warp::http::header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return Ok(response);
        }
    };
    let body = if head || length == 0 {
        warp::reply::Response::new(Default::default())
    } else {
        let read = control
            .read_recording_file(&segment, name, start, length)
            .await?;
        warp::reply::stream(limited(read.chunks, length)).into_response()
    };
    let mut response = body;
    let headers = response.headers_mut();
    use warp::http::header;
    headers.insert(
        header::CONTENT_TYPE,
        header_value(content_type(name, source)),
    );
    headers.insert(header::CONTENT_LENGTH, header_value(&length.to_string()));
    headers.insert(header::ACCEPT_RANGES, header_value("bytes"));
    if let ByteRange::Part { start, end } = range {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{end}/{size}")),
        );
    }
    Ok(response)
}

/// A header value from text this module builds (ASCII only).
fn header_value(s: &str) -> warp::http::HeaderValue {
    warp::http::HeaderValue::from_str(s).unwrap_or(warp::http::HeaderValue::from_static(""))
}

/// The media server's chunks as a body of exactly `length` bytes at most (`Content-Length`
/// was sent: a file that grew during the read is cut there); an error ends the body, and
/// the client sees a short response.
fn limited(
    chunks: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, ControlError>>,
    length: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Sync + 'static
{
    use futures_util::StreamExt as _;
    tokio_stream::wrappers::ReceiverStream::new(chunks).scan(length, |left, chunk| {
        let item = match chunk {
            Ok(_) if *left == 0 => None,
            Ok(mut bytes) => {
                if bytes.len() as u64 > *left {
                    bytes.truncate(*left as usize);
                }
                *left -= bytes.len() as u64;
                Some(Ok(bytes))
            }
            Err(e) => {
                tracing::info!(error = %e, "a recording's file read ended early");
                Some(Err(std::io::Error::other(e.to_string())))
            }
        };
        std::future::ready(item)
    })
}

/// `POST /rooms/{room}/policy`: the fields to change, and whether to clear the stored policy
/// first.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    wait_for_host: Option<bool>,
    #[serde(default)]
    lobby: Option<bool>,
    #[serde(default)]
    guests_allowed: Option<bool>,
    #[serde(default)]
    wait_timeout_seconds: Option<u32>,
    #[serde(default)]
    opened_by: Option<crate::rooms::Opener>,
    #[serde(default)]
    record: Option<bool>,
    #[serde(default)]
    e2ee: Option<bool>,
    #[serde(default)]
    reset: bool,
}

/// A room's policy as the API shows it: what was set at the media server (`stored`), what
/// this proxy's configuration says (`configured`), and what applies (`effective`).
fn policy_reply(state: &ProxyState, room: &RoomName, stored: crate::rooms::RoomPolicy) -> Value {
    let configured = state.config.rooms.policy_for(room.as_str());
    json!({
        "stored": stored,
        "configured": configured,
        "effective": stored.over(configured),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityBody {
    identity: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    identity: String,
    #[serde(default)]
    ban_seconds: u64,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    identity: String,
    source: TrackSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    identity: String,
    role: Role,
    #[serde(default)]
    permissions: Option<Permissions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    identity: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    permissions: Option<Permissions>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

fn issue_token(
    issuer: Option<&TokenIssuer>,
    actor: &Actor,
    room: &RoomName,
    body: Option<&[u8]>,
) -> Result<warp::reply::Response, ApiError> {
    let Some(issuer) = issuer else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "token_issuing_off",
            "this proxy issues no tokens (api.token_signing_kid is empty)",
        ));
    };
    let req: TokenBody = parse(body)?;
    let identity = identity(req.identity)?;
    if let Some(name) = &req.name
        && (name.is_empty() || name.chars().count() > 256)
    {
        return Err(ApiError::bad_request("`name` must be 1-256 characters"));
    }
    let lifetime = req.ttl_seconds.unwrap_or(issuer.default_lifetime);
    if lifetime == 0 || lifetime > issuer.max_lifetime {
        return Err(ApiError::bad_request(format!(
            "`ttl_seconds` must be 1-{} (auth.max_lifetime_seconds)",
            issuer.max_lifetime
        )));
    }
    let request = TokenRequest {
        room: room.clone(),
        identity: identity.clone(),
        name: req.name,
        role: req.role.unwrap_or(Role::Member),
        permissions: req.permissions,
        lifetime,
    };
    let issued = issuer
        .issue(&request, unix_now())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "signing_failed", e))?;
    tracing::info!(target: "audit", actor = actor.describe().as_str(), action = "issue_token", room = room.as_str(), identity = identity.as_str(), outcome = "ok", role = request.role.as_str(), token_id = issued.token_id.as_str(), "room action");
    Ok(warp::reply::json(&json!({
        "token": issued.token,
        "expires_at": issued.expires_at,
        "token_id": issued.token_id,
        "room": room.as_str(),
        "identity": identity.as_str(),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {

    /// docs/openapi.json and docs/api.md describe exactly the routes served.
    #[test]
    fn openapi_and_docs_list_exactly_the_routes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let spec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("openapi.json")).unwrap())
                .unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        served.sort();
        assert_eq!(
            documented, served,
            "docs/openapi.json and api::ROUTES differ"
        );
        let md = std::fs::read_to_string(root.join("api.md")).unwrap();
        for (m, p) in ROUTES {
            let line = format!("`{m} {p}`");
            assert!(md.contains(&line), "docs/api.md lacks {line}");
        }
        assert_eq!(spec["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    }

    use super::*;
    use crate::policy::TrackSource;
    use crate::relay::BoxFuture;
    use crate::rooms::{
        BanInfo, FileRead, LobbyEntry, RecordingFile, RecordingState, RoomDetail, RoomPolicy,
        RoomSummary,
    };

    #[test]
    fn one_byte_range_is_parsed_and_others_get_the_whole_file() {
        use ByteRange::*;
        let size = 1000;
        for (header, want) in [
            (None, Full),
            (Some("bytes=0-99"), Part { start: 0, end: 99 }),
            (
                Some("bytes=100-"),
                Part {
                    start: 100,
                    end: 999,
                },
            ),
            (
                Some("bytes=-100"),
                Part {
                    start: 900,
                    end: 999,
                },
            ),
            (Some("bytes=-5000"), Part { start: 0, end: 999 }),
            (
                Some("bytes=990-5000"),
                Part {
                    start: 990,
                    end: 999,
                },
            ),
            (
                Some("bytes=999-999"),
                Part {
                    start: 999,
                    end: 999,
                },
            ),
            (Some("Bytes = 5 - 9 "), Part { start: 5, end: 9 }),
            (Some("bytes=1000-"), Unsatisfiable),
            (Some("bytes=1000-1001"), Unsatisfiable),
            (Some("bytes=-0"), Unsatisfiable),
            // Several ranges: answered whole (documented).
            (Some("bytes=0-1,5-9"), Full),
            // Not a byte range, or not a valid one: ignored (RFC 9110 section 14.2).
            (Some("items=0-1"), Full),
            (Some("bytes=9-5"), Full),
            (Some("bytes=a-b"), Full),
            (Some("bytes=-"), Full),
            (Some("bytes=+1-2"), Full),
            (Some("bytes 0-1"), Full),
            (Some("bytes=99999999999999999999-"), Full),
        ] {
            assert_eq!(parse_range(header, size), want, "{header:?}");
        }
        // An empty file has no byte to give.
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(parse_range(None, 0), Full);
    }

    #[test]
    fn file_types_come_from_the_extension_and_the_source() {
        assert_eq!(content_type("manifest.json", None), "application/json");
        assert_eq!(
            content_type("a-microphone.webm", Some(TrackSource::Microphone)),
            "audio/webm"
        );
        assert_eq!(
            content_type("a-screen_audio.WEBM", Some(TrackSource::ScreenAudio)),
            "audio/webm"
        );
        assert_eq!(
            content_type("a-camera.webm", Some(TrackSource::Camera)),
            "video/webm"
        );
        assert_eq!(content_type("a-camera.webm", None), "video/webm");
        assert_eq!(content_type("a-screen.mkv", None), "video/x-matroska");
        assert_eq!(content_type("notes", None), "application/octet-stream");
    }

    #[test]
    fn path_and_query_values_are_checked() {
        assert_eq!(segment_query("").unwrap(), None);
        assert_eq!(segment_query("segment=2").unwrap(), Some(2));
        for bad in ["segment=0", "segment=x", "seg=1", "segment"] {
            assert_eq!(
                segment_query(bad).unwrap_err().reason,
                "bad_request",
                "{bad}"
            );
        }
        assert!(recording_id("rec_0123456789abcdefghijklmnop").is_ok());
        for bad in ["", "REC_1", "rec-1", "rec_1/..", &"a".repeat(65)] {
            assert!(recording_id(bad).is_err(), "{bad}");
        }
        assert!(file_name("manifest.json").is_ok());
        for bad in ["", ".", "..", "a/b", "a\\b", "a\0b"] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        let route = |m: &str, path: &str| {
            let segments: Vec<&str> = path.split('/').collect();
            route(m, &segments).map(|r| r.map(|r| r.needs().0.as_str()))
        };
        assert_eq!(
            route("POST", "rooms/r/recordings").unwrap(),
            Some("rooms:admin")
        );
        assert_eq!(
            route("POST", "rooms/r/recordings/stop").unwrap(),
            Some("rooms:admin")
        );
        assert_eq!(
            route("GET", "rooms/r/recordings").unwrap(),
            Some("rooms:read")
        );
        assert_eq!(
            route("GET", "rooms/r/recordings/rec_a").unwrap(),
            Some("rooms:read")
        );
        assert_eq!(
            route("DELETE", "rooms/r/recordings/rec_a").unwrap(),
            Some("rooms:admin")
        );
        assert_eq!(
            route("GET", "rooms/r/recordings/rec_a/files/x.webm").unwrap(),
            Some("rooms:read")
        );
        assert_eq!(
            route("HEAD", "rooms/r/recordings/rec_a/files/x.webm").unwrap(),
            Some("rooms:read")
        );
        assert_eq!(route("PUT", "rooms/r/recordings").unwrap(), None);
        assert!(route("GET", "rooms/r/recordings/Bad!").is_err());
    }

    #[test]
    fn recording_refusals_get_their_status_and_reason() {
        use crate::rooms::RecordingRefusal as R;
        for (e, status, reason) in [
            (
                ControlError::Recording(R::AlreadyRecording, "x".into()),
                409,
                "already_recording",
            ),
            (
                ControlError::Recording(R::NotRecording, "x".into()),
                409,
                "not_recording",
            ),
            (
                ControlError::Recording(R::StillRecording, "x".into()),
                409,
                "still_recording",
            ),
            (
                ControlError::Recording(R::Disabled, "x".into()),
                409,
                "recording_disabled",
            ),
            (
                ControlError::Recording(R::Encrypted, "x".into()),
                409,
                "encrypted",
            ),
            (
                ControlError::Recording(R::DiskFull, "x".into()),
                507,
                "disk_full",
            ),
            (
                ControlError::Policy(crate::rooms::PolicyRefusal::E2eeLocked, "x".into()),
                409,
                "e2ee_locked",
            ),
            (ControlError::NotFound("nobody".into()), 404, "not_found"),
            (
                ControlError::Unavailable("down".into()),
                503,
                "media_unavailable",
            ),
        ] {
            let e = ApiError::from(e);
            assert_eq!((e.status.as_u16(), e.reason), (status, reason));
        }
    }

    /// A media server holding one recording of room `standup` with one file, in memory.
    struct Recorder {
        file: Vec<u8>,
    }

    fn segment() -> RecordingInfo {
        RecordingInfo {
            recording_id: "rec_abc".into(),
            room: "standup".into(),
            state: RecordingState::Stopped,
            started_at_ms: 1,
            stopped_at_ms: Some(2),
            stop_reason: None,
            started_by: String::new(),
            segment: 1,
            degraded: false,
            bytes: 1000,
            files: Some(vec![RecordingFile {
                name: "alice-microphone.webm".into(),
                bytes: 1000,
                duration_ms: 1,
                identity: "alice".into(),
                session_id: "s".into(),
                source: Some(TrackSource::Microphone),
                codec: "opus".into(),
                start_ms: 1,
                url: String::new(),
            }]),
            host: "h".into(),
        }
    }

    fn nothing<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, ControlError>> {
        Box::pin(async { Err(ControlError::Unavailable("not in this test".into())) })
    }

    impl RoomControl for Recorder {
        fn list_rooms(&self) -> BoxFuture<'_, Result<Vec<RoomSummary>, ControlError>> {
            nothing()
        }
        fn get_room<'a>(
            &'a self,
            _: &'a RoomName,
        ) -> BoxFuture<'a, Result<RoomDetail, ControlError>> {
            nothing()
        }
        fn remove<'a>(
            &'a self,
            _: &'a RoomName,
            _: &'a Identity,
            _: u64,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(u32, Option<i64>), ControlError>> {
            nothing()
        }
        fn mute<'a>(
            &'a self,
            _: &'a RoomName,
            _: &'a Identity,
            _: TrackSource,
            _: bool,
        ) -> BoxFuture<'a, Result<u32, ControlError>> {
            nothing()
        }
        fn update<'a>(
            &'a self,
            _: &'a RoomName,
            _: &'a Identity,
            _: Role,
            _: Permissions,
        ) -> BoxFuture<'a, Result<u32, ControlError>> {
            nothing()
        }
        fn end<'a>(&'a self, _: &'a RoomName) -> BoxFuture<'a, Result<u32, ControlError>> {
            nothing()
        }
        fn bans<'a>(
            &'a self,
            _: &'a RoomName,
        ) -> BoxFuture<'a, Result<Vec<BanInfo>, ControlError>> {
            nothing()
        }
        fn unban<'a>(
            &'a self,
            _: &'a RoomName,
            _: &'a Identity,
        ) -> BoxFuture<'a, Result<(), ControlError>> {
            nothing()
        }
        fn revoke<'a>(&'a self, _: &'a Revocation) -> BoxFuture<'a, Result<u32, ControlError>> {
            nothing()
        }
        fn lobby<'a>(
            &'a self,
            _: &'a RoomName,
        ) -> BoxFuture<'a, Result<Vec<LobbyEntry>, ControlError>> {
            nothing()
        }
        fn decide<'a>(
            &'a self,
            _: &'a RoomName,
            _: &'a Identity,
            _: bool,
        ) -> BoxFuture<'a, Result<u32, ControlError>> {
            nothing()
        }
        fn policy<'a>(
            &'a self,
            _: &'a RoomName,
        ) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
            nothing()
        }
        fn set_policy<'a>(
            &'a self,
            _: &'a RoomName,
            _: RoomPolicy,
            _: bool,
        ) -> BoxFuture<'a, Result<RoomPolicy, ControlError>> {
            nothing()
        }
        fn recording<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Vec<RecordingInfo>, ControlError>> {
            Box::pin(async move {
                Ok(if id == "rec_abc" {
                    vec![segment()]
                } else {
                    Vec::new()
                })
            })
        }
        fn read_recording_file<'a>(
            &'a self,
            _: &'a RecordingInfo,
            name: &'a str,
            offset: u64,
            length: u64,
        ) -> BoxFuture<'a, Result<FileRead, ControlError>> {
            Box::pin(async move {
                if name != "alice-microphone.webm" {
                    return Err(ControlError::NotFound("no such file".into()));
                }
                let end = if length == 0 {
                    self.file.len()
                } else {
                    (offset + length) as usize
                };
                let bytes = self.file[offset as usize..end].to_vec();
                // In chunks of 300 bytes, as a media server streams them.
                let (tx, rx) = tokio::sync::mpsc::channel(16);
                for chunk in bytes.chunks(300) {
                    tx.send(Ok(bytes::Bytes::copy_from_slice(chunk)))
                        .await
                        .unwrap();
                }
                Ok(FileRead {
                    size: self.file.len() as u64,
                    chunks: rx,
                })
            })
        }
    }

    async fn download(range: Option<&str>, head: bool) -> (u16, Vec<(String, String)>, Vec<u8>) {
        use http_body_util::BodyExt as _;
        let recorder = Recorder {
            file: (0..1000u32).map(|i| (i % 251) as u8).collect(),
        };
        let room = RoomName::parse("standup").unwrap();
        let response = match recording_file(
            &recorder,
            &room,
            "rec_abc",
            "alice-microphone.webm",
            None,
            range,
            head,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => e.into_response(),
        };
        let status = response.status().as_u16();
        let mut headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str() != "content-type" || status < 400)
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body.to_vec())
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = list
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_file_is_served_whole_or_by_range_with_its_headers() {
        let file: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let (status, h, body) = download(None, false).await;
        assert_eq!(status, 200);
        assert_eq!(
            h,
            headers(&[
                ("accept-ranges", "bytes"),
                ("content-length", "1000"),
                ("content-type", "audio/webm"),
            ])
        );
        assert_eq!(body, file);
        let (status, h, body) = download(Some("bytes=100-399"), false).await;
        assert_eq!(status, 206);
        assert_eq!(
            h,
            headers(&[
                ("accept-ranges", "bytes"),
                ("content-length", "300"),
                ("content-range", "bytes 100-399/1000"),
                ("content-type", "audio/webm"),
            ])
        );
        assert_eq!(body, file[100..400]);
        let (status, h, body) = download(Some("bytes=-10"), false).await;
        assert_eq!(status, 206);
        assert!(h.contains(&("content-range".into(), "bytes 990-999/1000".into())));
        assert_eq!(body, file[990..]);
        let (status, h, _) = download(Some("bytes=1000-"), false).await;
        assert_eq!(status, 416);
        assert!(h.contains(&("content-range".into(), "bytes */1000".into())));
        // HEAD: the same headers, no bytes.
        let (status, h, body) = download(None, true).await;
        assert_eq!(status, 200);
        assert!(h.contains(&("content-length".into(), "1000".into())));
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn another_rooms_recording_is_not_found() {
        let recorder = Recorder { file: Vec::new() };
        for (room, id) in [("other", "rec_abc"), ("standup", "rec_nope")] {
            let room = RoomName::parse(room).unwrap();
            let e = recording_file(&recorder, &room, id, "manifest.json", None, None, false)
                .await
                .unwrap_err();
            assert_eq!((e.status.as_u16(), e.reason), (404, "not_found"));
        }
    }
}
