//! rtcd as a real process: durability under SIGKILL, graceful SIGTERM, secrets kept out of
//! disk and logs, the operator CLI, configuration errors, TLS.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use rtcd_e2e::daemon::{
    ADMIN_SECRET, RtcdProcess, TestRtcd, client, files_under, key_for, test_env,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

async fn register_at(base: &str, id: &str, key: &str) -> StatusCode {
    client()
        .post(format!("{base}/register"))
        .basic_auth("", Some(ADMIN_SECRET))
        .json(&json!({"clientID": id, "authKey": key}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Runs the CLI with `args`, a clean environment plus `env`, and `stdin`.
fn cli(args: &[&str], env: &[(String, String)], stdin: &str) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn sigkill_right_after_201_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path(), &[]);
    let mut proc = RtcdProcess::spawn(Path::new(BIN), &env).unwrap();
    let base = format!("http://{}", proc.ready().await.unwrap());
    for i in 0..20 {
        assert_eq!(
            register_at(&base, &format!("durable-{i}"), &key_for(&format!("d{i}"))).await,
            StatusCode::CREATED
        );
    }
    // No grace: SIGKILL the instant the last 201 arrived.
    proc.signal("KILL").unwrap();
    let status = proc.wait().await.unwrap();
    assert!(!status.success());

    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let ids = d.rtcd.auth().list().unwrap();
    assert_eq!(ids.len(), 20, "{ids:?}");
    let resp = client()
        .post(d.url("/login"))
        .json(&json!({"clientID": "durable-19", "authKey": key_for("d19")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    d.stop().await;
}

/// 1,000 registrations at once from eight proxies' addresses, rtcd SIGKILLed once half of
/// them were acknowledged: after a restart every acknowledged client is there and logs in,
/// nothing was invented, and the store opens cleanly.
#[tokio::test]
async fn sigkill_amid_a_thousand_concurrent_registrations_loses_no_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    // The queue takes all of them (its default of 64 would answer most with 503, which is no
    // acknowledgement and would test less).
    let env = test_env(dir.path(), &[("RTCD_API_SECURITY_BCRYPT_QUEUE", "1000")]);
    let mut proc = RtcdProcess::spawn(Path::new(BIN), &env).unwrap();
    let base = format!("http://{}", proc.ready().await.unwrap());
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let source: std::net::IpAddr = format!("127.0.1.{}", 1 + i % 8).parse().unwrap();
        let (base, acked) = (base.clone(), acked_tx.clone());
        requests.spawn(async move {
            let id = format!("storm-{i}");
            let reply = rtcd_e2e::daemon::client_from(source)
                .post(format!("{base}/register"))
                .basic_auth("", Some(ADMIN_SECRET))
                .json(&json!({"clientID": id, "authKey": key_for(&id)}))
                .send()
                .await;
            match reply {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    let _ = acked.send(id);
                    "created"
                }
                Ok(r) if r.status().is_server_error() => "refused",
                Ok(r) => panic!("unexpected answer {}", r.status()),
                Err(e) if e.is_timeout() => "timeout",
                Err(_) => "cut",
            }
        });
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 500 {
        match acked_rx.recv().await {
            Some(id) => acked.push(id),
            None => {
                let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
                while let Some(outcome) = requests.join_next().await {
                    *outcomes.entry(outcome.unwrap()).or_default() += 1;
                }
                panic!("all done before 500 were acknowledged: {outcomes:?}");
            }
        }
    }
    proc.signal("KILL").unwrap();
    assert!(!proc.wait().await.unwrap().success());
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    while let Some(outcome) = requests.join_next().await {
        *outcomes.entry(outcome.unwrap()).or_default() += 1;
    }
    // 201s that were on their way when the process died count as acknowledged too.
    while let Ok(id) = acked_rx.try_recv() {
        acked.push(id);
    }
    eprintln!("{} acknowledged; outcomes {outcomes:?}", acked.len());
    assert!(
        outcomes.get("cut").copied().unwrap_or(0) > 0,
        "the kill came too late to cut any: {outcomes:?}"
    );

    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let stored: std::collections::HashSet<String> = d
        .rtcd
        .auth()
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(
        stored.iter().all(|id| id.starts_with("storm-")),
        "{stored:?}"
    );
    for id in &acked {
        let login = client()
            .post(d.url("/login"))
            .json(&json!({"clientID": id, "authKey": key_for(id)}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::OK, "{id} does not log in");
    }
    d.stop().await;
}

#[tokio::test]
async fn keys_never_reach_disk_or_logs_and_audit_lines_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path(), &[]);
    let mut proc = RtcdProcess::spawn(Path::new(BIN), &env).unwrap();
    let base = format!("http://{}", proc.ready().await.unwrap());
    let key = "SECRET-KEY-MARKER-7f3a9c1e5b2d4f6a8c0e1b3d5f7a9c1e";
    assert_eq!(
        register_at(&base, "audited", key).await,
        StatusCode::CREATED
    );
    let login = |k: &'static str| {
        client()
            .post(format!("{base}/login"))
            .json(&json!({"clientID": "audited", "authKey": k}))
            .send()
    };
    assert_eq!(login(key).await.unwrap().status(), StatusCode::OK);
    let wrong = "WRONG-KEY-MARKER-0123456789abcdef0123456789abcdef";
    assert_eq!(
        login(wrong).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    // A wrongly typed key is neither echoed in the error nor logged.
    let resp = client()
        .post(format!("{base}/login"))
        .body("{\"clientID\":\"audited\",\"authKey\":98765432123456789}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let reply = resp.text().await.unwrap();
    assert!(
        !reply.contains("98765432123456789") && reply.contains("authKey"),
        "{reply}"
    );
    let token = {
        let body: Value = login(key).await.unwrap().json().await.unwrap();
        body["bearerToken"].as_str().unwrap().to_owned()
    };
    proc.signal("TERM").unwrap();
    assert!(proc.wait().await.unwrap().success());

    let logs = proc.log.join("\n");
    for secret in [
        key,
        wrong,
        ADMIN_SECRET,
        token.as_str(),
        "98765432123456789",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [key, wrong, ADMIN_SECRET] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} found in {}",
                file.display()
            );
        }
    }
    let audit: Vec<Value> = proc
        .log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "audit")
        .collect();
    let has = |event: &str, outcome: &str| {
        audit.iter().any(|v| {
            v["event"] == event
                && v["outcome"] == outcome
                && v["client_id"] == "audited"
                && v["remote_addr"] == "127.0.0.1"
        })
    };
    assert!(has("register", "ok"), "{audit:#?}");
    assert!(has("login", "ok"), "{audit:#?}");
    assert!(has("authenticate", "unauthenticated"), "{audit:#?}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_flushes() {
    let dir = tempfile::tempdir().unwrap();
    // Cost 13: one hash takes several hundred milliseconds, long enough to signal mid-request.
    let env = test_env(dir.path(), &[("RTCD_API_SECURITY_BCRYPT_COST", "13")]);
    let mut proc = RtcdProcess::spawn(Path::new(BIN), &env).unwrap();
    let addr = proc.ready().await.unwrap();
    let base = format!("http://{addr}");
    let in_flight = {
        let base = base.clone();
        tokio::spawn(async move { register_at(&base, "in-flight", &key_for("in-flight")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    proc.signal("TERM").unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        StatusCode::CREATED,
        "the request in flight at SIGTERM completes"
    );
    assert!(
        proc.wait().await.unwrap().success(),
        "clean exit after the drain"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );

    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    assert_eq!(d.rtcd.auth().list().unwrap().len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn operator_cli_manages_the_store_directly() {
    let dir = tempfile::tempdir().unwrap();
    let env = test_env(dir.path(), &[]);
    let (code, out, err) = cli(&["clients", "add", "bootstrap"], &env, "");
    assert_eq!(code, 0, "{err}");
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("authKey: "))
        .expect("generated key printed")
        .to_owned();
    assert!(key.len() >= 32);
    let (code, _, err) = cli(
        &["clients", "add", "piped", "--key-stdin"],
        &env,
        &format!("{}\n", key_for("piped")),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["clients", "add", "bootstrap"], &env, "");
    assert_ne!(code, 0);
    assert!(err.contains("already registered"), "{err}");
    let (code, _, err) = cli(
        &["clients", "add", "short", "--key-stdin"],
        &env,
        "tooshort",
    );
    assert_ne!(code, 0);
    assert!(err.contains("at least 32"), "{err}");
    let (code, _, err) = cli(&["clients", "add", "bad id"], &env, "");
    assert_ne!(code, 0);
    assert!(err.contains("may contain only"), "{err}");
    let (code, out, _) = cli(&["clients", "list"], &env, "");
    assert_eq!((code, out.as_str()), (0, "bootstrap\npiped\n"));

    // The daemon accepts what the CLI registered; while it runs, the CLI is refused clearly.
    let d = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let resp = client()
        .post(d.url("/login"))
        .json(&json!({"clientID": "bootstrap", "authKey": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (code, _, err) = cli(&["clients", "list"], &env, "");
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "{err}");
    d.stop().await;

    let (code, out, _) = cli(&["clients", "remove", "piped"], &env, "");
    assert_eq!(code, 0);
    assert!(out.contains("removed piped"));
    let (code, _, err) = cli(&["clients", "remove", "piped"], &env, "");
    assert_ne!(code, 0);
    assert!(err.contains("not registered"), "{err}");
    let (_, out, _) = cli(&["clients", "list"], &env, "");
    assert_eq!(out, "bootstrap\n");

    let (code, out, _) = cli(&["--version"], &[], "");
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    // Issue 16 #13: the same build hash as GET /version.
    assert!(
        out.contains(&format!("build {}", rtcd::BUILD_HASH)),
        "{out}"
    );
}

#[tokio::test]
async fn bad_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rtcd.toml");
    std::fs::write(
        &path,
        "[api.security]\nenable_admin = true\nadmin_secret_key = \"short\"\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["--config", path.to_str().unwrap()], &[], "");
    assert_eq!(code, 64);
    assert!(err.contains("api.security.admin_secret_key"), "{err}");
    assert!(
        !err.contains("short\""),
        "the secret itself is not echoed: {err}"
    );

    std::fs::write(
        &path,
        "[api.http]\nlisten_address = \"127.0.0.1:0\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, _, err) = cli(&["--config", path.to_str().unwrap()], &[], "");
    assert_eq!(code, 64);
    assert!(err.contains("bogus"), "{err}");

    let env = vec![("RTCD_API_SECURITY_BCRYPT_COST".to_owned(), "ten".to_owned())];
    let (code, _, err) = cli(&[], &env, "");
    assert_eq!(code, 64);
    assert!(err.contains("RTCD_API_SECURITY_BCRYPT_COST"), "{err}");

    let (code, _, err) = cli(&["--config", "/nonexistent/rtcd.toml"], &[], "");
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/rtcd.toml"), "{err}");

    // A variable that is not UTF-8: refused by name if it is rtcd's, never a panic.
    {
        use std::os::unix::ffi::OsStrExt as _;
        let garbled = std::ffi::OsStr::from_bytes(b"127.0.0.1:\xff");
        let out = Command::new(BIN)
            .args(["clients", "list"])
            .env_clear()
            .env("RTCD_API_HTTP_LISTEN_ADDRESS", garbled)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains("RTCD_API_HTTP_LISTEN_ADDRESS") && err.contains("UTF-8"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }

    // The documented sample parses, but its placeholder admin secret is refused (issue 16
    // #10): it is public. With the secret set in the environment, as the sample advises, the
    // sample works.
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rtcd.sample.toml");
    let mut env = test_env(dir.path(), &[])
        .into_iter()
        .filter(|(k, _)| k == "RTCD_STORE_DATA_SOURCE")
        .collect::<Vec<_>>();
    let (code, _, err) = cli(&["--config", sample, "clients", "list"], &env, "");
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("api.security.admin_secret_key") && err.contains("placeholder"),
        "{err}"
    );
    env.push((
        "RTCD_API_SECURITY_ADMIN_SECRET_KEY".to_owned(),
        ADMIN_SECRET.to_owned(),
    ));
    let (code, _, err) = cli(&["--config", sample, "clients", "list"], &env, "");
    assert_eq!(code, 0, "{err}");
}

#[tokio::test]
async fn https_when_certificate_and_key_are_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let d = TestRtcd::start_in(
        dir.path(),
        &[
            ("RTCD_API_HTTP_TLS_CERT_FILE", cert_path.to_str().unwrap()),
            ("RTCD_API_HTTP_TLS_KEY_FILE", key_path.to_str().unwrap()),
        ],
    )
    .await
    .unwrap();
    let port = d.rtcd.http_addr().port();
    let tls_client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", d.rtcd.http_addr())
        .build()
        .unwrap();
    let resp = tls_client
        .post(format!("https://localhost:{port}/register"))
        .basic_auth("", Some(ADMIN_SECRET))
        .json(&json!({"clientID": "over-tls", "authKey": key_for("tls")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Plain HTTP to the TLS port gets no answer.
    assert!(
        client()
            .get(format!("http://127.0.0.1:{port}/version"))
            .send()
            .await
            .is_err()
    );
    d.stop().await;

    // A key that does not match the certificate is refused at start, naming the setting.
    let other = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).unwrap();
    std::fs::write(&key_path, other.signing_key.serialize_pem()).unwrap();
    let err = rtcd::config::Config::load(
        None,
        test_env(
            dir.path(),
            &[
                ("RTCD_API_HTTP_TLS_CERT_FILE", cert_path.to_str().unwrap()),
                ("RTCD_API_HTTP_TLS_KEY_FILE", key_path.to_str().unwrap()),
            ],
        ),
    )
    .unwrap_err();
    assert!(err.to_string().contains("api.http.tls_cert_file"), "{err}");
}

/// Runs the rest of its command line under a seccomp filter with systemd's
/// `RestrictAddressFamilies=` semantics: `socket()` with a family not in the comma-separated
/// list (argument 1) fails with EAFNOSUPPORT (libseccomp's Python bindings, Debian's
/// python3-seccomp).
const RESTRICT_FAMILIES: &str = r#"
import errno, os, socket, sys
import seccomp
allowed = {int(getattr(socket, name)) for name in sys.argv[1].split(",")}
f = seccomp.SyscallFilter(seccomp.ALLOW)
for family in range(64):
    if family not in allowed:
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, family))
f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, 64))
f.load()
os.execv(sys.argv[2], sys.argv[2:])
"#;

/// rtcd under `deploy/rtcd.service`'s address-family restriction (issue 16 #11): with a
/// wildcard media address it lists the interfaces (getifaddrs, a netlink socket) to find the
/// address to advertise. It starts under the unit's list, and, as the control that the
/// restriction is applied at all, fails without AF_NETLINK, naming the cause.
#[tokio::test]
async fn rtcd_starts_under_the_systemd_units_address_family_restriction() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/rtcd.service"
    ))
    .unwrap();
    let families: Vec<&str> = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .expect("the unit restricts address families")
        .split_whitespace()
        .collect();
    let bin = Path::new(env!("CARGO_BIN_EXE_rtcd-under-test"));
    let run = |families: String| async move {
        let dir = tempfile::tempdir().unwrap();
        let env = test_env(
            dir.path(),
            &[
                ("RTCD_RTC_ICE_ADDRESS_UDP", "0.0.0.0"),
                ("RTCD_GRPC_LISTEN_ADDRESS", "127.0.0.1:0"),
            ],
        );
        // Debian's Python, which has the Debian package (scripts/test.sh installs it).
        let wrapper = [
            "/usr/bin/python3",
            "-c",
            RESTRICT_FAMILIES,
            families.as_str(),
        ];
        let mut rtcd = RtcdProcess::spawn_wrapped(&wrapper, bin, &env).unwrap();
        let ready = rtcd.ready().await;
        if ready.is_ok() {
            rtcd.signal("TERM").unwrap();
        }
        let _ = rtcd.wait().await;
        (ready.is_ok(), rtcd.log.join("\n"))
    };
    let (ok, log) = run(families.join(",")).await;
    assert!(ok, "rtcd under {families:?} did not start:\n{log}");
    let without: Vec<&str> = families
        .iter()
        .copied()
        .filter(|f| *f != "AF_NETLINK")
        .collect();
    let (ok, log) = run(without.join(",")).await;
    assert!(
        !ok,
        "the filter is not applied: rtcd started without AF_NETLINK"
    );
    assert!(log.contains("cannot list interfaces"), "{log}");
}

/// Every metric family either daemon registers has a row in `docs/metrics.md` (issue 16 #15),
/// under the name a query uses (`_total` for counters). Families are read from the scrapes
/// (exact names, for those with series) and from the `register` calls in the daemons' metrics
/// modules (families without series yet are not in a scrape).
#[tokio::test]
async fn every_exported_metric_is_documented() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let doc = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rtcd = TestRtcd::start_in(dir.path(), &[]).await.unwrap();
    let proxy = rtcd_e2e::proxy::start(rtcd_e2e::proxy::base_config())
        .await
        .unwrap();
    let mut exact = Vec::new();
    for text in [rtcd.rtcd.metrics().encode(), proxy.metrics().encode()] {
        for rest in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (name, kind) = rest.split_once(' ').unwrap();
            exact.push(match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            });
        }
    }
    let mut registered = Vec::new();
    for (file, prefix) in [
        ("rtcd/src/metrics.rs", "rtcd_"),
        ("proxy/src/metrics.rs", "proxy_"),
    ] {
        let source = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for (i, _) in source.match_indices(".register(") {
            let sub = source[..i].ends_with("sub");
            let name = source[i..].split('"').nth(1).unwrap();
            let sub_prefix = if sub { "sfu_" } else { "" };
            registered.push(format!("{prefix}{sub_prefix}{name}"));
        }
    }
    assert!(registered.len() >= 25, "{registered:?}");
    let missing: Vec<&String> = exact
        .iter()
        .filter(|n| !doc.contains(&format!("| `{n}` |")))
        .chain(
            registered
                .iter()
                .filter(|n| !doc.contains(&format!("| `{n}"))),
        )
        .collect();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
    proxy.shutdown().await;
    rtcd.stop().await;
}

