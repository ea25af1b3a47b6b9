//! Calls that must last (issue 10): real browsers (Chromium and Firefox, in every pairing)
//! in a call through the real stack (`rtcd-dev`: rtcd + proxy + the demo page), held for
//! minutes while participants join and leave, mute, turn the camera off and share the
//! screen; every remote track must keep flowing in every 5 s window.
//!
//! Each test creates its own LAN-like network namespace ([`rtcd_e2e::netns`]): Firefox
//! gathers no loopback ICE candidates, so the stack and the browsers talk over a veth pair
//! whose both ends are in that namespace. The page is served from `http://127.0.0.1:PORT`
//! (a secure context, so `getUserMedia` works); media flows over `10.203.0.x`.
//!
//! One call at a time: each already runs up to 3 browsers with fake 30 fps cameras on a
//! 2-core CI machine, and CPU starvation would look like media stalls. cargo-nextest's test
//! group `browser-calls` (`.config/nextest.toml`, max-threads 1) serializes this module and
//! `turn::`'s calls without parking a test thread; plain `cargo test` needs `--test-threads=1`.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage, Browsers, artifacts_dir};
use rtcd_e2e::flow::{self, Flow, PageId, Thresholds};
use rtcd_e2e::netns::{self, LAN_ADDR, LAN_PEER};
use serde_json::{Value, json};

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
            rtc: Vec::new(),
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
            // A screen to share, without a picker, after a click (Firefox wants a gesture).
            page.eval(
                "const b = document.createElement('button'); b.id = 'probe-screen';\
                 b.textContent = 'share'; window.__screen = null;\
                 b.onclick = () => navigator.mediaDevices.getDisplayMedia({video: true})\
                   .then((s) => { window.__screen = s.getTracks().map((t) => t.kind);\
                     s.getTracks().forEach((t) => t.stop()); })\
                   .catch((e) => { window.__screen = 'error: ' + e; });\
                 document.body.prepend(b); return true;",
                json!([]),
            )
            .await?;
            page.click("probe-screen").await?;
            let screen = page.wait_for("window.__screen", BROWSER_STEP).await?;
            eprintln!("{kind}: getDisplayMedia gave {screen}");
            // Headless Firefox has no screen to capture (NotFoundError even with fake
            // streams): the calls let a Chromium page share.
            if kind == BrowserKind::Chromium {
                ensure!(
                    screen == json!(["video"]),
                    "{kind}: getDisplayMedia gave {screen}"
                );
            }
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

