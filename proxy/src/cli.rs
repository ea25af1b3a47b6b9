//! The `rtcd-proxy` command line.
//!
//! * `rtcd-proxy [--config FILE] [serve]`: run until SIGINT / SIGTERM, then drain.
//! * `rtcd-proxy [--config FILE] token --room R --user U [--role moderator] [--ttl 1h]`: print a
//!   token signed with a configured HS key (or `--private-key FILE --alg RS256 --kid K`). It
//!   warns on stderr (and still mints) when the same configuration would refuse the token
//!   (`--ttl` above `auth.max_lifetime_seconds`) or the token grants nothing (no `--role` while
//!   `no_role` is empty).
//! * `rtcd-proxy [--config FILE] token explain JWT [--room R]`: say whether the token verifies
//!   against this configuration and, if not, exactly why (with the close code a client would
//!   get); a valid token without any permission gets a warning.
//!
//! Without `--config` and without any `PROXY_*` variable, every command says that no
//! configuration was given (rather than naming the first key validation trips on).
//!
//! Exit codes: 0 success, 1 failure (or a token that does not verify), 64 bad usage or config.

use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::auth::{AuthError, Verifier, unix_now};
use crate::close::CloseReason;
use crate::config::{Config, LoggerConfig};
use crate::protocol::RoomName;

/// Exit code for bad usage or configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "rtcd-proxy",
    version,
    about = "Client WebSocket signaling proxy for rtcd"
)]
struct Cli {
    /// TOML configuration; every key can also be set with PROXY_<SECTION>_<KEY>.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Serve,
    /// Mint a token, or explain why one does not verify.
    Token(Box<TokenCommand>),
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct TokenCommand {
    #[command(subcommand)]
    action: Option<TokenAction>,
    #[command(flatten)]
    mint: MintArgs,
}

#[derive(Debug, Subcommand)]
enum TokenAction {
    /// Verify a token against this configuration and say why it fails, if it does.
    Explain {
        /// The JWT.
        jwt: String,
        /// The room to check it for (default: the token's own `room` claim).
        #[arg(long)]
        room: Option<String>,
    },
}

#[derive(Debug, Args)]
struct MintArgs {
    /// Room the token is for (`*` for any room, where the proxy allows wildcards).
    #[arg(long)]
    room: Option<String>,
    /// The user's identity (`sub`).
    #[arg(long)]
    user: Option<String>,
    /// moderator, member or guest; omitted = no role (the proxy's `no_role` permissions).
    #[arg(long)]
    role: Option<String>,
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime: 90s, 15m, 1h, 2d, or seconds.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Key ID; default: the first HS key in the configuration.
    #[arg(long)]
    kid: Option<String>,
    /// Sign with this PEM private key instead of a configured HS secret (needs --kid).
    #[arg(long, value_name = "FILE")]
    private_key: Option<PathBuf>,
    /// Algorithm with --private-key: RS256, ES256, EdDSA...
    #[arg(long, default_value = "RS256")]
    alg: String,
    /// Issuer; default: the first configured issuer.
    #[arg(long)]
    iss: Option<String>,
    /// Audience; default: the first configured audience.
    #[arg(long)]
    aud: Option<String>,
    /// Capability overrides, e.g. --permission publish_screen=true.
    #[arg(long = "permission", value_name = "CAP=BOOL")]
    permissions: Vec<String>,
    /// Mint a server token for the room service API with this scope (rooms:read, rooms:admin,
    /// tokens:issue; repeat for several) instead of a join token: `--user` is the backend's
    /// name, `--room` optionally limits it, and the lifetime must fit
    /// `api.max_token_lifetime_seconds` (docs/api.md).
    #[arg(long = "api", value_name = "SCOPE")]
    api: Vec<String>,
}

/// Loads the configuration from `path` (if any) and `PROXY_*` variables in `env`. With
/// neither, the problem is not the first key validation trips on (`auth.issuers`), but that
/// no configuration was given at all: `token` in particular signs with the configured keys.
pub fn load_config(
    path: Option<&std::path::Path>,
    env: Vec<(String, String)>,
) -> Result<Config, String> {
    let any_env = env
        .iter()
        .any(|(k, _)| k.starts_with(crate::config::ENV_PREFIX));
    Config::load(path, env).map_err(|e| {
        if path.is_none() && !any_env {
            format!(
                "no configuration given: pass --config FILE (see deploy/proxy.sample.toml) or \
                 set {}* variables ({e})",
                crate::config::ENV_PREFIX
            )
        } else {
            e.to_string()
        }
    })
}

/// Parses the command line and runs it; what `main` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load_config(cli.config.as_deref(), rtcd_kit::config::process_env()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rtcd-proxy: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let token = match cli.command {
        None | Some(Command::Serve) => {
            return rtcd_kit::runtime::run_coded("rtcd-proxy", serve(config));
        }
        Some(Command::Token(token)) => *token,
    };
    match token {
        TokenCommand {
            action: Some(TokenAction::Explain { jwt, room }),
            ..
        } => run(explain(config, jwt, room)),
        TokenCommand { action: None, mint } => {
            let args = MintArgsRef::from(&mint);
            match mint_token(&config, &args, unix_now()) {
                Ok(token) => {
                    for warning in mint_warnings(&config, &args) {
                        eprintln!("rtcd-proxy token: WARNING: {warning}");
                    }
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rtcd-proxy token: {e}");
                    ExitCode::from(EXIT_USAGE)
                }
            }
        }
    }
}