/// The `ENV` variables and `EXPOSE`d ports of a Dockerfile under `deploy/container/`.
fn container_defaults(file: &str) -> (Vec<(String, String)>, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/container")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut env, mut exposed) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
                env.push((k.to_owned(), v.to_owned()));
            }
        } else if let Some(rest) = line.strip_prefix("EXPOSE ") {
            exposed.extend(rest.split_whitespace().map(str::to_owned));
        }
    }
    assert!(
        !env.is_empty() && !exposed.is_empty(),
        "{file} has ENV and EXPOSE lines"
    );
    (env, exposed)
}

/// The container images' defaults (deploy/container/*.Dockerfile), checked without a container
/// engine: the real binaries started with exactly the images' `ENV` plus what
/// docs/containers.md says an operator must set behave as that page says (issue 16 defect 12).
#[tokio::test]
async fn the_container_defaults_serve_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (image_env, exposed) = container_defaults("rtcd.Dockerfile");
    let mut env = image_env.clone();
    // The image's volume path exists only in the image.
    env.retain(|(k, _)| k != "RTCD_STORE_DATA_SOURCE");
    env.push((
        "RTCD_STORE_DATA_SOURCE".into(),
        dir.path().join("db").display().to_string(),
    ));
    // What docs/containers.md says to set: the admin secret and the advertised address (the
    // test's stand-in for the host's public IP; this namespace has only loopback).
    env.push((
        "RTCD_API_SECURITY_ADMIN_SECRET_KEY".into(),
        ADMIN_SECRET.into(),
    ));
    env.push(("RTCD_RTC_ICE_HOST_OVERRIDE".into(), "127.0.0.1".into()));
    env.push(("RTCD_API_SECURITY_BCRYPT_COST".into(), "4".into()));
    let mut rtcd = RtcdProcess::spawn(Path::new(BIN), &env).unwrap();
    let http = rtcd.ready().await.unwrap();
    // Every listener on all interfaces, on the port the image exposes.
    for (field, port) in [
        ("http_addr", "8045/tcp"),
        ("metrics_addr", "8046/tcp"),
        ("grpc_addr", "8047/tcp"),
        ("ice_udp", "8443/udp"),
    ] {
        let addr = if field == "metrics_addr" {
            let v = &rtcd.ready_fields.as_ref().unwrap()["metrics_addr"];
            v.as_str()
                .unwrap()
                .trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .unwrap()
        } else {
            rtcd.ready_addr(field).unwrap()
        };
        assert!(
            addr.ip().is_unspecified(),
            "{field} = {addr}: loopback only in a container"
        );
        assert!(
            exposed.iter().any(|e| e == port),
            "{port} ({field}) is not exposed"
        );
        assert_eq!(addr.port().to_string(), port.split('/').next().unwrap());
    }
    let advertised = rtcd
        .log
        .iter()
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["advertised"].as_str().map(str::to_owned)
        })
        .expect("the media engine logs what it advertises");
    assert_eq!(advertised, "127.0.0.1:8443");
    // The admin secret is all a first registration needs.
    let base = format!("http://127.0.0.1:{}", http.port());
    let key = key_for("container");
    assert_eq!(
        register_at(&base, "platform", &key).await,
        StatusCode::CREATED
    );

    // The proxy with its image's defaults and the settings the page lists.
    let (proxy_env, proxy_exposed) = container_defaults("proxy.Dockerfile");
    let keys = format!(
        r#"[{{"kid":"hs1","algorithms":["HS256"],"secret":"{}"}}]"#,
        rtcd_e2e::proxy::HS_SECRET
    );
    let mut env = proxy_env;
    for (k, v) in [
        ("PROXY_RTCD_URL", "http://127.0.0.1:8047"),
        ("PROXY_RTCD_CLIENT_ID", "platform"),
        ("PROXY_RTCD_AUTH_KEY", key.as_str()),
        ("PROXY_AUTH_ISSUERS", rtcd_e2e::proxy::ISSUER),
        ("PROXY_AUTH_AUDIENCES", rtcd_e2e::proxy::AUDIENCE),
        ("PROXY_AUTH_KEYS", keys.as_str()),
    ] {
        env.push((k.into(), v.into()));
    }
    let (mut proxy, addr) =
        rtcd_e2e::proxy::spawn_process(env!("CARGO_BIN_EXE_proxy-under-test"), &env).unwrap();
    assert!(addr.ip().is_unspecified(), "the proxy listens on {addr}");
    assert!(
        proxy_exposed
            .iter()
            .any(|e| *e == format!("{}/tcp", addr.port()))
    );
    assert!(proxy_exposed.iter().any(|e| e == "8081/tcp"));
    let outcome = async {
        let local: std::net::SocketAddr = format!("127.0.0.1:{}", addr.port()).parse()?;
        let token = rtcd_e2e::proxy::hs_token(&rtcd_e2e::proxy::claims("ada", "standup"));
        let (mut client, outcome) = rtcd_e2e::proxy::join(local, Some(&token), "standup").await?;
        anyhow::ensure!(
            matches!(outcome, rtcd_e2e::proxy::JoinOutcome::Joined(_)),
            "{outcome:?}"
        );
        client.send(&json!({"type": "ping", "id": 1})).await?;
        anyhow::ensure!(client.expect("pong").await?["id"] == 1);
        // The session is open at rtcd (metrics on the image's metrics port). Its media worker
        // counts it when it takes the join up, which under a loaded suite came after the scrape
        // (the call counted, no session series yet): read until it shows, 5 s at most.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = rtcd_e2e::daemon::scrape("http://127.0.0.1:8046/metrics").await?;
            let sessions = rtcd_e2e::daemon::metric_sum(&text, "rtcd_sfu_sessions{");
            if sessions == 1.0 {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "rtcd sessions {sessions}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    rtcd.signal("TERM").unwrap();
    rtcd.wait().await.unwrap();
    outcome.unwrap();
}

/// Issue 14 #4: one declared-clients file (as a Secret mounted on every host) registers the
/// proxy on two hosts with no API call; a rotated key takes effect on the host that restarts
/// and on the one sent SIGHUP; no key reaches a log line or a data directory.
#[tokio::test]
async fn declared_clients_file_registers_on_every_host_and_rotates_on_restart_or_sighup() {
    use std::os::unix::fs::PermissionsExt as _;
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("clients");
    let declare = |text: &str| {
        // Written beside the file and renamed over it, as a Secret update does.
        let next = secrets.path().join("clients.next");
        std::fs::write(&next, text).unwrap();
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o400)).unwrap();
        std::fs::rename(&next, &file).unwrap();
    };
    let old_key = key_for("declared-old");
    let new_key = key_for("declared-new");
    declare(&format!("# proxies\nproxy-a:{old_key}\n"));
    let file_var = file.display().to_string();
    let overrides = [("RTCD_CLIENTS_DECLARED_FILE", file_var.as_str())];

    let login = |base: String, key: String| async move {
        client()
            .post(format!("{base}/login"))
            .json(&json!({"clientID": "proxy-a", "authKey": key}))
            .send()
            .await
            .unwrap()
            .status()
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut hosts = Vec::new();
    let mut bases = Vec::new();
    for dir in &dirs {
        let mut proc =
            RtcdProcess::spawn(Path::new(BIN), &test_env(dir.path(), &overrides)).unwrap();
        bases.push(format!("http://{}", proc.ready().await.unwrap()));
        hosts.push(proc);
    }
    for base in &bases {
        assert_eq!(
            login(base.clone(), old_key.clone()).await,
            StatusCode::OK,
            "declared client logs in at {base} without registration"
        );
    }

    // Rotate in the file, restart host 0 only.
    declare(&format!("# proxies\nproxy-a:{new_key}\n"));
    let mut logs = Vec::new();
    let mut first = hosts.remove(0);
    first.signal("TERM").unwrap();
    assert!(first.wait().await.unwrap().success());
    logs.extend(first.log);
    let mut first =
        RtcdProcess::spawn(Path::new(BIN), &test_env(dirs[0].path(), &overrides)).unwrap();
    bases[0] = format!("http://{}", first.ready().await.unwrap());
    assert_eq!(
        login(bases[0].clone(), new_key.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        login(bases[0].clone(), old_key.clone()).await,
        StatusCode::UNAUTHORIZED,
        "the old key stops working where the new file was applied"
    );
    // Host 1 has neither restarted nor reloaded: it still has the old key, until SIGHUP.
    assert_eq!(
        login(bases[1].clone(), old_key.clone()).await,
        StatusCode::OK
    );
    hosts[0].signal("HUP").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while login(bases[1].clone(), new_key.clone()).await != StatusCode::OK {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP applies the new key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        login(bases[1].clone(), old_key.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    hosts.insert(0, first);

    // A bad file on SIGHUP changes nothing and the host keeps serving.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    hosts[1].signal("HUP").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        login(bases[1].clone(), new_key.clone()).await,
        StatusCode::OK
    );

    for mut host in hosts {
        host.signal("TERM").unwrap();
        assert!(host.wait().await.unwrap().success());
        logs.extend(host.log);
    }
    // A file readable by others stops the start, naming the file, never the key.
    let mut refused =
        RtcdProcess::spawn(Path::new(BIN), &test_env(dirs[1].path(), &overrides)).unwrap();
    assert!(refused.ready().await.is_err(), "rtcd must not start");
    assert!(!refused.wait().await.unwrap().success());
    let refusal = refused.log.join("\n");
    assert!(
        refusal.contains("accessible by group or others") && refusal.contains(&file_var),
        "{refusal}"
    );
    logs.extend(refused.log);

    let logs = logs.join("\n");
    assert!(
        logs.contains("declared client created")
            && logs.contains("declared client key rotated")
            && logs.contains("SIGHUP: reloading declared clients")
            && logs.contains("declared clients not reloaded"),
        "one INFO line per change:\n{logs}"
    );
    for key in [&old_key, &new_key] {
        assert!(!logs.contains(key.as_str()), "a key reached the log");
        for dir in &dirs {
            for f in files_under(dir.path()) {
                let bytes = std::fs::read(&f).unwrap();
                assert!(
                    !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                    "{} holds a key in clear",
                    f.display()
                );
            }
        }
    }
}
