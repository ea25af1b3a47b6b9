//! The join-time affiliation hook (docs/affiliation.md) end to end: a real proxy on 127.0.0.1:0,
//! a real WebSocket client, and a real HTTP hook on 127.0.0.1 that checks every request's
//! `Rtcd-Signature` with rtcd's own webhook verifier (so the proxy provably signs the way
//! platforms already verify) and answers, slowly if told to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtcd::webhook::signature;
use rtcd_e2e::proxy::*;
use rtcd_proxy::config::{AffiliationConfig, AffiliationFallback, Config, Secret};
use rtcd_proxy::relay::RelayCommand;
use serde_json::{Value, json};
use warp::Filter as _;

/// The secret the hook verifies with (test only).
const HOOK_SECRET: &str = "affiliation-test-secret-0123456789abcdef";

#[derive(Default)]
struct HookState {
    reply: Value,
    delay: Duration,
    /// Bodies of well-signed requests.
    requests: Vec<Value>,
    /// Requests refused with 401 for their signature.
    bad_signatures: usize,
}

/// A platform's affiliation endpoint at `POST /join`.
struct Hook {
    addr: SocketAddr,
    state: Arc<Mutex<HookState>>,
}

impl Hook {
    /// Answers `reply` to well-signed requests (401 to others), after `delay`.
    async fn start(reply: Value, delay: Duration) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(HookState {
            reply,
            delay,
            ..HookState::default()
        }));
        let shared = state.clone();
        let route = warp::post()
            .and(warp::path!("join"))
            .and(warp::header::optional::<String>("rtcd-signature"))
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .and_then(
                move |sig: Option<String>, kind: Option<String>, body: bytes::Bytes| {
                    let shared = shared.clone();
                    async move {
                        let verified = sig.as_deref().is_some_and(|header| {
                            signature::verify(
                                HOOK_SECRET.as_bytes(),
                                header,
                                &body,
                                now(),
                                signature::DEFAULT_TOLERANCE,
                            )
                            .is_ok()
                        }) && kind.as_deref() == Some("application/json");
                        let (reply, delay) = {
                            let mut s = shared.lock().expect("lock");
                            if verified {
                                s.requests
                                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                            } else {
                                s.bad_signatures += 1;
                            }
                            (s.reply.clone(), s.delay)
                        };
                        if !verified {
                            return Ok::<_, Infallible>(warp::reply::with_status(
                                warp::reply::json(&json!({"error": "bad signature"})),
                                warp::http::StatusCode::UNAUTHORIZED,
                            ));
                        }
                        tokio::time::sleep(delay).await;
                        Ok(warp::reply::with_status(
                            warp::reply::json(&reply),
                            warp::http::StatusCode::OK,
                        ))
                    }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Ok(Self { addr, state })
    }

    fn url(&self) -> String {
        format!("http://{}/join", self.addr)
    }

    fn requests(&self) -> Vec<Value> {
        self.state.lock().expect("lock").requests.clone()
    }

    fn bad_signatures(&self) -> usize {
        self.state.lock().expect("lock").bad_signatures
    }
}

/// The test proxy's config with the hook at `url`.
fn config(url: String, fallback: AffiliationFallback, timeout_ms: u64) -> Config {
    let mut c = base_config();
    c.auth.affiliation = AffiliationConfig {
        url,
        secret: Secret::new(HOOK_SECRET),
        timeout_ms,
        fallback,
        ..AffiliationConfig::default()
    };
    c
}

/// A token for `sub` in `standup` with `role`.
fn token(sub: &str, role: &str) -> String {
    let mut c = claims(sub, "standup");
    c["role"] = role.into();
    hs_token(&c)
}

/// The joined message, or a panic naming what happened instead.
fn joined(outcome: JoinOutcome) -> Value {
    match outcome {
        JoinOutcome::Joined(m) => m,
        other => panic!("expected joined, got {other:?}"),
    }
}

