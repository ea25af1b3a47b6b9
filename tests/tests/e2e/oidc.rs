//! The proxy against a real OpenID Connect provider (npm `oidc-provider` under node, see
//! `tests/oidc/provider.mjs`): discovery, the provider's own tokens over every signing
//! algorithm, roles mapped from Keycloak-shaped claims, the audience and room rules, key
//! rotation during a call with real media through rtcd, and a provider that is down at start
//! or goes away later. Every test skips (with a message) only when node or npm is missing.

use std::time::{Duration, Instant};

use rtcd_e2e::daemon::TestRtcd;
use rtcd_e2e::media::{Participant, keeps_flowing};
use rtcd_e2e::oidc::{self, KEYCLOAK_ACCOUNT, OTHER_API, Provider, proxy_resource};
use rtcd_e2e::proxy::{Client, JoinOutcome, STEP, fixture, join, now, sign};
use rtcd_proxy::Proxy;
use rtcd_proxy::config::{Config, OidcRolesConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A proxy config trusting only the provider at `issuer`, mapped like a Keycloak realm:
/// realm roles `rtc-moderator` / `rtc-member`, client role `moderator` of `rtc-web`, group
/// `/guests`; unmapped users denied.
fn config(issuer: &str) -> Config {
    let mut c = rtcd_e2e::proxy::base_config();
    c.auth.keys.clear();
    c.auth.issuers.clear();
    c.auth.audiences.clear();
    let o = &mut c.auth.oidc;
    o.issuer = issuer.into();
    o.audiences = vec!["rtcd-proxy".into()];
    o.role_claims = vec![
        "realm_access.roles".into(),
        "resource_access.rtc-web.roles".into(),
        "groups".into(),
    ];
    o.roles = OidcRolesConfig {
        moderator: vec!["rtc-moderator".into(), "moderator".into()],
        member: vec!["rtc-member".into()],
        guest: vec!["/guests".into()],
    };
    o.discovery_retry_max_seconds = 1;
    c.auth.jwks.min_refetch_seconds = 0;
    c
}

async fn start(config: Config) -> anyhow::Result<Proxy> {
    rtcd_e2e::proxy::start(config).await
}

/// Joins `room` with `token`; the `joined` message, or the refusal's (code, reason, detail).
async fn try_join(proxy: &Proxy, token: &str, room: &str) -> anyhow::Result<(Client, JoinOutcome)> {
    join(proxy.addr(), Some(token), room).await
}

async fn refused(proxy: &Proxy, token: &str, room: &str) -> anyhow::Result<(u16, String, String)> {
    match try_join(proxy, token, room).await?.1 {
        JoinOutcome::Refused(code, reason, detail) => {
            Ok((code, reason, detail.unwrap_or_default()))
        }
        JoinOutcome::Joined(m) | JoinOutcome::Waiting(m) => {
            anyhow::bail!("joined unexpectedly: {m}")
        }
    }
}

async fn joined(proxy: &Proxy, token: &str, room: &str) -> anyhow::Result<(Client, Value)> {
    match try_join(proxy, token, room).await? {
        (client, JoinOutcome::Joined(m)) => Ok((client, m)),
        (_, JoinOutcome::Refused(code, reason, detail)) => {
            anyhow::bail!("refused {code} {reason}: {detail:?}")
        }
        (_, JoinOutcome::Waiting(m)) => anyhow::bail!("held at the door: {m}"),
    }
}

fn permissions(audio: bool, video: bool, screen: bool, subscribe: bool) -> Value {
    json!({"publish_audio": audio, "publish_video": video, "publish_screen": screen, "subscribe": subscribe})
}

#[tokio::test]
async fn mapped_roles_join_with_their_permissions_over_every_algorithm() -> anyhow::Result<()> {
    if !oidc::tools_present() {
        return Ok(());
    }
    let idp = Provider::start_on(oidc::free_port()?, Some(oidc::free_port()?)).await?;
    let proxy = start(config(&idp.issuer())).await?;
    // (persona, algorithm, role, permissions): one persona per algorithm the provider signs
    // with; `max` is both in /guests and a moderator of rtc-web: the highest role wins.
    let cases = [
        (
            "alice",
            "RS256",
            "moderator",
            permissions(true, true, true, true),
            Some("Alice"),
        ),
        (
            "bob",
            "PS256",
            "member",
            permissions(true, true, false, true),
            Some("Bob"),
        ),
        (
            "gina",
            "ES256",
            "guest",
            permissions(false, false, false, true),
            Some("Gina"),
        ),
        (
            "max",
            "EdDSA",
            "moderator",
            permissions(true, true, true, true),
            None,
        ),
    ];
    for (persona, alg, role, perms, name) in cases {
        let token = idp.token(persona, &proxy_resource(alg)).await?;
        let (mut client, m) = joined(&proxy, &token, "standup").await?;
        assert_eq!(m["identity"], persona, "{persona}: identity is `sub`");
        assert_eq!(m["role"], role, "{persona} ({alg})");
        assert_eq!(m["permissions"], perms, "{persona} ({alg})");
        assert_eq!(m["name"].as_str(), name, "{persona}: preferred_username");
        assert!(m.get("tenant").is_none_or(Value::is_null));
        // No media server here: the session says so and lives on.
        assert_eq!(client.expect("error").await?["code"], "media_unavailable");
    }
    // Known to the provider, but no role of ours: default deny, with its own code.
    let token = idp.token("uma", &proxy_resource("RS256")).await?;
    let (code, reason, _) = refused(&proxy, &token, "standup").await?;
    assert_eq!((code, reason.as_str()), (4116, "token_role_unmapped"));
    // A token the provider minted for another API.
    let token = idp.token("alice", OTHER_API).await?;
    let (code, reason, _) = refused(&proxy, &token, "standup").await?;
    assert_eq!((code, reason.as_str()), (4110, "token_wrong_audience"));
    // Keycloak's shape (aud: account, azp: rtc-web) fails the default `aud` rule...
    let keycloak = idp.token("bob", KEYCLOAK_ACCOUNT).await?;
    assert_eq!(refused(&proxy, &keycloak, "standup").await?.0, 4110);
    // ...and passes where the operator configured the audience rule for it.
    let mut kc = config(&idp.issuer());
    kc.auth.oidc.audiences = vec!["rtc-web".into()];
    kc.auth.oidc.audience_claims = vec!["aud".into(), "azp".into()];
    let kc_proxy = start(kc).await?;
    let (_c, m) = joined(&kc_proxy, &keycloak, "standup").await?;
    assert_eq!(m["role"], "member");
    // Same keys, another issuer: the signature verifies, the issuer does not.
    let token = idp.impostor_token("alice").await?;
    assert_eq!(oidc::kid(&token).as_deref(), Some("rsa-1"));
    let (code, reason, _) = refused(&proxy, &token, "standup").await?;
    assert_eq!((code, reason.as_str()), (4109, "token_wrong_issuer"));
    // A forged token claiming the provider's issuer, signed with another key under its kid.
    let forged = forged_token(&idp.issuer(), "rsa-1");
    assert_eq!(refused(&proxy, &forged, "standup").await?.0, 4105);
    // Unmapped users may be let in as guests where the operator says so.
    let mut lenient = config(&idp.issuer());
    lenient.auth.oidc.unmapped_role = rtcd_proxy::config::UnmappedRole::Guest;
    let lenient = start(lenient).await?;
    let token = idp.token("uma", &proxy_resource("ES256")).await?;
    let (_c, m) = joined(&lenient, &token, "standup").await?;
    assert_eq!(
        (&m["role"], &m["permissions"]),
        (&json!("guest"), &permissions(false, false, false, true))
    );
    for p in [proxy, kc_proxy, lenient] {
        p.shutdown().await;
    }
    Ok(())
}

/// Claims of a token from `issuer`, signed with the fixture RSA key `rsa-a` under `kid`
/// (which the provider may publish with another key).
fn forged_token(issuer: &str, kid: &str) -> String {
    let t = now();
    let claims = json!({"iss": issuer, "aud": "rtcd-proxy", "sub": "mallory", "iat": t, "exp": t + 300,
                        "realm_access": {"roles": ["rtc-moderator"]}});
    let pem = std::fs::read(fixture("rsa-a.key")).expect("fixture");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("fixture key");
    sign(jsonwebtoken::Algorithm::RS256, Some(kid), &claims, &key)
}

#[tokio::test]
async fn room_comes_from_the_join_or_must_match_the_configured_claim() -> anyhow::Result<()> {
    if !oidc::tools_present() {
        return Ok(());
    }
    let idp = Provider::start().await?;
    let rita = idp.token("rita", &proxy_resource("RS256")).await?;
    let bob = idp.token("bob", &proxy_resource("RS256")).await?;
    // Without a room claim any room can be joined.
    let open = start(config(&idp.issuer())).await?;
    joined(&open, &rita, "elsewhere").await?;
    joined(&open, &bob, "anything").await?;
    // With it, only the rooms the claim lists.
    let mut c = config(&idp.issuer());
    c.auth.oidc.room_claim = "rtc.room".into();
    let scoped = start(c).await?;
    let (_c, m) = joined(&scoped, &rita, "standup").await?;
    assert_eq!(m["room"], "standup");
    let (code, reason, _) = refused(&scoped, &rita, "elsewhere").await?;
    assert_eq!((code, reason.as_str()), (4111, "token_wrong_room"));
    assert_eq!(refused(&scoped, &bob, "standup").await?.0, 4111, "no claim");
    open.shutdown().await;
    scoped.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn key_rotation_mid_call_keeps_live_sessions_and_accepts_the_new_kid() -> anyhow::Result<()> {
    if !oidc::tools_present() {
        return Ok(());
    }
    let idp = Provider::start().await?;
    let rtcd = TestRtcd::start(&[]).await?;
    let cancel = CancellationToken::new();
    let proxy =
        rtcd_e2e::proxy::start_relaying_to(config(&idp.issuer()), &rtcd, "proxy-oidc", &cancel)
            .await?;
    let ws = format!("ws://{}/ws", proxy.addr());
    // Two people in a call with audio and video, on tokens signed with the first keys.
    let alice_token = idp.token("alice", &proxy_resource("ES256")).await?;
    let bob_token = idp.token("bob", &proxy_resource("RS256")).await?;
    assert_eq!(oidc::kid(&alice_token).as_deref(), Some("ec-1"));
    let mut people = Vec::new();
    for (name, token) in [("alice", &alice_token), ("bob", &bob_token)] {
        let p = Participant::join_via_proxy(&ws, token, "standup", name).await?;
        p.add_track("audio").await?;
        p.add_track("video").await?;
        p.renegotiate().await?;
        people.push(p);
    }
    // A third session that only holds its WebSocket (to refresh its token in place).
    let (mut watcher, m) = joined(
        &proxy,
        &idp.token("gina", &proxy_resource("ES256")).await?,
        "standup",
    )
    .await?;
    assert_eq!(m["role"], "guest");
    rtcd_e2e::media::eventually("alice and bob receive each other", || {
        people[0].received("bob", "video") >= 25 && people[1].received("alice", "audio") >= 25
    })
    .await?;
    // The provider rotates: every old key is withdrawn, new tokens carry new kids.
    let kids = idp.rotate().await?;
    assert_eq!(kids, ["rsa-2", "ec-2", "ed-2"]);
    // The live call is not touched by it.
    keeps_flowing(
        &people[0],
        &["bob/audio", "bob/video"],
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .await?;
    keeps_flowing(
        &people[1],
        &["alice/audio", "alice/video"],
        Duration::from_secs(2),
        Duration::from_millis(500),
    )
    .await?;
    // A newcomer with a new-kid token: the proxy refetches the provider's keys and lets her in,
    // and she receives the call.
    let carol_token = idp.token("max", &proxy_resource("EdDSA")).await?;
    assert_eq!(oidc::kid(&carol_token).as_deref(), Some("ed-2"));
    let carol = Participant::join_via_proxy(&ws, &carol_token, "standup", "carol").await?;
    carol.receive_only().await?;
    rtcd_e2e::media::eventually("the newcomer receives alice and bob", || {
        carol.received("alice", "video") >= 25 && carol.received("bob", "audio") >= 25
    })
    .await?;
    // A live session refreshes in place with a new-kid token.
    let fresh = idp.token("gina", &proxy_resource("RS256")).await?;
    assert_eq!(oidc::kid(&fresh).as_deref(), Some("rsa-2"));
    watcher
        .send(&json!({"type": "refresh", "token": fresh}))
        .await?;
    let r = Client::until(&mut watcher, "refreshed").await?;
    assert_eq!(r["permissions"], permissions(false, false, false, true));
    // The withdrawn key is gone from the proxy's cache too: a new join on an old token fails.
    let (code, reason, _) = refused(&proxy, &alice_token, "standup").await?;
    assert_eq!((code, reason.as_str()), (4104, "token_unknown_key"));
    keeps_flowing(
        &people[0],
        &["bob/video"],
        Duration::from_secs(1),
        Duration::from_millis(500),
    )
    .await?;
    for p in people.iter().chain([&carol]) {
        p.close().await;
    }
    proxy.shutdown().await;
    cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn provider_down_at_start_then_up_is_discovered_and_a_wrong_issuer_document_is_named()
-> anyhow::Result<()> {
    if !oidc::tools_present() {
        return Ok(());
    }
    let port = oidc::free_port()?;
    let issuer = format!("http://127.0.0.1:{port}");
    // Nothing listens there yet: the proxy starts anyway, and is ready.
    let started = Instant::now();
    let proxy = start(config(&issuer)).await?;
    assert!(
        started.elapsed() < STEP,
        "start did not wait for the provider"
    );
    let ready = reqwest::get(format!("http://{}/readyz", proxy.addr())).await?;
    assert_eq!(ready.status(), 200);
    // The provider's tokens are refused as temporarily unverifiable, saying why.
    let (code, reason, detail) =
        refused(&proxy, &forged_token(&issuer, "rsa-1"), "standup").await?;
    assert_eq!(
        (code, reason.as_str()),
        (4115, "keys_unavailable"),
        "{detail}"
    );
    assert!(detail.contains("not discovered yet"), "{detail}");
    // Says why, as docs/oidc.md promises (issue 29 #11), not reqwest's "error sending request".
    assert!(
        detail.to_lowercase().contains("connection refused")
            && !detail.contains("error sending request"),
        "{detail}"
    );
    // The provider comes up: discovery is retried (backoff capped at 1 s here) and its tokens
    // are accepted without any restart.
    let idp = Provider::start_on(port, None).await?;
    let token = idp.token("alice", &proxy_resource("RS256")).await?;
    let came_up = Instant::now();
    let m = loop {
        match try_join(&proxy, &token, "standup").await?.1 {
            JoinOutcome::Joined(m) => break m,
            JoinOutcome::Refused(4115, ..) if came_up.elapsed() < STEP => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => anyhow::bail!("not accepted after the provider came up: {other:?}"),
        }
    };
    assert_eq!(m["role"], "moderator");
    // A configured issuer that differs from the document's by one character (a trailing
    // slash) is never trusted, and the refusal names the mismatch.
    let slash = format!("{issuer}/");
    let strict = start(config(&slash)).await?;
    let (code, _, detail) = refused(&strict, &forged_token(&slash, "rsa-1"), "standup").await?;
    assert_eq!(code, 4115, "{detail}");
    assert!(
        detail.contains("is not the configured auth.oidc.issuer"),
        "{detail}"
    );
    // The provider's real tokens carry the issuer without the slash: not this proxy's.
    assert_eq!(refused(&strict, &token, "standup").await?.0, 4109);
    proxy.shutdown().await;
    strict.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn provider_gone_later_cached_keys_keep_working_and_unknown_kids_are_refused()
-> anyhow::Result<()> {
    if !oidc::tools_present() {
        return Ok(());
    }
    let idp = Provider::start().await?;
    let mut c = config(&idp.issuer());
    // The cached set is stale after a second: lookups then try to refetch, fail, and serve
    // the cached keys.
    c.auth.jwks.cache_seconds = 1;
    let proxy = start(c).await?;
    let before = idp.token("bob", &proxy_resource("PS256")).await?;
    let (_live, m) = joined(&proxy, &before, "standup").await?;
    assert_eq!(m["role"], "member");
    // The provider rotates (the proxy does not notice yet), issues a token, and goes away.
    idp.rotate().await?;
    let after = idp.token("alice", &proxy_resource("RS256")).await?;
    assert_eq!(oidc::kid(&after).as_deref(), Some("rsa-2"));
    idp.kill().await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Keys already cached keep verifying while the provider is unreachable...
    for _ in 0..2 {
        let (_c, m) = joined(&proxy, &before, "standup").await?;
        assert_eq!(m["identity"], "bob");
    }
    // ...and a kid it never saw gets the documented code once the refetch failed.
    let (code, reason, detail) = refused(&proxy, &after, "standup").await?;
    assert_eq!(
        (code, reason.as_str()),
        (4104, "token_unknown_key"),
        "{detail}"
    );
    proxy.shutdown().await;
    Ok(())
}

/// Issue 29 #11: on a proxy trusting both platform keys and an OIDC provider, a token whose
/// `iss` is neither (a mistyped provider issuer) is 4109 `token_wrong_issuer`, as on an
/// OIDC-only proxy, not 4104 from a lookup among the platform's keys; platform tokens still
/// join. The provider need not be up: such a token never reaches it.
#[tokio::test]
async fn a_wrong_issuer_on_a_proxy_with_platform_keys_and_oidc_is_4109() -> anyhow::Result<()> {
    let issuer = format!("http://127.0.0.1:{}", oidc::free_port()?);
    let mut c = rtcd_e2e::proxy::base_config();
    c.auth.oidc = config(&issuer).auth.oidc;
    let proxy = start(c).await?;
    for (what, token) in [
        (
            "a mistyped provider issuer",
            forged_token(&format!("{issuer}/typo"), "rsa-1"),
        ),
        ("no iss at all", {
            let mut claims = rtcd_e2e::proxy::claims("mallory", "standup");
            claims.as_object_mut().unwrap().remove("iss");
            rtcd_e2e::proxy::hs_token(&claims)
        }),
        ("another platform", {
            let mut claims = rtcd_e2e::proxy::claims("mallory", "standup");
            claims["iss"] = json!("someone-else");
            rtcd_e2e::proxy::hs_token(&claims)
        }),
    ] {
        let (code, reason, detail) = refused(&proxy, &token, "standup").await?;
        assert_eq!(
            (code, reason.as_str()),
            (4109, "token_wrong_issuer"),
            "{what}: {detail}"
        );
    }
    let platform = rtcd_e2e::proxy::hs_token(&rtcd_e2e::proxy::claims("alice", "standup"));
    joined(&proxy, &platform, "standup").await?;
    proxy.shutdown().await;
    Ok(())
}
