//! `rtcd-dev`: the whole stack on one machine with embedded defaults, for trying it out and
//! for developing the web client. One process runs rtcd (media + registry) and the proxy
//! (WebSocket signaling + the demo page), wired together the way a deployment wires them:
//! the proxy is a registered rtcd client that logs in and relays over gRPC.
//!
//! Secrets (rtcd's admin secret, the proxy's rtcd key, the JWT secret) are generated on first
//! start into `--data-dir` (mode 0600) and reused afterwards; the client registry persists
//! there too. The proxy runs with `server.dev_tokens` on: `/dev/token` mints a token for
//! anyone, which is why this binary is for development only.
//!
//! This crate may depend on both `rtcd` and `rtcd-proxy`: it is a deployable of its own (the
//! development stack); the two services still share nothing but `proto` and `kit` (the service
//! kit).

#![warn(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rtcd::auth::{AuthError, ClientId, Principal};
use rtcd_kit::secret::Secret;
use rtcd_proxy::config::{KeyConfig, RtcdConfig};
use tokio_util::sync::CancellationToken;

/// The proxy's client ID in rtcd.
const PROXY_CLIENT_ID: &str = "dev-proxy";
/// Issuer and audience of dev tokens.
const DEV_ISSUER: &str = "rtcd-dev";

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where secrets and the client registry are kept.
    pub data_dir: PathBuf,
    /// The proxy's listen address (port 0 = ephemeral).
    pub listen: String,
    /// Advertise only 127.0.0.1 media candidates.
    pub loopback: bool,
    /// rtcd's UDP media port (0 = ephemeral).
    pub udp_port: u16,
    /// More `RTCD_RTC_*` media settings (and `RTCD_RECORDING_*`), applied last (e.g.
    /// `("RTCD_RTC_ICE_PORT_TCP", "0")`).
    pub rtc: Vec<(String, String)>,
}

/// A running development stack.
pub struct DevStack {
    /// The media daemon.
    pub rtcd: rtcd::Rtcd,
    /// The signaling proxy serving the demo page.
    pub proxy: rtcd_proxy::Proxy,
    relay_cancel: CancellationToken,
}

impl DevStack {
    /// Stops the proxy (draining sessions), then the relay, then rtcd.
    pub async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.relay_cancel.cancel();
        self.rtcd.shutdown().await;
    }
}

/// Starts rtcd and the proxy wired together, creating the secrets on first use.
pub async fn start(args: Options) -> anyhow::Result<DevStack> {
    start_with_proxy(args, |_| {}).await
}

