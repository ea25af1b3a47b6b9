//! The demo page as a call page (issue 32, point 6), in real Chromium: every name readable at
//! 2, 5 and 9 participants (in the DOM and, by OCR, in a screenshot), the per-participant
//! moderation menu (only what applies, keyboard), the speaker view and a screen share shown
//! large.
//!
//! One Chromium page joins; everyone else is a webrtc-rs participant joined through the proxy
//! with a dev token carrying a realistic display name, publishing a real VP8 clip (cheap on 2
//! cores: nothing to encode, and they receive nothing: they hold rtcd's offers). Runs in the
//! serialized browser chain (`.config/nextest.toml`, scripts/test.sh).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use rtcd_e2e::browser::{BROWSER_STEP, BrowserKind, BrowserPage, Browsers, artifacts_dir};
use rtcd_e2e::clip::Clip;
use rtcd_e2e::media::Participant;
use rtcd_e2e::netns;
use rtcd_proto::v1 as pb;
use serde_json::{Value, json};

use crate::calls::lan_stack;

/// Who is in the calls: the page first. The last is 24 characters of wide letters, the
/// longest name the page must show uncut at 9 participants.
const NAMES: [&str; 9] = [
    "Alice Martin",
    "Bruno Costa",
    "Chiara Rossi",
    "Dmitri Ivanov",
    "Emma Schneider",
    "Farah Haddad",
    "Gabriel Silva",
    "Hana Kobayashi",
    "Maximilian Wojciechowski",
];

/// A call of the Chromium page (as `NAMES[0]`) and webrtc-rs participants, on rtcd-dev.
struct PageCall {
    page: BrowserPage,
    peers: Vec<Participant>,
    clip: Arc<Clip>,
    room: String,
    ws: String,
    base: String,
    _browsers: Browsers,
    stack: rtcd_dev::DevStack,
    _dir: tempfile::TempDir,
}

impl PageCall {
    /// The page joined `room` and plays its own camera; nobody else yet.
    async fn open(room: &str) -> anyhow::Result<Self> {
        let (dir, stack) = lan_stack(Vec::new()).await?;
        let base = format!("http://{}", stack.proxy.addr());
        let ws = format!("ws://{}/ws", stack.proxy.addr());
        let clip = Arc::new(Clip::vp8(dir.path(), 4, 250)?);
        let browsers = Browsers::lan();
        let page = browsers.page(BrowserKind::Chromium).await?;
        page.goto(&format!(
            "{base}/?room={room}&name={}",
            NAMES[0].replace(' ', "%20")
        ))
        .await?;
        page.wait_state("connected").await?;
        Ok(Self {
            page,
            peers: Vec::new(),
            clip,
            room: room.into(),
            ws,
            base,
            _browsers: browsers,
            stack,
            _dir: dir,
        })
    }

    /// `name` joins through the proxy with a dev token and publishes the VP8 clip as its
    /// camera (and, with `audio`, a microphone whose RTP says it talks); returns their identity.
    async fn join(&mut self, name: &str, audio: bool) -> anyhow::Result<String> {
        self.join_as(name, audio, "member").await
    }

    /// [`PageCall::join`] with a token for `role` (dev tokens: `moderator`, `member`, `guest`).
    async fn join_as(&mut self, name: &str, audio: bool, role: &str) -> anyhow::Result<String> {
        let minted: Value = reqwest::Client::new()
            .get(format!("{}/dev/token", self.base))
            .query(&[("room", self.room.as_str()), ("name", name), ("role", role)])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = minted["token"].as_str().context("no dev token")?;
        let tag = name.split(' ').next().unwrap_or(name).to_lowercase();
        let peer = Participant::join_via_proxy(&self.ws, token, &self.room, &tag)
            .await
            .with_context(|| format!("{name} cannot join"))?;
        // They watch nobody: rtcd's offers to send them the others are left unanswered.
        peer.hold_offers(true);
        peer.add_clip_track("video", self.clip.clone()).await?;
        if audio {
            peer.add_track("audio").await?;
        }
        peer.renegotiate().await?;
        self.peers.push(peer);
        let identity = self
            .page
            .wait_for(
                &format!(
                    "[...rtcd.participants.values()].find(p => p.name === {0})?.identity",
                    json!(name)
                ),
                BROWSER_STEP,
            )
            .await
            .with_context(|| format!("the page does not see {name}"))?;
        identity.as_str().map(str::to_owned).context("identity")
    }