/// Multiplies every hold of the long calls (`RTCD_E2E_CALL_SCALE`, default 1: about two
/// minutes per call), e.g. 0.25 for a quick local run.
pub(crate) fn scaled(secs: u64) -> Duration {
    let scale = std::env::var("RTCD_E2E_CALL_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs as f64 * scale)
}

/// The pages of one call, in [`Flow`] order.
pub(crate) struct Call {
    pub(crate) url: String,
    pub(crate) browsers: Browsers,
    pub(crate) pages: Vec<BrowserPage>,
    pub(crate) names: Vec<String>,
    pub(crate) flow: Flow,
}

/// rtcd-dev (rtcd, proxy and demo page) for a call in the LAN namespace, with `rtc` settings
/// (`RTCD_RTC_*`); the directory holds its data and must live as long as the stack.
pub(crate) async fn lan_stack(
    rtc: Vec<(String, String)>,
) -> anyhow::Result<(tempfile::TempDir, rtcd_dev::DevStack)> {
    rtcd_e2e::init_logs();
    let dir = tempfile::tempdir()?;
    let stack = rtcd_dev::start(rtcd_dev::Options {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".into(),
        loopback: false,
        udp_port: 0,
        rtc,
    })
    .await?;
    Ok((dir, stack))
}

impl Call {
    /// A call in `room` of `stack`'s demo page, nobody in it yet.
    pub(crate) fn new(stack: &rtcd_dev::DevStack, room: &str) -> Self {
        Self {
            url: format!("http://{}/?room={room}", stack.proxy.addr()),
            browsers: Browsers::lan(),
            pages: Vec::new(),
            names: Vec::new(),
            flow: Flow::new(),
        }
    }

    /// Opens the demo page as `name` in a new `kind` browser and starts watching it.
    pub(crate) async fn join(&mut self, kind: BrowserKind, name: &str) -> anyhow::Result<PageId> {
        let page = self.browsers.page(kind).await?;
        page.goto(&format!("{}&name={name}", self.url)).await?;
        let id = self.flow.watch(&page, name).await?;
        page.wait_state("connected").await?;
        self.pages.push(page);
        self.names.push(name.to_owned());
        Ok(id)
    }

    pub(crate) async fn hold(&mut self, duration: Duration) -> anyhow::Result<()> {
        let pages: Vec<&BrowserPage> = self.pages.iter().collect();
        self.flow.hold(&pages, duration).await
    }

    /// Waits until page `id` plays `count` remote camera videos with real frames.
    pub(crate) async fn plays(&self, id: PageId, count: usize) -> anyhow::Result<()> {
        self.pages[id]
            .wait_for(
                &format!(
                    "[...document.querySelectorAll('video[data-participant]:not([data-source=screen])')]\
                       .filter(v => v.videoWidth > 0 && v.videoHeight > 0).length === {count}"
                ),
                BROWSER_STEP,
            )
            .await
            .with_context(|| format!("{} does not play {count} remote camera(s)", self.names[id]))
            .map(|_| ())
    }

    pub(crate) async fn click(&self, id: PageId, button: &str) -> anyhow::Result<()> {
        self.pages[id]
            .wait_for(
                &format!("!document.getElementById({}).disabled", json!(button)),
                BROWSER_STEP,
            )
            .await?;
        self.pages[id].click(button).await
    }

    /// Screenshots of every page, named after the test.
    async fn screenshots(&self, tag: &str) {
        for (page, name) in self.pages.iter().zip(&self.names) {
            let _ = page
                .screenshot(&artifacts_dir().join(format!("calls-{tag}-{name}.png")))
                .await;
        }
    }
}

/// Two pages of kinds `a` and `b` in a call through rtcd-dev for about two minutes: a third
/// joins, someone shares a screen, the third leaves, `a` mutes and unmutes, `b` turns its
/// camera off and on; every remote track flows in every 5 s window throughout. Headless
/// Firefox cannot capture a screen, so a Chromium page shares (the third participant is
/// Chromium when both are Firefox). Cameras publish simulcast and pages send their views (the
/// SDK's defaults); `RTCD_E2E_LONG_SIMULCAST=0` publishes single-layer cameras without views
/// (the demo page's `?simulcast=0&adaptive_stream=0`), `RTCD_E2E_LONG_ADAPTIVE=0` runs rtcd
/// without adaptive video (on by default: every subscriber the best layer sending).
async fn long_call(a: BrowserKind, b: BrowserKind) -> anyhow::Result<()> {
    let tag = format!("{a}-{b}");
    let mut rtc = Vec::new();
    if std::env::var("RTCD_E2E_LONG_ADAPTIVE").is_ok_and(|v| v == "0") {
        rtc.push(("RTCD_RTC_ADAPTIVE_VIDEO".into(), "false".into()));
    }
    let (_dir, stack) = lan_stack(rtc).await?;
    let mut call = Call::new(&stack, &format!("long-{tag}"));
    if std::env::var("RTCD_E2E_LONG_SIMULCAST").is_ok_and(|v| v == "0") {
        call.url.push_str("&simulcast=0&adaptive_stream=0");
    }
    let outcome = scenario(&mut call, a, b).await;
    conclude(call, stack, &tag, outcome).await
}

/// Ends a call: pulls the last samples, reports the flow, collects console errors (with
/// screenshots and diagnostics on failure), closes the pages and stops the stack.
pub(crate) async fn conclude(
    mut call: Call,
    stack: rtcd_dev::DevStack,
    tag: &str,
    outcome: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let pulled = {
        let pages: Vec<&BrowserPage> = call.pages.iter().collect();
        call.flow.pull(&pages).await
    };
    let report = call.flow.report(Thresholds::CALLS);
    eprintln!("== calls {tag}\n{report}");
    let mut failures = Vec::new();
    if let Err(e) = outcome.and(pulled) {
        failures.push(format!("{e:#}"));
    }
    if !report.is_clean() {
        failures.push(format!("media did not flow continuously:\n{report}"));
    }
    let mut consoles = Vec::new();
    for (page, name) in call.pages.iter().zip(&call.names) {
        let console = page.console().await.unwrap_or_default();
        let mut errors: Vec<String> = console
            .iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message.clone())
            .collect();
        match page.page_errors().await {
            Ok(thrown) => errors.extend(thrown),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
        if !errors.is_empty() {
            failures.push(format!("{name}: console errors {errors:?}"));
        }
        consoles.push(console);
    }
    if !failures.is_empty() {
        call.screenshots(tag).await;
        for ((page, name), console) in call.pages.iter().zip(&call.names).zip(&consoles) {
            eprintln!("{name}: {}", flow::diagnose(page).await);
            let noted: Vec<&str> = console
                .iter()
                .filter(|e| e.level == "SEVERE" || e.level == "WARNING")
                .map(|e| e.message.as_str())
                .collect();
            eprintln!(
                "{name}: console warnings and errors (last 20 of {}): {:#?}",
                noted.len(),
                &noted[noted.len().saturating_sub(20)..]
            );
        }
    }
    for page in call.pages.drain(..) {
        let _ = page.close().await;
    }
    drop(call);
    stack.shutdown().await;
    if !failures.is_empty() {
        bail!("{tag}: {}", failures.join("\n"));
    }
    Ok(())
}

async fn scenario(call: &mut Call, a: BrowserKind, b: BrowserKind) -> anyhow::Result<()> {
    let alice = call.join(a, &format!("Alice-{a}")).await?;
    let bob = call.join(b, &format!("Bob-{b}")).await?;
    call.plays(alice, 1).await?;
    call.plays(bob, 1).await?;
    call.hold(scaled(20)).await?;

    // A third participant joins.
    let c = if a == BrowserKind::Firefox && b == BrowserKind::Firefox {
        BrowserKind::Chromium
    } else {
        a
    };
    let carol = call.join(c, &format!("Carol-{c}")).await?;
    for id in [alice, bob, carol] {
        call.plays(id, 2).await?;
    }
    call.hold(scaled(15)).await?;

    // Someone shares a screen, then stops: everyone else plays it meanwhile.
    let sharer = if a == BrowserKind::Chromium {
        alice
    } else if b == BrowserKind::Chromium {
        bob
    } else {
        carol
    };
    call.click(sharer, "screen").await?;
    call.flow.source_on(sharer, "screen");
    for id in [alice, bob, carol].into_iter().filter(|id| *id != sharer) {
        call.pages[id]
            .wait_for(
                "[...document.querySelectorAll('video[data-participant][data-source=screen]')]\
                   .filter(v => v.videoWidth > 0).length === 1",
                BROWSER_STEP,
            )
            .await
            .with_context(|| format!("{} does not play the shared screen", call.names[id]))?;
    }
    call.hold(scaled(15)).await?;
    call.flow.source_off(sharer, "screen");
    call.click(sharer, "screen").await?;
    call.hold(scaled(5)).await?;

    // The third participant leaves.
    call.hold(Duration::ZERO).await?;
    call.flow.left(carol);
    call.click(carol, "leave").await?;
    call.pages[carol].wait_state("closed").await?;
    for id in [alice, bob] {
        call.plays(id, 1).await?;
    }
    call.hold(scaled(10)).await?;

    // Alice mutes and unmutes her microphone.
    call.flow.source_off(alice, "microphone");
    call.click(alice, "mic").await?;
    call.hold(scaled(10)).await?;
    call.click(alice, "mic").await?;
    call.flow.source_on(alice, "microphone");
    call.hold(scaled(10)).await?;

    // Bob turns his camera off and on.
    call.flow.source_off(bob, "camera");
    call.click(bob, "camera").await?;
    call.hold(scaled(10)).await?;
    call.click(bob, "camera").await?;
    call.flow.source_on(bob, "camera");
    call.hold(scaled(10)).await?;
    call.plays(alice, 1).await?;
    call.plays(bob, 1).await?;
    Ok(())
}

/// Drops every UDP datagram to or from `port` in this (the test's own) network namespace.
async fn block_udp(port: u16) -> anyhow::Result<()> {
    netns::nft(&format!(
        "table inet block_udp {{\n\
           chain input {{ type filter hook input priority 0; udp dport {port} drop; udp sport {port} drop; }}\n\
           chain output {{ type filter hook output priority 0; udp sport {port} drop; udp dport {port} drop; }}\n\
         }}\n"
    ))
    .await
}

/// The transport protocol of the page's selected ICE candidate pair (`udp` or `tcp`).
async fn selected_protocol(page: &BrowserPage) -> anyhow::Result<String> {
    let ice = page.local_ice().await?;
    Ok(ice["selected"]["protocol"]
        .as_str()
        .unwrap_or("none")
        .to_owned())
}

/// ICE-TCP (issue 11): every UDP datagram to or from rtcd's media port is dropped in the
/// test's namespace, so two Chromium pages can only reach rtcd over its passive TCP candidate;
/// their call must still carry media both ways in every 5 s window for a minute.
async fn call_over_ice_tcp() -> anyhow::Result<()> {
    let (_dir, stack) = lan_stack(vec![("RTCD_RTC_ICE_PORT_TCP".into(), "0".into())]).await?;
    let tcp = stack
        .rtcd
        .sfu()
        .tcp_addr()
        .context("rtcd has no ICE-TCP port")?;
    block_udp(stack.rtcd.sfu().udp_addr().port()).await?;
    eprintln!("UDP to rtcd blocked; ICE-TCP on {tcp}");
    let mut call = Call::new(&stack, "ice-tcp");
    let outcome = async {
        let alice = call.join(BrowserKind::Chromium, "Alice-tcp").await?;
        let bob = call.join(BrowserKind::Chromium, "Bob-tcp").await?;
        call.plays(alice, 1).await?;
        call.plays(bob, 1).await?;
        call.hold(scaled(60)).await?;
        for id in [alice, bob] {
            let protocol = selected_protocol(&call.pages[id]).await?;
            ensure!(
                protocol == "tcp",
                "{}: selected candidate pair is {protocol}, not tcp",
                call.names[id]
            );
        }
        Ok(())
    }
    .await;
    conclude(call, stack, "ice-tcp", outcome).await
}

/// A page's local ICE candidates (address, port) and the local end of its selected pair.
async fn local_candidates(
    page: &BrowserPage,
) -> anyhow::Result<(Vec<(String, u16)>, Option<(String, u16)>)> {
    let ice = page.local_ice().await?;
    let endpoint = |address: &serde_json::Value, port: &serde_json::Value| {
        Some((
            address.as_str()?.to_owned(),
            u16::try_from(port.as_u64()?).ok()?,
        ))
    };
    let all = ice["all"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| endpoint(&c[0], &c[1])).collect())
        .unwrap_or_default();
    let selected = endpoint(&ice["selected"]["address"], &ice["selected"]["port"]);
    Ok((all, selected))
}