/// Like [`start`], with a last say over the proxy's configuration (e.g. `[turn]`) before it
/// is validated and started. A separate function rather than a field of [`Options`], so
/// existing callers are unaffected.
pub async fn start_with_proxy(
    args: Options,
    proxy: impl FnOnce(&mut rtcd_proxy::config::Config),
) -> anyhow::Result<DevStack> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let admin_secret = secret_file(&args.data_dir.join("admin-secret"))?;
    let proxy_key = secret_file(&args.data_dir.join("proxy-key"))?;
    let jwt_secret = secret_file(&args.data_dir.join("jwt-secret"))?;

    let mut env: Vec<(String, String)> = vec![
        (
            "RTCD_STORE_DATA_SOURCE".into(),
            args.data_dir.join("rtcd-db").display().to_string(),
        ),
        ("RTCD_API_SECURITY_ENABLE_ADMIN".into(), "true".into()),
        (
            "RTCD_API_SECURITY_ADMIN_SECRET_KEY".into(),
            admin_secret.clone(),
        ),
        ("RTCD_API_HTTP_LISTEN_ADDRESS".into(), "127.0.0.1:0".into()),
        ("RTCD_API_METRICS_LISTEN_ADDRESS".into(), String::new()),
        ("RTCD_GRPC_LISTEN_ADDRESS".into(), "127.0.0.1:0".into()),
        ("RTCD_RTC_ICE_PORT_UDP".into(), args.udp_port.to_string()),
        // Local webhook receivers (localhost, the LAN) are the point of a dev stack.
        (
            "RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES".into(),
            "true".into(),
        ),
        // Recording works out of the box, into the data directory (docs/recording.md).
        ("RTCD_RECORDING_ENABLED".into(), "true".into()),
        (
            "RTCD_RECORDING_DIRECTORY".into(),
            args.data_dir.join("recordings").display().to_string(),
        ),
    ];
    if args.loopback {
        env.extend([
            ("RTCD_RTC_ICE_ADDRESS_UDP".into(), "127.0.0.1".into()),
            ("RTCD_RTC_ICE_INTERFACES".into(), "[\"lo\"]".into()),
            ("RTCD_RTC_INCLUDE_LOOPBACK_CANDIDATES".into(), "true".into()),
        ]);
    }
    // Media settings from the environment win (e.g. `RTCD_RTC_ICE_PORT_TCP=3478`, or a fixed
    // `RTCD_RTC_ICE_HOST_OVERRIDE`): the one-command stack stays tunable without a file.
    let tunable = |k: &str| k.starts_with("RTCD_RTC_") || k.starts_with("RTCD_RECORDING_");
    env.extend(
        rtcd_kit::config::process_env()
            .into_iter()
            .filter(|(k, _)| tunable(k)),
    );
    env.extend(args.rtc.iter().filter(|(k, _)| tunable(k)).cloned());
    let rtcd_config = rtcd::config::Config::load(None, env)?;
    if !args.loopback {
        no_address_means_loopback(&rtcd_config.rtc)?;
    }
    // Tests that start the stack in-process see its logs with RTCD_TEST_LOG=<filter>, as with
    // the harness's in-process rtcd.
    if let Ok(level) = std::env::var("RTCD_TEST_LOG") {
        rtcd::logging::init(&rtcd::config::LoggerConfig { level, json: false });
    }
    let rtcd = rtcd::Rtcd::start(rtcd_config).await?;
    match rtcd
        .auth()
        .register(
            Some(&Principal::Admin),
            ClientId::parse(PROXY_CLIENT_ID)?,
            Secret::new(proxy_key.clone()),
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .await
    {
        Ok(()) | Err(AuthError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }

    let mut config = rtcd_proxy::config::Config::default();
    config.server.listen_address = args.listen.clone();
    config.server.metrics_listen_address = String::new();
    config.server.dev_tokens = true;
    config.auth.issuers = vec![DEV_ISSUER.into()];
    config.auth.audiences = vec![DEV_ISSUER.into()];
    config.auth.keys = vec![KeyConfig {
        kid: "dev".into(),
        algorithms: vec!["HS256".into()],
        secret: Secret::new(jwt_secret),
        ..KeyConfig::default()
    }];
    // The room service API issues join tokens with the same key (docs/api.md).
    config.api.token_signing_kid = "dev".into();
    config.rtcd = RtcdConfig {
        url: format!("http://{}", rtcd.grpc_addr()),
        client_id: PROXY_CLIENT_ID.into(),
        auth_key: Secret::new(proxy_key),
        api_port: rtcd.http_addr().port(),
        health_interval_seconds: 2,
        ..RtcdConfig::default()
    };
    proxy(&mut config);
    let cancel = CancellationToken::new();
    let started = async {
        config.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        let relay = rtcd_proxy::relay::rtcd::RtcdRelay::start(&config.rtcd, cancel.clone()).await?;
        anyhow::Ok(
            rtcd_proxy::Proxy::start(config, Some(relay as Arc<dyn rtcd_proxy::relay::Relay>))
                .await?,
        )
    }
    .await;
    let proxy = match started {
        Ok(proxy) => proxy,
        Err(e) => {
            // rtcd is already up: stop it, so a refused proxy config leaves nothing running.
            cancel.cancel();
            rtcd.shutdown().await;
            return Err(e);
        }
    };
    tracing::warn!(
        "DEVELOPMENT MODE: /dev/token mints tokens for anyone who can reach {}",
        proxy.addr()
    );
    Ok(DevStack {
        rtcd,
        proxy,
        relay_cancel: cancel,
    })
}

/// Reads a proxy config file for [`apply_proxy_file`]: the production format, unknown keys
/// refused; not validated alone (it need not name keys or rtcd: the dev stack adds its own),
/// but as part of the dev stack's configuration at start.
pub fn read_proxy_file(path: &Path) -> anyhow::Result<rtcd_proxy::config::Config> {
    let text = std::fs::read_to_string(path).context("reading it")?;
    toml::from_str(&text).context("parsing it")
}

/// Applies a proxy config file (the production `rtcd-proxy` format) to the dev stack's proxy
/// configuration `dev` (`rtcd-dev --proxy-config`, README "Integrations against the dev
/// stack"): the file's `[webhooks]`, `[turn]`, `[rooms]`, `[api]`, `[limits]` and `[auth]`
/// settings, with the dev key, issuer and audience kept next to the file's (so `/dev/token`
/// and server tokens signed with `data/dev/jwt-secret` keep working) and the dev key still
/// issuing tokens unless the file names another. `[server]`, `[rtcd]` and `[logger]` stay the
/// dev stack's own.
pub fn apply_proxy_file(dev: &mut rtcd_proxy::config::Config, file: rtcd_proxy::config::Config) {
    let signing_kid = std::mem::take(&mut dev.api.token_signing_kid);
    let dev_auth = std::mem::replace(&mut dev.auth, file.auth);
    dev.auth.keys.extend(dev_auth.keys);
    for issuer in dev_auth.issuers {
        if !dev.auth.issuers.contains(&issuer) {
            dev.auth.issuers.push(issuer);
        }
    }
    for audience in dev_auth.audiences {
        if !dev.auth.audiences.contains(&audience) {
            dev.auth.audiences.push(audience);
        }
    }
    dev.api = file.api;
    if dev.api.token_signing_kid.is_empty() {
        dev.api.token_signing_kid = signing_kid;
    }
    dev.webhooks = file.webhooks;
    dev.turn = file.turn;
    dev.rooms = file.rooms;
    dev.limits = file.limits;
}

/// Refuses to start, naming `--loopback`, when rtcd would find no address to put in its media
/// candidates: no fixed address or override is set and no interface has one but loopback
/// (sandboxes, containers without a network). rtcd's own message names `rtc.*` settings a
/// dev-stack user does not set.
fn no_address_means_loopback(rtc: &rtcd::config::RtcConfig) -> anyhow::Result<()> {
    let fixed = rtc
        .ice_address_udp
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_unspecified());
    if fixed || !rtc.ice_host_override.trim().is_empty() {
        return Ok(());
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Ok(()); // rtcd reports it with its own message
    };
    let usable = addrs
        .filter(|ifa| {
            rtc.ice_interfaces.is_empty() || rtc.ice_interfaces.contains(&ifa.interface_name)
        })
        .filter_map(|ifa| ifa.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|v4| std::net::IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip())))
        })
        .any(|ip| match ip {
            std::net::IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            std::net::IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        });
    if usable {
        return Ok(());
    }
    anyhow::bail!(
        "this machine has no network address but loopback to offer browsers for media: start \
         rtcd-dev with --loopback (browsers on this machine only; Chromium also needs \
         --allow-loopback-in-peer-connection), or set RTCD_RTC_ICE_HOST_OVERRIDE=<an address \
         the browsers reach>"
    )
}

/// The secret in `path`, created on first use (see [`rtcd::auth::secret_file`]).
fn secret_file(path: &Path) -> anyhow::Result<String> {
    let secret = rtcd::auth::secret_file(path).with_context(|| format!("{}", path.display()))?;
    Ok(secret.expose().to_owned())
}
