//! Harness for browser end-to-end tests: Debian's `chromium` driven through `chromedriver`
//! over the W3C WebDriver HTTP protocol (plain JSON with reqwest: no WebDriver crate, no extra
//! TLS stack).
//!
//! One [`Chromedriver`] process per test on `127.0.0.1` with an ephemeral port (`--port=0`;
//! the port is read from its start line), one browser session ([`Page`]) per page, each with its
//! own fresh profile directory, headless, with fake camera / microphone and loopback ICE (the
//! flags checked in `shared/notes/stack.md` section 6). Missing binaries are an error that says
//! how to install them: a browser test never skips.
//!
//! Environment: `CHROMIUM` and `CHROMEDRIVER` override the binaries (default `/usr/bin/...`);
//! `RTCD_E2E_ARTIFACTS` overrides where screenshots go (default `target/artifacts`).
//!
//! [`BrowserPage`] is the one page type for tests that run the same body in Chromium and in
//! Firefox ([`crate::firefox`]); [`Browsers`] opens either kind. Inside the LAN namespace of
//! [`crate::netns`] Chromium needs no loopback ICE ([`Chromedriver::start_lan`]).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

/// Default Chromium binary (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Default chromedriver binary (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for one browser-side condition (page load, join, reconnect).
pub const BROWSER_STEP: Duration = Duration::from_secs(30);

/// Chromium flags: headless as root, no background traffic, fake media devices that need no
/// permission prompt, loopback ICE candidates without mDNS obfuscation, sound allowed to
/// autoplay (a test cannot click), a laptop-sized window for screenshots.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
];

/// Added to [`CHROMIUM_FLAGS`] when the test runs on `lo` only: loopback host candidates.
const LOOPBACK_ICE_FLAG: &str = "--allow-loopback-in-peer-connection";

/// Where screenshots and other test artifacts go (created on demand).
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("RTCD_E2E_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts"))
}

fn binary(var: &str, default: &str, package: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    if !path.is_file() {
        bail!(
            "{} not found at {} (set {var} to override): the browser tests need Debian's \
             `{package}` package; scripts/test.sh installs it (apt-get install -y chromium \
             chromium-driver)",
            package,
            path.display()
        );
    }
    Ok(path)
}

/// A running chromedriver; on drop its open sessions are ended (so no browser outlives a
/// failed test) and it is killed.
pub struct Chromedriver {
    child: Child,
    port: u16,
    base: String,
    http: reqwest::Client,
    chromium: PathBuf,
    loopback_ice: bool,
    /// More Chromium flags for every page (e.g. trusting a test TURN server's certificate).
    extra_args: Vec<String>,
    sessions: Arc<Mutex<Vec<String>>>,
    /// For a chromedriver in a weak link's client namespace: the forwarder that `base` and
    /// `port` point at (dropped after the sessions are ended and the driver is killed).
    _forward: Option<crate::shaping::Forward>,
}

