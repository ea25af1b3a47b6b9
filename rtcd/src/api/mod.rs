//! The HTTP API (warp), wire-compatible with Mattermost rtcd so its tooling works unchanged.
//!
//! Public listener (`[api.http]`):
//!
//! | route | auth | answer |
//! |---|---|---|
//! | `GET /version` | none | `{"buildDate","buildVersion","buildHash","rustVersion","os","arch"}` |
//! | `GET /system` | none | `{"cpu_load": f64, "capacity_used": f64, "forwarding_used": f64, "load": f64}` |
//! | `GET /healthz` | none | 200 while the process serves |
//! | `GET /readyz` | none | 200 when ready, 503 while starting or draining |
//! | `POST /register` `{"clientID","authKey"}` | admin, or none with self-registration | 201 `{"clientID","code":"201"}` once on disk |
//! | `POST /unregister` `{"clientID"}` | admin, or the client itself | 200 `{"clientID","code":"200"}` |
//! | `POST /login` `{"clientID","authKey"}` | the body | 200 `{"bearerToken","expiresAt","code":"200"}` |
//! | `GET /metrics` | admin | Prometheus text |
//!
//! Internal listener (`[api.metrics]`, loopback by default): `/metrics`, `/healthz`,
//! `/readyz`, no auth. Nothing internal is reachable on the public listener without the
//! admin secret.
//!
//! Errors are JSON `{"code": "<status>", "error": "<what is wrong>"}` (code as a string, as
//! rtcd does); 429 and 503 carry `Retry-After`. The mapping from domain errors to status
//! codes is in [`reply`], and nowhere else. The listeners themselves (TLS, timeouts,
//! connection caps, drain) are the service kit's (`rtcd_kit::listener`).

pub mod reply;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::auth::{AuthError, AuthService, ClientId, Credentials, Principal, Secret};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::system::SystemLoad;
use reply::{ApiError, json};
use rtcd_kit::listener::PeerAddr;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The authentication service (registry, login, credentials).
    pub auth: AuthService,
    /// Lifecycle phase, for `/readyz`.
    pub health: Arc<Health>,
    /// The metrics registry, for `/metrics` and request counting.
    pub metrics: Arc<Metrics>,
    /// Host load, for `/system`.
    pub load: Arc<SystemLoad>,
    /// Request body cap in bytes.
    pub max_body_bytes: u64,
}

/// The public API's routes, with rejections already turned into JSON replies.
pub fn public_routes(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let s = warp::any().map({
        let state = state.clone();
        move || state.clone()
    });
    let peer = warp::ext::get::<PeerAddr>().map(|p: PeerAddr| p.0.ip());
    let authz = warp::header::optional::<String>("authorization");
    let body = capped_body(state.max_body_bytes);

    let version = warp::path!("version").and(warp::get()).map(version);
    let system = warp::path!("system")
        .and(warp::get())
        .and(s.clone())
        .map(system);
    let register = warp::path!("register")
        .and(warp::post())
        .and(s.clone())
        .and(peer)
        .and(authz)
        .and(body.clone())
        .then(register);
    let unregister = warp::path!("unregister")
        .and(warp::post())
        .and(s.clone())
        .and(peer)
        .and(authz)
        .and(body.clone())
        .then(unregister);
    let login = warp::path!("login")
        .and(warp::post())
        .and(s.clone())
        .and(peer)
        .and(body)
        .then(login);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(s.clone())
        .and(peer)
        .and(authz)
        .then(admin_metrics);

    let metrics_for_log = state.metrics.clone();
    version
        .or(system)
        .unify()
        .or(health_routes(state.clone()))
        .unify()
        .or(register)
        .unify()
        .or(unregister)
        .unify()
        .or(login)
        .unify()
        .or(metrics)
        .unify()
        .recover(reply::recover)
        .unify()
        .with(warp::log::custom(move |info| {
            count_request(&metrics_for_log, info)
        }))
}

/// The internal listener's routes: metrics and health, no auth.
pub fn internal_routes(
    state: ApiState,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let metrics = warp::path!("metrics").and(warp::get()).map({
        let metrics = state.metrics.clone();
        move || prometheus_reply(&metrics)
    });
    metrics
        .or(health_routes(state))
        .unify()
        .recover(reply::recover)
        .unify()
}

fn health_routes(
    state: ApiState,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    rtcd_kit::health::routes(state.health, |_: &mut serde_json::Value| {})
}

fn count_request(metrics: &Metrics, info: warp::log::Info<'_>) {
    const ROUTES: [&str; 9] = [
        "/version",
        "/system",
        "/healthz",
        "/readyz",
        "/register",
        "/unregister",
        "/login",
        "/metrics",
        "/",
    ];
    let route = ROUTES
        .iter()
        .find(|r| **r == info.path())
        .copied()
        .unwrap_or("other");
    metrics
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route,
            status: info.status().as_u16(),
        })
        .inc();
    tracing::debug!(method = %info.method(), route, status = info.status().as_u16(), elapsed_ms = info.elapsed().as_millis() as u64, "http request");
}

fn version() -> warp::reply::Response {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "buildDate": crate::BUILD_DATE,
            "buildVersion": concat!("v", env!("CARGO_PKG_VERSION")),
            "buildHash": crate::BUILD_HASH,
            "rustVersion": option_env!("RTCD_RUSTC_VERSION").unwrap_or("unknown"),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
        }),
    )
}

