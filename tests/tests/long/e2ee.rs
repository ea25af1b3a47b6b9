//! End-to-end encryption in real browsers (issue 32 point 5, docs/e2ee.md): the SDK encrypts
//! every frame it sends and decrypts every frame it receives in a room whose policy says
//! `e2ee`, with keys the page sets (`setE2eeKey`); rtcd forwards what it cannot read.
//!
//! Same setting as `calls::` (a LAN namespace of the test's own, rtcd-dev with the demo page,
//! one browser call at a time): the room is marked encrypted in the proxy's configuration
//! (`[rooms.overrides."<room>"] e2ee = true`), so `joined.e2ee` is true from the first join.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage};
use rtcd_e2e::netns;
use rtcd_proxy::room_policy::RoomPolicy;
use serde_json::{Value, json};

use crate::calls::{Call, conclude, scaled};

/// The key material every participant with the key gets from "the platform" (here, the test);
/// the SDK derives the AES-GCM key from it with HKDF (docs/e2ee.md, "Derived keys").
const MATERIAL: &str = "the platform's secret for room e2ee-call";

/// The key material of the rotation (key index 1).
const NEXT_MATERIAL: &str = "the platform's next secret for room e2ee-call";

/// rtcd-dev in the LAN namespace with `room` marked end-to-end encrypted.
async fn encrypted_stack(room: &str) -> anyhow::Result<(tempfile::TempDir, rtcd_dev::DevStack)> {
    rtcd_e2e::init_logs();
    let dir = tempfile::tempdir()?;
    let room = room.to_owned();
    let stack = rtcd_dev::start_with_proxy(
        rtcd_dev::Options {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".into(),
            loopback: false,
            udp_port: 0,
            rtc: Vec::new(),
        },
        move |c| {
            c.rooms.overrides.insert(
                room,
                RoomPolicy {
                    e2ee: Some(true),
                    ..RoomPolicy::default()
                },
            );
        },
    )
    .await?;
    Ok((dir, stack))
}

/// Waits for the page's client to have joined, then gives it the room's key.
async fn set_key(page: &BrowserPage) -> anyhow::Result<()> {
    page.wait_for("window.rtcd && window.rtcd.session", BROWSER_STEP)
        .await?;
    let outcome = page
        .eval_async(
            "const done = arguments[arguments.length - 1];
             window.rtcd.setE2eeKey(0, arguments[0], { derive: true })
               .then(() => done('ok'), (e) => done(String(e)));",
            json!([MATERIAL]),
        )
        .await?;
    ensure!(outcome == json!("ok"), "setE2eeKey: {outcome}");
    Ok(())
}

/// Before a key is set, a page in the encrypted room has its camera and microphone but sends
/// nothing: no sending section, and the `e2ee_unsupported` refusal (plaintext never leaves).
async fn withholds_until_keyed(page: &BrowserPage) -> anyhow::Result<()> {
    page.wait_for(
        "window.rtcd && window.rtcd.session && window.rtcd.localTracks.size >= 2",
        BROWSER_STEP,
    )
    .await
    .context("the page does not open its camera and microphone")?;
    // The demo page publishes as soon as the tracks are open; give a refusal time to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sending = page
        .eval(
            "const pc = window.rtcd.peerConnection;
             return pc ? pc.getTransceivers().filter((t) => t.direction === 'sendonly'
               || t.direction === 'sendrecv' || t.sender.track).length : -1;",
            json!([]),
        )
        .await?;
    ensure!(
        sending == json!(0),
        "sending sections before a key: {sending}"
    );
    Ok(())
}

/// What a page's client says of encryption: its API, whether the room is encrypted, and the
/// counters (`e2eeStats`).
async fn e2ee_state(page: &BrowserPage) -> anyhow::Result<Value> {
    page.eval(
        "const c = window.rtcd;
         return { api: c.e2eeApi, e2ee: !!(c.session && c.session.e2ee),
                  scriptTransform: typeof RTCRtpScriptTransform !== 'undefined',
                  encodedStreams: 'createEncodedStreams' in RTCRtpSender.prototype,
                  stats: c.e2eeStats };",
        json!([]),
    )
    .await
}

fn count(state: &Value, path: &str) -> u64 {
    state
        .pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_default()
}

/// Every received video section's (frames decoded, bytes received), from `getStats`.
async fn received_video(page: &BrowserPage) -> anyhow::Result<Vec<(u64, u64)>> {
    let value = page
        .eval_async(
            "const done = arguments[arguments.length - 1];
             const pc = window.rtcd && window.rtcd.peerConnection;
             if (!pc) { done([]); return; }
             pc.getStats().then((stats) => {
               const out = [];
               stats.forEach((s) => {
                 if (s.type === 'inbound-rtp' && s.kind === 'video' && (s.bytesReceived || 0) > 0) {
                   out.push([s.framesDecoded || 0, s.bytesReceived || 0]);
                 }
               });
               done(out);
             }, () => done([]));",
            json!([]),
        )
        .await?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let n = |i: usize| v.get(i).and_then(Value::as_u64).unwrap_or(0);
            (n(0), n(1))
        })
        .collect())
}