    /// Waits until the page plays `count` remote cameras with real frames.
    async fn plays(&self, count: usize) -> anyhow::Result<()> {
        self.page
            .wait_for(
                &format!(
                    "[...document.querySelectorAll('video[data-participant]:not([data-source=screen])')]\
                       .filter(v => v.videoWidth > 0 && !v.paused).length === {count}"
                ),
                BROWSER_STEP,
            )
            .await
            .with_context(|| format!("the page does not play {count} remote camera(s)"))
            .map(|_| ())
    }

    /// Fails on any console error or uncaught error of the page, then ends the call.
    async fn close(self) -> anyhow::Result<()> {
        let errors = self.page.unexpected_errors(&[]).await.unwrap_or_default();
        for peer in &self.peers {
            peer.close().await;
        }
        let _ = self.page.close().await;
        self.stack.shutdown().await;
        ensure!(errors.is_empty(), "the page threw: {errors:?}");
        Ok(())
    }
}

/// Where each tile's name is and whether it can be read there, as the DOM says: its text,
/// whether the ellipsis cut it, whether it lies in the viewport and in its tile, and whether
/// it is on top (the element at its center and 4 px inside each of its corners is the name).
const NAME_GEOMETRY: &str = "\
    return [...document.querySelectorAll('#grid figure.tile')].map(f => {\
      const n = f.querySelector('.name'); const r = n.getBoundingClientRect();\
      const t = f.getBoundingClientRect();\
      const points = [[r.left + r.width / 2, r.top + r.height / 2], [r.left + 4, r.top + 4],\
        [r.right - 4, r.top + 4], [r.left + 4, r.bottom - 4], [r.right - 4, r.bottom - 4]];\
      const covered = points.map(([x, y]) => document.elementFromPoint(x, y))\
        .filter(e => !e || !(e === n || n.contains(e)))\
        .map(e => e ? e.tagName + '.' + e.className + '#' + e.id : 'nothing');\
      return {identity: f.dataset.participant || '', local: f.classList.contains('local'),\
        text: n.textContent, label: f.getAttribute('aria-label') || '',\
        cut: n.scrollWidth > n.clientWidth,\
        inViewport: r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight,\
        inTile: r.left >= t.left && r.right <= t.right && r.top >= t.top && r.bottom <= t.bottom,\
        covered, font: parseFloat(getComputedStyle(n).fontSize),\
        x: r.left * devicePixelRatio, y: r.top * devicePixelRatio,\
        w: r.width * devicePixelRatio, h: r.height * devicePixelRatio};\
    });";

/// `count` people (the page and `count - 1` peers): every name is readable in the DOM and in
/// a screenshot (OCR of each tile's name plate), which is saved as `call-{count}.png`.
async fn names_readable(count: usize) -> anyhow::Result<()> {
    let tesseract = tesseract()?;
    let mut call = PageCall::open(&format!("names-{count}")).await?;
    let outcome = async {
        for name in &NAMES[1..count] {
            call.join(name, false).await?;
        }
        call.plays(count - 1).await?;
        // Settled: everyone's media connected, and every tile shows its connection bars.
        call.page
            .wait_for(
                "document.getElementById('grid').dataset.layout === 'grid' \
                 && [...document.querySelectorAll('figure[data-participant]')]\
                      .every(f => f.dataset.media === 'connected' && f.dataset.quality) \
                 && document.getElementById('local-tile').dataset.quality",
                BROWSER_STEP,
            )
            .await
            .context("the tiles do not settle (media connected, connection bars shown)")?;
        // A frame for the layout after the last tile came.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let shot = artifacts_dir().join(format!("call-{count}.png"));
        call.page.screenshot(&shot).await?;
        let tiles = call.page.eval(NAME_GEOMETRY, json!([])).await?;
        let tiles = tiles.as_array().context("tiles")?;
        ensure!(
            tiles.len() == count,
            "{} tiles for {count}: {tiles:?}",
            tiles.len()
        );
        for (i, name) in NAMES[..count].iter().enumerate() {
            let shown = if i == 0 {
                format!("{name} (you)")
            } else {
                (*name).to_owned()
            };
            let tile = tiles
                .iter()
                .find(|t| t["text"] == json!(shown))
                .with_context(|| format!("no tile named {shown:?}: {tiles:?}"))?;
            ensure!(tile["local"] == json!(i == 0), "{shown}: {tile}");
            ensure!(tile["cut"] == json!(false), "{shown} is cut: {tile}");
            ensure!(
                tile["inViewport"] == json!(true),
                "{shown} is off screen: {tile}"
            );
            ensure!(
                tile["inTile"] == json!(true),
                "{shown} is outside its tile: {tile}"
            );
            ensure!(tile["covered"] == json!([]), "{shown} is covered: {tile}");
            ensure!(
                tile["font"].as_f64() >= Some(14.0),
                "{shown} is small: {tile}"
            );
            ensure!(
                tile["label"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&shown),
                "{shown}: the tile's accessible label does not name them: {tile}"
            );
        }
        for tile in tiles {
            let expected = tile["text"].as_str().unwrap_or_default();
            let read = ocr_region(&tesseract, &shot, tile).await?;
            ensure!(
                normalize(&read).contains(&normalize(expected)),
                "the screenshot {} shows {expected:?} as {read:?} (OCR)",
                shot.display()
            );
        }
        eprintln!("call-{count}: every name read back from {}", shot.display());
        Ok(())
    }
    .await;
    let closed = call.close().await;
    outcome.and(closed)
}

