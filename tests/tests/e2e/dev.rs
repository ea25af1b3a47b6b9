//! The one-command development stack (`rtcd-dev`): dev tokens from the proxy, a call through
//! proxy and rtcd, secrets created once (owner-only) and reused on restart.

use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use rtcd_e2e::media::{Participant, keeps_flowing};

fn options(dir: &std::path::Path) -> rtcd_dev::Options {
    rtcd_dev::Options {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".into(),
        loopback: true,
        udp_port: 0,
        rtc: Vec::new(),
    }
}

async fn dev_token(base: &str, room: &str, name: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let resp = reqwest::get(format!("{base}/dev/token?room={room}&name={name}"))
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap_or_default())
}

#[tokio::test]
async fn dev_stack_mints_tokens_and_carries_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let stack = rtcd_dev::start(options(dir.path())).await.unwrap();
    let base = format!("http://{}", stack.proxy.addr());
    let ws = format!("ws://{}/ws", stack.proxy.addr());

    let (status, alice) = dev_token(&base, "demo", "Alice").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{alice}");
    let (_, bob) = dev_token(&base, "demo", "Bob").await;
    assert_ne!(alice["user"], bob["user"], "every tab is its own user");
    let (status, body) = dev_token(&base, "bad%20room%2F", "x").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");
    // Another role, to try the waiting room and the lobby from the demo page.
    let (status, member) = dev_token(&base, "demo&role=member", "Mo").await;
    assert_eq!(status, reqwest::StatusCode::OK, "{member}");
    let (_, joined) = rtcd_e2e::proxy::join(stack.proxy.addr(), member["token"].as_str(), "demo")
        .await
        .unwrap();
    match joined {
        rtcd_e2e::proxy::JoinOutcome::Joined(m) => assert_eq!(m["role"], "member"),
        other => panic!("{other:?}"),
    }
    let (status, body) = dev_token(&base, "demo&role=owner", "x").await;
    assert_eq!(status, reqwest::StatusCode::BAD_REQUEST, "{body}");

    let a = Participant::join_via_proxy(&ws, alice["token"].as_str().unwrap(), "demo", "alice")
        .await
        .unwrap();
    let b = Participant::join_via_proxy(&ws, bob["token"].as_str().unwrap(), "demo", "bob")
        .await
        .unwrap();
    for p in [&a, &b] {
        p.add_track("audio").await.unwrap();
        p.add_track("video").await.unwrap();
        p.renegotiate().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.received("bob", "video") >= 20
        && b.received("alice", "video") >= 20
        && a.received("bob", "audio") >= 20)
    {
        assert!(
            Instant::now() < deadline,
            "media did not flow through the dev stack: {:?} / {:?}",
            a.flows(),
            b.flows()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And keeps flowing, window after window.
    keeps_flowing(
        &a,
        &["bob/audio", "bob/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    keeps_flowing(
        &b,
        &["alice/audio", "alice/video"],
        Duration::from_secs(3),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    a.close().await;
    b.close().await;
    stack.shutdown().await;

    for secret in ["admin-secret", "proxy-key", "jwt-secret"] {
        let meta = std::fs::metadata(dir.path().join(secret)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{secret}");
    }
    let before = std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap();
    // A restart reuses the secrets and the proxy's existing registration.
    let again = rtcd_dev::start(options(dir.path())).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("jwt-secret")).unwrap(),
        before
    );
    let (status, _) = dev_token(&format!("http://{}", again.proxy.addr()), "demo", "Carol").await;
    assert_eq!(status, reqwest::StatusCode::OK);
    again.shutdown().await;
}

#[tokio::test]
async fn dev_tokens_do_not_exist_outside_dev_mode() {
    let proxy = rtcd_e2e::proxy::start(rtcd_e2e::proxy::base_config())
        .await
        .unwrap();
    let resp = reqwest::get(format!(
        "http://{}/dev/token?room=demo&name=x",
        proxy.addr()
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
    proxy.shutdown().await;
}

/// Issue 29 #5: on a machine whose only interface is loopback (the test namespace), rtcd-dev
/// without `--loopback` refuses to start naming its own flag, not rtcd's `rtc.*` settings.
#[tokio::test]
async fn without_an_address_but_loopback_the_dev_stack_names_its_loopback_flag() {
    let only_loopback = only_loopback();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path());
    opts.loopback = false;
    let result = rtcd_dev::start(opts).await;
    if !only_loopback {
        // Outside the suite's namespace (a machine with a network) the stack starts.
        result.unwrap().shutdown().await;
        return;
    }
    let error = format!("{:#}", result.err().expect("no address to advertise"));
    assert!(error.contains("--loopback"), "{error}");
    assert!(!error.contains("rtc.ice_address_udp"), "{error}");
}

/// Whether every interface address of this machine is loopback or link-local (from `ip addr`,
/// so the test does not share the code it checks).
fn only_loopback() -> bool {
    let listing = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listing
        .lines()
        .filter(|l| l.contains(" inet ") || l.contains(" inet6 "))
        .all(|l| l.contains(" lo ") || l.contains("scope link"))
}

/// Issue 29 #8: the README's server-token recipe for the dev stack works as written (run by
/// `sh` from the directory holding `data/dev/`), and `--proxy-config` brings a production
/// proxy file's `[webhooks]` to the dev stack: a join there reaches a real receiver.
#[tokio::test]
async fn the_readme_server_token_recipe_and_a_proxy_config_file_work_on_the_dev_stack() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
    )
    .unwrap();
    let marker = readme
        .find("<!-- dev-server-token:")
        .expect("the README's dev server-token block");
    let start = marker + readme[marker..].find("```sh\n").unwrap() + "```sh\n".len();
    let script = &readme[start..start + readme[start..].find("```").unwrap()];

    let secret = "dev-webhook-secret-0123456789abcdef";
    let receiver = rtcd_e2e::webhook::WebhookReceiver::start(secret, 0)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[webhooks]\nurls = [\"{}\"]\nsecret = \"{secret}\"\n\n[rooms]\nlobby = false\n",
            receiver.url()
        ),
    )
    .unwrap();
    let proxy_file = rtcd_dev::read_proxy_file(&file).unwrap();
    let opts = options(&work.path().join("data/dev"));
    let stack = rtcd_dev::start_with_proxy(opts, |c| rtcd_dev::apply_proxy_file(c, proxy_file))
        .await
        .unwrap();
    let addr = stack.proxy.addr();

    let base = format!("http://{addr}");
    let (_, member) = dev_token(&base, "demo&role=member", "Mo").await;
    let (_c, joined) = rtcd_e2e::proxy::join(addr, member["token"].as_str(), "demo")
        .await
        .unwrap();
    assert_eq!(joined.code(), 0, "{joined:?}");

    let script = script.replace("http://127.0.0.1:8080", &base);
    let output = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .current_dir(work.path())
        .output()
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(body["rooms"][0]["name"], "demo", "{body}");

    let deadline = Instant::now() + Duration::from_secs(10);
    while !receiver
        .delivered()
        .iter()
        .any(|e| e.kind() == "participant_joined")
    {
        assert!(Instant::now() < deadline, "no webhook from the dev stack");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.shutdown().await;
}