/// The test's stand-in for a device losing its network: every UDP datagram from or to the
/// given local transport addresses is dropped from now on (in the test's own namespace).
async fn cut(endpoints: &[(String, u16)]) -> anyhow::Result<()> {
    let mut output = String::new();
    let mut input = String::new();
    for (ip, port) in endpoints {
        ensure!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "not an IPv4 address: {ip}"
        );
        output.push_str(&format!("ip saddr {ip} udp sport {port} drop; "));
        input.push_str(&format!("ip daddr {ip} udp dport {port} drop; "));
    }
    netns::nft(&format!(
        "table inet moved {{\n\
           chain output {{ type filter hook output priority 0; {output}}}\n\
           chain input {{ type filter hook input priority 0; {input}}}\n\
         }}\n"
    ))
    .await
}

/// ICE restart (issue 11): Bob's device moves to a new address mid-call (a new address appears
/// and every address and port his connection used goes dead). The SDK restarts ICE on the same
/// session; rtcd answers with new credentials and keeps his session, tracks and subscriptions:
/// no rejoin, a new selected candidate pair, and media both ways in every 5 s window before
/// the move and from shortly after it for 45 s. Alice's own flow never stops.
async fn call_through_an_address_change() -> anyhow::Result<()> {
    let (_dir, stack) = lan_stack(Vec::new()).await?;
    let mut call = Call::new(&stack, "moves");
    let outcome = async {
        let alice = call.join(BrowserKind::Chromium, "Alice-stays").await?;
        let bob = call.join(BrowserKind::Chromium, "Bob-moves").await?;
        call.plays(alice, 1).await?;
        call.plays(bob, 1).await?;
        call.hold(scaled(20)).await?;
        let joins = call.pages[bob].eval("return rtcd.joins", json!([])).await?;
        let (candidates, before) = local_candidates(&call.pages[bob]).await?;
        let before = before.context("Bob has no selected candidate pair")?;
        ensure!(
            candidates.contains(&before),
            "{before:?} not in {candidates:?}"
        );

        // The move: a new address on the device, the old ones dead.
        call.pages[bob]
            .eval(
                "rtcd.addEventListener('icerestart', () => { window.__restartAt = Date.now(); });\
                 const pc = rtcd.peerConnection;\
                 pc.addEventListener('iceconnectionstatechange', () => {\
                   if (pc.iceConnectionState === 'disconnected' && !window.__lostAt)\
                     window.__lostAt = Date.now(); });\
                 return true",
                json!([]),
            )
            .await?;
        netns::ip(&["addr", "add", "10.203.0.3/24", "dev", "v1"])?;
        call.flow.network_lost(bob);
        let cut_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as f64;
        cut(&candidates).await?;
        eprintln!("Bob's candidates {candidates:?} cut (selected {before:?})");
        call.pages[bob]
            .wait_for(
                "rtcd.iceRestarts >= 1 && rtcd.peerConnection \
                   && ['connected', 'completed'].includes(rtcd.peerConnection.iceConnectionState)",
                BROWSER_STEP,
            )
            .await
            .context("Bob's ICE did not restart and reconnect")?;
        call.flow.network_back(bob);
        let restart_at = call.pages[bob]
            .eval("return window.__restartAt || 0", json!([]))
            .await?
            .as_f64()
            .unwrap_or_default();
        let lost_at = call.pages[bob]
            .eval("return window.__lostAt || 0", json!([]))
            .await?
            .as_f64()
            .unwrap_or_default();
        let back_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as f64;
        eprintln!(
            "Bob after the cut: ICE disconnected {:.1} s, restart {:.1} s, connected again {:.1} s",
            (lost_at - cut_at) / 1000.0,
            (restart_at - cut_at) / 1000.0,
            (back_at - cut_at) / 1000.0
        );
        let (_, after) = local_candidates(&call.pages[bob]).await?;
        let after = after.context("Bob has no selected candidate pair after the restart")?;
        ensure!(
            !candidates.contains(&after),
            "Bob's selected pair {after:?} uses a cut address"
        );
        eprintln!("Bob moved: {before:?} -> {after:?}");
        call.hold(scaled(45)).await?;
        let joins_after = call.pages[bob].eval("return rtcd.joins", json!([])).await?;
        ensure!(
            joins == joins_after,
            "Bob rejoined ({joins} -> {joins_after} joins) instead of restarting ICE"
        );
        let restarts = call.pages[bob]
            .eval("return rtcd.iceRestarts", json!([]))
            .await?;
        eprintln!("Bob: {restarts} ICE restart(s), {joins_after} join(s)");
        Ok(())
    }
    .await;
    conclude(call, stack, "ice-restart", outcome).await
}