impl Chromedriver {
    /// Starts chromedriver on `127.0.0.1` with a port of its own choosing; its pages gather
    /// loopback ICE candidates (for tests in a namespace with only `lo`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(true, Vec::new(), None).await
    }

    /// Like [`Chromedriver::start`], for pages in the LAN namespace of [`crate::netns`]: no
    /// loopback candidates, only the namespace's private addresses (as on a real network).
    pub async fn start_lan() -> anyhow::Result<Self> {
        Self::start_with(false, Vec::new(), None).await
    }

    /// Starts chromedriver (and so its browsers) in `netns` when given, a weak link's client
    /// namespace ([`crate::shaping`]): it listens on that namespace's `127.0.0.1`, reached
    /// through a forwarder on this namespace's `127.0.0.1` that does not cross the weak link.
    async fn start_with(
        loopback_ice: bool,
        extra_args: Vec<String>,
        netns: Option<crate::shaping::ClientNetns>,
    ) -> anyhow::Result<Self> {
        // Once in a suite run, under load, chromedriver came up without reporting a port; a
        // second start is what a person would do (the error says which way each failed).
        match Self::start_once(loopback_ice, extra_args.clone(), netns.clone()).await {
            Ok(driver) => Ok(driver),
            Err(first) => Self::start_once(loopback_ice, extra_args, netns)
                .await
                .with_context(|| format!("second start (the first: {first:#})")),
        }
    }

    async fn start_once(
        loopback_ice: bool,
        extra_args: Vec<String>,
        netns: Option<crate::shaping::ClientNetns>,
    ) -> anyhow::Result<Self> {
        let chromium = binary("CHROMIUM", CHROMIUM, "chromium")?;
        let driver = binary("CHROMEDRIVER", CHROMEDRIVER, "chromium-driver")?;
        let mut command = match &netns {
            Some(netns) => netns.command(&driver),
            None => Command::new(&driver),
        };
        let mut child = command
            .args(["--port=0", "--log-level=WARNING"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its log would interleave with the test output (and keep the runner's pipe open).
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", driver.display()))?;
        let stdout = child.stdout.take().context("chromedriver stdout")?;
        // "ChromeDriver was started successfully on port 38327." Read on a thread (the pipe is
        // blocking), which then keeps draining so chromedriver never blocks on a full pipe.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = match tokio::time::timeout(BROWSER_STEP, rx).await {
            Ok(Ok(port)) => port,
            outcome => {
                let exited = child.try_wait().ok().flatten();
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "chromedriver did not report its port ({}; exit status: {exited:?})",
                    if outcome.is_err() {
                        format!("nothing within {BROWSER_STEP:?}")
                    } else {
                        "its output ended".to_owned()
                    }
                );
            }
        };
        let forward = match netns.map(|netns| netns.expose(port)).transpose() {
            Ok(forward) => forward,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let port = forward.as_ref().map_or(port, |f| f.port());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            http,
            chromium,
            loopback_ice,
            extra_args,
            sessions: Arc::default(),
            _forward: forward,
        })
    }

    /// A new browser session (a fresh profile) showing nothing yet.
    pub async fn page(&self) -> anyhow::Result<Page> {
        let profile = tempfile::tempdir()?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        if self.loopback_ice {
            args.push(LOOPBACK_ICE_FLAG.to_owned());
        }
        args.extend(self.extra_args.iter().cloned());
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let value = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(capabilities),
        )
        .await
        .context("starting a Chromium session")?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {value}"))?;
        lock(&self.sessions).push(id.to_owned());
        let page = Page {
            http: self.http.clone(),
            base: format!("{}/session/{id}", self.base),
            id: id.to_owned(),
            sessions: self.sessions.clone(),
            _profile: profile,
        };
        // Record uncaught errors and rejections from the first script on, next to the
        // browser log (belt and braces: the log has them as SEVERE entries too).
        page.command(
            "goog/cdp/execute",
            json!({"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": ERROR_HOOK}}),
        )
        .await?;
        Ok(page)
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // Drop cannot await: end leftover sessions with a blocking HTTP/1.1 DELETE each.
        for id in lock(&self.sessions).drain(..) {
            let _ = delete_session_blocking(self.port, &id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn delete_session_blocking(port: u16, id: &str) -> std::io::Result<()> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer)?;
    Ok(())
}

/// Records uncaught errors and unhandled rejections in `window.__pageErrors` (installed on
/// every new Chromium document; Firefox reports them in its console instead, see
/// [`crate::firefox`]).
pub(crate) const ERROR_HOOK: &str = "window.__pageErrors = [];\
    window.addEventListener('error', e => window.__pageErrors.push(String(e.message)));\
    window.addEventListener('unhandledrejection', e => window.__pageErrors.push('unhandled rejection: ' + String(e.reason && e.reason.message || e.reason)));";

/// One WebDriver request; returns `value`, or the WebDriver error as an `Err`.
async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| url.to_owned())?;
    let status = response.status();
    let mut body: Value = response.json().await.with_context(|| url.to_owned())?;
    let value = body["value"].take();
    if !status.is_success() {
        bail!(
            "WebDriver {url}: {} {}",
            value["error"].as_str().unwrap_or("error"),
            value["message"].as_str().unwrap_or("")
        );
    }
    Ok(value)
}

/// A browser console message.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, `DEBUG`.
    pub level: String,
    /// The text (source URL, position, message).
    pub message: String,
}

/// Something that runs a script in a page: Chromium's [`Page`] or either browser's
/// [`BrowserPage`], so both wait the same way.
trait Script {
    fn eval(
        &self,
        script: &str,
        args: Value,
    ) -> impl std::future::Future<Output = anyhow::Result<Value>>;