fn run(future: impl Future<Output = Result<(), String>>) -> ExitCode {
    rtcd_kit::runtime::run("rtcd-proxy", future)
}

/// Installs the global log subscriber (the service kit's; a second call is a no-op, which
/// in-process tests rely on).
pub fn init_logging(config: &LoggerConfig) {
    rtcd_kit::logging::init(&config.level, config.json);
}

/// Runs the proxy until SIGTERM. Fails with [`EXIT_USAGE`] when a setting is found wrong at
/// start (a TURN server refusing `turn.secrets[0]`), else with 1.
async fn serve(config: Config) -> Result<(), (ExitCode, String)> {
    let failed = |e: String| (ExitCode::FAILURE, e);
    init_logging(&config.logger);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ?config,
        "starting rtcd-proxy"
    );
    if config.server.dev_tokens {
        tracing::warn!(
            "DEVELOPMENT MODE: GET /dev/token mints a moderator token for anyone who can reach this proxy; never use server.dev_tokens in production"
        );
    }
    let relay_cancel = tokio_util::sync::CancellationToken::new();
    let relay: Option<std::sync::Arc<dyn crate::relay::Relay>> = if config.rtcd.url.is_empty() {
        tracing::warn!("rtcd.url is not set: joins answer media_unavailable");
        None
    } else {
        let relay = crate::relay::rtcd::RtcdRelay::start_with(
            &config.rtcd,
            &config.cluster,
            relay_cancel.clone(),
        )
        .await
        .map_err(|e| failed(e.to_string()))?;
        Some(relay)
    };
    let proxy = crate::Proxy::start(config, relay)
        .await
        .map_err(|e| match e {
            // A wrong setting, found by asking the TURN server: the same exit as any other.
            crate::StartError::Turn(_) => (ExitCode::from(EXIT_USAGE), e.to_string()),
            e => failed(e.to_string()),
        })?;
    rtcd_kit::signal::terminated("draining").await;
    rtcd_kit::signal::exit_on_second_signal();
    proxy.shutdown().await;
    relay_cancel.cancel();
    Ok(())
}

/// `90s`, `15m`, `1h`, `2d` or plain seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 1h, 2d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("`{s}` must be positive and reasonable")),
        Some(v) => Ok(v),
    }
}