/// Loss repair for every stream a browser receives (issue 11). Without `a=rtcp-rsize` Chromium
/// sends its NACKs and PLIs in compound packets that start with a receiver report, whose first
/// block may be about another stream or missing altogether; rtcd must still answer each request
/// on the stream it names. Bob receives Alice's and Carol's cameras while 3 % of the datagrams
/// rtcd sends him are dropped for 20 s: both cameras keep playing in every 5 s window, Bob asks
/// for repairs on each of them, and at least 80 % of what he lost arrives again as RTX.
async fn loss_repaired_on_every_stream() -> anyhow::Result<()> {
    let (_dir, stack) = lan_stack(Vec::new()).await?;
    let mut call = Call::new(&stack, "lossy");
    let outcome = async {
        let alice = call.join(BrowserKind::Chromium, "Alice-sends").await?;
        let carol = call.join(BrowserKind::Chromium, "Carol-sends").await?;
        let bob = call.join(BrowserKind::Chromium, "Bob-loses").await?;
        for id in [alice, carol, bob] {
            call.plays(id, 2).await?;
        }
        call.hold(scaled(5)).await?;
        let (_, selected) = local_candidates(&call.pages[bob]).await?;
        let (ip, port) = selected.context("Bob has no selected candidate pair")?;
        ensure!(
            ip.parse::<std::net::Ipv4Addr>().is_ok(),
            "not an IPv4 address: {ip}"
        );
        netns::nft(&format!(
            "table inet lossy {{\n\
               chain input {{ type filter hook input priority 0; \
                 ip daddr {ip} udp dport {port} numgen random mod 100 < 3 drop; }}\n\
             }}\n"
        ))
        .await?;
        call.hold(scaled(20)).await?;
        netns::nft("delete table inet lossy\n").await?;
        call.hold(scaled(5)).await?;
        let video = call.pages[bob]
            .eval_async(
                "const done = arguments[arguments.length - 1];\
                 rtcd.peerConnection.getStats().then((r) => { const out = [];\
                   r.forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video')\
                     out.push({mid: s.mid, nacks: s.nackCount, plis: s.pliCount,\
                       lost: s.packetsLost, received: s.packetsReceived,\
                       repaired: s.retransmittedPacketsReceived, freezes: s.freezeCount,\
                       frames: s.framesDecoded}); });\
                   done(out); }, (e) => done({ error: String(e) }));",
                json!([]),
            )
            .await?;
        eprintln!("Bob's video after the loss: {video}");
        let streams = video.as_array().context("getStats failed")?;
        let playing: Vec<&serde_json::Value> = streams
            .iter()
            .filter(|s| s["frames"].as_u64().unwrap_or(0) > 0)
            .collect();
        ensure!(
            playing.len() == 2,
            "Bob plays {} video streams: {video}",
            playing.len()
        );
        // Chromium counts a packet lost when its sequence number is skipped, and a repair
        // when its retransmission (RTX) arrives; without repairs its NACKs repeat and its
        // video stalls until a keyframe (before the fix: 5 of 30 repaired, 16 s stalls).
        for stream in playing {
            let lost = stream["lost"].as_u64().unwrap_or(0);
            let repaired = stream["repaired"].as_u64().unwrap_or(0);
            ensure!(
                lost >= 5,
                "Bob lost few packets, the loss did not happen: {stream}"
            );
            ensure!(
                repaired * 10 >= lost * 8,
                "rtcd repaired {repaired} of the {lost} packets Bob lost: {stream}"
            );
        }
        Ok(())
    }
    .await;
    conclude(call, stack, "lossy", outcome).await
}