/// The OCR binary (Debian `tesseract-ocr`, which scripts/test.sh installs).
fn tesseract() -> anyhow::Result<PathBuf> {
    let found = std::process::Command::new("tesseract")
        .arg("--version")
        .output();
    match found {
        Ok(out) if out.status.success() => Ok(PathBuf::from("tesseract")),
        _ => bail!(
            "`tesseract` not found: the call page tests read the names in a screenshot with \
             OCR; install Debian's `tesseract-ocr` (scripts/test.sh does)"
        ),
    }
}

/// OCR of one name plate of `shot`: cropped at the DOM's rectangle, upscaled 4x, grey, inverted
/// (tesseract reads dark text on light best) with a white margin, read as one line.
async fn ocr_region(tesseract: &Path, shot: &Path, tile: &Value) -> anyhow::Result<String> {
    let px = |k: &str| tile[k].as_f64().unwrap_or_default().round() as i64;
    let crop = format!(
        "crop={}:{}:{}:{},scale=iw*4:ih*4:flags=lanczos,format=gray,negate,pad=iw+80:ih+80:40:40:white",
        px("w"),
        px("h"),
        px("x"),
        px("y")
    );
    let dir = tempfile::tempdir()?;
    let plate = dir.path().join("plate.png");
    let status = tokio::process::Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-i"])
        .arg(shot)
        .args(["-vf", &crop])
        .arg(&plate)
        .status()
        .await?;
    ensure!(status.success(), "ffmpeg could not crop {crop}");
    let out = tokio::process::Command::new(tesseract)
        .arg(&plate)
        .args(["-", "--psm", "7"])
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "tesseract: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Lower case, letters, digits and single spaces: what OCR and the DOM must agree on. A
/// capital I and a small l are the same stroke in the page's sans-serif font (tesseract read
/// "Ivanov" as "lvanov"), so both become `l`.
fn normalize(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'I' | 'l' | '|' => 'l',
            c if c.is_alphanumeric() => c.to_ascii_lowercase(),
            _ => ' ',
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn five_participants_names_are_readable_in_the_dom_and_in_a_screenshot() -> anyhow::Result<()> {
    netns::run(|| names_readable(5))
}

#[test]
fn two_participants_names_are_readable_in_the_dom_and_in_a_screenshot() -> anyhow::Result<()> {
    netns::run(|| names_readable(2))
}

#[test]
fn nine_participants_names_are_readable_in_the_dom_and_in_a_screenshot() -> anyhow::Result<()> {
    netns::run(|| names_readable(9))
}

/// The open menu's items as `action` or `action:source`, in order ([] when closed).
const MENU_ITEMS: &str = "\
    const m = document.getElementById('tile-menu');\
    return m.hidden ? [] : [...m.querySelectorAll('[role=menuitem]')]\
      .map(i => i.dataset.source ? i.dataset.action + ':' + i.dataset.source : i.dataset.action);";

/// Presses `key` on what has the focus, as a keyboard would (a trusted-looking keydown).
fn press(key: &str) -> String {
    format!(
        "document.activeElement.dispatchEvent(new KeyboardEvent('keydown', \
           {{key: {}, bubbles: true, cancelable: true}})); return true;",
        json!(key)
    )
}

/// What has the focus: `menu:N` for the Nth menu item, `actions:IDENTITY` for a menu button.
const FOCUSED: &str = "\
    const a = document.activeElement;\
    if (a.getAttribute('role') === 'menuitem') return 'menu:' + [...a.parentElement.children].indexOf(a);\
    if (a.classList.contains('actions')) return 'actions:' + a.closest('figure').dataset.participant;\
    return a.tagName + '#' + a.id;";

impl PageCall {
    async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.page.eval(script, json!([])).await
    }

    /// Focuses `identity`'s menu button and opens the menu with `key`.
    async fn open_menu(&self, identity: &str, key: &str) -> anyhow::Result<Vec<String>> {
        self.page
            .eval(
                "document.querySelector(`figure[data-participant=\"${arguments[0]}\"] .actions`).focus(); return true;",
                json!([identity]),
            )
            .await?;
        self.eval(&press(key)).await?;
        let items = self.eval(MENU_ITEMS).await?;
        Ok(serde_json::from_value(items)?)
    }

    /// Clicks the open menu's item `action` (`action:source` for a mute).
    async fn choose(&self, item: &str) -> anyhow::Result<()> {
        let (action, source) = item.split_once(':').unwrap_or((item, ""));
        let selector = if source.is_empty() {
            format!("#tile-menu [data-action={action}]")
        } else {
            format!("#tile-menu [data-action={action}][data-source={source}]")
        };
        self.page
            .eval(
                "const i = document.querySelector(arguments[0]); if (!i) throw new Error('no ' + arguments[0]);\
                 i.click(); return true;",
                json!([selector]),
            )
            .await
            .map(|_| ())
    }

    /// The area of each tile (px²) by whom it shows: `IDENTITY`, or `screen:IDENTITY`.
    async fn areas(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let areas = self
            .eval(
                "return [...document.querySelectorAll('#grid figure.tile')].map(f => {\
                   const r = f.getBoundingClientRect();\
                   const who = f.dataset.screenOf ? 'screen:' + f.dataset.screenOf : (f.dataset.participant || 'me');\
                   return [who, r.width * r.height]; });",
            )
            .await?;
        Ok(serde_json::from_value(areas)?)
    }

    /// Waits until the grid's layout is `layout` and `big`'s tile is at least `times` as large
    /// as every other.
    async fn shows_large(&self, layout: &str, big: &str, times: f64) -> anyhow::Result<()> {
        self.page
            .wait_for(
                &format!(
                    "document.getElementById('grid').dataset.layout === {}",
                    json!(layout)
                ),
                BROWSER_STEP,
            )
            .await?;
        let deadline = tokio::time::Instant::now() + BROWSER_STEP;
        loop {
            let areas = self.areas().await?;
            let large = areas.iter().find(|(who, _)| who == big).map(|(_, a)| *a);
            let others = areas.iter().filter(|(who, _)| who != big);
            if let Some(large) = large
                && others.clone().all(|(_, a)| large >= a * times)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{layout}: {big} is not {times}x every other tile: {areas:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A moderator's menu on a remote tile, with the keyboard: only the items that apply (no
/// "Revoke moderator" for a member, no "Mute microphone" without a microphone or once it is
/// muted), arrows / Home / End move, Escape closes and gives the focus back; granting the role
/// turns "Make moderator" into "Revoke moderator". Then the layouts: the speaker view shows
/// whoever speaks large (and keeps them when they stop), and a screen share is shown large
/// whatever the toggle. On the way, the device picker opens with the camera in use selected.
async fn menu_and_layouts() -> anyhow::Result<()> {
    let mut call = PageCall::open("menu").await?;
    let outcome = async {
        let bruno = call.join(NAMES[1], true).await?;
        // Chiara's microphone is silent until she speaks.
        let chiara = call.join(NAMES[2], false).await?;
        // Dmitri's token makes him a moderator: the page knows it from his announcement.
        let dmitri = call.join_as(NAMES[3], false, "moderator").await?;
        call.plays(3).await?;
        call.page
            .wait_for(
                &format!(
                    "[...rtcd.remoteTracks.values()].some(t => t.identity === {} && t.source === 'microphone')",
                    json!(bruno)
                ),
                BROWSER_STEP,
            )
            .await
            .context("the page gets no microphone of Bruno")?;

        // The menu, opened from the keyboard, lists only what applies.
        let items = call.open_menu(&bruno, "ArrowDown").await?;
        ensure!(
            items == ["mute:microphone", "mute:camera", "grant_moderator", "kick", "ban"],
            "Bruno's menu: {items:?}"
        );
        let button = format!(
            "document.querySelector('figure[data-participant=\"{bruno}\"] .actions')"
        );
        let expanded = call
            .eval(&format!(
                "return [{button}.getAttribute('aria-expanded'), {button}.getAttribute('aria-haspopup'), \
                   {button}.getAttribute('aria-label')];"
            ))
            .await?;
        ensure!(
            expanded == json!(["true", "menu", "Actions for Bruno Costa"]),
            "the menu button says {expanded}"
        );
        let last = items.len() - 1;
        for (key, focused) in [
            ("", "menu:0".to_owned()),
            ("ArrowDown", "menu:1".to_owned()),
            ("End", format!("menu:{last}")),
            ("ArrowDown", "menu:0".to_owned()),
            ("ArrowUp", format!("menu:{last}")),
            ("Home", "menu:0".to_owned()),
            ("Escape", format!("actions:{bruno}")),
        ] {
            if !key.is_empty() {
                call.eval(&press(key)).await?;
            }
            let now = call.eval(FOCUSED).await?;
            ensure!(now == json!(focused), "after {key:?} the focus is on {now}, not {focused}");
        }
        ensure!(
            call.eval(MENU_ITEMS).await? == json!([])
                && call.eval(&format!("return {button}.getAttribute('aria-expanded');")).await?
                    == json!("false"),
            "Escape did not close the menu"
        );
        // Tab closes it too; a click elsewhere as well.
        call.open_menu(&bruno, "Enter").await?;
        call.eval(&press("Tab")).await?;
        ensure!(call.eval(MENU_ITEMS).await? == json!([]), "Tab did not close the menu");
        call.open_menu(&chiara, "ArrowDown").await?;
        call.eval(
            "document.getElementById('grid').dispatchEvent(new PointerEvent('pointerdown', {bubbles: true})); return true;",
        )
        .await?;
        ensure!(call.eval(MENU_ITEMS).await? == json!([]), "a click elsewhere did not close the menu");

        // Only one menu at a time: opening Chiara's closes Bruno's.
        call.open_menu(&bruno, "ArrowDown").await?;
        let chiaras = call.open_menu(&chiara, "ArrowDown").await?;
        ensure!(
            chiaras == ["mute:camera", "grant_moderator", "kick", "ban"],
            "Chiara publishes no microphone: {chiaras:?}"
        );
        let open = call
            .eval("return document.querySelectorAll('.actions[aria-expanded=true]').length;")
            .await?;
        ensure!(open == json!(1), "{open} menus open");
        call.eval(&press("Escape")).await?;

        let dmitris = call.open_menu(&dmitri, "Enter").await?;
        ensure!(
            dmitris == ["mute:camera", "revoke_moderator", "kick", "ban"],
            "Dmitri joined as a moderator: {dmitris:?}"
        );
        call.eval(&press("Escape")).await?;

        // Make Bruno a moderator: the server tells the page (`participant_updated`), and his
        // menu then offers to revoke it, not to grant it.
        call.open_menu(&bruno, "Enter").await?;
        call.choose("grant_moderator").await?;
        call.page
            .wait_for(
                &format!(
                    "document.getElementById('toasts').innerText.includes('is now a moderator')                        && rtcd.participants.get({}).role === 'moderator'",
                    json!(bruno)
                ),
                BROWSER_STEP,
            )
            .await
            .context("no answer to grant_moderator, or no participant_updated")?;
        let items = call.open_menu(&bruno, "Enter").await?;
        call.page
            .screenshot(&artifacts_dir().join("call-menu.png"))
            .await?;
        ensure!(
            items.contains(&"revoke_moderator".to_owned())
                && !items.contains(&"grant_moderator".to_owned()),
            "Bruno is a moderator now: {items:?}"
        );
        call.eval(&press("Escape")).await?;

        // The device picker: the lists are filled, the camera in use is selected, the focus
        // moves in and comes back to the button when it closes.
        call.page.click("devices").await?;
        let picker = call
            .page
            .wait_for(
                "document.getElementById('devices-dialog').open && document.activeElement.id === 'device-camera' \
                 && document.getElementById('device-camera').options.length > 0 && {\
                   cameras: document.getElementById('device-camera').options.length,\
                   microphones: document.getElementById('device-microphone').options.length,\
                   selected: document.getElementById('device-camera').value,\
                   inUse: rtcd.localTracks.get('camera').getSettings().deviceId,\
                   speaker: !document.getElementById('device-speaker').hidden}",
                BROWSER_STEP,
            )
            .await
            .context("the device picker does not open")?;
        ensure!(
            picker["selected"] == picker["inUse"]
                && picker["microphones"].as_u64() > Some(0)
                && picker["speaker"] == json!(true),
            "the device picker shows {picker}"
        );
        call.eval("document.querySelector('#devices-dialog button[type=submit]').click(); return true;")
            .await?;
        call.page
            .wait_for(
                "!document.getElementById('devices-dialog').open && document.activeElement.id === 'devices'",
                BROWSER_STEP,
            )
            .await
            .context("the device picker does not close, or the focus does not come back")?;

        // The speaker view: Bruno talks, so he is large.
        call.page.click("layout").await?;
        let pressed = call
            .eval("return document.getElementById('layout').getAttribute('aria-pressed');")
            .await?;
        ensure!(pressed == json!("true"), "#layout aria-pressed {pressed}");
        call.shows_large("speaker", &bruno, 4.0).await?;
        let shot = artifacts_dir().join("call-speaker.png");
        call.page.screenshot(&shot).await?;

        // Mute his microphone from the menu: his tile says so, and the item is gone.
        call.open_menu(&bruno, "Enter").await?;
        call.choose("mute:microphone").await?;
        call.page
            .wait_for(
                &format!(
                    "document.querySelector('figure[data-participant=\"{bruno}\"]').innerText.includes('mic off')"
                ),
                BROWSER_STEP,
            )
            .await
            .context("Bruno's tile does not show the moderator's mute")?;
        let items = call.open_menu(&bruno, "Enter").await?;
        ensure!(
            !items.contains(&"mute:microphone".to_owned()),
            "Bruno's microphone is muted, yet: {items:?}"
        );
        call.eval(&press("Escape")).await?;

        // Chiara starts to talk: she becomes the large tile, and stays when she stops.
        let chiara_peer = &call.peers[1];
        chiara_peer.set_audio_level(127);
        chiara_peer.add_track("audio").await?;
        chiara_peer.renegotiate().await?;
        chiara_peer.set_audio_level(5);
        call.shows_large("speaker", &chiara, 4.0).await?;
        chiara_peer.set_audio_level(127);
        tokio::time::sleep(Duration::from_secs(3)).await;
        call.shows_large("speaker", &chiara, 4.0).await?;

        // Dmitri shares a screen: it is shown large, whatever the toggle says.
        let dmitri_peer = &call.peers[2];
        dmitri_peer.add_clip_track("screen", call.clip.clone()).await?;
        dmitri_peer.declare("screen", pb::TrackKind::Screen);
        dmitri_peer.renegotiate().await?;
        call.page
            .wait_for(
                "[...document.querySelectorAll('video[data-source=screen]')].some(v => v.videoWidth > 0)",
                BROWSER_STEP,
            )
            .await
            .context("the page does not play Dmitri's screen")?;
        let screen = format!("screen:{dmitri}");
        call.shows_large("screen", &screen, 4.0).await?;
        call.page.click("layout").await?;
        call.shows_large("screen", &screen, 4.0).await?;
        let shot = artifacts_dir().join("call-screen.png");
        call.page.screenshot(&shot).await?;
        Ok(())
    }
    .await;
    let closed = call.close().await;
    outcome.and(closed)
}

#[test]
fn the_moderation_menu_shows_what_applies_and_the_layouts_show_speaker_and_screen_large()
-> anyhow::Result<()> {
    netns::run(menu_and_layouts)
}