/// Chromium and Firefox in an encrypted room with the same key see and hear each other (every
/// remote track flows in every window of the hold, `flow::`), while a third page (Chromium)
/// that joins without the key decodes nothing; then they rotate to a new key mid-call.
///
/// How the test shows that the server never had plaintext: the keyless page is a view of
/// exactly what rtcd forwards (the receiver transform gets each frame as it was reassembled
/// from rtcd's packets, before anything decrypts it). Over many seconds of both publishers'
/// audio and video, every one of its frames must fail with `unknown_key` and none with
/// `not_encrypted`: each frame the server relayed ended in the version-1 trailer (last byte
/// 0xE1, a clear count that fits, key index 0), which a plaintext VP8 or Opus frame has with a
/// chance of about 1/256 each, so hundreds of them cannot pass by accident; and its decoder
/// got none of them (0 frames decoded while bytes arrive). Then the same page is given the
/// key and plays both cameras: the frames it could not read were the real media, encrypted
/// (AES-GCM authenticates each one, so they are exactly what a key holder encrypted). The
/// senders count their own encrypted frames, and none of the pages with the key sees a
/// frame that is not encrypted or fails authentication.
async fn encrypted_call() -> anyhow::Result<()> {
    let room = "e2ee-call";
    let (_dir, stack) = encrypted_stack(room).await?;
    let mut call = Call::new(&stack, room);
    let outcome = scenario(&mut call).await;
    conclude(call, stack, "e2ee-chromium-firefox", outcome).await
}

async fn scenario(call: &mut Call) -> anyhow::Result<()> {
    // Alice's page uses Chromium's older encoded-streams API, the fallback for browsers
    // without RTCRtpScriptTransform; the others use RTCRtpScriptTransform.
    let url = call.url.clone();
    call.url.push_str("&e2ee_api=streams");
    let alice = call.join(BrowserKind::Chromium, "Alice-chromium").await;
    call.url = url;
    let alice = alice?;
    withholds_until_keyed(&call.pages[alice]).await?;
    set_key(&call.pages[alice]).await?;
    let bob = call.join(BrowserKind::Firefox, "Bob-firefox").await?;
    set_key(&call.pages[bob]).await?;
    for id in [alice, bob] {
        let state = e2ee_state(&call.pages[id]).await?;
        eprintln!("{}: {state}", call.names[id]);
        ensure!(
            state["e2ee"] == json!(true),
            "{}: not an encrypted room: {state}",
            call.names[id]
        );
        let api = if id == alice { "streams" } else { "script" };
        ensure!(
            state["api"] == json!(api),
            "{}: not the {api} API: {state}",
            call.names[id]
        );
    }
    call.plays(alice, 1).await?;
    call.plays(bob, 1).await?;
    call.hold(scaled(20)).await?;

    // A third page, without the key.
    let carol = call.browsers.page(BrowserKind::Chromium).await?;
    let outcome = keyless_page(call, &carol).await;
    if outcome.is_err() {
        let _ = carol
            .screenshot(&rtcd_e2e::browser::artifacts_dir().join("e2ee-carol.png"))
            .await;
    }
    let _ = carol.close().await;
    outcome?;

    call.hold(scaled(10)).await?;
    rotate_keys(call, &[alice, bob]).await?;
    for id in [alice, bob] {
        let state = e2ee_state(&call.pages[id]).await?;
        eprintln!("{} at the end: {state}", call.names[id]);
        ensure!(
            count(&state, "/stats/encrypted") > 500 && count(&state, "/stats/decrypted") > 500,
            "{}: too few frames encrypted / decrypted: {state}",
            call.names[id]
        );
        ensure!(
            count(&state, "/stats/decryptFailed/not_encrypted") == 0
                && count(&state, "/stats/decryptFailed/authentication_failed") == 0,
            "{}: received frames that were not encrypted or did not authenticate: {state}",
            call.names[id]
        );
    }
    Ok(())
}