    /// Console messages since the last call.
    fn console(&self) -> impl std::future::Future<Output = anyhow::Result<Vec<LogEntry>>>;

    /// Navigates and waits for the load event, nothing more.
    fn navigate(&self, url: &str) -> impl std::future::Future<Output = anyhow::Result<()>>;
}

impl Script for Page {
    fn eval(
        &self,
        script: &str,
        args: Value,
    ) -> impl std::future::Future<Output = anyhow::Result<Value>> {
        Page::eval(self, script, args)
    }

    fn console(&self) -> impl std::future::Future<Output = anyhow::Result<Vec<LogEntry>>> {
        Page::console(self)
    }

    async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.command("url", json!({ "url": url })).await?;
        Ok(())
    }
}

impl Script for BrowserPage {
    fn eval(
        &self,
        script: &str,
        args: Value,
    ) -> impl std::future::Future<Output = anyhow::Result<Value>> {
        BrowserPage::eval(self, script, args)
    }

    fn console(&self) -> impl std::future::Future<Output = anyhow::Result<Vec<LogEntry>>> {
        BrowserPage::console(self)
    }

    async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        match self {
            Self::Chromium(page) => Script::navigate(page, url).await,
            Self::Firefox(page) => page.goto(url).await,
        }
    }
}

/// True once the demo page's script has rendered: `render()` sets `data-media` on the body
/// in every path (a call, the join form, a problem); the HTML alone never has it.
const PAGE_SCRIPT_RAN: &str = "document.body && document.body.dataset.media !== undefined";

/// How long a loaded demo page gets for its script to render before it is loaded again.
const PAGE_SCRIPT_WAIT: Duration = Duration::from_secs(15);

/// Opens the demo page at `url` and waits until its script has run. Once (CI, stop 55) a
/// loaded page never ran its module script (the body kept its HTML's data for 30 s) and this
/// could not be reproduced in 6 runs, loaded or not: a page whose script did not start is
/// loaded once more, and what it showed is printed so the next occurrence says why.
async fn open(page: &impl Script, url: &str) -> anyhow::Result<()> {
    page.navigate(url).await?;
    if truthy_within(page, PAGE_SCRIPT_RAN, PAGE_SCRIPT_WAIT)
        .await?
        .is_some()
    {
        return Ok(());
    }
    eprintln!(
        "{url}: the page's script did not run within {PAGE_SCRIPT_WAIT:?}{}; loading it again",
        diagnosis(page).await
    );
    page.navigate(url).await?;
    if truthy_within(page, PAGE_SCRIPT_RAN, PAGE_SCRIPT_WAIT)
        .await?
        .is_none()
    {
        bail!(
            "{url}: the page's script did not run, loaded twice{}",
            diagnosis(page).await
        );
    }
    Ok(())
}

/// What a failed wait reports beyond the body's data: the document's load state, the SDK's
/// states, the resources that failed to load, console errors and warnings and uncaught page
/// errors (a page whose script never ran shows only its HTML's data).
async fn diagnosis(page: &impl Script) -> String {
    let state = page
        .eval(
            "const failed = performance.getEntriesByType('resource')\
               .filter((r) => r.responseStatus >= 400 || r.transferSize === 0 && r.decodedBodySize === 0)\
               .map((r) => `${r.name} ${r.responseStatus || ''} ${Math.round(r.duration)} ms`);\
             const c = window.rtcd;\
             return { readyState: document.readyState, sdk: c ? c.state : null,\
               media: c ? c.mediaState : null, failedResources: failed,\
               pageErrors: window.__pageErrors || [] };",
            json!([]),
        )
        .await
        .unwrap_or_else(|e| json!(format!("unreadable: {e:#}")));
    let mut out = format!("; page {state}");
    if let Ok(entries) = page.console().await {
        for e in entries
            .iter()
            .filter(|e| e.level == "SEVERE" || e.level == "WARNING")
        {
            out.push_str(&format!("; console {} {}", e.level, e.message));
        }
    }
    out
}