/// (a) The seed case: a platform moderator who is no admin of the room joins as a member:
/// `joined`, the grant the media server gets, moderation and a later refresh all agree.
#[tokio::test]
async fn a_moderator_token_lowered_to_member_joins_as_a_member_everywhere() -> anyhow::Result<()> {
    let hook = Hook::start(json!({"role": "member"}), Duration::ZERO).await?;
    let (relay, mut joins) = rtcd_e2e::relay::ScriptedRelay::start();
    let proxy = start_with_relay(
        config(hook.url(), AffiliationFallback::Refuse, 2000),
        Some(relay),
    )
    .await?;
    let (mut client, outcome) = join(
        proxy.addr(),
        Some(&token("@alice:example.org", "moderator")),
        "standup",
    )
    .await?;
    let m = joined(outcome);
    assert_eq!(m["role"], "member");
    let member = json!({"publish_audio": true, "publish_video": true, "publish_screen": false, "subscribe": true});
    assert_eq!(m["permissions"], member, "a member's defaults: no screen");

    // The media server enforces the lowered grant.
    let mut far = tokio::time::timeout(STEP, joins.recv())
        .await?
        .expect("relay join");
    assert_eq!(far.request.grant.role, rtcd_proxy::policy::Role::Member);
    assert!(!far.request.grant.permissions.publish_screen);

    // The hook was asked what the token grants.
    let asked = hook.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0],
        json!({
            "type": "affiliation_check",
            "identity": "@alice:example.org",
            "tenant": null,
            "name": null,
            "room": "standup",
            "role": "moderator",
            "capabilities": ["publish_audio", "publish_video", "publish_screen", "subscribe"],
            "expires_at": asked[0]["expires_at"],
        })
    );

    // Moderator actions are refused.
    client
        .send(&json!({"type": "moderate", "action": "kick", "identity": "bob"}))
        .await?;
    let e = client.expect("error").await?;
    assert_eq!(
        (e["code"].as_str(), e["request"].as_str()),
        (Some("forbidden"), Some("moderate"))
    );

    // A refresh with another moderator token cannot undo the downgrade.
    client
        .send(&json!({"type": "refresh", "token": token("@alice:example.org", "moderator")}))
        .await?;
    let r = client.expect("refreshed").await?;
    assert_eq!(r["permissions"], member);
    loop {
        if let RelayCommand::UpdateGrant(g) = far.command(STEP).await? {
            assert_eq!(g.role, rtcd_proxy::policy::Role::Member);
            assert!(!g.permissions.publish_screen);
            break;
        }
    }
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_affiliation_checks_total{outcome="lowered"} 1"#),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// (b) Requests are signed like rtcd's webhooks: the hook verifies them with rtcd's verifier;
/// a proxy with another secret is refused by the hook, which is a failure (4120).
#[tokio::test]
async fn the_hook_verifies_the_signature_and_a_wrong_secret_fails() -> anyhow::Result<()> {
    let hook = Hook::start(json!({}), Duration::ZERO).await?;
    let proxy = start(config(hook.url(), AffiliationFallback::Refuse, 2000)).await?;
    let (_c, outcome) = join(proxy.addr(), Some(&token("alice", "member")), "standup").await?;
    assert_eq!(joined(outcome)["role"], "member");
    assert_eq!((hook.requests().len(), hook.bad_signatures()), (1, 0));
    proxy.shutdown().await;

    let mut wrong = config(hook.url(), AffiliationFallback::Refuse, 2000);
    wrong.auth.affiliation.secret = Secret::new("another-secret-0123456789abcdef-0123456789");
    let proxy = start(wrong).await?;
    let (_c, outcome) = join(proxy.addr(), Some(&token("bob", "member")), "standup").await?;
    let JoinOutcome::Refused(code, label, detail) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((code, label.as_str()), (4120, "affiliation_unavailable"));
    assert!(detail.unwrap_or_default().contains("HTTP 401"));
    assert_eq!((hook.requests().len(), hook.bad_signatures()), (1, 1));
    proxy.shutdown().await;
    Ok(())
}