/// The rotation docs/e2ee.md describes, mid-call: every page gets key 1, then sends with it,
/// then forgets key 0. Media flows in every window throughout (`hold`), and once key 0 is gone
/// no page meets a frame under a key it lacks: everything was re-encrypted under key 1.
async fn rotate_keys(call: &mut Call, ids: &[usize]) -> anyhow::Result<()> {
    let step = |script: &'static str| {
        format!(
            "const done = arguments[arguments.length - 1];
             Promise.resolve().then(() => {script}).then(() => done('ok'), (e) => done(String(e)));"
        )
    };
    let run = async |call: &Call, script: &'static str, arg: Value| -> anyhow::Result<()> {
        for &id in ids {
            let outcome = call.pages[id]
                .eval_async(&step(script), arg.clone())
                .await?;
            ensure!(
                outcome == json!("ok"),
                "{}: `{script}`: {outcome}",
                call.names[id]
            );
        }
        Ok(())
    };
    run(
        call,
        "window.rtcd.setE2eeKey(1, arguments[0], { derive: true })",
        json!([NEXT_MATERIAL]),
    )
    .await?;
    call.hold(scaled(5)).await?;
    run(call, "window.rtcd.useE2eeKey(1)", json!([])).await?;
    call.hold(scaled(5)).await?;
    run(call, "window.rtcd.removeE2eeKey(0)", json!([])).await?;
    // Frames in flight under key 0 when it went may still count; from here on none may.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut before = Vec::new();
    for &id in ids {
        before.push(e2ee_state(&call.pages[id]).await?);
    }
    call.hold(scaled(10)).await?;
    for (&id, before) in ids.iter().zip(before) {
        let after = e2ee_state(&call.pages[id]).await?;
        eprintln!("{} after the rotation: {after}", call.names[id]);
        let grew = |path: &str| count(&after, path).saturating_sub(count(&before, path));
        ensure!(
            grew("/stats/decryptFailed/unknown_key") == 0,
            "{}: frames under a removed key after the rotation: {before} -> {after}",
            call.names[id]
        );
        ensure!(
            grew("/stats/decrypted") > 100 && grew("/stats/encrypted") > 100,
            "{}: too few frames under the new key: {before} -> {after}",
            call.names[id]
        );
    }
    Ok(())
}

async fn keyless_page(call: &Call, carol: &BrowserPage) -> anyhow::Result<()> {
    carol
        .goto(&format!("{}&name=Carol-nokey", call.url))
        .await?;
    carol.wait_state("connected").await?;
    // Both cameras arrive (bytes), and a while of frames goes by.
    carol
        .wait_for(
            "window.rtcd && window.rtcd.session && window.rtcd.remoteTracks.size >= 4",
            BROWSER_STEP,
        )
        .await
        .context("Carol does not receive the four remote tracks")?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let video = received_video(carol).await?;
    let state = e2ee_state(carol).await?;
    eprintln!("Carol without the key: {state}; video (decoded, bytes) {video:?}");
    ensure!(
        video.len() >= 2 && video.iter().all(|(_, bytes)| *bytes > 10_000),
        "Carol does not receive both cameras' bytes: {video:?}"
    );
    ensure!(
        video.iter().all(|(decoded, _)| *decoded == 0),
        "Carol decoded video without the key: {video:?}"
    );
    ensure!(
        count(&state, "/stats/decryptFailed/unknown_key") > 300
            && count(&state, "/stats/decryptFailed/not_encrypted") == 0
            && count(&state, "/stats/decryptFailed/authentication_failed") == 0
            && count(&state, "/stats/decrypted") == 0,
        "Carol's frames are not all encrypted under a key she lacks: {state}"
    );
    let shown = carol
        .eval(
            "return [...document.querySelectorAll('video[data-participant]')]\
               .filter(v => v.videoWidth > 0).length;",
            json!([]),
        )
        .await?;
    ensure!(
        shown == json!(0),
        "Carol shows {shown} videos without the key"
    );

    // With the key, the same streams play. Carol publishes nothing (the other pages' flow
    // does not expect her), so her local tracks go before her key comes.
    carol
        .eval(
            "for (const s of [...window.rtcd.localTracks.keys()]) window.rtcd.unpublish(s);",
            json!([]),
        )
        .await?;
    set_key(carol).await?;
    carol
        .wait_for(
            "[...document.querySelectorAll('video[data-participant]:not([data-source=screen])')]\
               .filter(v => v.videoWidth > 0 && v.videoHeight > 0).length === 2",
            BROWSER_STEP,
        )
        .await
        .context("Carol does not play both cameras once she has the key")?;
    // The worker reports its counters to the page at most twice a second: the frames she
    // plays were decrypted up to half a second before the page hears of it.
    let _ = carol
        .wait_for(
            "window.rtcd.e2eeStats.decrypted > 0",
            Duration::from_secs(5),
        )
        .await;
    let state = e2ee_state(carol).await?;
    eprintln!("Carol with the key: {state}");
    ensure!(
        count(&state, "/stats/decrypted") > 0,
        "Carol decrypts nothing with the key: {state}"
    );
    carol.eval("window.rtcd.leave();", json!([])).await?;
    carol.wait_state("closed").await?;
    Ok(())
}

#[test]
fn chromium_and_firefox_call_encrypted_and_a_page_without_the_key_decodes_nothing()
-> anyhow::Result<()> {
    netns::run(encrypted_call)
}