/// Polls the expression `condition` every 100 ms until it is truthy (its value) or `timeout`
/// has passed (`None`; the caller says what the page showed).
async fn truthy_within(
    page: &impl Script,
    condition: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Value>> {
    let script = format!("return ({condition});");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let value = page.eval(&script, json!([])).await?;
        if !(value.is_null() || value == false || value == "" || value == 0) {
            return Ok(Some(value));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One browser session showing one page.
pub struct Page {
    http: reqwest::Client,
    base: String,
    id: String,
    sessions: Arc<Mutex<Vec<String>>>,
    _profile: tempfile::TempDir,
}

impl Page {
    async fn command(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/{path}", self.base),
            Some(body),
        )
        .await
    }

    /// Opens the demo page at `url`: navigates, waits for the load event and for the page's
    /// script to run ([`open`]).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        open(self, url).await
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command("execute/sync", json!({"script": script, "args": args}))
            .await
            .with_context(|| format!("script `{script}`"))
    }

    /// Runs `script` asynchronously: it calls `arguments[arguments.length - 1](result)`.
    pub async fn eval_async(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        self.command("execute/async", json!({"script": script, "args": args}))
            .await
            .with_context(|| format!("async script `{script}`"))
    }

    /// `document.body.dataset` as JSON (state, reason, joins...).
    pub async fn dataset(&self) -> anyhow::Result<Value> {
        self.eval(
            "return Object.assign({}, document.body.dataset);",
            json!([]),
        )
        .await
    }

    /// Polls the expression `condition` until it is truthy; fails after `timeout` with what
    /// the page showed.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(value) = truthy_within(self, condition, timeout).await? {
            return Ok(value);
        }
        let shown = self.dataset().await.unwrap_or(Value::Null);
        let banner = self
            .eval(
                "const b = document.getElementById('banner'); return b ? b.innerText : null;",
                json!([]),
            )
            .await
            .unwrap_or(Value::Null);
        bail!(
            "`{condition}` still false after {timeout:?}; body data {shown}, banner {banner}{}",
            diagnosis(self).await
        );
    }

    /// Waits until `document.body.dataset` has `state` and `reason`.
    pub async fn wait_state(&self, state: &str, reason: &str) -> anyhow::Result<()> {
        let condition = format!(
            "document.body.dataset.state === {} && document.body.dataset.reason === {}",
            json!(state),
            json!(reason)
        );
        self.wait_for(&condition, BROWSER_STEP).await.map(|_| ())
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let value = call(
            &self.http,
            reqwest::Method::GET,
            &format!("{}/screenshot", self.base),
            None,
        )
        .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().context("screenshot is not a string")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Console messages since the last call (chromedriver's `goog:loggingPrefs` log).
    pub async fn console(&self) -> anyhow::Result<Vec<LogEntry>> {
        let value = self.command("se/log", json!({"type": "browser"})).await?;
        Ok(value
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or("").to_owned(),
                        message: e["message"].as_str().unwrap_or("").to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Console errors (`SEVERE`) and uncaught page errors, minus those matching one of
    /// `expected` (substrings).
    pub async fn unexpected_errors(&self, expected: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut errors: Vec<String> = self
            .console()
            .await?
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message)
            .collect();
        let hooked = self
            .eval("return window.__pageErrors || [];", json!([]))
            .await?;
        errors.extend(
            hooked
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("page error: {}", e.as_str().unwrap_or_default())),
        );
        errors.retain(|e| !expected.iter().any(|x| e.contains(x)));
        Ok(errors)
    }

    /// Ends the session (the browser quits).
    pub async fn close(self) -> anyhow::Result<()> {
        lock(&self.sessions).retain(|s| *s != self.id);
        call(&self.http, reqwest::Method::DELETE, &self.base, None).await?;
        Ok(())
    }
}

/// Which browser a [`BrowserPage`] runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserKind {
    /// Debian's `chromium`, through chromedriver.
    Chromium,
    /// Debian's `firefox-esr`, over WebDriver BiDi.
    Firefox,
}

impl std::fmt::Display for BrowserKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Chromium => "chromium",
            Self::Firefox => "firefox",
        })
    }
}

/// Opens pages of either kind: one chromedriver (started on first use) for all Chromium
/// pages, one Firefox process per Firefox page. Drop it after the pages.
pub struct Browsers {
    lan: bool,
    chromium_args: Vec<String>,
    /// A weak link's client namespace the browsers run in ([`Browsers::behind`]).
    netns: Option<crate::shaping::ClientNetns>,
    chromedriver: tokio::sync::OnceCell<Chromedriver>,
}