/// Issue 12 on the demo page: moderators see a menu button on every remote tile and "End for
/// all"; a moderator, through Bob's menu like a user (open it, click the item), revokes his
/// role (his controls go), mutes him (his mic button shows it), removes him (his page says
/// `removed`), and ends the room (`room_ended`). Media flows continuously until each step that
/// stops it.
async fn moderation_from_the_demo_page() -> anyhow::Result<()> {
    let (_dir, stack) = lan_stack(Vec::new()).await?;
    let mut call = Call::new(&stack, "moderation");
    let outcome = async {
        let alice = call.join(BrowserKind::Chromium, "Alice").await?;
        let bob = call.join(BrowserKind::Chromium, "Bob").await?;
        call.plays(alice, 1).await?;
        call.plays(bob, 1).await?;
        call.hold(scaled(10)).await?;
        // Dev tokens make everyone a moderator.
        for id in [alice, bob] {
            call.pages[id]
                .wait_for(
                    "document.body.dataset.role === 'moderator' \
                       && !document.getElementById('end-room').hidden \
                       && getComputedStyle(document.querySelector('figure[data-participant] .actions')).display !== 'none'",
                    BROWSER_STEP,
                )
                .await
                .with_context(|| format!("{} shows no moderation controls", call.names[id]))?;
        }
        let bob_identity = json!(call.flow.identity(bob));
        // Opens the menu on Bob's tile and clicks `item` in it (the menu lists only what
        // applies, so an item that does not is an error here).
        let on_bobs_tile = |item: &str| {
            format!(
                "document.querySelector('figure[data-participant={}] .actions').click();\
                 const item = document.querySelector('#tile-menu [role=menuitem]{item}');\
                 if (!item) throw new Error('no {item} in ' + document.getElementById('tile-menu').innerText);\
                 item.click(); return true",
                bob_identity
            )
        };
        // Bob's token made him a moderator, and Alice's page knows it from his announcement
        // (`participant_joined`): her menu offers to revoke it, never to grant it.
        call.pages[alice]
            .eval(&on_bobs_tile("[data-action=revoke_moderator]"), json!([]))
            .await?;
        call.pages[bob]
            .wait_for(
                "document.body.dataset.role === 'member' && document.getElementById('end-room').hidden",
                BROWSER_STEP,
            )
            .await
            .context("Bob's page still offers moderation after his role was revoked")?;
        // Alice's page is told (`participant_updated`): the menu now offers to grant it.
        let items = call.pages[alice]
            .wait_for(
                &format!(
                    "rtcd.participants.get({bob_identity}).role === 'member' && (() => {{                       const button = document.querySelector('figure[data-participant={bob_identity}] .actions');                       button.click();                       const items = [...document.querySelectorAll('#tile-menu [role=menuitem]')].map((i) => i.dataset.action);                       button.click(); return items; }})()"
                ),
                BROWSER_STEP,
            )
            .await
            .context("Alice's page was not told Bob's new role")?;
        ensure!(
            items.as_array().is_some_and(|i| i.contains(&json!("grant_moderator"))
                && !i.contains(&json!("revoke_moderator"))),
            "Alice's menu for Bob, a member now: {items}"
        );
        call.hold(scaled(5)).await?;
        call.flow.source_off(bob, "microphone");
        call.pages[alice]
            .eval(
                &on_bobs_tile("[data-action=mute][data-source=microphone]"),
                json!([]),
            )
            .await?;
        call.pages[bob]
            .wait_for(
                "document.getElementById('mic').getAttribute('aria-pressed') === 'true'",
                BROWSER_STEP,
            )
            .await
            .context("Bob's mic button does not show the moderator's mute")?;
        call.hold(scaled(5)).await?;
        call.hold(Duration::ZERO).await?;
        call.flow.left(bob);
        call.pages[alice]
            .eval(&on_bobs_tile("[data-action=kick]"), json!([]))
            .await?;
        call.pages[bob]
            .wait_for("document.body.dataset.reason === 'removed'", BROWSER_STEP)
            .await
            .context("Bob's page does not say he was removed")?;
        call.hold(scaled(5)).await?;
        call.flow.left(alice);
        call.pages[alice]
            .eval(
                "window.confirm = () => true; document.getElementById('end-room').click(); return true",
                json!([]),
            )
            .await?;
        call.pages[alice]
            .wait_for("document.body.dataset.reason === 'room_ended'", BROWSER_STEP)
            .await
            .context("Alice's page does not say the room ended")?;
        Ok(())
    }
    .await;
    conclude(call, stack, "moderation", outcome).await
}

