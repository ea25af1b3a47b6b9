//! Devices mid-call (issue 32, point 3): two pages of the same browser in a call through the
//! real stack; Alice switches her camera and her microphone with the SDK's public methods
//! (`switchCamera` / `switchMicrophone`: `RTCRtpSender.replaceTrack` on the same sections).
//! The call must carry on: every remote track flows in every 5 s window across the switches
//! ([`rtcd_e2e::flow`]), Alice makes no offer (no renegotiation) and her sending sections keep
//! their mids, and Bob sees the new camera.
//!
//! The fake devices: Chromium (`--use-fake-device-for-media-stream`) and Firefox
//! (`media.navigator.streams.fake`) each list one fake camera; Chromium lists several fake
//! microphones, Firefox one. A second camera or microphone, when listed, is switched to by
//! its device id first. What proves that Bob sees a new
//! source is a track the page makes itself and hands to `switchCamera`: a canvas's
//! `captureStream()` drawn square (480 x 480) where the fake cameras are 4:3, so Bob's tile
//! turns square whatever simulcast layer he receives. The microphone then switches to a
//! WebAudio oscillator's track (Chromium) or a fresh capture of the fake microphone (headless
//! Firefox, whose audio context never runs); Bob's audio packets must keep growing across it.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage};
use rtcd_e2e::netns;
use serde_json::{Value, json};

use crate::calls::{Call, conclude, lan_stack, scaled};

/// Counts the offers the page sends from now on (`window.__offers`), by wrapping
/// `WebSocket.prototype.send` (the SDK's socket looks `send` up at each call).
const COUNT_OFFERS: &str = "if (!window.__offers) {\
       window.__offers = { n: 0 }; const send = WebSocket.prototype.send;\
       WebSocket.prototype.send = function (data) {\
         try { if (JSON.parse(data).type === 'offer') window.__offers.n += 1; } catch (e) {}\
         return send.call(this, data); };\
     } return true;";

/// The page's sending sections: source -> [mid, id of the track sent].
const SENDERS: &str = "const pc = window.rtcd.peerConnection; const out = {};\
     for (const [source, track] of window.rtcd.localTracks) {\
       const t = pc.getTransceivers().find((x) => x.sender.track === track);\
       out[source] = t ? [t.mid, track.id] : null; }\
     return out;";

/// A square canvas track (480 x 480, 30 fps, a moving bar so every frame differs).
const CANVAS_TRACK: &str = "const c = document.createElement('canvas'); c.width = 480; c.height = 480;\
     const g = c.getContext('2d'); let i = 0;\
     window.__canvasTimer = setInterval(() => { g.fillStyle = '#c03'; g.fillRect(0, 0, 480, 480);\
       g.fillStyle = '#fff'; g.fillRect((i++ * 8) % 480, 0, 40, 480); }, 33);\
     const track = c.captureStream(30).getVideoTracks()[0];\
     return window.rtcd.switchCamera(track).then((t) => t === track && t.id);";

/// The microphone's new source: a WebAudio oscillator's track when the page's audio context
/// runs (Chromium); headless Firefox has no audio device, its context never leaves
/// `suspended` and the track would carry nothing, so there a fresh capture of the fake
/// microphone (a new track, opened while the old one still sends). Returns `[track id, what]`.
const TONE_TRACK: &str = "const ctx = new AudioContext();\
     const running = Promise.race([ctx.resume().then(() => ctx.state === 'running'),\
       new Promise((r) => setTimeout(() => r(false), 2000))]);\
     return running.then((ok) => { if (ok) { const osc = ctx.createOscillator();\
         const dst = ctx.createMediaStreamDestination(); osc.frequency.value = 440; osc.connect(dst);\
         osc.start(); window.__tone = ctx; return [dst.stream.getAudioTracks()[0], 'tone']; }\
       ctx.close(); return navigator.mediaDevices.getUserMedia({ audio: true })\
         .then((s) => [s.getAudioTracks()[0], 'capture']); })\
       .then(([track, what]) => window.rtcd.switchMicrophone(track).then((t) => t === track && [t.id, what]));";

/// Makes the camera in use end as an unplugged device's does, and records the SDK's device
/// events (`window.__devEvents`).
const UNPLUG_CAMERA: &str = "const c = window.rtcd; window.__devEvents = [];\
     c.on('devicelost', (d) => window.__devEvents.push(['lost', d.source, d.fallback]));\
     c.on('deviceswitched', (d) => window.__devEvents.push(['switched', d.source, d.reason, d.deviceId]));\
     c.on('error', (d) => window.__devEvents.push(['error', d.error.code, d.error.message]));\
     window.__devEvents.push(['unplug', document.hasFocus(), c.localTracks.get('camera').readyState]);\
     c.localTracks.get('camera').dispatchEvent(new Event('ended'));\
     return true;";

