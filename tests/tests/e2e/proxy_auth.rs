//! rtcd-proxy end to end: a real proxy on 127.0.0.1:0 and a real WebSocket client. The token
//! matrix (each failure with its own close code), JWKS rotation through a real HTTP server,
//! token transports, limits, the permission policy, session expiry and drain.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey};
use rtcd_e2e::proxy::*;
use rtcd_proxy::Proxy;
use serde_json::{Value, json};

fn with(mut v: Value, key: &str, x: Value) -> Value {
    if x.is_null() {
        v.as_object_mut().unwrap().remove(key);
    } else {
        v[key] = x;
    }
    v
}

#[tokio::test]
async fn token_matrix_each_failure_has_its_own_close_code() -> anyhow::Result<()> {
    let proxy = start(base_config()).await?;
    let addr = proxy.addr();
    let t = now();
    let good = claims("alice", "standup");
    let b64json = |v: &Value| b64(v.to_string().as_bytes());

    let none = format!(
        "{}.{}.",
        b64json(&json!({"alg":"none","typ":"JWT","kid":"hs1"})),
        b64json(&good)
    );
    // HS/RSA confusion: an HS256 token "signed" with the RSA public key as the HMAC secret,
    // naming the RSA key.
    let rsa_pub = std::fs::read(fixture("rsa-a.pub.pem"))?;
    let confusion = sign(
        Algorithm::HS256,
        Some("rsa-a"),
        &good,
        &EncodingKey::from_secret(&rsa_pub),
    );
    let genuine = hs_token(&good);
    let (head, rest) = genuine.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let tampered = format!(
        "{head}.{}.{sig}",
        b64json(&with(good.clone(), "sub", json!("mallory")))
    );
    let bad_signature = sign(
        Algorithm::HS256,
        Some("hs1"),
        &good,
        &EncodingKey::from_secret(b"another-secret-0123456789abcdef-0123456789"),
    );
    let unknown_kid = sign(
        Algorithm::HS256,
        Some("nope"),
        &good,
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
    );

    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        (
            "alg none",
            none,
            "standup",
            4103,
            "token_algorithm_rejected",
        ),
        (
            "HS/RSA confusion",
            confusion,
            "standup",
            4103,
            "token_algorithm_rejected",
        ),
        (
            "tampered payload",
            tampered,
            "standup",
            4105,
            "token_bad_signature",
        ),
        (
            "bad signature",
            bad_signature,
            "standup",
            4105,
            "token_bad_signature",
        ),
        (
            "unknown kid",
            unknown_kid,
            "standup",
            4104,
            "token_unknown_key",
        ),
        (
            "expired",
            hs_token(&with(good.clone(), "exp", json!(t - 120))),
            "standup",
            4106,
            "token_expired",
        ),
        (
            "nbf in the future",
            hs_token(&with(good.clone(), "nbf", json!(t + 120))),
            "standup",
            4107,
            "token_not_yet_valid",
        ),
        (
            "wrong aud",
            hs_token(&with(good.clone(), "aud", json!("someone-else"))),
            "standup",
            4110,
            "token_wrong_audience",
        ),
        (
            "wrong iss",
            hs_token(&with(good.clone(), "iss", json!("evil-platform"))),
            "standup",
            4109,
            "token_wrong_issuer",
        ),
        (
            "wrong room",
            hs_token(&good),
            "other-room",
            4111,
            "token_wrong_room",
        ),
        (
            "wildcard room, wildcards off",
            hs_token(&with(good.clone(), "room", json!("*"))),
            "standup",
            4112,
            "token_wildcard_room",
        ),
        (
            "lifetime over the cap",
            hs_token(&with(good.clone(), "exp", json!(t + 3600 + 600))),
            "standup",
            4108,
            "token_too_long_lived",
        ),
        (
            "missing exp",
            hs_token(&with(good.clone(), "exp", Value::Null)),
            "standup",
            4113,
            "token_missing_claim",
        ),
        (
            "garbage",
            "garbage".into(),
            "standup",
            4101,
            "token_malformed",
        ),
        (
            "three garbage parts",
            "not.a.jwt".into(),
            "standup",
            4101,
            "token_malformed",
        ),
        (
            "9 KiB token",
            "x".repeat(9 * 1024),
            "standup",
            4102,
            "token_too_large",
        ),
        (
            "empty token",
            String::new(),
            "standup",
            4100,
            "token_missing",
        ),
    ];
    for (name, token, room, code, label) in &cases {
        let (_c, outcome) = join(addr, Some(token), room).await?;
        match outcome {
            JoinOutcome::Refused(got, reason, detail) => {
                assert_eq!(
                    (got, reason.as_str()),
                    (*code, *label),
                    "{name}: detail {detail:?}"
                );
                assert!(
                    detail.is_some(),
                    "{name}: an error message with details precedes the close"
                );
            }
            JoinOutcome::Joined(m) | JoinOutcome::Waiting(m) => panic!("{name}: accepted: {m}"),
        }
    }

    // 1 MiB token: refused from the frame header, clean close, and the proxy carries on.
    let (_c, outcome) = join(addr, Some(&"A".repeat(1 << 20)), "standup").await?;
    assert_eq!(outcome.code(), 4003, "1 MiB token: {outcome:?}");

    // Accepted: nbf just inside the leeway, every key type.
    let inside = with(good.clone(), "nbf", json!(t + 20));
    for (name, token) in [
        ("nbf inside leeway", hs_token(&inside)),
        ("HS256", hs_token(&good)),
        (
            "RS256",
            pem_token(Algorithm::RS256, "rsa-a", "rsa-a.key", &good),
        ),
        ("ES256", pem_token(Algorithm::ES256, "ec", "ec.key", &good)),
        ("EdDSA", pem_token(Algorithm::EdDSA, "ed", "ed.key", &good)),
    ] {
        let (_c, outcome) = join(addr, Some(&token), "standup").await?;
        let JoinOutcome::Joined(m) = outcome else {
            panic!("{name}: {outcome:?}")
        };
        assert_eq!(m["identity"], "alice", "{name}");
        assert_eq!(m["room"], "standup");
        assert_eq!(m["media"], false);
    }
    // An RS256 token naming the EC key: the key's allow-list refuses it.
    let mismatch = pem_token(Algorithm::RS256, "ec", "rsa-a.key", &good);
    assert_eq!(join_code(addr, &mismatch, "standup").await?, 4103);

    let metrics = proxy.metrics().encode();
    for reason in [
        "token_expired",
        "token_bad_signature",
        "token_algorithm_rejected",
        "token_wrong_room",
    ] {
        assert!(
            metrics.contains(&format!("proxy_auth_failures_total{{reason=\"{reason}\"}}")),
            "metrics lack {reason}:\n{metrics}"
        );
    }
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn joined_carries_identity_role_and_permissions_then_media_unavailable() -> anyhow::Result<()>
{
    let proxy = start(base_config()).await?;
    let jitsi = with(
        with(
            claims("meet.example.com", "standup"),
            "context",
            json!({"user": {"id": "u-7", "name": "Bob", "moderator": true}}),
        ),
        "permissions",
        json!({"subscribe": false}),
    );
    let (mut client, outcome) = join(proxy.addr(), Some(&hs_token(&jitsi)), "standup").await?;
    let JoinOutcome::Joined(m) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(m["identity"], "u-7");
    assert_eq!(m["tenant"], "meet.example.com");
    assert_eq!(m["name"], "Bob");
    assert_eq!(m["role"], "moderator");
    assert_eq!(
        m["permissions"],
        json!({"publish_audio": true, "publish_video": true, "publish_screen": true, "subscribe": false})
    );
    let e = client.expect("error").await?;
    assert_eq!(e["code"], "media_unavailable");
    // The session lives on: ping / pong, then leave closes with 1000.
    client.send(&json!({"type": "ping", "id": 5})).await?;
    assert_eq!(client.expect("pong").await?["id"], 5);
    client.send(&json!({"type": "leave"})).await?;
    assert_eq!(client.closed().await?.0, 1000);

    // No role: a member with the no_role permissions (default deny).
    let (_c, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("carol", "standup"))),
        "standup",
    )
    .await?;
    let JoinOutcome::Joined(m) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(m["role"], "member");
    assert_eq!(
        m["permissions"],
        json!({"publish_audio": false, "publish_video": false, "publish_screen": false, "subscribe": false})
    );
    proxy.shutdown().await;
    Ok(())
}