#[test]
fn chromium_moderates_from_the_demo_page() -> anyhow::Result<()> {
    netns::run(moderation_from_the_demo_page)
}

#[test]
fn chromium_keeps_its_call_through_an_address_change_by_ice_restart() -> anyhow::Result<()> {
    netns::run(call_through_an_address_change)
}

#[test]
fn chromium_losing_packets_gets_every_stream_it_receives_repaired() -> anyhow::Result<()> {
    netns::run(loss_repaired_on_every_stream)
}

#[test]
fn chromium_reaches_rtcd_over_ice_tcp_when_udp_is_blocked() -> anyhow::Result<()> {
    netns::run(call_over_ice_tcp)
}

fn run_long_call(a: BrowserKind, b: BrowserKind) -> anyhow::Result<()> {
    netns::run(move || long_call(a, b))
}

#[test]
fn chromium_and_chromium_keep_media_flowing_for_two_minutes() -> anyhow::Result<()> {
    run_long_call(BrowserKind::Chromium, BrowserKind::Chromium)
}

#[test]
fn chromium_and_firefox_keep_media_flowing_for_two_minutes() -> anyhow::Result<()> {
    run_long_call(BrowserKind::Chromium, BrowserKind::Firefox)
}

#[test]
fn firefox_and_firefox_keep_media_flowing_for_two_minutes() -> anyhow::Result<()> {
    run_long_call(BrowserKind::Firefox, BrowserKind::Firefox)
}

/// Per simulcast layer (rid) of the page's outbound camera: (bytes sent, frame width), from
/// `getStats` (`outbound-rtp` entries with a `rid`).
async fn sent_layers(
    page: &BrowserPage,
) -> anyhow::Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let value = page
        .eval_async(
            "const done = arguments[arguments.length - 1];
             const pc = window.rtcd && window.rtcd.peerConnection;
             if (!pc) { done({}); return; }
             pc.getStats().then((stats) => {
               const out = {};
               stats.forEach((s) => {
                 if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
                   out[s.rid] = [s.bytesSent || 0, s.frameWidth || 0];
                 }
               });
               done(out);
             }, () => done({}));",
            json!([]),
        )
        .await?;
    let mut layers = std::collections::BTreeMap::new();
    if let Some(map) = value.as_object() {
        for (rid, v) in map {
            let n = |i: usize| v.get(i).and_then(Value::as_u64).unwrap_or(0);
            layers.insert(rid.clone(), (n(0), n(1)));
        }
    }
    Ok(layers)
}

