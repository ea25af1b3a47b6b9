//! The weak-link harness ([`rtcd_e2e::shaping`]) measured from a real Chromium page: a
//! subscriber behind a 600 kbit/s downlink with 25 ms each way, in a call through rtcd-dev with
//! a Chromium publisher on the plain LAN namespace. Issue 28's tests of adaptive video build on
//! this; here only the link itself is checked (round trip, the downlink's cap, and that lifting
//! the shaping lifts the cap), nothing about video quality. One test turns it around: the
//! Chromium publisher is behind the link, with a shaped uplink, and its own estimator has only
//! rtcd's transport-cc feedback to fit its camera to it.
//!
//! The publisher must send more than the link carries, which Chromium's built-in fake camera
//! does not (about 500 kbit/s: its picture compresses too well): it captures a noise file
//! instead ([`shaping::noise_camera`]) and is told to keep its resolution (otherwise its
//! quality scaler drops to 320x240, capped at 600 kbit/s). rtcd runs without adaptive video
//! here (`rtc.adaptive_video = false`; on, its default, it would fit the camera to the link and
//! tell the publisher to stop the layers the link cannot carry): it forwards all of it, so
//! behind the link the excess is dropped by tbf.
//!
//! Browser calls: they belong to nextest's `browser-calls` group (`.config/nextest.toml`),
//! one call at a time; issue 28's acceptance calls (`weak_link_*_keeps_*`, four browsers) run
//! alone, with no other test beside them.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage, Browsers, artifacts_dir};
use rtcd_e2e::netns::{self, LAN_ADDR};
use rtcd_e2e::shaping::{self, CLIENT_ADDR, LinkConfig, Shaping, WeakLink};
use serde_json::{Value, json};

/// The sampling window of the rates.
const WINDOW: Duration = Duration::from_secs(2);
/// Windows measured with the downlink shaped (after two of warm-up), then lifted.
const SHAPED_WINDOWS: usize = 8;
const LIFTED_WINDOWS: usize = 8;
/// Allowance over the configured rate for a 2 s window: tbf's bucket (4.5 kB = 18 kbit/s over
/// 2 s) and the windows' edges (the page's and the test's clocks read at slightly different
/// moments).
const MARGIN: f64 = 1.10;
/// Frames a subscriber must decode in every [`WINDOW`] of the weak publisher's camera for it to
/// count as flowing, and on average over the shaped stretch (2 per second). Not the 15 fps the
/// camera has unshaped: on the 600 kbit/s uplink Chromium keeps the resolution (the test asks
/// it to) and lowers the top layer's frame rate instead, 2-7 fps by its own `framesSent` (the
/// subscriber decodes what arrives: 2-15 frames a window seen), and when it pauses that layer
/// rtcd moves the subscriber to the layer still sending after `LAYER_SILENCE` (1 s) and its
/// keyframe. A stall decodes nothing.
const MIN_FRAMES_PER_WINDOW: u64 = 1;
const MIN_FRAMES_PER_SECOND: f64 = 2.0;

/// One getStats reading of a page: `t` (ms, the report's clock), `received` (payload bytes of
/// every inbound RTP stream), `sent` (payload bytes of every outbound video stream), `decoded`
/// (frames decoded of every inbound video stream), `rtt` (s, the selected candidate pair's
/// current round trip, or null) and `local` (its local address).
/// Firefox 140 ESR reports no round trip on its candidate pairs (later versions do): there
/// `rtt` is the smallest round trip of rtcd's RTCP reports on the page's sent streams
/// (`remote-inbound-rtp`), which crosses the same delay line and the same queue.
async fn stats(page: &BrowserPage) -> anyhow::Result<Value> {
    let value = page
        .eval_async(
            "const done = arguments[arguments.length - 1];\
             rtcd.peerConnection.getStats().then((r) => {\
               let t = 0, received = 0, sent = 0, decoded = 0, pair = null, rtcp = null;\
               const video = [];\
               r.forEach((s) => { t = Math.max(t, s.timestamp);\
                 if (s.type === 'remote-inbound-rtp' && s.roundTripTime !== undefined)\
                   rtcp = rtcp === null ? s.roundTripTime : Math.min(rtcp, s.roundTripTime);\
                 if (s.type === 'inbound-rtp') received += s.bytesReceived || 0;\
                 if (s.type === 'inbound-rtp' && s.kind === 'video')\
                   decoded += s.framesDecoded || 0;\
                 if (s.type === 'outbound-rtp' && s.kind === 'video') { sent += s.bytesSent || 0;\
                   video.push([s.rid || '', s.frameWidth, s.framesPerSecond, s.targetBitrate,\
                     s.qualityLimitationReason, s.framesSent]); }\
                 if (s.type === 'transport' && s.selectedCandidatePairId)\
                   pair = r.get(s.selectedCandidatePairId); });\
               if (!pair) r.forEach((s) => {\
                 if (s.type === 'candidate-pair' && s.selected) pair = s; });\
               const l = pair && r.get(pair.localCandidateId);\
               done({ t, received, sent, decoded, video,\
                 outgoing: pair && pair.availableOutgoingBitrate !== undefined ? pair.availableOutgoingBitrate : null,\
                 rtt: pair && pair.currentRoundTripTime !== undefined ? pair.currentRoundTripTime : rtcp,\
                 local: l ? (l.address || l.ip || '') : null });\
             }, (e) => done({ error: String(e) }));",
            json!([]),
        )
        .await?;
    ensure!(value.get("error").is_none(), "getStats: {value}");
    Ok(value)
}

/// Rate in kbit/s between two [`stats`] readings for `field`.
fn kbit(before: &Value, after: &Value, field: &str) -> f64 {
    let bytes = after[field].as_f64().unwrap_or(0.0) - before[field].as_f64().unwrap_or(0.0);
    let ms = after["t"].as_f64().unwrap_or(0.0) - before["t"].as_f64().unwrap_or(0.0);
    if ms <= 0.0 {
        return 0.0;
    }
    bytes * 8.0 / ms
}

/// Video frames decoded so far in a [`stats`] reading.
fn frames(stats: &Value) -> u64 {
    stats["decoded"].as_u64().unwrap_or(0)
}