/// Switches `source` to the page's other device of `kind` when it lists one; returns its id.
async fn switch_to_other_device(
    page: &BrowserPage,
    kind: &str,
    source: &str,
) -> anyhow::Result<Option<String>> {
    let switched = page
        .eval(
            "const [kind, source] = arguments; const c = window.rtcd;\
             return c.listDevices().then((d) => {\
               const now = c.localTracks.get(source).getSettings().deviceId;\
               const other = d[kind].find((x) => x.deviceId && x.deviceId !== now && x.deviceId !== 'default'\
                 && x.deviceId !== 'communications');\
               if (!other) return { devices: d[kind].map((x) => x.label || x.deviceId) };\
               const m = source === 'camera' ? c.switchCamera(other.deviceId) : c.switchMicrophone(other.deviceId);\
               return m.then((t) => ({ switched: other.deviceId, now: t.getSettings().deviceId }));\
             });",
            json!([kind, source]),
        )
        .await?;
    eprintln!("{kind}: {switched}");
    if let Some(id) = switched["switched"].as_str() {
        ensure!(
            switched["now"] == switched["switched"],
            "{source} switched to {id} but captures from {}",
            switched["now"]
        );
        return Ok(Some(id.to_owned()));
    }
    Ok(None)
}

async fn switch_devices_mid_call(kind: BrowserKind) -> anyhow::Result<()> {
    let tag = format!("devices-{kind}");
    let (_dir, stack) = lan_stack(Vec::new()).await?;
    let mut call = Call::new(&stack, &tag);
    let outcome = scenario(&mut call, kind).await;
    conclude(call, stack, &tag, outcome).await
}

async fn scenario(call: &mut Call, kind: BrowserKind) -> anyhow::Result<()> {
    let alice = call.join(kind, &format!("Alice-{kind}")).await?;
    let bob = call.join(kind, &format!("Bob-{kind}")).await?;
    call.plays(alice, 1).await?;
    call.plays(bob, 1).await?;
    call.hold(scaled(10)).await?;

    let page = &call.pages[alice];
    page.eval(COUNT_OFFERS, json!([])).await?;
    let before = page.eval(SENDERS, json!([])).await?;
    eprintln!("{kind}: Alice's senders before the switches {before}");
    for source in ["camera", "microphone"] {
        ensure!(before[source][0].is_string(), "{source} not sent: {before}");
    }

    // Another fake device, where the browser lists one (by its id).
    let other_camera = switch_to_other_device(page, "videoinput", "camera").await?;
    let other_mic = switch_to_other_device(page, "audioinput", "microphone").await?;
    if other_camera.is_some() || other_mic.is_some() {
        call.hold(scaled(10)).await?;
    }

    // The camera becomes a square canvas: Bob's tile turns square.
    let page = &call.pages[alice];
    let canvas = page.eval(CANVAS_TRACK, json!([])).await?;
    ensure!(
        canvas.is_string(),
        "switchCamera(canvas track) gave {canvas}"
    );
    call.pages[bob]
        .wait_for(
            "[...document.querySelectorAll('video[data-participant]:not([data-source=screen])')]\
               .some((v) => v.videoWidth > 0 && v.videoWidth === v.videoHeight)",
            BROWSER_STEP,
        )
        .await
        .context("Bob does not see Alice's new (square) camera")?;
    call.hold(scaled(10)).await?;

    // The microphone becomes a tone (or a new capture).
    let page = &call.pages[alice];
    let switched = page.eval(TONE_TRACK, json!([])).await?;
    eprintln!("{kind}: microphone switched to {switched}");
    let tone = switched[0].clone();
    ensure!(tone.is_string(), "switchMicrophone(track) gave {switched}");
    call.hold(scaled(15)).await?;

    // Same sections, the new tracks on them, and no offer since the switches began.
    let page = &call.pages[alice];
    let after = page.eval(SENDERS, json!([])).await?;
    eprintln!("{kind}: Alice's senders after the switches {after}");
    for (source, track) in [("camera", &canvas), ("microphone", &tone)] {
        ensure!(
            after[source][0] == before[source][0],
            "{source} moved from section {} to {}",
            before[source][0],
            after[source][0]
        );
        ensure!(
            &after[source][1] == track,
            "{source} sends {} instead of the new track {track}",
            after[source][1]
        );
    }
    let offers = page.eval("return window.__offers.n;", json!([])).await?;
    ensure!(
        offers == json!(0),
        "Alice renegotiated: {offers} offer(s) during the switches"
    );
    // The camera in use goes away: its track ends as when unplugged (the test fires `ended`,
    // which the SDK cannot tell from a real unplug). The SDK falls back to the browser's
    // camera on the same section, still without an offer, and the media keeps flowing.
    // Chromium only: Firefox delivers a script's `ended` (an untrusted event) to the track's
    // `onended` handler but not to listeners added with `addEventListener`, which the SDK uses
    // (measured: dispatching it on the camera track ran `onended` and not a listener added
    // beside it), so the test cannot stand in for the unplug there; a real one is trusted.
    if kind == BrowserKind::Chromium {
        unplug_camera(call, alice, &before).await?;
    }
    // The call and its states held: both still connected.
    for id in [alice, bob] {
        let state: Value = call.pages[id].dataset().await?;
        ensure!(
            state["state"] == "connected" && state["media"] == "connected",
            "{}: {state}",
            call.names[id]
        );
    }
    audio_output(&call.pages[bob]).await?;
    // Connection quality is judged for the remote participant.
    let quality = call.pages[bob]
        .wait_for(
            "[...window.rtcd.participants.values()].map((p) => p.quality).find((q) => q)",
            Duration::from_secs(10),
        )
        .await
        .context("no connection quality for Alice on Bob's page")?;
    eprintln!("{kind}: Bob rates Alice's connection {quality}");
    call.plays(bob, 1).await?;
    Ok(())
}