/// Which of the page's simulcast layers sent anything over `window`.
async fn layers_sending(page: &BrowserPage, window: Duration) -> anyhow::Result<Vec<String>> {
    let before = sent_layers(page).await?;
    tokio::time::sleep(window).await;
    let after = sent_layers(page).await?;
    Ok(after
        .iter()
        .filter(|(rid, (bytes, _))| before.get(*rid).is_none_or(|(b, _)| bytes > b))
        .map(|(rid, _)| rid.clone())
        .collect())
}

/// What `page` receives of its one remote camera: (frame width, frames decoded, bytes), from
/// `getStats` (`inbound-rtp` video).
async fn received_camera(page: &BrowserPage) -> anyhow::Result<(u64, u64, u64)> {
    let value = page
        .eval_async(
            "const done = arguments[arguments.length - 1];
             const pc = window.rtcd && window.rtcd.peerConnection;
             if (!pc) { done([0, 0, 0]); return; }
             pc.getStats().then((stats) => {
               let out = [0, 0, 0];
               stats.forEach((s) => {
                 if (s.type === 'inbound-rtp' && s.kind === 'video' && (s.bytesReceived || 0) > out[2]) {
                   out = [s.frameWidth || 0, s.framesDecoded || 0, s.bytesReceived || 0];
                 }
               });
               done(out);
             }, () => done([0, 0, 0]));",
            json!([]),
        )
        .await?;
    let n = |i: usize| value.get(i).and_then(Value::as_u64).unwrap_or(0);
    Ok((n(0), n(1), n(2)))
}

/// Sets the style of the page's remote camera element (the demo page's tile video).
async fn style_remote_camera(page: &BrowserPage, css: &str) -> anyhow::Result<()> {
    page.eval(
        "const v = document.querySelector('video[data-participant]:not([data-source=screen])');
         if (!v) throw new Error('no remote camera element');
         v.style.cssText = arguments[0];",
        json!([css]),
    )
    .await?;
    Ok(())
}

/// Drawn at 1280 x 720 CSS pixels over the page (the window is 1280 x 800): the full layer.
const LARGE: &str = "position:fixed;left:0;top:0;width:1280px;height:720px;z-index:9";
/// A thumbnail (16:9, [`THUMBNAIL_WIDTH`] CSS pixels wide).
const THUMBNAIL: &str = "position:fixed;left:0;top:0;width:160px;height:90px;z-index:9";
const THUMBNAIL_WIDTH: u64 = 160;

/// Polls `what` every 100 ms until it returns `Some` or `limit` passes; the time it took.
async fn within<T, F, Fut>(limit: Duration, mut what: F) -> anyhow::Result<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = what().await? {
            return Ok((v, started.elapsed()));
        }
        ensure!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 30 s) for a 3 s window in which `page` encodes only its layer `rid` (`""`:
/// none); the layers then. On this busy host an estimate may dip for a moment, and the layers
/// follow it: what must come is such a window.
async fn only_layer(
    page: &BrowserPage,
    rid: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (u64, u64)>> {
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let sending = layers_sending(page, Duration::from_secs(3)).await?;
        let layers = sent_layers(page).await?;
        let width = |rid: &str| layers.get(rid).map_or(0, |l| l.1);
        // The full layer is the widest (not a stale entry of a smaller one).
        let genuine = rid != "f" || width("f") > width("q");
        let wanted: Vec<&str> = std::iter::once(rid).filter(|r| !r.is_empty()).collect();
        if sending.iter().map(String::as_str).eq(wanted) && genuine {
            return Ok(layers);
        }
        seen.push(format!("sending {sending:?} of {layers:?}"));
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "only layer {rid:?} is encoded: {seen:#?}"
        );
    }
}