/// Per window: the publisher's video send rate, the weak page's receive rate, the delay line's
/// downlink rate (whole IP packets), all in kbit/s, the weak page's round trip in ms, and the
/// video frames it decoded (whatever layer they were of).
#[derive(Debug)]
struct Window {
    sent: f64,
    received: f64,
    link: f64,
    rtt_ms: Option<f64>,
    decoded: u64,
}

/// Samples `windows` windows of [`WINDOW`] each.
async fn sample(
    publisher: &BrowserPage,
    weak: &BrowserPage,
    link: &WeakLink,
    windows: usize,
) -> anyhow::Result<Vec<Window>> {
    let mut out = Vec::new();
    let mut ticks = tokio::time::interval(WINDOW);
    ticks.tick().await;
    let mut sender = stats(publisher).await?;
    let mut receiver = stats(weak).await?;
    let mut counted = (tokio::time::Instant::now(), link.downlink_counts().bytes);
    for _ in 0..windows {
        ticks.tick().await;
        let (s, r) = (stats(publisher).await?, stats(weak).await?);
        let now = (tokio::time::Instant::now(), link.downlink_counts().bytes);
        let window = Window {
            sent: kbit(&sender, &s, "sent"),
            received: kbit(&receiver, &r, "received"),
            link: (now.1 - counted.1) as f64 * 8.0
                / now.0.duration_since(counted.0).as_millis().max(1) as f64,
            rtt_ms: r["rtt"].as_f64().map(|s| s * 1000.0),
            decoded: frames(&r).saturating_sub(frames(&receiver)),
        };
        eprintln!("weak link: {window:?}; publisher's video {}", s["video"]);
        out.push(window);
        (sender, receiver, counted) = (s, r, now);
    }
    Ok(out)
}

/// Sends `seconds` of 1200-byte UDP datagrams at `kbit` (counted as IP packets, as tbf
/// counts) from `from` to `to`, paced every 5 ms; meanwhile `to_socket` counts what arrives.
/// Returns the received rate in kbit/s (IP packets), from the first datagram to the last.
fn udp_rate(
    from: &std::net::UdpSocket,
    to_socket: std::net::UdpSocket,
    kbit: u32,
    seconds: u64,
) -> anyhow::Result<f64> {
    const PAYLOAD: usize = 1200;
    const IP_UDP: usize = 28;
    let to = to_socket.local_addr()?;
    to_socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let (mut bytes, mut first, mut last) = (0usize, None, None);
        // Ends at the first half-second without a datagram once some have come.
        while let Ok(n) = to_socket.recv(&mut buf) {
            let now = std::time::Instant::now();
            first.get_or_insert(now);
            last = Some(now);
            bytes += n + IP_UDP;
        }
        (bytes, first, last)
    });
    let start = std::time::Instant::now();
    let tick = Duration::from_millis(5);
    let per_tick = (f64::from(kbit) * 1000.0 / 8.0 * tick.as_secs_f64()) as usize;
    let (mut ticks, mut owed) = (0u32, 0usize);
    while start.elapsed() < Duration::from_secs(seconds) {
        owed += per_tick;
        while owed >= PAYLOAD + IP_UDP {
            from.send_to(&[0x5a; PAYLOAD], to)?;
            owed -= PAYLOAD + IP_UDP;
        }
        ticks += 1;
        // Pacing, not waiting for a condition.
        let next = start + tick * ticks;
        std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
    }
    let (bytes, first, last) = counter
        .join()
        .map_err(|_| anyhow::anyhow!("counter panicked"))?;
    let span = match (first, last) {
        (Some(first), Some(last)) if last > first => last - first,
        _ => anyhow::bail!("nothing arrived at {to}"),
    };
    Ok(bytes as f64 * 8.0 / span.as_secs_f64() / 1000.0)
}

/// The link without browsers, over UDP between sockets in the two namespaces: the round trip
/// is the two delays, each direction's rate is its tbf's, and the downlink's rate follows
/// `shape_downlink` (changed, then lifted).
#[test]
fn weak_link_delays_and_rate_limits_udp_both_ways() -> anyhow::Result<()> {
    netns::run(|| async {
        tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
            use std::net::UdpSocket;
            let link = WeakLink::start(LinkConfig {
                uplink: Some(Shaping::kbit(300)),
                ..LinkConfig::weak_subscriber()
            })?;
            let client = || -> anyhow::Result<UdpSocket> {
                Ok(link.netns().run(|| UdpSocket::bind((CLIENT_ADDR, 0)))??)
            };
            let lan = || UdpSocket::bind((LAN_ADDR, 0));

            // Round trip: an echo in the client namespace, pinged from the LAN namespace.
            let echo = client()?;
            let echo_addr = echo.local_addr()?;
            echo.set_read_timeout(Some(Duration::from_secs(2)))?;
            let echoer = std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            });
            let pinger = lan()?;
            pinger.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut rtts = Vec::new();
            for i in 0u8..10 {
                let sent = std::time::Instant::now();
                pinger.send_to(&[i], echo_addr)?;
                let mut buf = [0u8; 64];
                let n = pinger.recv(&mut buf).context("no echo through the link")?;
                ensure!(n == 1 && buf[0] == i, "echo {:?}", &buf[..n]);
                rtts.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            drop(pinger);
            let _ = echoer.join();
            let min = rtts.iter().copied().fold(f64::MAX, f64::min);
            eprintln!("weak link udp: round trips {rtts:.1?} ms");
            ensure!(
                (50.0..75.0).contains(&min),
                "round trip {min:.1} ms through 2 x 25 ms"
            );

            // Each direction at its rate: 2 Mbit/s offered to a 600 kbit/s downlink, 1 Mbit/s
            // to a 300 kbit/s uplink.
            let down = udp_rate(&lan()?, client()?, 2000, 3)?;
            let up = udp_rate(&client()?, lan()?, 1000, 3)?;
            link.shape_downlink(Some(Shaping::kbit(1200)))?;
            let changed = udp_rate(&lan()?, client()?, 2000, 3)?;
            link.shape_downlink(None)?;
            let lifted = udp_rate(&lan()?, client()?, 2000, 3)?;
            eprintln!(
                "weak link udp: downlink {down:.0} kbit/s (600), uplink {up:.0} (300), \
                 downlink changed {changed:.0} (1200), lifted {lifted:.0} (2000 offered); \
                 delay line down {:?}, up {:?}",
                link.downlink_counts(),
                link.uplink_counts()
            );
            for (what, rate, want) in [
                ("downlink", down, 600.0),
                ("uplink", up, 300.0),
                ("changed downlink", changed, 1200.0),
            ] {
                ensure!(
                    (want * 0.85..=want * MARGIN).contains(&rate),
                    "{what}: {rate:.0} kbit/s, shaped to {want}"
                );
            }
            ensure!(
                lifted > 1700.0,
                "lifted downlink: {lifted:.0} kbit/s of 2000"
            );
            Ok(())
        })
        .await?
    })
}