/// Chooses the speaker on the page (`setAudioOutput`, docs/web-client.md "Devices"): where the
/// browser can (`setSinkId`), every element showing a received track plays on the chosen
/// output (the last listed; headless Firefox lists none, so the default `''`), and so does one
/// shown later (`attachAudioOutput`); where it cannot (Firefox ESR 115) the call rejects with
/// `audio_output_unsupported`. Returns `[supported, output, sink ids, later element's sink id]`
/// or `[supported, null, error code]`.
const SET_AUDIO_OUTPUT: &str = "const done = arguments[arguments.length - 1]; const c = window.rtcd;\
     const shown = () => [...document.querySelectorAll('video, audio')]\
       .filter((el) => el.srcObject && el.srcObject.getTracks().some((t) => [...c.remoteTracks.values()].some((r) => r.track === t)));\
     c.listDevices().then((d) => {\
       const id = d.audiooutput.length ? d.audiooutput[d.audiooutput.length - 1].deviceId : '';\
       return c.setAudioOutput(id).then(() => {\
         const late = document.createElement('video'); late.srcObject = shown()[0].srcObject;\
         return c.attachAudioOutput(late).then(() => [id, late.sinkId]); }); })\
       .then(([id, late]) => done([c.audioOutputSupported, id, shown().map((el) => el.sinkId), late]),\
             (e) => done([c.audioOutputSupported, null, e.code || String(e)]));";

async fn audio_output(page: &BrowserPage) -> anyhow::Result<()> {
    let outcome = page.eval_async(SET_AUDIO_OUTPUT, json!([])).await?;
    eprintln!("{}: setAudioOutput gave {outcome}", page.kind());
    if outcome[0] == json!(true) {
        let id = outcome[1].as_str().context("no output chosen")?;
        let sinks = outcome[2].as_array().context("setAudioOutput failed")?;
        ensure!(
            !sinks.is_empty() && sinks.iter().all(|s| s == id) && outcome[3] == id,
            "not every element plays on output {id:?}: {outcome}"
        );
    } else {
        ensure!(
            outcome[2] == "audio_output_unsupported",
            "a browser without setSinkId gave {outcome}"
        );
    }
    Ok(())
}

/// Ends Alice's camera track as an unplugged device's ends and checks the SDK's fallback.
async fn unplug_camera(call: &mut Call, alice: usize, before: &Value) -> anyhow::Result<()> {
    let kind = call.pages[alice].kind();
    let page = &call.pages[alice];

    page.eval(UNPLUG_CAMERA, json!([])).await?;
    let events = page
        .wait_for(
            "window.__devEvents.some((e) => (e[0] === 'switched' && e[2] === 'fallback') || e[0] === 'error')\
               && window.__devEvents",
            BROWSER_STEP,
        )
        .await
        .context("no fallback after the camera went away")?;
    eprintln!("{kind}: device events {events}");
    ensure!(
        events[1][0] == "lost" && events[1][2].is_string() && events[2][0] == "switched",
        "no devicelost with a fallback first: {events}"
    );
    call.hold(scaled(10)).await?;
    let page = &call.pages[alice];
    let fallback = page
        .eval(
            "const t = window.rtcd.localTracks.get('camera'); return [t.getSettings().deviceId || null, t.readyState];",
            json!([]),
        )
        .await?;
    ensure!(
        fallback[0] == events[1][2] && fallback[1] == "live",
        "the camera captures from {fallback}, not the fallback {}",
        events[1][2]
    );
    let last = page.eval(SENDERS, json!([])).await?;
    ensure!(
        last["camera"][0] == before["camera"][0],
        "the fallback camera moved to section {}",
        last["camera"][0]
    );
    let offers = page.eval("return window.__offers.n;", json!([])).await?;
    ensure!(
        offers == json!(0),
        "Alice renegotiated: {offers} offer(s) at the fallback"
    );
    Ok(())
}

#[test]
fn chromium_switches_camera_and_microphone_mid_call_without_renegotiation() -> anyhow::Result<()> {
    netns::run(|| switch_devices_mid_call(BrowserKind::Chromium))
}

#[test]
fn firefox_switches_camera_and_microphone_mid_call_without_renegotiation() -> anyhow::Result<()> {
    netns::run(|| switch_devices_mid_call(BrowserKind::Firefox))
}
