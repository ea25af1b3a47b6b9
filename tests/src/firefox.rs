//! Harness for Firefox pages: Debian's `firefox-esr`, headless, driven over WebDriver BiDi
//! directly (Debian has no geckodriver): one Firefox process per page, each with a fresh
//! profile whose `user.js` turns on fake media devices without prompts, plain host ICE
//! candidates, autoplay with sound, and turns off every first-run, update, telemetry and
//! remote-settings fetch.
//!
//! Firefox is started with `--remote-debugging-port=0` and reports its port on stderr
//! ("WebDriver BiDi listening on ws://127.0.0.1:PORT"); one WebSocket to `/session` carries
//! commands (answered by `id`) and the `log.entryAdded` events, which are kept as the console.
//! Uncaught errors and unhandled rejections reach that console too (entries of type
//! `javascript`), so Firefox pages get no error hook: Firefox 140 ESR, given the hook as a
//! `script.addPreloadScript`, reported `Permission denied to access property "length"` on
//! about one page load in four (none in 20 loads without it, or with an empty preload script).
//! Scripts run through `script.callFunction` with `awaitPromise`, and return their result as
//! a JSON string (`JSON.stringify` in the page), so BiDi's remote-value format never reaches
//! the tests. Firefox runs in its own process group, killed on drop with all its children.
//!
//! Firefox gathers no loopback ICE candidates: its calls need the LAN namespace of
//! [`crate::netns`]. Environment: `FIREFOX` overrides the binary (default
//! `/usr/bin/firefox-esr`).

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::browser::{BROWSER_STEP, LogEntry};

/// Default Firefox binary (Debian package `firefox-esr`).
pub const FIREFOX: &str = "/usr/bin/firefox-esr";

/// Longest wait for one BiDi command (a navigation waits for the load event).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Console entries kept per page (the oldest are dropped beyond this).
const MAX_CONSOLE_ENTRIES: usize = 2000;