/// What is wrong with minting `args` under `config` that does not stop the minting: a
/// lifetime this configuration refuses, or a token that grants nothing. Such tokens are still
/// minted (testing a refusal needs them), with these warnings on stderr.
pub fn mint_warnings(config: &Config, args: &MintArgsRef<'_>) -> Vec<String> {
    let mut warnings = Vec::new();
    if !args.api.is_empty() {
        // Server tokens: `mint` already refused what the API would refuse.
        return warnings;
    }
    let max = config.auth.max_lifetime_seconds;
    if let Ok(ttl) = parse_ttl(args.ttl)
        && ttl > max
    {
        warnings.push(format!(
            "--ttl {} ({ttl} s) exceeds auth.max_lifetime_seconds ({max} s): this configuration \
             refuses the token (close 4108 token_too_long_lived)",
            args.ttl
        ));
    }
    if args.role.is_none()
        && args.permissions.is_empty()
        && config.auth.permissions.no_role.is_empty()
    {
        warnings.push(
            "no --role: the token gets auth.permissions.no_role, which grants nothing here \
             (it joins but can neither publish nor receive); pass --role member, for example"
                .into(),
        );
    }
    warnings
}

/// Signs a token for `args` with a key from `config` (or the given private key).
pub fn mint_token(config: &Config, args: &MintArgsRef<'_>, now: i64) -> Result<String, String> {
    args.mint(config, now)
}

/// What a token is minted from (borrowed, so tests and the binary share one minting path).
#[derive(Debug, Default)]
pub struct MintArgsRef<'a> {
    /// Room claim.
    pub room: Option<&'a str>,
    /// `sub`.
    pub user: Option<&'a str>,
    /// Role claim.
    pub role: Option<&'a str>,
    /// Display name.
    pub name: Option<&'a str>,
    /// Lifetime.
    pub ttl: &'a str,
    /// Key ID.
    pub kid: Option<&'a str>,
    /// PEM private key file.
    pub private_key: Option<&'a std::path::Path>,
    /// Algorithm for the private key.
    pub alg: &'a str,
    /// Issuer.
    pub iss: Option<&'a str>,
    /// Audience.
    pub aud: Option<&'a str>,
    /// `cap=bool` overrides.
    pub permissions: &'a [String],
    /// Server token scopes (empty: a join token).
    pub api: &'a [String],
}

impl<'a> From<&'a MintArgs> for MintArgsRef<'a> {
    fn from(a: &'a MintArgs) -> Self {
        Self {
            room: a.room.as_deref(),
            user: a.user.as_deref(),
            role: a.role.as_deref(),
            name: a.name.as_deref(),
            ttl: &a.ttl,
            kid: a.kid.as_deref(),
            private_key: a.private_key.as_deref(),
            alg: &a.alg,
            iss: a.iss.as_deref(),
            aud: a.aud.as_deref(),
            permissions: &a.permissions,
            api: &a.api,
        }
    }
}