fn system(state: ApiState) -> warp::reply::Response {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "cpu_load": state.load.cpu_load(),
            "capacity_used": state.load.capacity_used(),
            "forwarding_used": state.load.forwarding_used(),
            "load": state.load.load(),
        }),
    )
}

/// The request body, refused with 413 beyond `max` bytes, whether announced by
/// `Content-Length` (refused before reading) or streamed chunked (refused once exceeded).
fn capped_body(max: u64) -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |announced: Option<u64>| async move {
            match announced {
                Some(len) if len > max => Err(warp::reject::custom(reply::BodyTooLarge)),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |stream| collect_capped(stream, max))
}

async fn collect_capped<S, B>(stream: S, max: u64) -> Result<Bytes, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: warp::Buf,
{
    use futures_util::TryStreamExt as _;
    let mut body = bytes::BytesMut::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|_| warp::reject::custom(reply::BodyTooLarge))?
    {
        if (body.len() + chunk.remaining()) as u64 > max {
            return Err(warp::reject::custom(reply::BodyTooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            let n = part.len();
            body.extend_from_slice(part);
            chunk.advance(n);
        }
    }
    Ok(body.freeze())
}

/// A JSON object request body. Fields are read one by one with messages that name the field
/// and the expected type but never echo a value: a mistyped key must not come back in an error.
pub(crate) struct JsonBody(serde_json::Map<String, serde_json::Value>);

impl JsonBody {
    pub(crate) fn parse(body: &Bytes) -> Result<Self, ApiError> {
        if body.is_empty() {
            return Err(ApiError::BadRequest(
                "request body is empty; expected a JSON object".into(),
            ));
        }
        match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::BadRequest(
                "invalid JSON body: expected a JSON object".into(),
            )),
            // Syntax errors say where, not what: serde_json does not quote the input in them.
            Err(e) => Err(ApiError::BadRequest(format!("invalid JSON body: {e}"))),
        }
    }

    fn string(&self, field: &str) -> Result<&str, ApiError> {
        match self.0.get(field) {
            Some(serde_json::Value::String(s)) => Ok(s),
            None | Some(serde_json::Value::Null) => {
                Err(ApiError::BadRequest(format!("missing field `{field}`")))
            }
            Some(other) => {
                let kind = match other {
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Array(_) => "an array",
                    _ => "an object",
                };
                Err(ApiError::BadRequest(format!(
                    "invalid type for field `{field}`: expected a string, got {kind}"
                )))
            }
        }
    }

    pub(crate) fn client_id(&self) -> Result<ClientId, ApiError> {
        Ok(ClientId::parse(self.string("clientID")?)?)
    }

    pub(crate) fn auth_key(&self) -> Result<Secret, ApiError> {
        Ok(Secret::new(self.string("authKey")?))
    }
}

/// Authenticates the `Authorization` header if there is one.
async fn caller(
    state: &ApiState,
    authz: Option<String>,
    ip: IpAddr,
) -> Result<Option<Principal>, ApiError> {
    match authz {
        None => Ok(None),
        Some(value) => {
            let credentials = Credentials::from_authorization(&value)?;
            Ok(Some(state.auth.authenticate(&credentials, ip).await?))
        }
    }
}

async fn register(
    state: ApiState,
    ip: IpAddr,
    authz: Option<String>,
    body: Bytes,
) -> warp::reply::Response {
    let result: Result<_, ApiError> = async {
        let request = JsonBody::parse(&body)?;
        let (id, key) = (request.client_id()?, request.auth_key()?);
        let caller = caller(&state, authz, ip).await?;
        if caller.is_none() && !state.auth.self_registration_allowed() {
            return Err(AuthError::Unauthenticated.into());
        }
        state
            .auth
            .register(caller.as_ref(), id.clone(), key, ip)
            .await?;
        Ok(json(
            StatusCode::CREATED,
            &serde_json::json!({"clientID": id.as_str(), "code": "201"}),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

async fn unregister(
    state: ApiState,
    ip: IpAddr,
    authz: Option<String>,
    body: Bytes,
) -> warp::reply::Response {
    let result: Result<_, ApiError> = async {
        let caller = caller(&state, authz, ip)
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        let id = JsonBody::parse(&body)?.client_id()?;
        state.auth.unregister(&caller, id.clone(), ip).await?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"clientID": id.as_str(), "code": "200"}),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

async fn login(state: ApiState, ip: IpAddr, body: Bytes) -> warp::reply::Response {
    let result: Result<_, ApiError> = async {
        let request = JsonBody::parse(&body)?;
        let token = state.auth.login(request.client_id()?, request.auth_key()?, ip).await?;
        let expires = token.expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({"bearerToken": token.token.expose(), "expiresAt": expires, "code": "200"}),
        ))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

async fn admin_metrics(
    state: ApiState,
    ip: IpAddr,
    authz: Option<String>,
) -> warp::reply::Response {
    let result: Result<_, ApiError> = async {
        match caller(&state, authz, ip).await? {
            Some(Principal::Admin) => Ok(prometheus_reply(&state.metrics)),
            Some(Principal::Client(_)) => {
                Err(AuthError::Forbidden("metrics require the admin secret").into())
            }
            None => Err(AuthError::Unauthenticated.into()),
        }
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

fn prometheus_reply(metrics: &Metrics) -> warp::reply::Response {
    warp::reply::with_header(
        metrics.encode(),
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    )
    .into_response()
}