/// The profile's `user.js`: test media without prompts, host candidates with real addresses
/// (the namespace's private test addresses), autoplay, and no background network traffic.
const USER_JS: &[(&str, &str)] = &[
    ("media.navigator.streams.fake", "true"),
    ("media.navigator.permission.disabled", "true"),
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
    ("media.peerconnection.ice.default_address_only", "false"),
    ("media.autoplay.default", "0"),
    ("media.autoplay.blocking_policy", "0"),
    // H.264 would need the OpenH264 plugin, which Firefox downloads: never (rtcd offers VP8).
    ("media.gmp-manager.updateEnabled", "false"),
    ("media.gmp-gmpopenh264.autoupdate", "false"),
    ("app.update.enabled", "false"),
    ("app.update.auto", "false"),
    ("app.update.disabledForTesting", "true"),
    ("app.normandy.enabled", "false"),
    ("app.shield.optoutstudies.enabled", "false"),
    ("messaging-system.rsexperimentloader.enabled", "false"),
    ("services.settings.server", "\"data:,\""),
    ("browser.shell.checkDefaultBrowser", "false"),
    ("browser.startup.homepage_override.mstone", "\"ignore\""),
    ("browser.startup.page", "0"),
    ("browser.aboutwelcome.enabled", "false"),
    ("browser.newtabpage.enabled", "false"),
    ("browser.region.network.url", "\"\""),
    ("browser.region.update.enabled", "false"),
    ("browser.search.update", "false"),
    ("browser.safebrowsing.malware.enabled", "false"),
    ("browser.safebrowsing.phishing.enabled", "false"),
    ("browser.safebrowsing.downloads.enabled", "false"),
    ("browser.safebrowsing.downloads.remote.enabled", "false"),
    ("browser.safebrowsing.blockedURIs.enabled", "false"),
    ("browser.safebrowsing.provider.mozilla.updateURL", "\"\""),
    ("browser.safebrowsing.provider.google4.updateURL", "\"\""),
    ("browser.safebrowsing.provider.google.updateURL", "\"\""),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("datareporting.healthreport.uploadEnabled", "false"),
    ("toolkit.telemetry.enabled", "false"),
    ("toolkit.telemetry.unified", "false"),
    ("toolkit.telemetry.archive.enabled", "false"),
    ("toolkit.telemetry.server", "\"data:,\""),
    ("extensions.update.enabled", "false"),
    ("extensions.getAddons.cache.enabled", "false"),
    ("extensions.systemAddon.update.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
    ("network.dns.disablePrefetch", "true"),
    ("network.prefetch-next", "false"),
    ("network.predictor.enabled", "false"),
    ("network.trr.mode", "5"),
    ("geo.enabled", "false"),
    ("dom.push.enabled", "false"),
    ("browser.ping-centre.telemetry", "false"),
];

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("FIREFOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(FIREFOX));
    if !path.is_file() {
        bail!(
            "firefox-esr not found at {} (set FIREFOX to override): the Firefox tests need \
             Debian's `firefox-esr` package; scripts/test.sh installs it (apt-get install -y \
             firefox-esr)",
            path.display()
        );
    }
    Ok(path)
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One headless Firefox showing one page (its top-level browsing context).
pub struct FirefoxPage {
    child: Child,
    commands: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    context: String,
    console: Arc<Mutex<Vec<LogEntry>>>,
    _profile: tempfile::TempDir,
    /// For a Firefox in a weak link's client namespace: the forwarder its BiDi socket goes
    /// through (see [`crate::shaping`]).
    _forward: Option<crate::shaping::Forward>,
}

impl FirefoxPage {
    /// Starts Firefox with a fresh profile and opens a BiDi session on its blank tab.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_in(None, false).await
    }

    /// Like [`FirefoxPage::start`], in `netns` when given (a weak link's client namespace,
    /// [`crate::shaping`]): Firefox's BiDi server listens on that namespace's `127.0.0.1`,
    /// reached through a forwarder. With `insecure_origin`, pages on plain `http://` LAN
    /// origins may use the fake camera (getUserMedia needs a secure context, and only
    /// `127.0.0.1` is one without TLS).
    pub(crate) async fn start_in(
        netns: Option<&crate::shaping::ClientNetns>,
        insecure_origin: bool,
    ) -> anyhow::Result<Self> {
        let firefox = binary()?;
        let profile = tempfile::tempdir()?;
        let insecure_media: &[(&str, &str)] = if insecure_origin {
            &[
                ("media.devices.insecure.enabled", "true"),
                ("media.getusermedia.insecure.enabled", "true"),
            ]
        } else {
            &[]
        };
        let prefs: String = USER_JS
            .iter()
            .chain(insecure_media)
            .map(|(k, v)| format!("user_pref(\"{k}\", {v});\n"))
            .collect();
        std::fs::write(profile.path().join("user.js"), prefs)?;
        let mut command = match netns {
            Some(netns) => netns.command(&firefox),
            None => Command::new(&firefox),
        };
        command
            .args(["--headless", "--no-remote", "--profile"])
            .arg(profile.path())
            .args(["--remote-debugging-port=0", "--width=1280", "--height=800"])
            .arg("about:blank")
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Own process group: the drop kills Firefox and its content processes together.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", firefox.display()))?;
        raise_group(&child);
        let stderr = child.stderr.take().context("firefox stderr")?;
        // Read on a thread (the pipe is blocking), which keeps draining afterwards.
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("WebDriver BiDi listening on ").nth(1)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match tokio::time::timeout(BROWSER_STEP, rx).await {
            Ok(Ok(url)) => url,
            _ => {
                kill_group(&mut child);
                bail!("firefox did not report its WebDriver BiDi address");
            }
        };
        // ws://127.0.0.1:PORT in the client namespace: through a forwarder from this one.
        let (url, forward) = match netns {
            Some(netns) => {
                let port = url
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
                let forward = port
                    .context("no port in Firefox's BiDi address")
                    .and_then(|port| netns.expose(port));
                match forward {
                    Ok(forward) => (format!("ws://127.0.0.1:{}", forward.port()), Some(forward)),
                    Err(e) => {
                        kill_group(&mut child);
                        return Err(e.context(format!("forwarding to Firefox's {url}")));
                    }
                }
            }
            None => (url, None),
        };
        let mut page = Self::connect(child, &url, profile).await?;
        page._forward = forward;
        match page.open().await {
            Ok(()) => Ok(page),
            Err(e) => {
                kill_group(&mut page.child);
                Err(e)
            }
        }
    }

    async fn connect(
        mut child: Child,
        url: &str,
        profile: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        // A few tries: Firefox in a weak link's client namespace (reached through a forwarder)
        // once answered the first upgrade with 400 Bad Request right after reporting its
        // address.
        let mut tries = 0;
        let ws = loop {
            match tokio_tungstenite::connect_async(format!("{url}/session")).await {
                Ok((ws, _)) => break ws,
                Err(e) if tries < 4 => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "connecting to Firefox's BiDi again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    kill_group(&mut child);
                    return Err(anyhow!(e).context(format!("connecting to {url}/session")));
                }
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (commands, mut outgoing) = mpsc::channel::<Message>(64);
        let pending: Pending = Arc::default();
        let console: Arc<Mutex<Vec<LogEntry>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(message) = outgoing.recv().await {
                if sink.send(message).await.is_err() {
                    break;
                }
            }
        });
        let (pending2, console2) = (pending.clone(), console.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if value["type"] == "event" {
                    if value["method"] == "log.entryAdded" {
                        let entry = &value["params"];
                        let mut console = lock(&console2);
                        if console.len() >= MAX_CONSOLE_ENTRIES {
                            console.remove(0);
                        }
                        console.push(LogEntry {
                            level: match entry["level"].as_str() {
                                Some("error") => "SEVERE".to_owned(),
                                Some("warn") => "WARNING".to_owned(),
                                Some(other) => other.to_uppercase(),
                                None => String::new(),
                            },
                            message: format!(
                                "{} {}{}",
                                entry["source"]["realm"].as_str().unwrap_or(""),
                                entry["text"].as_str().unwrap_or(""),
                                stack(&entry["stackTrace"])
                            )
                            .trim()
                            .to_owned(),
                        });
                    }
                } else if let Some(id) = value["id"].as_u64()
                    && let Some(reply) = lock(&pending2).remove(&id)
                {
                    let _ = reply.send(value);
                }
            }
            // The connection is gone: fail whatever still waits.
            lock(&pending2).clear();
        });
        Ok(Self {
            child,
            commands,
            pending,
            next_id: AtomicU64::new(1),
            context: String::new(),
            console,
            _profile: profile,
            _forward: None,
        })
    }

    /// New session, console events, the first tab.
    async fn open(&mut self) -> anyhow::Result<()> {
        self.command(
            "session.new",
            json!({"capabilities": {"alwaysMatch": {"acceptInsecureCerts": true}}}),
        )
        .await?;
        self.command("session.subscribe", json!({"events": ["log.entryAdded"]}))
            .await?;
        let tree = self
            .command("browsingContext.getTree", json!({"maxDepth": 0}))
            .await?;
        self.context = tree["contexts"][0]["context"]
            .as_str()
            .ok_or_else(|| anyhow!("no browsing context in {tree}"))?
            .to_owned();
        Ok(())
    }

    /// One BiDi command; returns its `result`, or the BiDi error as an `Err`.
    async fn command(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let message = json!({"id": id, "method": method, "params": params}).to_string();
        self.commands
            .send(Message::text(message))
            .await
            .map_err(|_| anyhow!("BiDi {method}: the connection to Firefox is closed"))?;
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => bail!("BiDi {method}: the connection to Firefox closed"),
            Err(_) => {
                lock(&self.pending).remove(&id);
                bail!("BiDi {method}: no answer within {COMMAND_TIMEOUT:?}");
            }
        };
        if answer["type"] == "error" {
            bail!(
                "BiDi {method}: {} {}",
                answer["error"].as_str().unwrap_or("error"),
                answer["message"].as_str().unwrap_or("")
            );
        }
        Ok(answer["result"].clone())
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.command(
            "browsingContext.navigate",
            json!({"context": self.context, "url": url, "wait": "complete"}),
        )
        .await?;
        Ok(())
    }

    /// Calls `declaration` (a JS function returning a JSON string, or a promise of one).
    async fn call_json(&self, declaration: String) -> anyhow::Result<Value> {
        let result = self
            .command(
                "script.callFunction",
                json!({
                    "functionDeclaration": declaration,
                    "awaitPromise": true,
                    "target": {"context": self.context},
                    "resultOwnership": "none",
                }),
            )
            .await?;
        if result["type"] == "exception" {
            let details = &result["exceptionDetails"];
            bail!(
                "{} (line {})",
                details["text"].as_str().unwrap_or("exception"),
                details["lineNumber"]
            );
        }
        match result["result"]["value"].as_str() {
            Some(json) => Ok(serde_json::from_str(json)?),
            None => Ok(Value::Null),
        }
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result
    /// (awaited if it is a promise), as chromedriver's "execute script" does: the body runs
    /// as an async function, so it may use `await`.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        let declaration = format!(
            "async function() {{ const r = await (async function() {{ {script}\n }}).apply(null, {args}); \
             return JSON.stringify(r === undefined ? null : r); }}",
            args = array(args)
        );
        self.call_json(declaration)
            .await
            .with_context(|| format!("script `{script}`"))
    }

    /// Runs `script` asynchronously: it calls `arguments[arguments.length - 1](result)`.
    pub async fn eval_async(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        let declaration = format!(
            "function() {{ return new Promise((done) => {{ (function() {{ {script}\n }}).apply(null, [...{args}, done]); }})\
             .then((r) => JSON.stringify(r === undefined ? null : r)); }}",
            args = array(args)
        );
        self.call_json(declaration)
            .await
            .with_context(|| format!("async script `{script}`"))
    }

    /// Clicks the element with this id like a user (pointer actions at its centre), so the
    /// page gets a user activation (`getDisplayMedia` needs one in Firefox).
    pub async fn click(&self, id: &str) -> anyhow::Result<()> {
        let centre = self
            .eval(
                "const e = document.getElementById(arguments[0]);\
                 if (!e) throw new Error('no #' + arguments[0]);\
                 e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();\
                 return [Math.round(r.left + r.width / 2), Math.round(r.top + r.height / 2)];",
                json!([id]),
            )
            .await?;
        let (x, y) = (
            centre[0].as_i64().unwrap_or(0),
            centre[1].as_i64().unwrap_or(0),
        );
        self.command(
            "input.performActions",
            json!({"context": self.context, "actions": [{
                "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
                "actions": [
                    {"type": "pointerMove", "x": x, "y": y},
                    {"type": "pointerDown", "button": 0},
                    {"type": "pointerUp", "button": 0},
                ],
            }]}),
        )
        .await
        .with_context(|| format!("clicking #{id}"))?;
        Ok(())
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let result = self
            .command(
                "browsingContext.captureScreenshot",
                json!({"context": self.context}),
            )
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(result["data"].as_str().context("screenshot has no data")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Console messages since the last call (levels as Chromium names them: `SEVERE` for
    /// errors, `WARNING`, `INFO`, `DEBUG`).
    pub fn console(&self) -> Vec<LogEntry> {
        std::mem::take(&mut *lock(&self.console))
    }

    /// Ends the session and closes Firefox (killed if it does not exit promptly).
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.command("browser.close", json!({})),
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for FirefoxPage {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// Where a logged error came from: the first frames of a BiDi `log.entryAdded` stack trace
/// (` at f (url:line:col) < g (...)`), empty if it has none.
fn stack(trace: &Value) -> String {
    let frames: Vec<String> = trace["callFrames"]
        .as_array()
        .into_iter()
        .flatten()
        .take(4)
        .map(|f| {
            format!(
                "{} ({}:{}:{})",
                f["functionName"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .unwrap_or("?"),
                f["url"].as_str().unwrap_or(""),
                f["lineNumber"],
                f["columnNumber"]
            )
        })
        .collect();
    if frames.is_empty() {
        String::new()
    } else {
        format!(" at {}", frames.join(" < "))
    }
}

/// `args` as a JS array literal (a single non-array value becomes a one-element array).
fn array(args: Value) -> String {
    match args {
        Value::Array(_) => args.to_string(),
        Value::Null => "[]".to_owned(),
        other => Value::Array(vec![other]).to_string(),
    }
}

/// The nice value Chromium gives its own media, audio, IO and compositor threads when it may
/// (run as root, as the tests are here; unprivileged it cannot raise them).
const CHROMIUM_OWN_NICE: i32 = -8;

/// Gives Firefox's process group (every thread of every process in it, and through
/// inheritance what they start later) Chromium's [`CHROMIUM_OWN_NICE`], when allowed. Firefox
/// does not raise its own threads; beside Chromium pages on a loaded 2-core host it was then
/// the one starved: in issue 28's weak-link calls, a Firefox page's microphone sent 25-45 %
/// fewer packets than its time needed (0.3-0.8 % once raised), and its receiving stalled
/// (docs/adaptive-video.md 4b). Best effort: without the privilege Chromium's threads stay at
/// 0 too, and the two are even anyway.
fn raise_group(child: &Child) {
    let _ = Command::new("renice")
        .args([
            "-n",
            &CHROMIUM_OWN_NICE.to_string(),
            "-g",
            &child.id().to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills the process group led by `child` (Firefox and its content processes) and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