impl MintArgsRef<'_> {
    fn mint(&self, config: &Config, now: i64) -> Result<String, String> {
        let server = !self.api.is_empty();
        let room = match (self.room, server) {
            (Some(r), _) => Some(r),
            (None, true) => None,
            (None, false) => return Err("--room is required".into()),
        };
        let user = self.user.ok_or("--user is required")?;
        let ttl = parse_ttl(self.ttl)? as i64;
        if server {
            for scope in self.api {
                if serde_json::from_value::<crate::auth::api::Scope>(scope.as_str().into()).is_err()
                {
                    return Err(format!(
                        "--api `{scope}`: rooms:read, rooms:admin or tokens:issue"
                    ));
                }
            }
            let max = config.api.max_token_lifetime_seconds as i64;
            if ttl > max {
                return Err(format!(
                    "--ttl: a server token lives at most api.max_token_lifetime_seconds ({max} s)"
                ));
            }
            if self.role.is_some() || self.name.is_some() || !self.permissions.is_empty() {
                return Err(
                    "--role, --name and --permission are for join tokens, not --api".into(),
                );
            }
        }
        let first = |list: &[String], flag: &str| {
            list.iter()
                .find(|v| *v != "*")
                .cloned()
                .ok_or_else(|| format!("the configuration accepts any value; pass {flag}"))
        };
        let iss = match self.iss {
            Some(i) => i.to_owned(),
            None => first(&config.auth.issuers, "--iss")?,
        };
        let aud = match self.aud {
            Some(a) => a.to_owned(),
            None => first(&config.auth.audiences, "--aud")?,
        };
        let mut claims = serde_json::json!({
            "iss": iss, "aud": aud, "sub": user, "iat": now, "nbf": now, "exp": now + ttl,
        });
        if let Some(room) = room {
            claims["room"] = room.into();
        }
        if server {
            claims["api"] = self.api.into();
        }
        if let Some(role) = self.role {
            if !matches!(role, "moderator" | "member" | "guest") {
                return Err(format!("--role `{role}`: moderator, member or guest"));
            }
            claims["role"] = role.into();
        }
        if let Some(name) = self.name {
            claims["name"] = name.into();
        }
        if !self.permissions.is_empty() {
            let mut map = serde_json::Map::new();
            for p in self.permissions {
                let (cap, on) = p
                    .split_once('=')
                    .ok_or_else(|| format!("--permission `{p}`: use CAP=true|false"))?;
                let _: crate::policy::Capability = serde_json::from_value(cap.into())
                    .map_err(|_| format!("--permission `{cap}`: publish_audio, publish_video, publish_screen, subscribe or record"))?;
                let on: bool = on
                    .parse()
                    .map_err(|_| format!("--permission `{p}`: true or false"))?;
                map.insert(cap.to_owned(), on.into());
            }
            claims["permissions"] = map.into();
        }
        let (header, key) = match self.private_key {
            Some(path) => {
                let kid = self.kid.ok_or("--private-key needs --kid")?;
                let alg: Algorithm = self
                    .alg
                    .parse()
                    .map_err(|_| format!("--alg `{}` is unknown", self.alg))?;
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let key = match alg.family() {
                    jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
                    jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
                    jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
                    jsonwebtoken::AlgorithmFamily::Hmac => {
                        return Err("--private-key is for RS/PS/ES/EdDSA".into());
                    }
                }
                .map_err(|e| format!("{}: {e}", path.display()))?;
                let mut header = Header::new(alg);
                header.kid = Some(kid.to_owned());
                (header, key)
            }
            None => {
                let entry = config
                    .auth
                    .keys
                    .iter()
                    .filter(|k| self.kid.is_none_or(|kid| k.kid == kid))
                    .find(|k| k.public_key_file.is_empty())
                    .ok_or("no HS key with that kid in the configuration (public keys cannot sign; use --private-key)")?;
                let secret = if entry.secret_file.is_empty() {
                    entry.secret.expose().as_bytes().to_vec()
                } else {
                    let mut s = std::fs::read(&entry.secret_file)
                        .map_err(|e| format!("{}: {e}", entry.secret_file))?;
                    while s.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        s.pop();
                    }
                    s
                };
                let alg: Algorithm = entry.algorithms[0]
                    .parse()
                    .map_err(|_| "bad algorithm in config".to_owned())?;
                let mut header = Header::new(alg);
                header.kid = Some(entry.kid.clone());
                (header, EncodingKey::from_secret(&secret))
            }
        };
        jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
    }
}