fn sdp(sections: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n");
    for (kind, mid, dir) in sections {
        s.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:{mid}\r\na={dir}\r\n"
        ));
    }
    s
}

#[tokio::test]
async fn member_without_screen_permission_cannot_offer_a_screen_track() -> anyhow::Result<()> {
    let proxy = start(base_config()).await?;
    let member = with(claims("dave", "standup"), "role", json!("member"));
    let (mut client, outcome) = join(proxy.addr(), Some(&hs_token(&member)), "standup").await?;
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    client.expect("error").await?; // media_unavailable
    let offer = sdp(&[
        ("audio", "0", "sendrecv"),
        ("video", "1", "sendonly"),
        ("video", "2", "sendonly"),
    ]);
    client
        .send(&json!({"type": "offer", "sdp": offer, "tracks": {"0": "microphone", "1": "camera", "2": "screen"}}))
        .await?;
    let e = client.expect("error").await?;
    assert_eq!(
        (e["code"].as_str(), e["request"].as_str()),
        (Some("forbidden"), Some("offer")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("needs publish_screen"),
        "{e}"
    );
    client.send(&json!({"type": "screen_share_start"})).await?;
    assert_eq!(client.expect("error").await?["code"], "forbidden");
    // Camera and microphone pass the policy (and then meet the missing media server).
    client
        .send(&json!({"type": "offer", "sdp": sdp(&[("audio", "0", "sendrecv"), ("video", "1", "sendonly")])}))
        .await?;
    assert_eq!(client.expect("error").await?["code"], "media_unavailable");
    // Broken SDP is a clear error, not a close.
    client
        .send(&json!({"type": "offer", "sdp": "hello"}))
        .await?;
    assert_eq!(client.expect("error").await?["code"], "bad_sdp");
    client.send(&json!({"type": "ping"})).await?;
    client.expect("pong").await?;

    // A moderator's screen offer passes the policy.
    let moderator = with(claims("erin", "standup"), "role", json!("moderator"));
    let (mut client, _) = join(proxy.addr(), Some(&hs_token(&moderator)), "standup").await?;
    client.expect("error").await?;
    client
        .send(&json!({"type": "offer", "sdp": offer, "tracks": {"2": "screen"}}))
        .await?;
    assert_eq!(client.expect("error").await?["code"], "media_unavailable");
    proxy.shutdown().await;
    Ok(())
}

/// The base config, verifying through a JWKS URL only.
fn jwks_only(url: String) -> rtcd_proxy::config::Config {
    let mut config = base_config();
    config.auth.keys.clear();
    config.auth.jwks.url = url;
    config
}

#[tokio::test]
async fn jwks_rotation_new_kid_verifies_without_restart() -> anyhow::Result<()> {
    let jwks = JwksServer::start(&["rsa-a.jwk.json", "ed.jwk.json"]).await?;
    let mut config = jwks_only(jwks.url());
    config.auth.jwks.min_refetch_seconds = 0;
    let proxy = start(config).await?;
    let good = claims("frank", "standup");
    let a = pem_token(Algorithm::RS256, "rsa-a", "rsa-a.key", &good);
    let b = pem_token(Algorithm::RS256, "rsa-b", "rsa-b.key", &good);
    assert_eq!(join_code(proxy.addr(), &a, "standup").await?, 0);
    assert_eq!(
        join_code(
            proxy.addr(),
            &pem_token(Algorithm::EdDSA, "ed", "ed.key", &good),
            "standup"
        )
        .await?,
        0
    );
    assert_eq!(
        join_code(proxy.addr(), &b, "standup").await?,
        4104,
        "rsa-b is not published yet"
    );
    // The provider rotates: rsa-b appears, rsa-a is retired.
    jwks.set(&["rsa-b.jwk.json"]);
    assert_eq!(
        join_code(proxy.addr(), &b, "standup").await?,
        0,
        "new kid after rotation"
    );
    // A forged kid still fails cleanly.
    let forged = pem_token(Algorithm::RS256, "rsa-a-forged", "rsa-b.key", &good);
    assert_eq!(join_code(proxy.addr(), &forged, "standup").await?, 4104);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn jwks_refetch_is_rate_limited_and_an_unreachable_provider_is_a_clear_error()
-> anyhow::Result<()> {
    let jwks = JwksServer::start(&["rsa-a.jwk.json"]).await?;
    let mut config = jwks_only(jwks.url());
    config.auth.jwks.min_refetch_seconds = 3600;
    let proxy = start(config).await?;
    let hits_at_start = jwks.hits();
    assert_eq!(hits_at_start, 1, "fetched once at start");
    let good = claims("gina", "standup");
    for i in 0..5 {
        let forged = pem_token(Algorithm::RS256, &format!("forged-{i}"), "rsa-b.key", &good);
        assert_eq!(join_code(proxy.addr(), &forged, "standup").await?, 4104);
    }
    assert_eq!(
        jwks.hits(),
        hits_at_start,
        "unknown kids within min_refetch_seconds do not refetch"
    );
    proxy.shutdown().await;

    // A provider that is down, with nothing cached.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dead = format!("http://{}/jwks", closed.local_addr()?);
    drop(closed);
    let mut config = jwks_only(dead);
    config.auth.jwks.fetch_timeout_seconds = 2;
    let proxy = start(config).await?;
    let token = pem_token(Algorithm::RS256, "rsa-a", "rsa-a.key", &good);
    assert_eq!(join_code(proxy.addr(), &token, "standup").await?, 4115);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn token_transports_header_and_query_only_when_enabled() -> anyhow::Result<()> {
    let token = hs_token(&claims("hank", "standup"));
    let proxy = start(base_config()).await?;
    let bearer = format!("Bearer {token}");
    let (_c, outcome) = join_with(
        proxy.addr(),
        "",
        &[("authorization", &bearer)],
        None,
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0, "Authorization header: {outcome:?}");
    let query = format!("?jwt={token}");
    let (_c, outcome) = join_with(proxy.addr(), &query, &[], None, "standup").await?;
    match outcome {
        JoinOutcome::Refused(4100, _, Some(detail)) => {
            assert!(detail.contains("disabled"), "{detail}")
        }
        other => panic!("query token must be off by default: {other:?}"),
    }
    proxy.shutdown().await;

    let mut config = base_config();
    config.auth.allow_query_token = true;
    let proxy = start(config).await?;
    let (_c, outcome) = join_with(proxy.addr(), &query, &[], None, "standup").await?;
    assert_eq!(outcome.code(), 0, "query token when enabled: {outcome:?}");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn protocol_violations_and_limits_close_with_their_codes() -> anyhow::Result<()> {
    let mut config = base_config();
    config.limits.message_burst = 5;
    config.limits.messages_per_second = 1;
    config.limits.join_timeout_seconds = 1;
    config.limits.max_sessions_per_user = 1;
    let proxy = start(config).await?;
    let addr = proxy.addr();
    let token = hs_token(&with(claims("ivan", "standup"), "role", json!("member")));

    // Not JSON / unknown type / message before join / bad room.
    for text in [
        "{nope",
        r#"{"type":"teleport"}"#,
        r#"{"type":"ping"}"#,
        r#"{"type":"join","room":"a b","token":"x"}"#,
    ] {
        let mut c = Client::connect(addr, "", &[]).await?;
        c.send_text(text.into()).await?;
        assert_eq!(c.closed().await?.0, 4000, "{text}");
    }
    // Join timeout.
    let mut c = Client::connect(addr, "", &[]).await?;
    let (code, reason, _) = c.closed().await?;
    assert_eq!((code, reason.as_str()), (4001, "join_timeout"));

    // Oversized message after join (64 KiB limit).
    let (mut c, outcome) = join(addr, Some(&token), "standup").await?;
    assert_eq!(outcome.code(), 0);
    // One session per user: a second one is refused while the first lives.
    assert_eq!(join_code(addr, &token, "standup").await?, 4007);
    let big = json!({"type": "offer", "sdp": "v=0\r\n".to_string() + &"a=x\r\n".repeat(20_000)});
    c.send(&big).await?;
    assert_eq!(c.closed().await?.0, 4003);
    // The slot was released with the session.
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Message rate: a burst of 5, then refused.
    let (mut c, outcome) = join(addr, Some(&token), "standup").await?;
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    for _ in 0..20 {
        if c.send(&json!({"type": "ping"})).await.is_err() {
            break;
        }
    }
    let (code, _, seen) = c.closed().await?;
    assert_eq!(code, 4004, "rate limited after {seen:?}");
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn failed_auth_and_connection_rates_per_address() -> anyhow::Result<()> {
    let mut config = base_config();
    config.limits.failed_auth_burst = 2;
    config.limits.failed_auth_per_minute = 1;
    let proxy = start(config).await?;
    let good = hs_token(&claims("judy", "standup"));
    assert_eq!(join_code(proxy.addr(), "garbage", "standup").await?, 4101);
    assert_eq!(join_code(proxy.addr(), "garbage", "standup").await?, 4101);
    // Now even a good token is refused before verification.
    assert_eq!(join_code(proxy.addr(), &good, "standup").await?, 4006);
    proxy.shutdown().await;

    let mut config = base_config();
    config.limits.connection_burst = 2;
    config.limits.connections_per_minute = 1;
    let proxy = start(config).await?;
    assert_eq!(join_code(proxy.addr(), &good, "standup").await?, 0);
    assert_eq!(join_code(proxy.addr(), &good, "standup").await?, 0);
    let mut c = Client::connect(proxy.addr(), "", &[]).await?;
    assert_eq!(c.closed().await?.0, 4005);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn expiry_policy_refresh_then_expired_close() -> anyhow::Result<()> {
    let mut config = base_config();
    config.auth.leeway_seconds = 0;
    config.auth.refresh_warning_seconds = 2;
    let proxy = start(config).await?;
    let t = now();
    let short = with(claims("kim", "standup"), "exp", json!(t + 3));
    // Refreshed in time: the session continues with the new expiry.
    let (mut c, outcome) = join(proxy.addr(), Some(&hs_token(&short)), "standup").await?;
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    c.expect("error").await?; // media_unavailable
    let warning = c.expect("token_expiring").await?;
    assert_eq!(warning["expires_at"], t + 3);
    // A refresh for someone else is refused, the session stays.
    c.send(&json!({"type": "refresh", "token": hs_token(&claims("mallory", "standup"))}))
        .await?;
    assert_eq!(c.expect("error").await?["code"], "token_identity_mismatch");
    let renewed = with(claims("kim", "standup"), "exp", json!(t + 600));
    c.send(&json!({"type": "refresh", "token": hs_token(&renewed)}))
        .await?;
    assert_eq!(c.expect("refreshed").await?["expires_at"], t + 600);

    // Not refreshed: closed with the expired code once the token runs out.
    let (mut other, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&with(
            claims("lee", "standup"),
            "exp",
            json!(now() + 3),
        ))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    let (code, reason, seen) = other.closed().await?;
    assert_eq!((code, reason.as_str()), (4106, "token_expired"), "{seen:?}");
    assert!(seen.iter().any(|m| m["type"] == "token_expiring"));
    // The refreshed session outlived its first token.
    c.send(&json!({"type": "ping", "id": 1})).await?;
    assert_eq!(c.expect("pong").await?["id"], 1);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn cli_minted_token_joins_and_explain_says_why_not() -> anyhow::Result<()> {
    use rtcd_proxy::auth::Verifier;
    use rtcd_proxy::cli::{MintArgsRef, explain_report, mint_token};
    let config = base_config();
    let proxy = start(config.clone()).await?;
    let perms = vec!["publish_screen=true".to_string()];
    let args = MintArgsRef {
        room: Some("standup"),
        user: Some("mona"),
        role: Some("member"),
        ttl: "15m",
        alg: "RS256",
        permissions: &perms,
        ..Default::default()
    };
    let token = mint_token(&config, &args, now()).map_err(anyhow::Error::msg)?;
    let (_c, outcome) = join(proxy.addr(), Some(&token), "standup").await?;
    let JoinOutcome::Joined(m) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(m["permissions"]["publish_screen"], true);
    let rsa_key = fixture("rsa-a.key");
    let rs = MintArgsRef {
        kid: Some("rsa-a"),
        private_key: Some(&rsa_key),
        ..args
    };
    let rs_token = mint_token(&config, &rs, now()).map_err(anyhow::Error::msg)?;
    assert_eq!(join_code(proxy.addr(), &rs_token, "standup").await?, 0);
    proxy.shutdown().await;

    let verifier =
        Verifier::new(&config.auth, config.limits.max_token_bytes).map_err(anyhow::Error::msg)?;
    let (report, ok) = explain_report(&verifier, &token, None, now()).await;
    assert!(ok && report.contains("VALID for room standup"), "{report}");
    let (report, ok) = explain_report(&verifier, &token, None, now() + 3600).await;
    assert!(
        !ok && report.contains("4106") && report.contains("token_expired"),
        "{report}"
    );
    let (report, ok) = explain_report(&verifier, &token, Some("other"), now()).await;
    assert!(!ok && report.contains("token_wrong_room"), "{report}");
    let (report, ok) = explain_report(&verifier, "garbage", Some("standup"), now()).await;
    assert!(!ok && report.contains("token_malformed"), "{report}");
    Ok(())
}

#[tokio::test]
async fn health_metrics_and_graceful_drain() -> anyhow::Result<()> {
    let proxy = start(base_config()).await?;
    let http = reqwest::Client::new();
    let ready = http
        .get(format!("http://{}/readyz", proxy.addr()))
        .send()
        .await?;
    assert_eq!(ready.status(), 200);
    // Issue 16 #13: JSON, as rtcd answers.
    assert_eq!(ready.json::<Value>().await?, json!({"status": "ready"}));
    let healthz = http
        .get(format!("http://{}/healthz", proxy.addr()))
        .send()
        .await?;
    assert_eq!(healthz.status(), 200);
    assert_eq!(healthz.json::<Value>().await?, json!({"status": "ok"}));
    let plain = http
        .get(format!("http://{}/ws", proxy.addr()))
        .send()
        .await?;
    assert_eq!(plain.status(), 400, "/ws without an upgrade");
    let (mut c, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("nina", "standup"))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    c.send(&json!({"type": "ping"})).await?;
    c.expect("error").await?;
    c.expect("pong").await?;
    let metrics_addr = proxy.metrics_addr().expect("metrics listener");
    let text = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(text.contains("proxy_connections 1"), "{text}");
    assert!(text.contains("proxy_sessions 1"), "{text}");
    assert!(
        text.contains(r#"proxy_messages_total{direction="in",kind="ping"} 1"#),
        "{text}"
    );
    let drain = tokio::spawn(proxy.shutdown());
    let (code, reason, _) = c.closed().await?;
    assert_eq!((code, reason.as_str()), (1001, "going_away"));
    tokio::time::timeout(Duration::from_secs(10), drain).await??;
    Ok(())
}

#[tokio::test]
async fn wss_when_a_certificate_is_configured() -> anyhow::Result<()> {
    let mut config = base_config();
    config.server.tls_cert_file = fixture("tls-server.pem").display().to_string();
    config.server.tls_key_file = fixture("tls-server.key").display().to_string();
    let proxy = start(config).await?;
    let mut client = Client::connect_tls(proxy.addr(), &fixture("tls-ca.pem")).await?;
    client
        .send(&json!({"type": "join", "room": "standup", "token": hs_token(&claims("olga", "standup"))}))
        .await?;
    assert_eq!(client.expect("joined").await?["identity"], "olga");
    // Plain ws:// to a TLS listener does not get a session.
    assert!(Client::connect(proxy.addr(), "", &[]).await.is_err());
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn silent_connection_is_closed_for_idleness() -> anyhow::Result<()> {
    let mut config = base_config();
    config.limits.ping_interval_seconds = 1;
    config.limits.idle_timeout_seconds = 2;
    let proxy = start(config).await?;
    let (mut client, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("pia", "standup"))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    // Not reading means not answering the proxy's pings either.
    client.stay_silent(Duration::from_millis(3500)).await;
    let (code, reason, _) = client.closed().await?;
    assert_eq!((code, reason.as_str()), (4002, "idle_timeout"));
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn relay_seam_forwards_only_authorized_messages_and_reports_a_lost_media_server()
-> anyhow::Result<()> {
    use rtcd_proxy::policy::TrackSource;
    use rtcd_proxy::protocol::{Identity, Participant};
    use rtcd_proxy::relay::{RelayCommand, RelayEvent};
    let (relay, mut joins) = rtcd_e2e::relay::ScriptedRelay::start();
    let proxy = start_with_relay(base_config(), Some(relay)).await?;
    let member = with(claims("quinn", "standup"), "role", json!("member"));
    let (mut client, outcome) = join(proxy.addr(), Some(&hs_token(&member)), "standup").await?;
    let JoinOutcome::Joined(m) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(m["media"], true);
    let mut far = tokio::time::timeout(STEP, joins.recv())
        .await?
        .expect("relay join");
    assert_eq!(far.request.grant.identity.as_str(), "quinn");
    assert!(
        far.request.grant.permissions.publish_video
            && !far.request.grant.permissions.publish_screen
    );

    // A forbidden offer never reaches the relay; an allowed one does, with its sources.
    let screen = sdp(&[("video", "0", "sendonly")]);
    client
        .send(&json!({"type": "offer", "sdp": screen, "tracks": {"0": "screen"}}))
        .await?;
    assert_eq!(client.expect("error").await?["code"], "forbidden");
    let camera = sdp(&[("audio", "0", "sendrecv"), ("video", "1", "sendonly")]);
    client
        .send(&json!({"type": "offer", "sdp": camera, "tracks": {"1": "camera"}}))
        .await?;
    client
        .send(&json!({"type": "candidate", "candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}))
        .await?;
    client
        .send(&json!({"type": "mute", "source": "microphone"}))
        .await?;
    let first = tokio::time::timeout(STEP, far.commands.recv())
        .await?
        .expect("command");
    assert_eq!(
        first,
        RelayCommand::Offer {
            sdp: camera.clone(),
            tracks: [("1".to_string(), TrackSource::Camera)]
                .into_iter()
                .collect()
        },
        "the forbidden offer was not relayed before it"
    );
    let RelayCommand::Candidate(c) = tokio::time::timeout(STEP, far.commands.recv())
        .await?
        .expect("candidate")
    else {
        panic!("expected a candidate")
    };
    assert_eq!(
        (c.sdp_mid.as_deref(), c.sdp_mline_index),
        (Some("0"), Some(0))
    );
    assert_eq!(
        tokio::time::timeout(STEP, far.commands.recv()).await?,
        Some(RelayCommand::Mute {
            source: TrackSource::Microphone,
            muted: true
        })
    );

    // Media server events reach the client in protocol form.
    far.events
        .send(RelayEvent::Answer("v=0\r\n".into()))
        .await?;
    far.events
        .send(RelayEvent::ParticipantJoined(Participant {
            identity: Identity::new("rita"),
            name: None,
            role: Some(rtcd_proxy::policy::Role::Guest),
        }))
        .await?;
    far.events
        .send(RelayEvent::VoiceActivity(vec![Identity::new("rita")]))
        .await?;
    assert_eq!(client.expect("answer").await?["sdp"], "v=0\r\n");
    assert_eq!(
        client.expect("participant_joined").await?["participant"],
        json!({"identity": "rita", "role": "guest"})
    );
    assert_eq!(
        client.expect("voice_activity").await?["speakers"],
        json!(["rita"])
    );

    // The media server goes away: the client is told and the connection closes with 4008.
    drop(far.events);
    let (code, reason, seen) = client.closed().await?;
    assert_eq!((code, reason.as_str()), (4008, "media_server_lost"));
    assert!(
        seen.iter().any(|m| m["type"] == "media_server_lost"),
        "{seen:?}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// A proxy with a scripted media server and one joined client (`claims`), with its far end.
async fn scripted_session(
    claims: &Value,
) -> anyhow::Result<(Proxy, Client, rtcd_e2e::relay::FarEnd)> {
    let (relay, mut joins) = rtcd_e2e::relay::ScriptedRelay::start();
    let proxy = start_with_relay(base_config(), Some(relay)).await?;
    let (client, outcome) = join(proxy.addr(), Some(&hs_token(claims)), "standup").await?;
    let JoinOutcome::Joined(m) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(m["media"], true);
    let far = tokio::time::timeout(STEP, joins.recv())
        .await?
        .expect("relay join");
    Ok((proxy, client, far))
}

#[tokio::test]
async fn negotiation_needed_participants_and_track_mids_reach_the_client() -> anyhow::Result<()> {
    use rtcd_proxy::policy::TrackSource;
    use rtcd_proxy::protocol::{Identity, Participant};
    use rtcd_proxy::relay::RelayEvent;
    let (proxy, mut client, far) = scripted_session(&claims("uma", "standup")).await?;
    // A listener who publishes nothing is announced like anyone else.
    far.send(RelayEvent::ParticipantJoined(Participant {
        identity: Identity::new("vic"),
        name: Some("Vic".into()),
        role: None,
    }))
    .await?;
    far.send(RelayEvent::NegotiationNeeded { audio: 2, video: 1 })
        .await?;
    far.send(RelayEvent::Answer("v=0\r\n".into())).await?;
    far.send(RelayEvent::TrackPublished {
        identity: Identity::new("vic"),
        track_id: "s2-audio-1".into(),
        source: TrackSource::ScreenAudio,
        mid: "3".into(),
    })
    .await?;
    far.send(RelayEvent::TrackUnpublished {
        identity: Identity::new("vic"),
        track_id: "s2-audio-1".into(),
    })
    .await?;
    far.send(RelayEvent::ParticipantLeft(Identity::new("vic")))
        .await?;
    assert_eq!(
        client.expect("participant_joined").await?,
        json!({"type": "participant_joined", "participant": {"identity": "vic", "name": "Vic"}})
    );
    assert_eq!(
        client.expect("negotiation_needed").await?,
        json!({"type": "negotiation_needed", "audio": 2, "video": 1})
    );
    client.expect("answer").await?;
    assert_eq!(
        client.expect("track_published").await?,
        json!({"type": "track_published", "identity": "vic", "track_id": "s2-audio-1", "source": "screen_audio", "mid": "3"})
    );
    assert_eq!(
        client.expect("track_unpublished").await?,
        json!({"type": "track_unpublished", "identity": "vic", "track_id": "s2-audio-1"})
    );
    assert_eq!(
        client.expect("participant_left").await?,
        json!({"type": "participant_left", "identity": "vic"})
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_answer_is_refused_with_bad_message_and_the_session_continues() -> anyhow::Result<()> {
    use rtcd_proxy::relay::RelayCommand;
    let member = with(claims("wes", "standup"), "role", json!("member"));
    let (proxy, mut client, mut far) = scripted_session(&member).await?;
    client
        .send(&json!({"type": "answer", "sdp": sdp(&[("audio", "0", "recvonly")])}))
        .await?;
    let error = client.expect("error").await?;
    assert_eq!(
        (&error["code"], &error["request"]),
        (&json!("bad_message"), &json!("answer"))
    );
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("negotiation_needed")),
        "{error}"
    );
    // Not relayed, and the session goes on: the next offer is the first relayed command.
    let offer = sdp(&[("audio", "0", "recvonly")]);
    client.send(&json!({"type": "offer", "sdp": offer})).await?;
    assert_eq!(
        far.command(STEP).await?,
        RelayCommand::Offer {
            sdp: offer,
            tracks: Default::default()
        }
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn screen_audio_is_offered_and_muted_as_its_own_source() -> anyhow::Result<()> {
    use rtcd_proxy::policy::TrackSource;
    use rtcd_proxy::relay::RelayCommand;
    let moderator = with(claims("xia", "standup"), "role", json!("moderator"));
    let (proxy, mut client, mut far) = scripted_session(&moderator).await?;
    client.send(&json!({"type": "screen_share_start"})).await?;
    let offer = sdp(&[("video", "0", "sendonly"), ("audio", "1", "sendonly")]);
    client
        .send(
            &json!({"type": "offer", "sdp": offer, "tracks": {"0": "screen", "1": "screen_audio"}}),
        )
        .await?;
    client
        .send(&json!({"type": "mute", "source": "screen_audio"}))
        .await?;
    client.send(&json!({"type": "screen_share_stop"})).await?;
    assert_eq!(far.command(STEP).await?, RelayCommand::ScreenShare(true));
    assert_eq!(
        far.command(STEP).await?,
        RelayCommand::Offer {
            sdp: offer,
            tracks: [
                ("0".to_string(), TrackSource::Screen),
                ("1".to_string(), TrackSource::ScreenAudio)
            ]
            .into_iter()
            .collect()
        }
    );
    assert_eq!(
        far.command(STEP).await?,
        RelayCommand::Mute {
            source: TrackSource::ScreenAudio,
            muted: true
        }
    );
    assert_eq!(far.command(STEP).await?, RelayCommand::ScreenShare(false));
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_refresh_with_other_permissions_updates_the_media_server() -> anyhow::Result<()> {
    use rtcd_proxy::relay::RelayCommand;
    let member = with(claims("yan", "standup"), "role", json!("member"));
    let (proxy, mut client, mut far) = scripted_session(&member).await?;
    assert!(far.request.grant.permissions.publish_video);
    let narrower = with(member, "permissions", json!({"publish_video": false}));
    client
        .send(&json!({"type": "refresh", "token": hs_token(&narrower)}))
        .await?;
    assert_eq!(
        client.expect("refreshed").await?["permissions"]["publish_video"],
        false
    );
    // First the new token's identity for revocation checks, then the new grant.
    let RelayCommand::Token { issued_at, .. } = far.command(STEP).await? else {
        panic!("a refresh tells the media server which token the session now holds")
    };
    assert_eq!(issued_at, narrower["iat"].as_i64());
    let RelayCommand::UpdateGrant(grant) = far.command(STEP).await? else {
        panic!("a refresh is relayed as a grant update")
    };
    assert!(!grant.permissions.publish_video && grant.permissions.publish_audio);
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_media_connection_closes_4010_and_a_lost_server_4008() -> anyhow::Result<()> {
    use rtcd_proxy::relay::RelayEvent;
    let (relay, mut joins) = rtcd_e2e::relay::ScriptedRelay::start();
    let proxy = start_with_relay(base_config(), Some(relay)).await?;
    for (who, reason, want) in [
        (
            "zed",
            Some("peer connection failed"),
            (4010, "media_connection_failed"),
        ),
        ("zoe", Some("shutdown"), (4008, "media_server_lost")),
        ("zia", None, (4008, "media_server_lost")),
    ] {
        let (mut client, outcome) = join(
            proxy.addr(),
            Some(&hs_token(&claims(who, "standup"))),
            "standup",
        )
        .await?;
        assert_eq!(outcome.code(), 0, "{outcome:?}");
        let far = tokio::time::timeout(STEP, joins.recv())
            .await?
            .expect("relay join");
        match reason {
            Some(reason) => {
                far.send(RelayEvent::Closed {
                    reason: reason.into(),
                })
                .await?
            }
            None => drop(far),
        }
        let (code, label, seen) = client.closed().await?;
        assert_eq!((code, label.as_str()), want, "{who}: {seen:?}");
        if want.0 == 4010 {
            // The client is told its own connection failed, not that the server is gone.
            let error = seen
                .iter()
                .find(|m| m["type"] == "error")
                .expect("an error before the close");
            assert_eq!(error["code"], "media_connection_failed");
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("your media connection")
                    && message.contains("media server is fine"),
                "{message}"
            );
            assert!(!seen.iter().any(|m| m["type"] == "media_server_lost"));
        } else {
            assert!(
                seen.iter().any(|m| m["type"] == "media_server_lost"),
                "{seen:?}"
            );
        }
    }
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_closes_total{reason="media_connection_failed"} 1"#),
        "{metrics}"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn leave_is_relayed_before_the_media_link_closes() -> anyhow::Result<()> {
    use rtcd_proxy::relay::RelayCommand;
    let (proxy, mut client, mut far) = scripted_session(&claims("abe", "standup")).await?;
    client.send(&json!({"type": "leave"})).await?;
    let (code, _, _) = client.closed().await?;
    assert_eq!(code, 1000);
    assert_eq!(far.command(STEP).await?, RelayCommand::Leave);
    assert!(
        far.command(STEP).await.is_err(),
        "nothing after Leave; the link then closes"
    );
    proxy.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_that_stops_reading_is_dropped_not_waited_on() -> anyhow::Result<()> {
    use rtcd_proxy::relay::RelayEvent;
    let (relay, mut joins) = rtcd_e2e::relay::ScriptedRelay::start();
    let mut config = base_config();
    config.limits.send_timeout_seconds = 1;
    let proxy = start_with_relay(config, Some(relay)).await?;
    let (client, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("sam", "standup"))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    let far = tokio::time::timeout(STEP, joins.recv())
        .await?
        .expect("relay join");
    // The media server keeps sending; the client never reads. Socket buffers fill, a write
    // stalls past the send timeout, and the session ends (its relay link is dropped).
    let big = format!("v=0\r\n{}", "a=x-filler\r\n".repeat(4000));
    let flood = async {
        loop {
            if far
                .events
                .send(RelayEvent::Answer(big.clone()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .map_err(|_| anyhow::anyhow!("the session never gave up on a client that does not read"))?;
    let metrics = proxy.metrics().encode();
    assert!(
        metrics.contains(r#"proxy_closes_total{reason="slow_client"} 1"#),
        "{metrics}"
    );
    drop(client);
    proxy.shutdown().await;
    Ok(())
}

/// Log output captured from the current thread (the test's current-thread runtime runs the
/// proxy's tasks there too).
#[derive(Clone, Default)]
pub(crate) struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures this thread's events that pass `filter`, in the daemons' text format
    /// (`rtcd_kit::logging::init` without JSON), until the guard drops.
    pub(crate) fn install(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_and_secrets_never_reach_the_logs() -> anyhow::Result<()> {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let config = base_config();
    tracing::info!(?config, "as `serve` logs it at start");
    let proxy = start(config).await?;
    let good = hs_token(&claims("tess", "standup"));
    let expired = hs_token(&with(claims("tess", "standup"), "exp", json!(now() - 3600)));
    let (mut c, outcome) = join(proxy.addr(), Some(&good), "standup").await?;
    assert_eq!(outcome.code(), 0);
    c.send(&json!({"type": "refresh", "token": expired}))
        .await?;
    assert_eq!(c.expect("error").await?["code"], "media_unavailable");
    assert_eq!(c.expect("error").await?["code"], "token_expired");
    let bearer = format!("Bearer {good}");
    let (_c, outcome) = join_with(
        proxy.addr(),
        "",
        &[("authorization", &bearer)],
        None,
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    assert_eq!(join_code(proxy.addr(), &expired, "standup").await?, 4106);
    proxy.shutdown().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("joined") && text.contains("join refused"),
        "the audit lines are there:\n{text}"
    );
    for (what, secret) in [
        ("token", good.as_str()),
        ("expired token", expired.as_str()),
        ("HS secret", HS_SECRET),
    ] {
        assert!(!text.contains(secret), "the {what} reached the logs");
        // Not even its signature part.
        let tail = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(tail), "part of the {what} reached the logs");
    }
    Ok(())
}

#[tokio::test]
async fn handshake_errors_are_clear_http_answers() -> anyhow::Result<()> {
    let proxy = start(base_config()).await?;
    let http = reqwest::Client::new();
    let url = format!("http://{}/ws", proxy.addr());
    let post = http.post(&url).send().await?;
    assert_eq!(post.status(), 405);
    // Issue 16 #13: rtcd's error shape, `code` the status as a string.
    let body: Value = post.json().await?;
    assert_eq!(body["code"], "405", "{body}");
    assert!(body["error"].is_string(), "{body}");
    let wrong_version = http
        .get(&url)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(wrong_version.status(), 426);
    assert_eq!(wrong_version.headers()["sec-websocket-version"], "13");
    let no_key = http
        .get(&url)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await?;
    assert_eq!(no_key.status(), 400);
    let nope = http
        .get(format!("http://{}/nope", proxy.addr()))
        .send()
        .await?;
    assert_eq!(nope.status(), 404);
    assert_eq!(nope.json::<Value>().await?["code"], "404");
    proxy.shutdown().await;
    Ok(())
}

const PROXY_BIN: &str = env!("CARGO_BIN_EXE_proxy-under-test");

fn run_cli(args: &[&str], env: &[(String, String)]) -> anyhow::Result<(i32, String, String)> {
    let out = std::process::Command::new(PROXY_BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test]
async fn binary_token_commands_and_sigterm_drain() -> anyhow::Result<()> {
    let env = process_env();
    let (code, token, err) = run_cli(
        &[
            "token", "--room", "standup", "--user", "uma", "--role", "guest", "--ttl", "10m",
        ],
        &env,
    )?;
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_owned();
    let (code, report, _) = run_cli(&["token", "explain", &token], &env)?;
    assert_eq!(code, 0, "{report}");
    assert!(
        report.contains("VALID for room standup") && report.contains("role guest"),
        "{report}"
    );
    let (code, report, _) = run_cli(&["token", "explain", &token, "--room", "other"], &env)?;
    assert_eq!(code, 1);
    assert!(
        report.contains("4111") && report.contains("token_wrong_room"),
        "{report}"
    );
    let mut bad = env.clone();
    bad.push(("PROXY_AUTH_LEEWAY_SECONDS".into(), "soon".into()));
    let (code, _, err) = run_cli(&["token", "explain", &token], &bad)?;
    assert_eq!(code, 64);
    assert!(err.contains("PROXY_AUTH_LEEWAY_SECONDS"), "{err}");

    // serve, then SIGTERM: the session is told to go away and the process exits cleanly.
    let (mut child, addr) = spawn_process(PROXY_BIN, &env)?;
    let (mut client, outcome) = join(addr, Some(&token), "standup").await?;
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let (code, reason, _) = client.closed().await?;
    assert_eq!((code, reason.as_str()), (1001, "going_away"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = child.try_wait()? {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    Ok(())
}

#[tokio::test]
async fn jwks_file_is_reread_on_an_unknown_kid() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&["rsa-a.jwk.json"]))?;
    let mut config = base_config();
    config.auth.keys.clear();
    config.auth.jwks.file = file.display().to_string();
    config.auth.jwks.min_refetch_seconds = 0;
    let proxy = start(config).await?;
    let good = claims("vera", "standup");
    let a = pem_token(Algorithm::RS256, "rsa-a", "rsa-a.key", &good);
    let b = pem_token(Algorithm::RS256, "rsa-b", "rsa-b.key", &good);
    assert_eq!(join_code(proxy.addr(), &a, "standup").await?, 0);
    assert_eq!(join_code(proxy.addr(), &b, "standup").await?, 4104);
    std::fs::write(&file, jwks(&["rsa-a.jwk.json", "rsa-b.jwk.json"]))?;
    assert_eq!(join_code(proxy.addr(), &b, "standup").await?, 0);
    // A broken file (re-read because of an unknown kid) keeps the last good keys.
    std::fs::write(&file, "{not json")?;
    let forged = pem_token(Algorithm::RS256, "rsa-c", "rsa-b.key", &good);
    assert_eq!(join_code(proxy.addr(), &forged, "standup").await?, 4104);
    assert_eq!(join_code(proxy.addr(), &a, "standup").await?, 0);
    assert_eq!(join_code(proxy.addr(), &b, "standup").await?, 0);
    proxy.shutdown().await;
    Ok(())
}

/// Issue 16 #3: a text frame that is not UTF-8 gets the `error` that §6 promises before
/// every close, then 4000, before and after `join`.
#[tokio::test]
async fn invalid_utf8_text_frame_gets_an_error_before_the_close() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let proxy = start(base_config()).await?;
    let token = hs_token(&claims("uma", "standup"));
    let bad = || Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let mut before = Client::connect(proxy.addr(), "", &[]).await?;
    before.send_frame(bad()).await?;
    let (joined, outcome) = join(proxy.addr(), Some(&token), "standup").await?;
    assert_eq!(outcome.code(), 0);
    let mut after = joined;
    after.expect("error").await?; // media_unavailable
    after.send_frame(bad()).await?;
    for (when, c) in [("before join", &mut before), ("after join", &mut after)] {
        let (code, reason, seen) = c.closed().await?;
        assert_eq!((code, reason.as_str()), (4000, "bad_message"), "{when}");
        let error = seen
            .last()
            .unwrap_or_else(|| panic!("{when}: no error before the close"));
        assert_eq!(error["type"], "error", "{when}: {seen:?}");
        assert_eq!(error["code"], "bad_message", "{when}: {seen:?}");
        assert!(
            error["message"].as_str().unwrap_or("").contains("UTF-8"),
            "{when}: {error}"
        );
    }
    proxy.shutdown().await;
    Ok(())
}

/// Issue 16 #4: an oversized message sent in fragments (1 MiB in 16 KiB frames) gets the same
/// 4003 close as one oversized frame, every time, not a reset.
#[tokio::test]
async fn fragmented_oversized_message_closes_4003_every_time() -> anyhow::Result<()> {
    let proxy = start(base_config()).await?;
    let token = hs_token(&with(claims("vic", "standup"), "role", json!("member")));
    for run in 0..10 {
        let before_join = run % 2 == 0;
        let mut c = if before_join {
            Client::connect(proxy.addr(), "", &[]).await?
        } else {
            let (mut c, outcome) = join(proxy.addr(), Some(&token), "standup").await?;
            assert_eq!(outcome.code(), 0, "run {run}: {outcome:?}");
            c.expect("error").await?; // media_unavailable
            c
        };
        // Paced, so the proxy has refused the message long before the last fragment.
        let sent = c
            .send_fragmented(1 << 20, 16 << 10, Duration::from_millis(2))
            .await;
        let (code, reason, seen) = c.closed().await.map_err(|e| {
            anyhow::anyhow!("run {run} (before join: {before_join}, {sent} fragments sent): {e}")
        })?;
        assert_eq!(
            (code, reason.as_str()),
            (4003, "message_too_large"),
            "run {run}: {seen:?}"
        );
        // A client that reports a failed write as a reset (browsers do) must not see one:
        // the proxy reads (and discards) the rest of the message before it lets go.
        assert_eq!(
            sent, 64,
            "run {run} (before join: {before_join}): the connection was reset after {sent} fragments"
        );
        assert_eq!(
            seen.last().map(|m| &m["code"]),
            Some(&json!("message_too_large"))
        );
        drop(c);
        // The session's slot is released before the next run's join.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.shutdown().await;
    Ok(())
}

/// Issue 16 #5: refused `refresh` tokens count against their session, not the address, so
/// one session cannot lock everybody behind the same NAT out of joining; the session itself
/// is closed after [`rtcd_proxy::session::MAX_REFUSED_REFRESHES`] refusals.
#[tokio::test]
async fn refused_refreshes_count_per_session_not_per_address() -> anyhow::Result<()> {
    let mut config = base_config();
    config.limits.failed_auth_burst = 2;
    config.limits.failed_auth_per_minute = 1;
    let proxy = start(config).await?;
    let (mut c, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("walt", "standup"))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0);
    c.expect("error").await?; // media_unavailable
    let foreign = hs_token(&claims("mallory", "standup"));
    for _ in 0..2 {
        c.send(&json!({"type": "refresh", "token": foreign}))
            .await?;
        assert_eq!(c.expect("error").await?["code"], "token_identity_mismatch");
    }
    // Somebody else at the same address still joins.
    let (_other, outcome) = join(
        proxy.addr(),
        Some(&hs_token(&claims("xena", "standup"))),
        "standup",
    )
    .await?;
    assert_eq!(outcome.code(), 0, "{outcome:?}");
    // The third refusal ends the refreshing session.
    c.send(&json!({"type": "refresh", "token": "garbage"}))
        .await?;
    let (code, reason, seen) = c.closed().await?;
    assert_eq!(
        (code, reason.as_str()),
        (4006, "too_many_auth_failures"),
        "{seen:?}"
    );
    assert_eq!(seen[0]["code"], "token_malformed", "{seen:?}");
    assert!(
        seen.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("refresh"),
        "{seen:?}"
    );
    // Bad joins still count per address.
    assert_eq!(join_code(proxy.addr(), "garbage", "standup").await?, 4101);
    assert_eq!(join_code(proxy.addr(), "garbage", "standup").await?, 4101);
    assert_eq!(
        join_code(
            proxy.addr(),
            &hs_token(&claims("yuri", "standup")),
            "standup"
        )
        .await?,
        4006
    );
    proxy.shutdown().await;
    Ok(())
}

/// Issue 16 #6: every join refusal (4006 included) and every refresh outcome is on the
/// `audit` target, as the sample config says.
#[tokio::test]
async fn audit_target_has_rate_limited_joins_and_refresh_outcomes() -> anyhow::Result<()> {
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("off,audit=info")
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut config = base_config();
    config.limits.failed_auth_burst = 1;
    config.limits.failed_auth_per_minute = 1;
    config.limits.max_sessions_per_user = 1;
    let proxy = start(config).await?;
    let zoe = hs_token(&claims("zoe", "standup"));
    let (mut c, outcome) = join(proxy.addr(), Some(&zoe), "standup").await?;
    assert_eq!(outcome.code(), 0);
    c.expect("error").await?; // media_unavailable
    assert_eq!(join_code(proxy.addr(), &zoe, "standup").await?, 4007);
    c.send(&json!({"type": "refresh", "token": hs_token(&claims("zoe", "standup"))}))
        .await?;
    c.expect("refreshed").await?;
    assert_eq!(join_code(proxy.addr(), "garbage", "standup").await?, 4101);
    assert_eq!(join_code(proxy.addr(), &zoe, "standup").await?, 4006);
    c.send(&json!({"type": "refresh", "token": hs_token(&claims("eve", "standup"))}))
        .await?;
    assert_eq!(c.expect("error").await?["code"], "token_identity_mismatch");
    proxy.shutdown().await;
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("joined"), 1, "{text}");
    assert_eq!(lines("reason=\"too_many_sessions\""), 1, "{text}");
    assert_eq!(lines("reason=\"token_malformed\""), 1, "{text}");
    assert_eq!(lines("reason=\"too_many_auth_failures\""), 1, "{text}");
    assert_eq!(lines("refresh token verified"), 1, "{text}");
    assert_eq!(lines("refresh refused"), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("refresh refused") && l.contains("token_identity_mismatch")),
        "{text}"
    );
    Ok(())
}

/// A start that fails late (the metrics port is taken) leaves nothing serving: its public port
/// accepts no connection and is free for the corrected start (issue 16 #9).
#[tokio::test]
async fn a_failed_start_leaves_no_listener_serving() -> anyhow::Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let public = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?
    };
    let mut config = base_config();
    config.server.listen_address = public.to_string();
    config.server.metrics_listen_address = taken.local_addr()?.to_string();
    let failed = start(config).await;
    let error = format!(
        "{:#}",
        anyhow::Context::context(failed.err(), "the metrics port is taken")?
    );
    assert!(error.contains(&taken.local_addr()?.to_string()), "{error}");
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "the failed start left its public listener serving"
    );
    let mut config = base_config();
    config.server.listen_address = public.to_string();
    let proxy = start(config).await?;
    assert_eq!(proxy.addr(), public);
    proxy.shutdown().await;
    Ok(())
}
