//! Calls that must last (issue 10): real browsers (Chromium and Firefox, in every pairing)
//! in a call through the real stack (`rtcd-dev`: rtcd + proxy + the demo page), held for
//! minutes while participants join and leave, mute, turn the camera off and share the
//! screen; every remote track must keep flowing in every 5 s window.
//!
//! Each test creates its own LAN-like network namespace ([`rtcd_e2e::netns`]): Firefox
//! gathers no loopback ICE candidates, so the stack and the browsers talk over a veth pair
//! whose both ends are in that namespace. The page is served from `http://127.0.0.1:PORT`
//! (a secure context, so `getUserMedia` works); media flows over `10.203.0.x`.

use anyhow::{Context as _, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage, Browsers, artifacts_dir};
use rtcd_e2e::netns::{self, LAN_ADDR, LAN_PEER};
use serde_json::json;

/// Host candidates gathered by a fresh `RTCPeerConnection` (one data channel), as
/// `address typ` pairs.
async fn gathered_candidates(page: &BrowserPage) -> anyhow::Result<Vec<String>> {
    let value = page
        .eval_async(
            "const done = arguments[arguments.length - 1];\
             const pc = new RTCPeerConnection(); pc.createDataChannel('probe');\
             const found = []; const finish = () => { pc.close(); done(found); };\
             pc.onicecandidate = (e) => { if (e.candidate && e.candidate.candidate) {\
               const f = e.candidate.candidate.split(' '); found.push(f[4] + ' ' + f[7]); }\
               else if (!e.candidate) finish(); };\
             pc.createOffer().then((o) => pc.setLocalDescription(o));\
             setTimeout(finish, 10000);",
            json!([]),
        )
        .await?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect())
}

#[test]
fn harness_runs_chromium_and_firefox_in_a_namespace_of_its_own() -> anyhow::Result<()> {
    let outer = netns::current_namespace()?;
    netns::run(move || async move {
        // The namespace is the test's own, and everything started from it inherits it:
        // runtime workers, blocking-pool threads, plain threads, child processes.
        let inner = netns::current_namespace()?;
        ensure!(inner != outer, "still in the outer namespace {outer}");
        let blocking = tokio::task::spawn_blocking(netns::current_namespace).await??;
        let thread = std::thread::spawn(netns::current_namespace)
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
        ensure!(
            blocking == inner && thread == inner,
            "{blocking} / {thread} != {inner}"
        );
        let addrs = tokio::process::Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .await?;
        let addrs = String::from_utf8_lossy(&addrs.stdout);
        ensure!(
            addrs.contains(&format!("{LAN_ADDR}/24")) && addrs.contains(&format!("{LAN_PEER}/24")),
            "a child process sees other interfaces: {addrs}"
        );

        let dir = tempfile::tempdir()?;
        let stack = rtcd_dev::start(rtcd_dev::Options {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".into(),
            loopback: false,
            udp_port: 0,
        })
        .await?;
        let browsers = Browsers::lan();
        for kind in [BrowserKind::Chromium, BrowserKind::Firefox] {
            let page = browsers.page(kind).await?;
            // The bare demo page (no room): served by the proxy, script running.
            page.goto(&format!("http://{}/", stack.proxy.addr()))
                .await?;
            page.wait_for("document.body.dataset.reason === 'no_room'", BROWSER_STEP)
                .await?;
            ensure!(
                page.eval("return arguments[0] + 1;", json!([41])).await? == json!(42),
                "{kind}: eval with arguments"
            );
            // Fake camera and microphone, without a prompt.
            let kinds = page
                .eval(
                    "return navigator.mediaDevices.getUserMedia({audio: true, video: true})\
                       .then((s) => { const k = s.getTracks().map((t) => t.kind).sort();\
                         s.getTracks().forEach((t) => t.stop()); return k; })\
                       .catch((e) => 'error: ' + e);",
                    json!([]),
                )
                .await?;
            ensure!(
                kinds == json!(["audio", "video"]),
                "{kind}: getUserMedia gave {kinds}"
            );
            // Host candidates on the namespace's addresses only (no loopback, no mDNS).
            let candidates = gathered_candidates(&page).await?;
            ensure!(
                !candidates.is_empty() && candidates.iter().all(|c| c.starts_with("10.203.0.")),
                "{kind}: candidates {candidates:?}"
            );
            eprintln!("{kind}: host candidates {candidates:?}");
            // Errors thrown in the page reach the test.
            let thrown = page.eval("throw new Error('boom');", json!([])).await;
            ensure!(
                format!("{:#}", thrown.as_ref().err().context("no error")?).contains("boom"),
                "{kind}: {thrown:?}"
            );
            page.screenshot(&artifacts_dir().join(format!("calls-harness-{kind}.png")))
                .await?;
            let errors = page.unexpected_errors(&[]).await?;
            ensure!(errors.is_empty(), "{kind}: console errors {errors:?}");
            page.close().await?;
        }
        drop(browsers);
        stack.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })
}