/// Simulcast, adaptive stream and dynacast (issue 28) in a browser: `a`'s camera goes out as
/// the SDK's three layers; `b` alone receives it on an unconstrained link.
/// * Drawn large on `b`'s page, `b` gets the full layer, and rtcd tells `a` to stop encoding the
///   two layers nobody receives (`layers_wanted`): `a`'s `getStats` shows them no longer sending.
/// * Shrunk to a thumbnail, `b` gets the lowest layer that covers it within 2 s (the SDK's
///   `track_views`), and `a` then encodes only that one.
/// * Hidden (`display: none`), the track is paused for `b` (`track_paused`, reason `hidden`), and
///   `a` encodes nothing at all; shown again, `b` plays it again at the full layer.
async fn simulcast_publisher_encodes_only_what_is_received(
    a: BrowserKind,
    b: BrowserKind,
) -> anyhow::Result<()> {
    let tag = format!("simulcast-{a}-{b}");
    let (_dir, stack) = lan_stack(vec![("RTCD_RTC_ADAPTIVE_VIDEO".into(), "true".into())]).await?;
    let mut call = Call::new(&stack, &tag);
    call.url.push_str("&simulcast=1&adaptive_stream=1");
    let outcome = async {
        let alice = call.join(a, &format!("Alice-{a}")).await?;
        let bob = call.join(b, &format!("Bob-{b}")).await?;
        call.plays(bob, 1).await?;
        // Every layer the SDK asked for is encoded at first (the browser may skip a layer too
        // small for its capture).
        let layers = sent_layers(&call.pages[alice]).await?;
        ensure!(
            layers.len() >= 2,
            "{a} publishes at least two simulcast layers: {layers:?}"
        );
        // The layer a thumbnail needs: the lowest at least as wide as it (the fake camera's
        // capture size decides which; rids sort lowest first: f, h, q reversed).
        let mut by_width: Vec<(u64, String)> = layers
            .iter()
            .filter(|(_, l)| l.1 > 0)
            .map(|(rid, l)| (l.1, rid.clone()))
            .collect();
        by_width.sort();
        let (thumb_width, thumb_rid) = by_width
            .iter()
            .find(|(w, _)| *w >= THUMBNAIL_WIDTH)
            .or(by_width.last())
            .cloned()
            .context("layer widths")?;
        style_remote_camera(&call.pages[bob], LARGE).await?;
        // Bob's estimate starts at 1 Mbit/s (the middle layer), a probe proves more, the
        // allocator raises him to the full layer, and the layers nobody receives stop after
        // their 3 s hold.
        call.hold(Duration::from_secs(8)).await?;
        let layers = only_layer(&call.pages[alice], "f").await?;
        let full_width = layers.get("f").map_or(0, |l| l.1);

        // A thumbnail: the layer it needs within 2 s, then only that one encoded.
        style_remote_camera(&call.pages[bob], THUMBNAIL).await?;
        let (_, took) = within(Duration::from_secs(2), || async {
            let (width, _, _) = received_camera(&call.pages[bob]).await?;
            Ok((width == thumb_width).then_some(()))
        })
        .await
        .with_context(|| {
            format!(
                "bob receives layer {thumb_rid} ({thumb_width} px wide) within 2 s of the thumbnail"
            )
        })?;
        eprintln!("{tag}: thumbnail, bob receives {thumb_rid} ({thumb_width} px) after {took:?}");
        only_layer(&call.pages[alice], &thumb_rid).await?;

        // Hidden: paused for bob with the reason, nothing encoded once the hold is over.
        call.flow.source_off(alice, "camera");
        style_remote_camera(&call.pages[bob], "display:none").await?;
        let (_, took) = within(Duration::from_secs(2), || async {
            let reason = call.pages[bob]
                .eval("return [...window.rtcd._paused.values()];", json!([]))
                .await?;
            Ok(reason
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "hidden"))
                .then_some(()))
        })
        .await
        .context("bob's camera of alice is paused as hidden within 2 s")?;
        eprintln!("{tag}: hidden, paused after {took:?}");
        only_layer(&call.pages[alice], "").await?;
        let (_, _, bytes) = received_camera(&call.pages[bob]).await?;
        call.hold(Duration::from_secs(2)).await?;
        let (_, _, later) = received_camera(&call.pages[bob]).await?;
        ensure!(
            later == bytes,
            "nothing reaches bob while hidden: {bytes} -> {later} bytes"
        );

        // Shown again, large: bob plays it again, at the full layer.
        style_remote_camera(&call.pages[bob], LARGE).await?;
        call.flow.source_on(alice, "camera");
        let (_, took) = within(Duration::from_secs(10), || async {
            let (width, _, _) = received_camera(&call.pages[bob]).await?;
            Ok((width == full_width).then_some(()))
        })
        .await
        .context("bob receives the full layer again once shown large")?;
        eprintln!("{tag}: shown again, the full layer after {took:?}");
        call.hold(Duration::from_secs(5)).await
    }
    .await;
    conclude(call, stack, &tag, outcome).await
}

#[test]
fn chromium_simulcast_publisher_encodes_only_what_chromium_receives() -> anyhow::Result<()> {
    netns::run(|| {
        simulcast_publisher_encodes_only_what_is_received(
            BrowserKind::Chromium,
            BrowserKind::Chromium,
        )
    })
}

#[test]
fn firefox_simulcast_publisher_encodes_only_what_chromium_receives() -> anyhow::Result<()> {
    netns::run(|| {
        simulcast_publisher_encodes_only_what_is_received(
            BrowserKind::Firefox,
            BrowserKind::Chromium,
        )
    })
}

#[test]
fn chromium_simulcast_publisher_encodes_only_what_firefox_receives() -> anyhow::Result<()> {
    netns::run(|| {
        simulcast_publisher_encodes_only_what_is_received(
            BrowserKind::Chromium,
            BrowserKind::Firefox,
        )
    })
}