/// (c) A hook slower than `timeout_ms`: `refuse` closes 4120, `token` admits with the token's
/// grant.
#[tokio::test]
async fn a_slow_hook_times_out_into_the_fallback() -> anyhow::Result<()> {
    let hook = Hook::start(json!({"role": "guest"}), Duration::from_millis(1500)).await?;
    let proxy = start(config(hook.url(), AffiliationFallback::Refuse, 300)).await?;
    let started = std::time::Instant::now();
    let (_c, outcome) = join(proxy.addr(), Some(&token("alice", "moderator")), "standup").await?;
    let JoinOutcome::Refused(code, label, detail) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((code, label.as_str()), (4120, "affiliation_unavailable"));
    assert!(detail.unwrap_or_default().contains("timed out"));
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the join did not wait for the slow hook: {:?}",
        started.elapsed()
    );
    proxy.shutdown().await;

    let proxy = start(config(hook.url(), AffiliationFallback::Token, 300)).await?;
    let (_c, outcome) = join(proxy.addr(), Some(&token("alice", "moderator")), "standup").await?;
    let m = joined(outcome);
    assert_eq!(m["role"], "moderator", "the token's grant, unchanged");
    assert_eq!(m["permissions"]["publish_screen"], true);
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_affiliation_checks_total{outcome="error"} 1"#),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// (d) Nothing listens at the hook's address: the fallback applies, and failures are not
/// cached (the second join asks again, and fails again).
#[tokio::test]
async fn an_unreachable_hook_follows_the_fallback() -> anyhow::Result<()> {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        listener.local_addr()?
    };
    let url = format!("http://{closed}/join");
    let proxy = start(config(url.clone(), AffiliationFallback::Refuse, 2000)).await?;
    for _ in 0..2 {
        let (_c, outcome) = join(proxy.addr(), Some(&token("alice", "member")), "standup").await?;
        let JoinOutcome::Refused(code, label, detail) = outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!((code, label.as_str()), (4120, "affiliation_unavailable"));
        let detail = detail.unwrap_or_default();
        assert!(detail.contains("unreachable"), "{detail}");
        assert!(
            !detail.contains(&closed.to_string()),
            "no address for the client: {detail}"
        );
    }
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_affiliation_checks_total{outcome="error"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"proxy_auth_failures_total{reason="affiliation_unavailable"} 2"#),
        "{metrics}"
    );
    proxy.shutdown().await;

    let proxy = start(config(url, AffiliationFallback::Token, 2000)).await?;
    let (_c, outcome) = join(proxy.addr(), Some(&token("alice", "member")), "standup").await?;
    assert_eq!(joined(outcome)["role"], "member");
    proxy.shutdown().await;
    Ok(())
}

/// (e) `allow: false`: close 4119, the platform's reason in the `error` before it.
#[tokio::test]
async fn a_refusal_closes_4119_with_the_platforms_reason() -> anyhow::Result<()> {
    let hook = Hook::start(
        json!({"allow": false, "reason": "you are not in this Matrix room"}),
        Duration::ZERO,
    )
    .await?;
    let proxy = start(config(hook.url(), AffiliationFallback::Token, 2000)).await?;
    let (_c, outcome) = join(proxy.addr(), Some(&token("mallory", "member")), "standup").await?;
    let JoinOutcome::Refused(code, label, detail) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!((code, label.as_str()), (4119, "affiliation_denied"));
    let detail = detail.unwrap_or_default();
    assert!(
        detail.contains("you are not in this Matrix room"),
        "{detail}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// (f) Two joins within `cache_seconds` ask the hook once; another identity is another
/// question.
#[tokio::test]
async fn answers_are_cached_per_identity_room_and_grant() -> anyhow::Result<()> {
    let hook = Hook::start(json!({"capabilities": ["subscribe"]}), Duration::ZERO).await?;
    let proxy = start(config(hook.url(), AffiliationFallback::Refuse, 2000)).await?;
    let listen_only = json!({"publish_audio": false, "publish_video": false, "publish_screen": false, "subscribe": true});
    let mut clients = Vec::new();
    for sub in ["alice", "alice", "bob"] {
        let (c, outcome) = join(proxy.addr(), Some(&token(sub, "member")), "standup").await?;
        let m = joined(outcome);
        assert_eq!(m["permissions"], listen_only, "{sub}");
        clients.push(c);
    }
    let asked: Vec<_> = hook
        .requests()
        .iter()
        .map(|r| r["identity"].clone())
        .collect();
    assert_eq!(asked, [json!("alice"), json!("bob")]);
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_affiliation_checks_total{outcome="cached"} 1"#),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}