/// Verifies `jwt` and returns a report and whether it verified. Shows header and claims
/// (the operator's own token), never key material.
pub async fn explain_report(
    verifier: &Verifier,
    jwt: &str,
    room: Option<&str>,
    now: i64,
) -> (String, bool) {
    let mut out = String::new();
    let jwt = jwt.trim();
    let decode_part = |i: usize| -> Option<serde_json::Value> {
        let part = jwt.split('.').nth(i)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = decode_part(0);
    let claims = decode_part(1);
    match &header {
        Some(h) => out.push_str(&format!("header: {h}\n")),
        None => out.push_str("header: (not decodable)\n"),
    }
    match &claims {
        Some(c) => {
            out.push_str(&format!("claims: {c}\n"));
            for name in ["iat", "nbf", "exp"] {
                if let Some(t) = c.get(name).and_then(|v| v.as_i64()) {
                    out.push_str(&format!("  {name}: {t} ({:+} s from now)\n", t - now));
                }
            }
        }
        None => out.push_str("claims: (not decodable)\n"),
    }
    let room = room.map(str::to_owned).or_else(|| {
        claims
            .as_ref()
            .and_then(|c| c.get("room"))
            .and_then(|r| r.as_str().or_else(|| r.get(0).and_then(|v| v.as_str())))
            .filter(|r| *r != "*")
            .map(str::to_owned)
    });
    // Without a room to check against, everything else is still checked (the room check
    // comes last), with a placeholder room whose refusal is then explained as such.
    let guessed = room.is_none();
    let room = room.unwrap_or_else(|| "_".to_owned());
    let room = match RoomName::parse(&room) {
        Ok(r) => r,
        Err(e) => {
            out.push_str(&format!("room `{room}`: {e}\n"));
            return (out, false);
        }
    };
    if guessed {
        let no_single_room = match verifier.verify(jwt, &room, now).await {
            Ok(_) | Err(AuthError::WrongRoom | AuthError::WildcardRoom) => true,
            Err(AuthError::MissingClaim(claim)) => claim == "room",
            Err(_) => false,
        };
        if no_single_room {
            out.push_str("signature and claims verify, but the token names no single room: pass --room to check it for one\n");
            return (out, false);
        }
    }
    match verifier.verify(jwt, &room, now).await {
        Ok(g) => {
            out.push_str(&format!(
                "VALID for room {}: identity {}, role {}, permissions {}, expires in {} s (key {})\n",
                g.room.as_str(),
                g.identity.as_str(),
                g.role.as_str(),
                serde_json::to_string(&g.permissions).unwrap_or_default(),
                g.expires_at - now,
                g.key_id
            ));
            if g.permissions == crate::policy::Permissions::default() {
                out.push_str(&format!(
                    "WARNING: no permissions: role {} grants nothing here{}: the token joins but \
                     can neither publish nor receive\n",
                    g.role.as_str(),
                    if has_role_claim(claims.as_ref()) {
                        ""
                    } else {
                        " (no role claim: auth.permissions.no_role)"
                    }
                ));
            }
            (out, true)
        }
        Err(e) => {
            let reason = CloseReason::Auth(e.clone());
            out.push_str(&format!(
                "REJECTED{}: {e}\n  a client gets close code {} `{}`\n",
                if guessed {
                    String::new()
                } else {
                    format!(" for room {}", room.as_str())
                },
                reason.code(),
                reason.label()
            ));
            (out, false)
        }
    }
}

/// Whether the claims name a role (`role`, or Jitsi's `context.user.moderator`).
fn has_role_claim(claims: Option<&serde_json::Value>) -> bool {
    claims
        .is_some_and(|c| c.get("role").is_some() || c.pointer("/context/user/moderator").is_some())
}

async fn explain(config: Config, jwt: String, room: Option<String>) -> Result<(), String> {
    init_logging(&LoggerConfig {
        level: "warn".into(),
        json: false,
    });
    let verifier = Verifier::new(&config.auth, config.limits.max_token_bytes)?;
    verifier.warm_up().await;
    let (report, ok) = explain_report(&verifier, &jwt, room.as_deref(), unix_now()).await;
    print!("{report}");
    if ok {
        Ok(())
    } else {
        Err("the token does not verify".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyConfig, Secret};

    const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";

    fn config() -> Config {
        let mut c = Config::default();
        c.auth.issuers = vec!["app".into()];
        c.auth.audiences = vec!["proxy".into()];
        c.auth.keys = vec![KeyConfig {
            kid: "k1".into(),
            algorithms: vec!["HS256".into()],
            secret: Secret::new(SECRET),
            ..Default::default()
        }];
        c.validate().unwrap();
        c
    }

    /// Issue 16 #13: `token` (or `serve`) without `--config` says so, instead of naming the
    /// first missing key (`auth.issuers`).
    #[test]
    fn no_config_says_no_config_was_given() {
        let e = load_config(None, Vec::new()).unwrap_err();
        assert!(
            e.contains("no configuration") && e.contains("--config"),
            "{e}"
        );
        // With PROXY_* variables, the missing key is the news.
        let e = load_config(None, vec![("PROXY_AUTH_ISSUERS".into(), "app".into())]).unwrap_err();
        assert!(e.contains("auth.audiences"), "{e}");
    }

    /// Issue 16 #13: minting what this configuration would refuse, or a token that grants
    /// nothing, is allowed (tests need such tokens) but warned about.
    #[test]
    fn mint_warns_about_tokens_this_config_refuses_or_that_grant_nothing() {
        let c = config();
        let args = MintArgsRef {
            room: Some("r1"),
            user: Some("u"),
            ttl: "3d",
            ..Default::default()
        };
        let warnings = mint_warnings(&c, &args).join("\n");
        assert!(
            warnings.contains("max_lifetime_seconds") && warnings.contains("4108"),
            "{warnings}"
        );
        assert!(warnings.contains("no_role"), "{warnings}");
        let fine = MintArgsRef {
            role: Some("member"),
            ttl: "1h",
            ..args
        };
        assert!(mint_warnings(&c, &fine).is_empty());
    }

    /// Issue 16 #13: `explain` of a valid token without permissions warns; a tampered
    /// signature is a bad signature (4105), not "not a compact JWS".
    #[tokio::test]
    async fn explain_warns_about_no_permissions_and_names_a_tampered_signature() {
        let c = config();
        let verifier = Verifier::new(&c.auth, c.limits.max_token_bytes).unwrap();
        let now = unix_now();
        let args = MintArgsRef {
            room: Some("r1"),
            user: Some("u"),
            ttl: "1h",
            ..Default::default()
        };
        let token = mint_token(&c, &args, now).unwrap();
        let (report, ok) = explain_report(&verifier, &token, None, now).await;
        assert!(ok && report.contains("VALID"), "{report}");
        assert!(
            report.contains("WARNING") && report.contains("no permissions"),
            "{report}"
        );
        let member = mint_token(
            &c,
            &MintArgsRef {
                role: Some("member"),
                ..args
            },
            now,
        )
        .unwrap();
        let (report, _) = explain_report(&verifier, &member, None, now).await;
        assert!(!report.contains("WARNING"), "{report}");
        // Flip the signature's last character to one base64url cannot end a 32-byte value
        // with (non-zero padding bits), and to one it can.
        for last in ['B', 'A', '!'] {
            let mut tampered = member.clone();
            tampered.pop();
            tampered.push(last);
            if tampered == member {
                continue;
            }
            let (report, ok) = explain_report(&verifier, &tampered, None, now).await;
            assert!(
                !ok && report.contains("4105") && report.contains("token_bad_signature"),
                "{last}: {report}"
            );
        }
    }

    /// `token --api SCOPE`: a server token the room service API accepts and `join` refuses.
    #[tokio::test]
    async fn mint_makes_server_tokens_for_the_api() {
        let c = config();
        let verifier = Verifier::new(&c.auth, c.limits.max_token_bytes).unwrap();
        let now = unix_now();
        let scopes = vec!["rooms:admin".to_owned()];
        let args = MintArgsRef {
            user: Some("backend"),
            ttl: "5m",
            api: &scopes,
            ..Default::default()
        };
        let token = mint_token(&c, &args, now).unwrap();
        assert!(mint_warnings(&c, &args).is_empty());
        let grant = verifier
            .verify_api(&token, now, c.api.max_token_lifetime_seconds)
            .await
            .unwrap();
        assert_eq!(grant.subject, "backend");
        assert!(!grant.room_limited());
        let room = crate::protocol::RoomName::parse("r1").unwrap();
        let limited = mint_token(
            &c,
            &MintArgsRef {
                room: Some("r1"),
                ..args
            },
            now,
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&limited, &room, now).await.unwrap_err(),
            crate::auth::AuthError::ServerToken
        );
        for (bad, why) in [
            (MintArgsRef { ttl: "2h", ..args }, "max_token_lifetime"),
            (
                MintArgsRef {
                    role: Some("member"),
                    ..args
                },
                "join tokens",
            ),
        ] {
            let e = mint_token(&c, &bad, now).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let unknown = vec!["rooms:everything".to_owned()];
        let e = mint_token(
            &c,
            &MintArgsRef {
                api: &unknown,
                ..args
            },
            now,
        )
        .unwrap_err();
        assert!(e.contains("rooms:read"), "{e}");
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("15m").unwrap(), 900);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
        assert_eq!(parse_ttl("42").unwrap(), 42);
        for bad in ["", "h", "1w", "0s", "-1h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
