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
use crate::rooms::{Action, Actor, ControlError, Revocation, RoomControl};
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
        .and(context);
    // Every method reaches `serve`, which answers 405 with `Allow` for a known path.
    common.and(warp::method()).and(limited_body(max_body)).then(
        |tail, auth, peer, ctx, method: Method, body: Result<bytes::Bytes, ApiError>| {
            handle(method, tail, auth, peer, ctx, body)
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

async fn handle(
    method: Method,
    tail: warp::path::Tail,
    authorization: Option<String>,
    peer: Option<PeerAddr>,
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
        authorization,
        peer,
        body,
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
    authorization: Option<String>,
    peer: Option<IpAddr>,
    body: Option<bytes::Bytes>,
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
            let allowed: Vec<&str> = ["GET", "POST"]
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
                },
                reset: req.reset,
            };
            crate::rooms::perform(media()?, &actor, room, action, allow_unmute).await?;
            policy_reply(state, room, media()?.policy(room).await?)
        }
        Route::Token(_) => unreachable!("answered above"),
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
}

impl Route {
    /// The scope it needs and the room it touches.
    fn needs(&self) -> (Scope, Option<&RoomName>) {
        match self {
            Route::ListRooms => (Scope::RoomsRead, None),
            Route::Revoke => (Scope::RoomsAdmin, None),
            Route::GetRoom(r) | Route::Bans(r) | Route::Lobby(r) | Route::Policy(r) => {
                (Scope::RoomsRead, Some(r))
            }
            Route::Token(r) => (Scope::TokensIssue, Some(r)),
            Route::End(r)
            | Route::Remove(r)
            | Route::Mute(r)
            | Route::RequestUnmute(r)
            | Route::Update(r)
            | Route::Unban(r)
            | Route::Admit(r)
            | Route::Deny(r)
            | Route::SetPolicy(r) => (Scope::RoomsAdmin, Some(r)),
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
    use super::ROUTES;

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
}
