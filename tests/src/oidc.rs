//! Harness for the OIDC end-to-end tests: a real OpenID Connect provider (npm `oidc-provider`,
//! run by `tests/oidc/provider.mjs` under node) on 127.0.0.1, tokens obtained from its own
//! token endpoint over HTTP, and key rotation on demand.
//!
//! The provider's personas, resource indicators and keys are described at the top of
//! `tests/oidc/provider.mjs`. Its dependencies are installed by `npm ci --prefix tests/oidc`
//! (`scripts/test.sh` does it); the tests skip only when `node` or `npm` is not installed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The secret of every persona client.
pub const CLIENT_SECRET: &str = "secret";

/// Resource indicator of JWT access tokens for the proxy (`aud: rtcd-proxy`) signed with
/// `alg` (`RS256`, `PS256`, `ES256` or `EdDSA`).
pub fn proxy_resource(alg: &str) -> String {
    format!("urn:rtcd:proxy:{}", alg.to_ascii_lowercase())
}

/// Resource indicator of tokens for another API (`aud: other-api`).
pub const OTHER_API: &str = "urn:other:api";

/// Resource indicator of Keycloak-shaped tokens: `aud: account`, `azp: rtc-web`.
pub const KEYCLOAK_ACCOUNT: &str = "urn:keycloak:account";

/// `tests/oidc`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// Whether `node` and `npm` are installed. When they are not, the OIDC tests print why and
/// pass without running (the only reason they skip).
pub fn tools_present() -> bool {
    let runs = |cmd: &str| {
        std::process::Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let present = runs("node") && runs("npm");
    if !present {
        eprintln!(
            "SKIPPED: node and npm are needed to run the OIDC provider of this test (apt-get install nodejs npm; scripts/test.sh does it)"
        );
    }
    present
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running provider process; killed on drop.
pub struct Provider {
    /// Its listening address; the issuer is `http://{addr}`.
    pub addr: SocketAddr,
    /// The impostor (same keys, issuer `http://{impostor}`), if started.
    pub impostor: Option<SocketAddr>,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl Provider {
    /// Starts the provider on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(free_port()?, None).await
    }

    /// Starts the provider on `port`, and the impostor on `impostor` if given; returns once
    /// it listens.
    pub async fn start_on(port: u16, impostor: Option<u16>) -> anyhow::Result<Self> {
        let script = dir().join("provider.mjs");
        if !dir().join("node_modules/oidc-provider").is_dir() {
            bail!(
                "{} is missing: run `npm ci --prefix tests/oidc` (scripts/test.sh does)",
                dir().join("node_modules/oidc-provider").display()
            );
        }
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(&script)
            .arg("--port")
            .arg(port.to_string())
            .current_dir(dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(p) = impostor {
            cmd.arg("--impostor-port").arg(p.to_string());
        }
        let mut child = cmd.spawn().context("starting node")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let sink = stderr.clone();
            let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut s = sink.lock().expect("lock");
                    if s.len() < 64 * 1024 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = stdout.next_line().await? {
                if line.starts_with("oidc-provider ready") {
                    return Ok(true);
                }
            }
            anyhow::Ok(false)
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            let log = stderr.lock().expect("lock").clone();
            bail!("the OIDC provider did not start ({ready:?}); its stderr:\n{log}");
        }
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Ok(Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            impostor: impostor.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            child,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    /// The issuer URL.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An access token for `persona` (a client id of `provider.mjs`) for `resource`, from the
    /// provider's token endpoint (client_credentials grant).
    pub async fn token(&self, persona: &str, resource: &str) -> anyhow::Result<String> {
        self.token_from(self.addr, persona, resource).await
    }

    /// The same from the impostor (another issuer, the same keys).
    pub async fn impostor_token(&self, persona: &str) -> anyhow::Result<String> {
        let addr = self.impostor.context("no impostor started")?;
        self.token_from(addr, persona, &proxy_resource("RS256"))
            .await
    }

    async fn token_from(
        &self,
        addr: SocketAddr,
        persona: &str,
        resource: &str,
    ) -> anyhow::Result<String> {
        let response = self
            .http
            .post(format!("http://{addr}/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", persona),
                ("client_secret", CLIENT_SECRET),
                ("resource", resource),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        match body["access_token"].as_str() {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => bail!("token endpoint answered {status}: {body}"),
        }
    }

    /// Replaces every signing key with a new generation (kids `rsa-N`, `ec-N`, `ed-N`); the
    /// old keys are neither published nor used any more. Returns the new kids.
    pub async fn rotate(&self) -> anyhow::Result<Vec<String>> {
        let body: Value = self
            .http
            .post(format!("http://{}/admin/rotate", self.addr))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["kids"]
            .as_array()
            .context("kids")?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect())
    }

    /// Kills the process and waits until it is gone (its port then refuses connections).
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The `kid` in a JWT's header.
pub fn kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["kid"]
        .as_str()
        .map(str::to_owned)
}