impl Browsers {
    /// For pages in the LAN namespace of [`crate::netns`] (Firefox needs it).
    pub fn lan() -> Self {
        Self {
            lan: true,
            chromium_args: Vec::new(),
            netns: None,
            chromedriver: tokio::sync::OnceCell::new(),
        }
    }

    /// For pages behind `link`, in its client namespace ([`crate::shaping::WeakLink`]), with
    /// more Chromium flags for every page (Chromium on a LAN origin needs
    /// `--unsafely-treat-insecure-origin-as-secure=<origin>` for its camera; Firefox pages
    /// there get the equivalent preferences). Drop it before the link.
    pub fn behind(link: &crate::shaping::WeakLink, chromium_args: Vec<String>) -> Self {
        Self {
            chromium_args,
            netns: Some(link.netns().clone()),
            ..Self::lan()
        }
    }

    /// Like [`Browsers::lan`], with more Chromium flags for every Chromium page. Flags that
    /// treat an insecure origin as secure (a camera on a plain `http://` LAN origin) give its
    /// Firefox pages the equivalent preferences too.
    pub fn lan_with_chromium_args(args: Vec<String>) -> Self {
        Self {
            chromium_args: args,
            ..Self::lan()
        }
    }

    /// For pages in a namespace with only `lo` (Chromium only: Firefox gathers no loopback
    /// candidates, so its calls fail there).
    pub fn loopback() -> Self {
        Self {
            lan: false,
            chromium_args: Vec::new(),
            netns: None,
            chromedriver: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the Chromium flags name an insecure origin as secure: the pages' origin is a
    /// plain `http://` LAN address, where cameras need it.
    fn insecure_origin(&self) -> bool {
        self.chromium_args
            .iter()
            .any(|a| a.starts_with("--unsafely-treat-insecure-origin-as-secure"))
    }

    /// A new page (fresh profile) of `kind`, showing nothing yet.
    pub async fn page(&self, kind: BrowserKind) -> anyhow::Result<BrowserPage> {
        Ok(match kind {
            BrowserKind::Chromium => {
                let driver = self
                    .chromedriver
                    .get_or_try_init(|| {
                        Chromedriver::start_with(
                            !self.lan,
                            self.chromium_args.clone(),
                            self.netns.clone(),
                        )
                    })
                    .await?;
                BrowserPage::Chromium(driver.page().await?)
            }
            BrowserKind::Firefox => BrowserPage::Firefox(
                crate::firefox::FirefoxPage::start_in(
                    self.netns.as_ref(),
                    self.netns.is_some() || self.insecure_origin(),
                )
                .await?,
            ),
        })
    }
}

/// A page in Chromium or Firefox, so that one test body drives either. Scripts follow
/// WebDriver's "execute script" contract in both: a function body, `arguments` holds the
/// arguments, the result (awaited if a promise) comes back as JSON.
pub enum BrowserPage {
    /// A chromedriver session.
    Chromium(Page),
    /// A Firefox process driven over BiDi.
    Firefox(crate::firefox::FirefoxPage),
}

impl BrowserPage {
    /// The demo page's ICE state from `rtcd.peerConnection.getStats()`, read by the test
    /// itself (not through the SDK): `{all: [[address, port]...]` (every local candidate),
    /// `selected: {type, relayProtocol, protocol, address, port} | null}` (the local end of
    /// the transport's selected candidate pair).
    pub async fn local_ice(&self) -> anyhow::Result<serde_json::Value> {
        let value = self
            .eval_async(
                "const done = arguments[arguments.length - 1];\
                 rtcd.peerConnection.getStats().then((r) => { const all = []; let pair = null;\
                   r.forEach((s) => {\
                     if (s.type === 'local-candidate') all.push([s.address || s.ip, s.port]);\
                     if (s.type === 'transport' && s.selectedCandidatePairId)\
                       pair = r.get(s.selectedCandidatePairId); });\
                   const l = pair && r.get(pair.localCandidateId);\
                   done({ all, selected: l ? {type: l.candidateType, relayProtocol: l.relayProtocol || '',\
                     protocol: l.protocol, address: l.address || l.ip || '', port: l.port} : null });\
                 }, (e) => done({ error: String(e) }));",
                serde_json::json!([]),
            )
            .await?;
        anyhow::ensure!(value.get("error").is_none(), "getStats: {value}");
        Ok(value)
    }

    /// Which browser this is.
    pub fn kind(&self) -> BrowserKind {
        match self {
            Self::Chromium(_) => BrowserKind::Chromium,
            Self::Firefox(_) => BrowserKind::Firefox,
        }
    }

    /// Opens the demo page at `url`: navigates, waits for the load event and for the page's
    /// script to run ([`open`]).
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        open(self, url).await
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its result.
    pub async fn eval(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        match self {
            Self::Chromium(page) => page.eval(script, args).await,
            Self::Firefox(page) => page.eval(script, args).await,
        }
    }

    /// Runs `script` asynchronously: it calls `arguments[arguments.length - 1](result)`.
    pub async fn eval_async(&self, script: &str, args: Value) -> anyhow::Result<Value> {
        match self {
            Self::Chromium(page) => page.eval_async(script, args).await,
            Self::Firefox(page) => page.eval_async(script, args).await,
        }
    }

    /// Clicks the element with this id (a button of the demo page). In Firefox this is a
    /// real pointer click (a user activation, which `getDisplayMedia` requires there).
    pub async fn click(&self, id: &str) -> anyhow::Result<()> {
        if let Self::Firefox(page) = self {
            return page.click(id).await;
        }
        self.eval(
            "const b = document.getElementById(arguments[0]); \
             if (!b) throw new Error('no #' + arguments[0]); b.click(); return true;",
            json!([id]),
        )
        .await
        .map(|_| ())
    }

    /// `document.body.dataset` as JSON.
    pub async fn dataset(&self) -> anyhow::Result<Value> {
        self.eval(
            "return Object.assign({}, document.body.dataset);",
            json!([]),
        )
        .await
    }

    /// Polls the expression `condition` until it is truthy; fails after `timeout` with what
    /// the page showed.
    pub async fn wait_for(&self, condition: &str, timeout: Duration) -> anyhow::Result<Value> {
        if let Some(value) = truthy_within(self, condition, timeout).await? {
            return Ok(value);
        }
        let shown = self.dataset().await.unwrap_or(Value::Null);
        bail!(
            "{}: `{condition}` still false after {timeout:?}; body data {shown}{}",
            self.kind(),
            diagnosis(self).await
        );
    }

    /// Waits until `document.body.dataset.state` is `state`.
    pub async fn wait_state(&self, state: &str) -> anyhow::Result<()> {
        let condition = format!("document.body.dataset.state === {}", json!(state));
        self.wait_for(&condition, BROWSER_STEP).await.map(|_| ())
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        match self {
            Self::Chromium(page) => page.screenshot(path).await,
            Self::Firefox(page) => page.screenshot(path).await,
        }
    }

    /// Console messages since the last call.
    pub async fn console(&self) -> anyhow::Result<Vec<LogEntry>> {
        match self {
            Self::Chromium(page) => page.console().await,
            Self::Firefox(page) => Ok(page.console()),
        }
    }

    /// Uncaught errors and unhandled rejections the page recorded (see `ERROR_HOOK`; none in
    /// Firefox, whose console has them).
    pub async fn page_errors(&self) -> anyhow::Result<Vec<String>> {
        let hooked = self
            .eval("return window.__pageErrors || [];", json!([]))
            .await?;
        Ok(hooked
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("page error: {}", e.as_str().unwrap_or_default()))
            .collect())
    }

    /// Console errors and uncaught page errors since the last call, minus those matching one
    /// of `expected` (substrings).
    pub async fn unexpected_errors(&self, expected: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut errors: Vec<String> = self
            .console()
            .await?
            .into_iter()
            .filter(|e| e.level == "SEVERE")
            .map(|e| e.message)
            .collect();
        errors.extend(self.page_errors().await?);
        errors.retain(|e| !expected.iter().any(|x| e.contains(x)));
        Ok(errors)
    }

    /// Closes the page (its browser session ends).
    pub async fn close(self) -> anyhow::Result<()> {
        match self {
            Self::Chromium(page) => page.close().await,
            Self::Firefox(page) => page.close().await,
        }
    }
}