/// The page's first round-trip measurement (see [`stats`]: on its selected candidate pair,
/// which Chromium has after its first consent check, or from RTCP), in ms; polled like
/// [`BrowserPage::wait_for`].
async fn first_rtt_ms(page: &BrowserPage) -> anyhow::Result<f64> {
    let deadline = tokio::time::Instant::now() + BROWSER_STEP;
    loop {
        let reading = stats(page).await?;
        if let Some(rtt) = reading["rtt"].as_f64() {
            return Ok(rtt * 1000.0);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no round trip on the page's selected candidate pair within {BROWSER_STEP:?}: {reading}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn weak_link_caps_a_chromium_subscriber_at_600_kbit_with_50_ms_rtt_until_lifted()
-> anyhow::Result<()> {
    weak_subscriber(BrowserKind::Chromium)
}

#[test]
fn weak_link_caps_a_firefox_subscriber_at_600_kbit_with_50_ms_rtt_until_lifted()
-> anyhow::Result<()> {
    weak_subscriber(BrowserKind::Firefox)
}

/// rtcd-dev on the LAN address with `rtc` settings (`RTCD_RTC_*`), its data in `dir`: the demo
/// page's origin, and the Chromium flags its pages need there. On the LAN address, as pages
/// behind the weak link reach it through the delay line (127.0.0.1 would be the client
/// namespace's own); cameras on a non-loopback http origin need the flag (stack.md §10).
async fn lan_addr_stack(
    dir: &std::path::Path,
    rtc: Vec<(String, String)>,
) -> anyhow::Result<(rtcd_dev::DevStack, String, Vec<String>)> {
    let stack = rtcd_dev::start(rtcd_dev::Options {
        data_dir: dir.to_owned(),
        listen: format!("{LAN_ADDR}:0"),
        loopback: false,
        udp_port: 0,
        rtc,
    })
    .await?;
    let origin = format!("http://{}", stack.proxy.addr());
    let secure = vec![format!(
        "--unsafely-treat-insecure-origin-as-secure={origin}"
    )];
    Ok((stack, origin, secure))
}

/// Chromium arguments (`secure`'s, and a camera) for a publisher that fills its bandwidth
/// estimate, which the built-in fake camera does not: a 640x480 noise picture written to `dir`
/// (`shaping::noise_camera`).
fn noise_publisher_args(dir: &std::path::Path, secure: &[String]) -> anyhow::Result<Vec<String>> {
    let camera = dir.join("noise.y4m");
    shaping::noise_camera(&camera, 640, 480, 15, 15)?;
    let mut args = secure.to_vec();
    args.push(format!(
        "--use-file-for-fake-video-capture={}",
        camera.display()
    ));
    Ok(args)
}

/// A `kind` page behind a [`LinkConfig::weak_subscriber`] link receives a Chromium publisher
/// on the plain LAN namespace, through rtcd without adaptive video (see the module doc).
fn weak_subscriber(kind: BrowserKind) -> anyhow::Result<()> {
    netns::run(move || async move {
        let dir = tempfile::tempdir()?;
        let fixed = vec![("RTCD_RTC_ADAPTIVE_VIDEO".into(), "false".into())];
        let (stack, origin, secure) = lan_addr_stack(dir.path(), fixed).await?;
        // The delays from the start, the rate limit once the weak page plays (see scenario).
        let link = WeakLink::start(LinkConfig {
            downlink: None,
            ..LinkConfig::weak_subscriber()
        })?;
        let plain = Browsers::lan_with_chromium_args(noise_publisher_args(dir.path(), &secure)?);
        let behind = Browsers::behind(&link, secure);
        let outcome = scenario(kind, &origin, &link, &plain, &behind).await;
        eprintln!(
            "weak link: downlink {:?}, uplink {:?}\n{}",
            link.downlink_counts(),
            link.uplink_counts(),
            link.downlink_qdisc().unwrap_or_default()
        );
        drop(behind);
        drop(plain);
        drop(link);
        stack.shutdown().await;
        outcome
    })
}

/// A `kind` page of `browsers` joined to the call at `url` as `name`, once connected.
async fn connected(
    browsers: &Browsers,
    kind: BrowserKind,
    url: &str,
    name: &str,
) -> anyhow::Result<BrowserPage> {
    let page = browsers.page(kind).await?;
    page.goto(&format!("{url}&name={name}")).await?;
    page.wait_state("connected").await?;
    Ok(page)
}

/// Waits until `page` plays a remote camera.
async fn plays_a_camera(page: &BrowserPage) -> anyhow::Result<()> {
    page.wait_for(
        "[...document.querySelectorAll('video[data-participant]')]\
           .filter(v => v.videoWidth > 0).length >= 1",
        BROWSER_STEP,
    )
    .await?;
    Ok(())
}

/// Keeps a Chromium publisher's camera at 640x480 (up to 1.7 Mbit/s): left to itself, its
/// quality scaler halves the busy picture's resolution while the bandwidth estimate ramps up,
/// and 320x240 is capped at 600 kbit/s, no more than the link.
async fn keep_resolution(publisher: &BrowserPage) -> anyhow::Result<()> {
    let kept = publisher
        .eval_async(
            "const done = arguments[arguments.length - 1];\
             const sender = rtcd.peerConnection.getSenders()\
               .find((s) => s.track && s.track.kind === 'video');\
             if (!sender) { done('no video sender'); return; }\
             sender.track.contentHint = 'detail';\
             const p = sender.getParameters(); p.degradationPreference = 'maintain-resolution';\
             sender.setParameters(p).then(() => done('ok'), (e) => done(String(e)));",
            json!([]),
        )
        .await?;
    ensure!(kept == json!("ok"), "publisher's sender parameters: {kept}");
    Ok(())
}

async fn scenario(
    kind: BrowserKind,
    origin: &str,
    link: &WeakLink,
    plain: &Browsers,
    behind: &Browsers,
) -> anyhow::Result<()> {
    let url = format!("{origin}/?room=weak-link");
    // The weak page first, alone: its round trip is measured on an idle downlink.
    let weak = connected(behind, kind, &url, "Weak").await?;
    let idle_rtt_ms = first_rtt_ms(&weak).await?;
    let local = stats(&weak).await?["local"].clone();
    eprintln!("weak link: idle round trip {idle_rtt_ms:.1} ms, local candidate {local}");
    ensure!(
        local == json!(CLIENT_ADDR.to_string()),
        "the weak page's selected candidate is {local}, not {CLIENT_ADDR} behind the link"
    );
    ensure!(
        idle_rtt_ms >= 40.0,
        "round trip {idle_rtt_ms:.1} ms through a 2 x 25 ms delay line"
    );

    // A publisher on the plain LAN: its camera, forwarded by rtcd, exceeds the downlink.
    let publisher = connected(plain, BrowserKind::Chromium, &url, "Publisher").await?;
    plays_a_camera(&weak)
        .await
        .context("the weak page does not play the publisher's camera")?;
    keep_resolution(&publisher).await?;

    // Shaped only now: a publisher that overshoots a 600 kbit/s link from the first frame
    // can keep a subscriber from ever decoding a key frame (seen with Firefox: a busy 640x480
    // key frame is larger than tbf's queue), and this test is about the link, not about
    // recovering from that (issue 28's own tests are).
    let shaping = LinkConfig::weak_subscriber()
        .downlink
        .context("issue 28's downlink")?;
    link.shape_downlink(Some(shaping))?;
    let _warm_up = sample(&publisher, &weak, link, 2).await?;
    let shaped = sample(&publisher, &weak, link, SHAPED_WINDOWS).await?;
    let cap = f64::from(shaping.rate_kbit);
    let loaded_rtt: Vec<f64> = shaped.iter().filter_map(|w| w.rtt_ms).collect();
    eprintln!("weak link: round trips under load {loaded_rtt:?} ms");
    for w in &shaped {
        ensure!(
            w.received <= cap * MARGIN && w.link <= cap * MARGIN,
            "the weak page received {:.0} kbit/s (link {:.0}) in a window, over {cap} kbit/s: {shaped:?}",
            w.received,
            w.link
        );
    }
    let sending = shaped.iter().filter(|w| w.sent > cap * 1.2).count();
    ensure!(
        sending * 2 >= shaped.len(),
        "the publisher sent over {:.0} kbit/s in only {sending} of {} windows: the cap was not tested ({shaped:?})",
        cap * 1.2,
        shaped.len()
    );
    ensure!(
        loaded_rtt.iter().all(|rtt| *rtt >= 40.0),
        "round trips under load {loaded_rtt:?} ms"
    );

    // The shaper's own account: sent at the rate, the excess dropped from its queue.
    eprintln!(
        "weak link: shaped downlink {:?}\n{}",
        link.downlink_counts(),
        link.downlink_qdisc()?
    );

    // Lifted: the weak page now gets what the publisher sends (rtcd forwards it unchanged).
    link.shape_downlink(None)?;
    let lifted = sample(&publisher, &weak, link, LIFTED_WINDOWS).await?;
    let best = lifted.iter().map(|w| w.received).fold(0.0, f64::max);
    ensure!(
        best > cap * 1.2,
        "after lifting the shaping the weak page received at most {best:.0} kbit/s: {lifted:?}"
    );
    weak.screenshot(&artifacts_dir().join(format!("weak-link-{kind}.png")))
        .await?;
    Ok(())
}

/// A Chromium publisher behind a 600 kbit/s uplink (25 ms each way) whose camera wants more
/// (a noise picture kept at 640x480): its own bandwidth estimator has nothing but rtcd's
/// transport-cc feedback to go by (`engine::arrivals`: which packets arrived, and when), so
/// it must first ramp past the link on it, unshaped, then settle under the link once shaped,
/// while its camera keeps reaching a subscriber on the LAN in every window. Feedback that
/// misread arrivals (late, lost or none) would leave it at its start rate, or let it overrun
/// the link and tbf drop the excess.
#[test]
fn weak_link_chromium_publisher_fits_its_camera_to_a_600_kbit_uplink_on_rtcds_feedback()
-> anyhow::Result<()> {
    netns::run(move || async move {
        let dir = tempfile::tempdir()?;
        let fixed = vec![("RTCD_RTC_ADAPTIVE_VIDEO".into(), "false".into())];
        let (stack, origin, secure) = lan_addr_stack(dir.path(), fixed).await?;
        let link = WeakLink::start(LinkConfig {
            downlink: None,
            uplink: None,
            ..LinkConfig::weak_subscriber()
        })?;
        let behind = Browsers::behind(&link, noise_publisher_args(dir.path(), &secure)?);
        let plain = Browsers::lan_with_chromium_args(secure);
        let outcome = weak_publisher(&origin, &link, &plain, &behind).await;
        eprintln!("weak link: uplink {:?}", link.uplink_counts());
        drop(behind);
        drop(plain);
        drop(link);
        stack.shutdown().await;
        outcome
    })
}

async fn weak_publisher(
    origin: &str,
    link: &WeakLink,
    plain: &Browsers,
    behind: &Browsers,
) -> anyhow::Result<()> {
    let url = format!("{origin}/?room=weak-uplink");
    let subscriber = connected(plain, BrowserKind::Chromium, &url, "Subscriber").await?;
    let publisher = connected(behind, BrowserKind::Chromium, &url, "Weak").await?;
    plays_a_camera(&subscriber)
        .await
        .context("the subscriber does not play the weak publisher's camera")?;
    keep_resolution(&publisher).await?;
    let cap = 600.0;
    // Unshaped: the estimator ramps past the link on rtcd's feedback alone (it starts at
    // about 300 kbit/s and may only grow on feedback that says the packets arrived in time).
    let unshaped = sample(&publisher, &subscriber, link, 10).await?;
    let best = unshaped.iter().map(|w| w.sent).fold(0.0, f64::max);
    ensure!(
        best > cap * 1.2,
        "unshaped, the publisher sent at most {best:.0} kbit/s: it never ramped past the link on rtcd's feedback ({unshaped:?})"
    );
    link.shape_uplink(Some(Shaping::kbit(600)))?;
    let _settling = sample(&publisher, &subscriber, link, 3).await?;
    let shaped = sample(&publisher, &subscriber, link, 10).await?;
    // The camera keeps arriving in every window, on whatever layer: after a loss burst
    // Chromium's estimator may back off far enough to pause its top simulcast layer for a
    // window or two (205 then 27 kbit/s of video seen, the 160x120 layer alone), so the rate
    // cannot tell a stall from the small layer; frames decoded can.
    for w in &shaped {
        ensure!(
            w.decoded >= MIN_FRAMES_PER_WINDOW,
            "the subscriber decoded {} frames in a {WINDOW:?} window: the weak publisher's camera stalled ({shaped:?})",
            w.decoded
        );
    }
    let decoded: u64 = shaped.iter().map(|w| w.decoded).sum();
    let floor = MIN_FRAMES_PER_SECOND * WINDOW.as_secs_f64() * shaped.len() as f64;
    ensure!(
        decoded as f64 >= floor,
        "the subscriber decoded {decoded} frames in {} windows, under {floor:.0} ({shaped:?})",
        shaped.len()
    );
    // Settled under the link: what it sends now fits (tbf passes 600 kbit/s of IP packets;
    // the page counts payload bytes, so a sender that fits stays below it).
    let over = shaped.iter().filter(|w| w.sent > cap * MARGIN).count();
    ensure!(
        over <= 1,
        "the shaped publisher sent over {:.0} kbit/s in {over} of {} windows ({shaped:?})",
        cap * MARGIN,
        shaped.len()
    );
    eprintln!("weak link: uplink shaped, {:?}", link.uplink_counts());
    Ok(())
}

// ---- Issue 28's acceptance test: a call that lasts on a weak link --------------------------

/// How long the weak call is measured with the link shaped.
const CALL_SHAPED: Duration = Duration::from_secs(60);
/// How often the test collects what the pages sampled ([`media`]).
const TICK: Duration = Duration::from_millis(500);
/// The windows in which every remote camera must advance.
const CAMERA_WINDOW: Duration = Duration::from_secs(2);
/// How long after the shaping lifts the weak page must be back at the full layer.
const RECOVERY: Duration = Duration::from_secs(10);

/// The audio a browser sends per packet (Opus at its default 20 ms frames).
const AUDIO_PACKET: Duration = Duration::from_millis(20);

/// How often each page samples its own media ([`media`]).
const PAGE_TICK_MS: u64 = 250;

/// What a page received since the last call, per remote track (`identity/source`): samples
/// `{t, video: {name: [frames decoded, frame width]}, audio: {name: [concealed samples,
/// samples received]}, sent: [packets its own microphone sent, at s]}`, `t` in s on the page's
/// clock, when its stats were gathered. The page
/// samples itself every [`PAGE_TICK_MS`] (a timer installed at the first call): a stall is
/// measured on the media, not on this harness's round trips to four browsers (one round once
/// took 2.2 s, and every camera of every page showed the same "stall").
async fn media(page: &BrowserPage) -> anyhow::Result<Vec<Value>> {
    let value = page
        .eval(
            "const c = window.rtcd; if (!c) return { error: 'no client' };\
             if (!window.__media) {\
               window.__media = [];\
               setInterval(() => {\
                 const pc = c.peerConnection; if (!pc) return;\
                 const names = {};\
                 for (const r of c.remoteTracks.values()) names[r.track.id] = r.identity + '/' + r.source;\
                 pc.getStats().then((stats) => {\
                   const out = { t: 0, video: {}, audio: {} };\
                   stats.forEach((s) => {\
                     if (s.type === 'outbound-rtp' && s.kind === 'audio')\
                       out.sent = [s.packetsSent || 0, s.timestamp / 1000];\
                     if (s.type !== 'inbound-rtp') return;\
                     const name = names[s.trackIdentifier]; if (!name) return;\
                     out.t = Math.max(out.t, s.timestamp / 1000);\
                     if (s.kind === 'video') out.video[name] = [s.framesDecoded || 0, s.frameWidth || 0];\
                     else out.audio[name] = [s.concealedSamples || 0, s.totalSamplesReceived || 0];\
                   });\
                   if (out.t > 0) window.__media.push(out);\
                 }, () => {});\
               }, arguments[0]);\
             }\
             return { samples: window.__media.splice(0) };",
            json!([PAGE_TICK_MS]),
        )
        .await?;
    ensure!(value.get("error").is_none(), "media samples: {value}");
    Ok(value["samples"].as_array().cloned().unwrap_or_default())
}

/// One page's media over a stretch of the call, from its [`media`] samples.
#[derive(Debug, Default)]
struct Received {
    /// Per remote camera: (sample time s, frames decoded, frame width).
    cameras: std::collections::BTreeMap<String, Vec<(f64, u64, u64)>>,
    /// Per remote microphone: the first and the last reading.
    audio: std::collections::BTreeMap<String, (Samples, Samples)>,
    /// The page's own microphone: the first and the last (packets sent, at s).
    sent: Option<((u64, f64), (u64, f64))>,
}

/// Audio samples received so far: (concealed, received).
type Samples = (u64, u64);

impl Received {
    fn add(&mut self, sample: &Value) {
        let at = sample["t"].as_f64().unwrap_or(0.0);
        let n = |v: &Value, i: usize| v.get(i).and_then(Value::as_u64).unwrap_or(0);
        if let Some(video) = sample["video"].as_object() {
            for (name, v) in video.iter().filter(|(n, _)| n.ends_with("/camera")) {
                self.cameras
                    .entry(name.clone())
                    .or_default()
                    .push((at, n(v, 0), n(v, 1)));
            }
        }
        if let Some(sent) = sample["sent"].as_array() {
            let now = (
                sent.first().and_then(Value::as_u64).unwrap_or(0),
                sent.get(1).and_then(Value::as_f64).unwrap_or(0.0),
            );
            self.sent = Some(self.sent.map_or((now, now), |(first, _)| (first, now)));
        }
        if let Some(audio) = sample["audio"].as_object() {
            for (name, v) in audio.iter().filter(|(n, _)| n.ends_with("/microphone")) {
                let now = (n(v, 0), n(v, 1));
                self.audio
                    .entry(name.clone())
                    .and_modify(|(_, last)| *last = now)
                    .or_insert((now, now));
            }
        }
    }

    /// Per remote camera: (share of [`CAMERA_WINDOW`] windows with a decoded frame, the
    /// longest time without one in s, the last frame width).
    fn camera_flow(&self) -> Vec<(String, f64, f64, u64)> {
        self.cameras
            .iter()
            .map(|(name, samples)| {
                let (first, last) = (samples[0].0, samples[samples.len() - 1].0);
                let window = CAMERA_WINDOW.as_secs_f64();
                let windows = ((last - first) / window).floor().max(1.0) as usize;
                let advancing = (0..windows)
                    .filter(|w| {
                        let (from, to) =
                            (first + *w as f64 * window, first + (*w + 1) as f64 * window);
                        let at = |t: f64| {
                            samples
                                .iter()
                                .take_while(|s| s.0 <= t + 1e-6)
                                .last()
                                .map_or(0, |s| s.1)
                        };
                        at(to) > at(from)
                    })
                    .count();
                let mut longest = 0.0f64;
                let mut since = first;
                for pair in samples.windows(2) {
                    if pair[1].1 > pair[0].1 {
                        longest = longest.max(pair[1].0 - since);
                        since = pair[1].0;
                    }
                }
                longest = longest.max(last - since);
                let width = samples[samples.len() - 1].2;
                (
                    name.clone(),
                    advancing as f64 / windows as f64,
                    longest,
                    width,
                )
            })
            .collect()
    }

    /// The share of the stretch the page's own microphone sent nothing for: one packet every
    /// [`AUDIO_PACKET`] is what a browser's Opus sends, so fewer is a sender that fell behind
    /// (a fake capture device starved of CPU: Firefox on this 2-core host with four browsers
    /// sent 42 packets a second, not 50, and every receiver concealed the missing 15 %).
    fn sending_shortfall(&self) -> f64 {
        let Some(((p0, t0), (p1, t1))) = self.sent else {
            return 0.0;
        };
        if t1 - t0 < 5.0 {
            return 0.0;
        }
        let sent = p1.saturating_sub(p0) as f64 * AUDIO_PACKET.as_secs_f64();
        (1.0 - sent / (t1 - t0)).clamp(0.0, 1.0)
    }

    /// Per remote microphone: the share of its samples concealed.
    fn concealment(&self) -> Vec<(String, f64)> {
        self.audio
            .iter()
            .map(|(name, (first, last))| {
                let concealed = last.0.saturating_sub(first.0) as f64;
                let received = last.1.saturating_sub(first.1).max(1) as f64;
                (name.clone(), concealed / received)
            })
            .collect()
    }
}

/// Collects every page's [`media`] samples for `duration`.
async fn watch(pages: &[&BrowserPage], duration: Duration) -> anyhow::Result<Vec<Received>> {
    let mut out: Vec<Received> = pages.iter().map(|_| Received::default()).collect();
    for page in pages {
        media(page).await?; // starts its sampling; what it has so far is before the stretch
    }
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    while started.elapsed() < duration {
        ticks.tick().await;
        for (page, received) in pages.iter().zip(&mut out) {
            for sample in media(page).await? {
                received.add(&sample);
            }
        }
    }
    Ok(out)
}

/// Per remote microphone of `page` since the call began: packets received and lost (as the
/// receiver counts them), and its jitter (s). Logged beside the concealment: concealment with
/// no loss is audio that came late (a sender's or a receiver's CPU, a queue on the way; a
/// sender that fell behind is logged apart, as its `sending_shortfall`).
async fn audio_health(page: &BrowserPage) -> anyhow::Result<Value> {
    page.eval_async(
        "const done = arguments[arguments.length - 1];\
         const c = window.rtcd; const names = {};\
         for (const r of c.remoteTracks.values()) names[r.track.id] = r.identity + '/' + r.source;\
         c.peerConnection.getStats().then((stats) => { const out = {};\
           stats.forEach((s) => {\
             if (s.type !== 'inbound-rtp' || s.kind !== 'audio') return;\
             out[names[s.trackIdentifier] || s.trackIdentifier] =\
               [s.packetsReceived || 0, s.packetsLost || 0, s.jitter || 0]; });\
           done(out); }, (e) => done({ error: String(e) }));",
        json!([]),
    )
    .await
}

/// Each publisher's full layer now: the width of the widest layer its camera sends (from its
/// own `getStats`), logged with its capture size and its encoder's reasons. Chromium encodes
/// its top layer at the capture size; Firefox scales every layer of its simulcast down on its
/// own (CPU or its uplink estimate: 480 of 640 px seen), and rtcd can forward no more than
/// that. `log`: print what each sends.
async fn full_widths(
    pages: &[(&str, &BrowserPage)],
    log: bool,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for (identity, page) in pages {
        let s = stats(page).await?;
        // (rid, width, frames per second, target bitrate, quality limitation) per layer.
        if log {
            let captured = page
                .eval(
                    "const t = rtcd.localTracks.get('camera');\
                     return t ? t.getSettings().width || 0 : 0;",
                    json!([]),
                )
                .await?
                .as_u64()
                .unwrap_or(0);
            eprintln!(
                "weak call: {identity} captures {captured} px, sends {} (its uplink estimate {} bit/s)",
                s["video"], s["outgoing"]
            );
        }
        let widest = s["video"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|layer| layer.get(1).and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        ensure!(widest > 0, "{identity} sends no camera");
        out.insert((*identity).to_owned(), widest);
    }
    Ok(out)
}

/// How long a publisher's page may take to show another's camera at its full layer once the
/// publisher's encoder changed that layer's size (Firefox does on its own): a new size starts
/// with a keyframe, so a few frames.
const FULL_AGAIN: Duration = Duration::from_secs(5);

/// The cameras in `narrow` (page, its name, camera, width: received below the publisher's full
/// layer at the end of the shaped stretch) looked at again, with the publishers' full layers
/// read anew, for up to [`FULL_AGAIN`]: a failure for each still below. A page that the
/// allocator holds at a smaller layer stays below; one whose publisher had just grown its
/// layer catches up within a keyframe.
async fn at_full_layers(
    publishers: &[(&str, &BrowserPage)],
    mut narrow: Vec<(&BrowserPage, String, String, u64)>,
) -> anyhow::Result<Vec<String>> {
    let started = tokio::time::Instant::now();
    let mut full = std::collections::BTreeMap::new();
    while !narrow.is_empty() && started.elapsed() < FULL_AGAIN {
        full = full_widths(publishers, false).await?;
        let mut still = Vec::new();
        for (page, who, name, width) in narrow {
            let now = media(page)
                .await?
                .last()
                .and_then(|sample| sample["video"][&name].get(1).and_then(Value::as_u64))
                .unwrap_or(width);
            let publisher = name.trim_end_matches("/camera");
            if now < full.get(publisher).copied().unwrap_or(0) {
                still.push((page, who, name, now));
            } else {
                eprintln!(
                    "weak call: {who} receives {name} at {now} px after {:.1} s (was {width} px)",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        narrow = still;
        if !narrow.is_empty() {
            tokio::time::sleep(TICK).await;
        }
    }
    Ok(narrow
        .into_iter()
        .map(|(_, who, name, width)| {
            let publisher = name.trim_end_matches("/camera");
            format!(
                "{who}: {name} at {width} px, below the full {} px (for {FULL_AGAIN:?} after the shaped stretch)",
                full.get(publisher).copied().unwrap_or(0)
            )
        })
        .collect())
}

/// Issue 28's test: three publishers with simulcast cameras (`publishers`, on the plain LAN)
/// and a `weak` participant behind a 600 kbit/s downlink with 50 ms of round trip, rtcd with
/// adaptive video. Held 60 s shaped: the weak page conceals under 2 % of each remote
/// microphone's audio, and every remote camera advances in at least 90 % of 2 s windows with
/// no stall over 2 s (at a reduced layer); the publishers receive each other's cameras at the
/// full layer and conceal under 1 % (beyond what a microphone's own sender did not send: see
/// `Received::sending_shortfall`). Then the shaping lifts and the weak page is back at every
/// camera's full layer within 10 s.
fn weak_call(weak: BrowserKind, publishers: [BrowserKind; 3]) -> anyhow::Result<()> {
    netns::run(move || async move {
        rtcd_e2e::init_logs();
        let dir = tempfile::tempdir()?;
        let adaptive = vec![("RTCD_RTC_ADAPTIVE_VIDEO".into(), "true".into())];
        let (stack, origin, secure) = lan_addr_stack(dir.path(), adaptive).await?;
        let link = WeakLink::start(LinkConfig::weak_subscriber())?;
        raise_threads(&["rtcd-media", "weak-"], -10)?;
        let plain = Browsers::lan_with_chromium_args(secure.clone());
        let behind = Browsers::behind(&link, secure);
        let outcome = weak_call_scenario(weak, publishers, &origin, &link, &plain, &behind).await;
        report_downlink("downlink", &link);
        drop(behind);
        drop(plain);
        drop(link);
        stack.shutdown().await;
        outcome
    })
}

/// Prints what the weak call's downlink delivered and its shaper's counters (sent, dropped).
fn report_downlink(what: &str, link: &WeakLink) {
    eprintln!(
        "weak call: {what} {:?}\n{}",
        link.downlink_counts(),
        link.downlink_qdisc().unwrap_or_default()
    );
}

/// Gives this process's threads whose names start with one of `prefixes` the nice value
/// `niceness` (`renice` on each thread id: Linux keeps a nice value per thread). The call's
/// subject is rtcd's sending on a weak link and the link itself; on this host both share two
/// cores with four browsers, whose Chromium raises its own media threads to -8 (run as root),
/// and rtcd's media rounds then took 15 ms at the median, 92 at the 90th percentile (each
/// flushed at its end: bursts the weak link's 12 KB bottleneck queue dropped); raised, 10 and
/// 34 ms (docs/adaptive-video.md 4b). A media host is its own machine.
fn raise_threads(prefixes: &[&str], niceness: i32) -> anyhow::Result<()> {
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if prefixes.iter().any(|p| name.starts_with(p)) {
            let tid = task.file_name().to_string_lossy().into_owned();
            let status = std::process::Command::new("renice")
                .args(["-n", &niceness.to_string(), "-p", &tid])
                .stdout(std::process::Stdio::null())
                .status()?;
            ensure!(
                status.success(),
                "renice {niceness} thread {tid} ({})",
                name.trim()
            );
        }
    }
    Ok(())
}

async fn weak_call_scenario(
    weak_kind: BrowserKind,
    publisher_kinds: [BrowserKind; 3],
    origin: &str,
    link: &WeakLink,
    plain: &Browsers,
    behind: &Browsers,
) -> anyhow::Result<()> {
    let url = format!("{origin}/?room=weak-call&simulcast=1&adaptive_stream=1");
    let mut pages = Vec::new();
    let mut names = Vec::new();
    for (i, kind) in publisher_kinds.iter().enumerate() {
        let name = format!("P{i}-{kind}");
        let page = connected(plain, *kind, &url, &name).await?;
        pages.push(page);
        names.push(name);
    }
    let weak = connected(behind, weak_kind, &url, &format!("Weak-{weak_kind}")).await?;
    let everyone: Vec<&BrowserPage> = pages.iter().chain(std::iter::once(&weak)).collect();
    for (page, name) in everyone
        .iter()
        .zip(names.iter().chain(std::iter::once(&"weak".into())))
    {
        page.wait_for(
            "[...document.querySelectorAll('video[data-participant]:not([data-source=screen])')]\
               .filter(v => v.videoWidth > 0).length === 3",
            BROWSER_STEP,
        )
        .await
        .with_context(|| format!("{name} does not play three cameras"))?;
    }
    // The settling: the weak page's estimate finds its link.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let shaped = watch(&everyone, CALL_SHAPED).await?;
    // Every page's identity: the publishers', then the weak page's.
    let all_identities: Vec<String> = {
        let mut v = Vec::new();
        for page in &everyone {
            v.push(
                page.eval("return window.rtcd.session.identity;", json!([]))
                    .await?
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        v
    };
    let identities = &all_identities[..pages.len()];
    // What each microphone's own sender left out (see `sending_shortfall`): audio nobody sent
    // is concealed at every receiver whatever the path does, so it is not counted against it.
    let shortfall: std::collections::BTreeMap<String, f64> = all_identities
        .iter()
        .zip(&shaped)
        .map(|(identity, received)| {
            (
                format!("{identity}/microphone"),
                received.sending_shortfall(),
            )
        })
        .collect();
    eprintln!("weak call: microphones' own sending shortfall {shortfall:?}");
    let named: Vec<(&str, &BrowserPage)> = identities
        .iter()
        .map(String::as_str)
        .zip(pages.iter())
        .collect();
    let full = full_widths(&named, true).await?;
    eprintln!("weak call: full layers {full:?}");
    let mut failures = Vec::new();
    // (page, its name, camera, width) received below its publisher's full layer.
    let mut narrow = Vec::new();
    for ((received, who), page) in shaped
        .iter()
        .zip(names.iter().chain(std::iter::once(&"weak".into())))
        .zip(&everyone)
    {
        let weak_page = who == "weak";
        let flow = received.camera_flow();
        let concealment = received.concealment();
        eprintln!(
            "weak call: {who} audio (received, lost, jitter s) {}",
            audio_health(page).await.unwrap_or_default()
        );
        eprintln!(
            "weak call: {who} cameras (name, share of windows, longest stall s, width) {flow:?}; audio concealed {concealment:?}"
        );
        for (name, share, longest, width) in &flow {
            let publisher = name.trim_end_matches("/camera");
            let is_publisher = full.contains_key(publisher);
            if weak_page {
                if *share < 0.9 || *longest > 2.0 {
                    failures.push(format!(
                        "{who}: {name} advanced in {:.0} % of 2 s windows, longest stall {longest:.1} s",
                        share * 100.0
                    ));
                }
            } else if is_publisher {
                if *share < 0.9 || *longest > 2.0 {
                    failures.push(format!(
                        "{who}: {name} advanced in {:.0} % of windows, stall {longest:.1} s",
                        share * 100.0
                    ));
                }
                // At least: Firefox scales its layers up and down on its own (320, 480 and
                // 640 px seen within a minute), so what was widest when sampled may have grown
                // since this page's last sample: looked at again below.
                if *width < full[publisher] {
                    narrow.push((*page, who.clone(), name.clone(), *width));
                }
            }
        }
        for (name, share) in &concealment {
            let limit = if weak_page { 0.02 } else { 0.01 };
            let unsent = shortfall.get(name).copied().unwrap_or(0.0);
            if *share - unsent >= limit {
                failures.push(format!(
                    "{who}: {name} audio {:.2} % concealed (limit {:.0} % beyond the {:.2} % its sender did not send)",
                    share * 100.0,
                    limit * 100.0,
                    unsent * 100.0
                ));
            }
        }
        if flow.len() != 3 {
            failures.push(format!("{who} received {} cameras: {flow:?}", flow.len()));
        }
    }

    failures.extend(at_full_layers(&named, narrow).await?);

    // Lifted: the full layer of every publisher's camera on the weak page within 10 s. Timed
    // by the page's own sample (stats carry wall-clock time on this same host), not by when
    // this loop read it.
    media(&weak).await?; // what it sampled shaped
    // The shaper's own counters (what it dropped) go with it: read them first.
    report_downlink("shaped downlink", link);
    link.shape_downlink(None)?;
    let lifted = tokio::time::Instant::now();
    let lifted_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let mut back = None;
    // Once a second while waiting: the full widths and what the weak page receives.
    let mut trace = 0u32;
    while back.is_none() && lifted.elapsed() < RECOVERY + Duration::from_secs(20) {
        tokio::time::sleep(TICK).await;
        let full = full_widths(&named, false).await?;
        let samples = media(&weak).await?;
        trace += 1;
        if trace.is_multiple_of(2)
            && let Some(last) = samples.last()
        {
            eprintln!(
                "weak call: {:.1} s after the lift: full {full:?}, the weak page receives {}",
                lifted.elapsed().as_secs_f64(),
                last["video"]
            );
        }
        back = samples.iter().find_map(|sample| {
            let at_full = full.iter().all(|(identity, width)| {
                sample["video"][format!("{identity}/camera")]
                    .get(1)
                    .and_then(Value::as_u64)
                    .is_some_and(|w| w >= *width)
            });
            at_full.then(|| {
                let after = sample["t"].as_f64().unwrap_or(0.0) - lifted_wall;
                // A page clock that is not wall-clock time: when this loop saw it.
                if (0.0..60.0).contains(&after) {
                    Duration::from_secs_f64(after)
                } else {
                    lifted.elapsed()
                }
            })
        });
    }
    eprintln!("weak call: back at the full layers {back:?} after lifting the shaping");
    match back {
        Some(after) if after <= RECOVERY => {}
        other => failures.push(format!(
            "the weak page was back at every full layer after {other:?}, not within {RECOVERY:?}"
        )),
    }
    if !failures.is_empty() {
        for (page, name) in everyone
            .iter()
            .zip(names.iter().chain(std::iter::once(&"weak".into())))
        {
            let _ = page
                .screenshot(&artifacts_dir().join(format!("weak-call-{weak_kind}-{name}.png")))
                .await;
        }
    }
    ensure!(failures.is_empty(), "weak call:\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn weak_link_chromium_subscriber_keeps_three_simulcast_cameras_and_its_audio() -> anyhow::Result<()>
{
    use BrowserKind::Chromium;
    weak_call(Chromium, [Chromium, Chromium, Chromium])
}

#[test]
fn weak_link_firefox_subscriber_keeps_three_simulcast_cameras_and_its_audio() -> anyhow::Result<()>
{
    use BrowserKind::Chromium;
    weak_call(BrowserKind::Firefox, [Chromium, Chromium, Chromium])
}

#[test]
fn weak_link_chromium_subscriber_keeps_a_firefox_simulcast_camera() -> anyhow::Result<()> {
    use BrowserKind::{Chromium, Firefox};
    weak_call(Chromium, [Firefox, Chromium, Chromium])
}
