//! rtcd's client registry and HTTP API, in-process over real HTTP with a real sled store.

use std::net::IpAddr;

use reqwest::StatusCode;
use rtcd_e2e::daemon::{ADMIN_SECRET, TestRtcd, client, client_from, key_for, metric_sum, scrape};
use serde_json::{Value, json};

async fn post(url: &str, body: &Value, auth: Option<(&str, &str)>) -> (StatusCode, Value) {
    post_from(&client(), url, body, auth).await
}

async fn post_from(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    auth: Option<(&str, &str)>,
) -> (StatusCode, Value) {
    let mut req = client.post(url).json(body);
    if let Some((user, pass)) = auth {
        req = req.basic_auth(user, Some(pass));
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn register(d: &TestRtcd, id: &str, key: &str) -> (StatusCode, Value) {
    post(
        &d.url("/register"),
        &json!({"clientID": id, "authKey": key}),
        Some(("", ADMIN_SECRET)),
    )
    .await
}

async fn login(d: &TestRtcd, id: &str, key: &str) -> (StatusCode, Value) {
    post(
        &d.url("/login"),
        &json!({"clientID": id, "authKey": key}),
        None,
    )
    .await
}

async fn login_from(client: &reqwest::Client, d: &TestRtcd, id: &str, key: &str) -> StatusCode {
    post_from(
        client,
        &d.url("/login"),
        &json!({"clientID": id, "authKey": key}),
        None,
    )
    .await
    .0
}

async fn unregister(d: &TestRtcd, id: &str, auth: Option<(&str, &str)>) -> (StatusCode, Value) {
    post(&d.url("/unregister"), &json!({"clientID": id}), auth).await
}

async fn metric(d: &TestRtcd, name: &str) -> f64 {
    let text = scrape(&format!("{}/metrics", d.internal)).await.unwrap();
    metric_sum(&text, name)
}

#[tokio::test]
async fn register_login_unregister_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let key = key_for("round-trip");

    let (status, body) = register(&d, "mm-prod", &key).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({"clientID": "mm-prod", "code": "201"}));

    let (status, body) = login(&d, "mm-prod", &key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["bearerToken"].as_str().unwrap().to_owned();
    assert!(
        token.len() >= 32,
        "192+ bits of randomness, base64url: {token}"
    );
    assert_eq!(body["code"], "200");
    let (_, again) = login(&d, "mm-prod", &key).await;
    assert_ne!(
        again["bearerToken"], body["bearerToken"],
        "every login issues a fresh token"
    );

    // A client unregisters itself with its bearer token.
    let resp = client()
        .post(d.url("/unregister"))
        .bearer_auth(&token)
        .json(&json!({"clientID": "mm-prod"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"clientID": "mm-prod", "code": "200"})
    );

    let (status, body) = login(&d, "mm-prod", &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "401");
    // The ID is free again.
    assert_eq!(
        register(&d, "mm-prod", &key_for("second-life")).await.0,
        StatusCode::CREATED
    );
    d.stop().await;
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    for i in 0..5 {
        assert_eq!(
            register(&d, &format!("tenant-{i}"), &key_for(&format!("t{i}")))
                .await
                .0,
            StatusCode::CREATED
        );
    }
    d.stop().await;

    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    for i in 0..5 {
        let (status, body) = login(&d, &format!("tenant-{i}"), &key_for(&format!("t{i}"))).await;
        assert_eq!(status, StatusCode::OK, "tenant-{i}: {body}");
    }
    assert_eq!(
        register(&d, "tenant-0", &key_for("t0")).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(metric(&d, "rtcd_clients_registered").await, 5.0);
    d.stop().await;
}

#[tokio::test]
async fn validation_rules_each_give_a_clear_400() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let good = key_for("valid");
    let long_id = "a".repeat(65);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"clientID": "", "authKey": good}),
            "must not be empty",
        ),
        (json!({"clientID": long_id, "authKey": good}), "at most 64"),
        (
            json!({"clientID": "has space", "authKey": good}),
            "may contain only",
        ),
        (
            json!({"clientID": "slash/es", "authKey": good}),
            "may contain only",
        ),
        (
            json!({"clientID": "ok", "authKey": "k".repeat(31)}),
            "at least 32 bytes",
        ),
        (
            json!({"clientID": "ok", "authKey": "k".repeat(73)}),
            "at most 72 bytes",
        ),
        (json!({"clientID": "ok"}), "missing field `authKey`"),
        (
            json!({"clientID": 7, "authKey": good}),
            "invalid type for field `clientID`: expected a string, got a number",
        ),
        (
            json!({"clientID": "ok", "authKey": ["x"]}),
            "invalid type for field `authKey`: expected a string, got an array",
        ),
        (json!(["not", "an", "object"]), "expected a JSON object"),
        (
            json!({"clientID": null, "authKey": good}),
            "missing field `clientID`",
        ),
    ];
    for (body, want) in cases {
        let (status, reply) = post(&d.url("/register"), &body, Some(("", ADMIN_SECRET))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {reply}");
        assert_eq!(reply["code"], "400");
        let msg = reply["error"].as_str().unwrap();
        assert!(msg.contains(want), "{body}: expected {want:?} in {msg:?}");
    }
    // Boundaries that are valid.
    assert_eq!(
        register(&d, &"a".repeat(64), &"k".repeat(32)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        register(&d, "A-z_0.9", &"k".repeat(72)).await.0,
        StatusCode::CREATED
    );
    // A 72-byte key is used whole: changing its last byte must fail (no silent truncation).
    let mut almost = "k".repeat(71);
    almost.push('j');
    assert_eq!(
        login(&d, "A-z_0.9", &almost).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&d, "A-z_0.9", &"k".repeat(72)).await.0,
        StatusCode::OK
    );

    let raw = |body: &'static str| {
        client()
            .post(d.url("/register"))
            .basic_auth("", Some(ADMIN_SECRET))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, want) in [
        ("{\"clientID\": \"x\",", "EOF"),
        ("not json", "expected"),
        ("", "empty"),
    ] {
        let resp = raw(body).await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let reply: Value = resp.json().await.unwrap();
        assert!(
            reply["error"].as_str().unwrap().contains(want),
            "{body:?} -> {reply}"
        );
    }
    // Oversized body: 413 before anything is parsed.
    let huge = format!(
        "{{\"clientID\":\"x\",\"authKey\":\"{}\"}}",
        "k".repeat(20_000)
    );
    let resp = client()
        .post(d.url("/register"))
        .body(huge.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "413");
    // The same body streamed without a Content-Length (chunked) is cut off at the cap too.
    let chunks = futures_util::stream::iter(
        huge.into_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = client()
        .post(d.url("/register"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Unknown route and wrong method are JSON errors too.
    let resp = client().get(d.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], "404");
    let resp = client().get(d.url("/register")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    d.stop().await;
}

#[tokio::test]
async fn admin_client_and_self_registration_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let (a_key, b_key) = (key_for("a"), key_for("b"));
    assert_eq!(
        register(&d, "tenant-a", &a_key).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        register(&d, "tenant-b", &b_key).await.0,
        StatusCode::CREATED
    );

    // Self-registration is off: no credentials -> 401, a client's credentials -> 403.
    let new = json!({"clientID": "newcomer", "authKey": key_for("new")});
    assert_eq!(
        post(&d.url("/register"), &new, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&d.url("/register"), &new, Some(("tenant-a", &a_key)))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(
            &d.url("/register"),
            &new,
            Some(("", "wrong-admin-secret-0123456789abcdef"))
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );

    // A client cannot unregister another; the other keeps working.
    let (status, body) = unregister(&d, "tenant-b", Some(("tenant-a", &a_key))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(login(&d, "tenant-b", &b_key).await.0, StatusCode::OK);
    // Unauthenticated unregister.
    assert_eq!(
        unregister(&d, "tenant-b", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The admin may remove anyone; unknown IDs are 404.
    assert_eq!(
        unregister(&d, "tenant-b", Some(("", ADMIN_SECRET))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        unregister(&d, "tenant-b", Some(("", ADMIN_SECRET))).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        login(&d, "tenant-b", &b_key).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Internal endpoints: /metrics on the public listener needs the admin.
    let m = |auth: Option<(&str, &str)>| {
        let mut req = client().get(d.url("/metrics"));
        if let Some((u, p)) = auth {
            req = req.basic_auth(u, Some(p));
        }
        req.send()
    };
    assert_eq!(m(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Issue 16 #13: a request without credentials (a scraper's first try) is not a failed
    // login: it counts nowhere in the auth metrics and not against the address's limiter.
    let before = client()
        .get(format!("{}/metrics", d.internal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(m(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    }
    let after = client()
        .get(format!("{}/metrics", d.internal))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let auth_lines = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("rtcd_auth_attempts_total"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(auth_lines(&before), auth_lines(&after), "{after}");
    assert_eq!(
        m(Some(("tenant-a", &a_key))).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let resp = m(Some(("", ADMIN_SECRET))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("rtcd_auth_attempts_total")
    );
    let internal = client()
        .get(format!("{}/metrics", d.internal))
        .send()
        .await
        .unwrap();
    assert_eq!(internal.status(), StatusCode::OK);
    d.stop().await;

    // With self-registration on: anyone registers a *new* ID, never overwrites.
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[("RTCD_API_SECURITY_ALLOW_SELF_REGISTRATION", "true")],
    )
    .await
    .unwrap();
    let first = key_for("first");
    assert_eq!(
        post(
            &d.url("/register"),
            &json!({"clientID": "open", "authKey": first}),
            None
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let (status, body) = post(
        &d.url("/register"),
        &json!({"clientID": "open", "authKey": key_for("hijack")}),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        login(&d, "open", &first).await.0,
        StatusCode::OK,
        "the original key still works"
    );
    assert_eq!(
        login(&d, "open", &key_for("hijack")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Self-registration does not grant removal of others.
    assert_eq!(
        register(&d, "other", &key_for("other")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        unregister(&d, "other", Some(("open", &first))).await.0,
        StatusCode::FORBIDDEN
    );
    d.stop().await;
}

#[tokio::test]
async fn auth_cache_never_accepts_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[("RTCD_API_SECURITY_FAILED_AUTH_BURST", "100")],
    )
    .await
    .unwrap();
    let key = key_for("cached");
    assert_eq!(register(&d, "cached", &key).await.0, StatusCode::CREATED);
    assert_eq!(login(&d, "cached", &key).await.0, StatusCode::OK);
    let bcrypt_before = metric(&d, "rtcd_bcrypt_seconds_count").await;
    for _ in 0..5 {
        assert_eq!(login(&d, "cached", &key).await.0, StatusCode::OK);
    }
    assert_eq!(
        metric(&d, "rtcd_bcrypt_seconds_count").await,
        bcrypt_before,
        "cache hits run no bcrypt"
    );
    assert!(
        metric(
            &d,
            "rtcd_auth_attempts_total{method=\"login\",outcome=\"cached\"}"
        )
        .await
            >= 5.0
    );

    let mut last_byte = key.clone();
    last_byte.pop();
    last_byte.push('y');
    let wrong = [
        last_byte,
        format!("{key}z"),
        key[..key.len() - 1].to_owned(),
        key.to_uppercase(),
        key_for("other"),
    ];
    for w in &wrong {
        assert_eq!(
            login(&d, "cached", w).await.0,
            StatusCode::UNAUTHORIZED,
            "{w}"
        );
    }
    // The right key under another ID is not the cached pair either.
    assert_eq!(
        register(&d, "cached-2", &key_for("c2")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        login(&d, "cached-2", &key).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Unregister invalidates cache and bearer tokens; re-registering with a new key does not revive the old.
    let token = login(&d, "cached", &key).await.1["bearerToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        unregister(&d, "cached", Some(("", ADMIN_SECRET))).await.0,
        StatusCode::OK
    );
    assert_eq!(login(&d, "cached", &key).await.0, StatusCode::UNAUTHORIZED);
    let new_key = key_for("cached-new");
    assert_eq!(
        register(&d, "cached", &new_key).await.0,
        StatusCode::CREATED
    );
    assert_eq!(login(&d, "cached", &key).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&d, "cached", &new_key).await.0, StatusCode::OK);
    let resp = client()
        .post(d.url("/register"))
        .bearer_auth(&token)
        .json(&json!({"clientID": "x", "authKey": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "a revoked bearer token is unknown"
    );
    d.stop().await;
}

#[tokio::test]
async fn bearer_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[("RTCD_API_SECURITY_SESSION_TTL_SECONDS", "1")],
    )
    .await
    .unwrap();
    let key = key_for("short");
    assert_eq!(register(&d, "short", &key).await.0, StatusCode::CREATED);
    let token = login(&d, "short", &key).await.1["bearerToken"]
        .as_str()
        .unwrap()
        .to_owned();
    // A valid token authenticates: the client is then *forbidden* to register others (403, not 401).
    let attempt = || {
        client()
            .post(d.url("/register"))
            .bearer_auth(&token)
            .json(&json!({"clientID": "x", "authKey": key_for("x")}))
            .send()
    };
    assert_eq!(attempt().await.unwrap().status(), StatusCode::FORBIDDEN);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(attempt().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // Garbage bearer values are plain 401s.
    for bad in ["", "x", &"A".repeat(5000)] {
        let resp = client()
            .post(d.url("/unregister"))
            .header("authorization", format!("Bearer {bad}"))
            .json(&json!({"clientID": "short"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad:.10}");
    }
    d.stop().await;
}

#[tokio::test]
async fn repeated_bad_keys_are_rate_limited_without_slowing_good_clients() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[
            ("RTCD_API_SECURITY_FAILED_AUTH_BURST", "5"),
            ("RTCD_API_SECURITY_FAILED_AUTH_PER_MINUTE", "6"),
        ],
    )
    .await
    .unwrap();
    let (good_key, other_key) = (key_for("good"), key_for("other"));
    assert_eq!(register(&d, "good", &good_key).await.0, StatusCode::CREATED);
    assert_eq!(
        register(&d, "other", &other_key).await.0,
        StatusCode::CREATED
    );
    let attacker = client_from("127.0.0.2".parse::<IpAddr>().unwrap());
    let good = client_from("127.0.0.3".parse::<IpAddr>().unwrap());
    let bystander = client_from("127.0.0.4".parse::<IpAddr>().unwrap());
    let login_body = |id: &str, key: &str| json!({"clientID": id, "authKey": key});
    // The good client has authenticated once (cached).
    assert_eq!(
        login_from(&good, &d, "good", &good_key).await,
        StatusCode::OK
    );

    let bcrypt_before = metric(&d, "rtcd_bcrypt_seconds_count").await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let resp = attacker
            .post(d.url("/login"))
            .json(&login_body("good", &key_for(&format!("guess{i}"))))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = resp.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "Retry-After {retry}");
            assert_eq!(resp.json::<Value>().await.unwrap()["code"], "429");
        }
        statuses.push(status);
    }
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(
        failed <= 6,
        "at most the burst (plus refill) of bad keys reach bcrypt: {statuses:?}"
    );
    assert!(limited >= 24, "{statuses:?}");
    let bcrypt_spent = metric(&d, "rtcd_bcrypt_seconds_count").await - bcrypt_before;
    assert!(
        bcrypt_spent <= 6.0,
        "rate-limited attempts cost no bcrypt: {bcrypt_spent}"
    );

    // The good client, already verified, is not affected at all.
    for _ in 0..5 {
        assert_eq!(
            login_from(&good, &d, "good", &good_key).await,
            StatusCode::OK
        );
    }
    // Another client from another address, never seen before, goes through bcrypt normally.
    assert_eq!(
        login_from(&bystander, &d, "other", &other_key).await,
        StatusCode::OK
    );
    // The attacker's address stays limited even for other IDs; basic auth is limited the same way.
    assert_eq!(
        login_from(&attacker, &d, "other", &key_for("nope")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let (status, _) = post_from(
        &attacker,
        &d.url("/unregister"),
        &json!({"clientID": "other"}),
        Some(("other", &key_for("nope"))),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    d.stop().await;
}

#[tokio::test]
async fn bcrypt_work_is_bounded_and_overflow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[
            ("RTCD_API_SECURITY_BCRYPT_COST", "10"),
            ("RTCD_API_SECURITY_BCRYPT_CONCURRENCY", "1"),
            ("RTCD_API_SECURITY_BCRYPT_QUEUE", "2"),
            ("RTCD_API_SECURITY_FAILED_AUTH_BURST", "1000"),
        ],
    )
    .await
    .unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let url = d.url("/login");
            tokio::spawn(async move {
                post(
                    &url,
                    &json!({"clientID": format!("nobody-{i}"), "authKey": key_for("x")}),
                    None,
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().0);
    }
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "a full bcrypt queue refuses with 503: {statuses:?}"
    );
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    d.stop().await;
}

#[tokio::test]
async fn public_endpoints_answer_in_rtcd_format() {
    let dir = tempfile::tempdir().unwrap();
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let version: Value = client()
        .get(d.url("/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        version["buildVersion"],
        concat!("v", env!("CARGO_PKG_VERSION"))
    );
    for field in ["buildDate", "buildHash", "rustVersion"] {
        assert!(version[field].is_string(), "{field} in {version}");
    }
    let system: Value = client()
        .get(d.url("/system"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let load = system["cpu_load"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&load), "{system}");
    for base in [&d.base, &d.internal] {
        assert_eq!(
            client()
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
        let ready = client().get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
    }
    d.stop().await;
}

/// A start that fails late (here: the gRPC port is taken) leaves nothing behind: its HTTP port
/// serves nothing and is free, and its store is closed, so a corrected start on the same port
/// and data directory works at once.
#[tokio::test]
async fn a_failed_start_leaves_no_listener_and_releases_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let http = format!("127.0.0.1:{http_port}");
    let grpc_taken = taken.local_addr().unwrap().to_string();
    let env = |grpc: &str| {
        rtcd_e2e::daemon::test_env(
            dir.path(),
            &[
                ("RTCD_API_HTTP_LISTEN_ADDRESS", http.as_str()),
                ("RTCD_GRPC_LISTEN_ADDRESS", grpc),
            ],
        )
    };
    let config = rtcd::config::Config::load(None, env(&grpc_taken)).unwrap();
    let failed = rtcd::Rtcd::start(config).await;
    let error = failed.err().expect("the gRPC port is taken").to_string();
    assert!(error.contains(&grpc_taken), "{error}");
    // Nothing answers on the HTTP port.
    assert!(
        tokio::net::TcpStream::connect(&http).await.is_err(),
        "the failed start left its HTTP listener serving"
    );
    // The same port and data directory work for the corrected start.
    let config = rtcd::config::Config::load(None, env("127.0.0.1:0")).unwrap();
    let rtcd = rtcd::Rtcd::start(config)
        .await
        .expect("a corrected start on the same port and store");
    assert_eq!(rtcd.http_addr().port(), http_port);
    let health = client()
        .get(format!("http://{http}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    rtcd.shutdown().await;
}
