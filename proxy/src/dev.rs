//! Development mode (`server.dev_tokens = true`): `GET /dev/token?room=R&name=N` mints a
//! moderator token with the proxy's own HS key, so the demo page works with only a room and a
//! name in its URL (`&role=member` or `&role=guest` for another role, to try the waiting room
//! and the lobby). Anyone who can reach the proxy can then join any room with any name, so
//! it is off by default, the proxy warns at start when it is on, and the route does not exist
//! otherwise (404).

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore as _;
use warp::http::StatusCode;
use warp::{Filter, Reply as _};

use crate::cli::{MintArgsRef, mint_token};
use crate::config::Config;
use crate::protocol::RoomName;

/// Lifetime of a dev token: long enough for a demo, short enough to exercise refresh.
const DEV_TOKEN_TTL: &str = "2h";

/// The `/dev/token` route; rejects (404) unless `server.dev_tokens` is on.
pub fn routes(
    config: Arc<Config>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone {
    let enabled = config.server.dev_tokens;
    warp::path!("dev" / "token")
        .and(warp::get())
        .and(crate::server::switched_on(enabled))
        .and(warp::query::<HashMap<String, String>>())
        .map(move |query: HashMap<String, String>| token_reply(&config, &query))
}

fn token_reply(config: &Config, query: &HashMap<String, String>) -> warp::reply::Response {
    let reply = |status: StatusCode, body: serde_json::Value| {
        warp::reply::with_status(warp::reply::json(&body), status).into_response()
    };
    let room = match query.get("room").map(|r| RoomName::parse(r)) {
        Some(Ok(room)) => room,
        Some(Err(e)) => return reply(StatusCode::BAD_REQUEST, serde_json::json!({ "error": e })),
        None => {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "room is required" }),
            );
        }
    };
    let name = query
        .get("name")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .unwrap_or("guest");
    if name.chars().count() > 64 {
        return reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "name: at most 64 characters" }),
        );
    }
    let role = match query.get("role").map(String::as_str) {
        None | Some("moderator") => "moderator",
        Some("member") => "member",
        Some("guest") => "guest",
        Some(_) => {
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "role: moderator, member or guest" }),
            );
        }
    };
    // Each tab is its own user: the name plus a random suffix.
    let slug: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    let mut suffix = [0u8; 3];
    rand::rng().fill_bytes(&mut suffix);
    let user = format!(
        "{slug}-{}",
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let args = MintArgsRef {
        room: Some(room.as_str()),
        user: Some(&user),
        role: Some(role),
        name: Some(name),
        ttl: DEV_TOKEN_TTL,
        ..MintArgsRef::default()
    };
    match mint_token(config, &args, crate::auth::unix_now()) {
        Ok(token) => reply(
            StatusCode::OK,
            serde_json::json!({ "token": token, "user": user }),
        ),
        Err(e) => {
            tracing::error!(error = %e, "dev token minting failed");
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": e }),
            )
        }
    }
}
