//! The `rtcd` command line.
//!
//! * `rtcd [--config FILE] [serve]`: run the daemon until SIGINT / SIGTERM; with
//!   `clients.declared_file` set, SIGHUP re-applies that file.
//! * `rtcd dev [--data-dir DIR]`: run a local instance with generated secrets, for trying it out.
//! * `rtcd [--config FILE] clients add ID [--key-stdin] | remove ID | list`: manage the registry
//!   directly on disk (bootstrap without the HTTP API; rtcd must not be running).
//! * `rtcd --version`.
//!
//! Exit codes: 0 success, 1 runtime failure, 64 bad usage or configuration.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::{AuthService, ClientId, ClientStore, Principal, Secret, generate_key};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::{Rtcd, logging};

/// Exit code for invalid usage or configuration (BSD `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// `rtcd --version`: the version with the build hash and date that `GET /version` reports,
/// so a binary on a host can be matched to a commit without starting it.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (build {}, {})",
        env!("CARGO_PKG_VERSION"),
        crate::BUILD_HASH,
        crate::BUILD_DATE
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "rtcd",
    version = VERSION.as_str(),
    about = "Media daemon: SFU, client registry and admin API"
)]
struct Cli {
    /// TOML configuration file; every key can also be set with RTCD_<SECTION>_<KEY>.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Run a local development instance: generated admin secret, data under --data-dir.
    Dev {
        /// Where the registry and the generated admin secret are kept.
        #[arg(long, default_value = "data/rtcd-dev")]
        data_dir: PathBuf,
    },
    /// Manage registered clients directly in the store (stop rtcd first, or use the HTTP API).
    Clients {
        #[command(subcommand)]
        action: ClientsAction,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsAction {
    /// Register a client. Prints a generated auth key unless --key-stdin is given.
    Add {
        /// 1-64 characters of A-Z a-z 0-9 . _ -
        client_id: String,
        /// Read the auth key (32-72 bytes) from standard input instead of generating one.
        #[arg(long)]
        key_stdin: bool,
    },
    /// Remove a client.
    Remove {
        /// The client to remove.
        client_id: String,
    },
    /// List registered client IDs.
    List,
}

/// Parses the command line and runs it; what `main` calls.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let load = |overrides: &[(&str, String)]| -> Result<Config, ExitCode> {
        let env = rtcd_kit::config::process_env()
            .into_iter()
            .chain(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Config::load(cli.config.as_deref(), env).map_err(|e| {
            eprintln!("rtcd: {e}");
            ExitCode::from(EXIT_USAGE)
        })
    };
    match cli.command {
        None | Some(Command::Serve) => match load(&[]) {
            Ok(config) => run(serve(config)),
            Err(code) => code,
        },
        Some(Command::Dev { ref data_dir }) => {
            let secret = match dev_admin_secret(data_dir) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("rtcd: cannot prepare {}: {e}", data_dir.display());
                    return ExitCode::FAILURE;
                }
            };
            let overrides = [
                ("RTCD_API_SECURITY_ENABLE_ADMIN", "true".to_owned()),
                (
                    "RTCD_API_SECURITY_ADMIN_SECRET_KEY",
                    secret.expose().to_owned(),
                ),
                (
                    "RTCD_STORE_DATA_SOURCE",
                    data_dir.join("db").display().to_string(),
                ),
                // Webhooks to a receiver on this machine or the LAN, as development needs.
                ("RTCD_WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", "true".to_owned()),
            ];
            match load(&overrides) {
                Ok(config) => {
                    let secret_file = data_dir.join("admin-secret");
                    eprintln!(
                        "rtcd dev: DEVELOPMENT MODE. Admin secret in {} (mode 0600).\n\
                         Register a client:\n  curl -u \":$(cat {})\" -d '{{\"clientID\":\"my-proxy\",\"authKey\":\"'$(head -c 32 /dev/urandom | base64 | tr -d =+/)'\"}}' http://{}/register",
                        secret_file.display(),
                        secret_file.display(),
                        config.api.http.listen_address,
                    );
                    run(serve(config))
                }
                Err(code) => code,
            }
        }
        Some(Command::Clients { ref action }) => match load(&[]) {
            Ok(config) => run(clients(config, action)),
            Err(code) => code,
        },
    }
}

fn run(future: impl Future<Output = Result<(), String>>) -> ExitCode {
    rtcd_kit::runtime::run("rtcd", future)
}

async fn serve(config: Config) -> Result<(), String> {
    logging::init(&config.logger);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        ?config,
        "starting rtcd"
    );
    // Installed before the start so that a SIGHUP sent early is never the default "terminate".
    let hangups = declared_file(&config).map(|path| {
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        (path, hangups)
    });
    let rtcd = Rtcd::start(config).await.map_err(|e| e.to_string())?;
    match hangups {
        Some((path, hangups)) => {
            tokio::select! {
                () = rtcd_kit::signal::terminated("draining") => {}
                () = reload_declared_on_hangup(rtcd.auth().clone(), path, hangups) => {}
            }
        }
        None => rtcd_kit::signal::terminated("draining").await,
    }
    rtcd_kit::signal::exit_on_second_signal();
    rtcd.shutdown().await;
    Ok(())
}

/// The declared-clients file, if the configuration names one.
fn declared_file(config: &Config) -> Option<PathBuf> {
    let path = &config.clients.declared_file;
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Re-applies the declared-clients file on every SIGHUP (`docs/registration.md`), so a Secret
/// update needs no restart. A file that fails changes nothing (every line is checked before
/// the first write) and the daemon keeps serving with the registry as it was. Never returns.
async fn reload_declared_on_hangup(
    auth: AuthService,
    path: PathBuf,
    hangups: std::io::Result<tokio::signal::unix::Signal>,
) {
    let mut hangups = match hangups {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install a SIGHUP handler; declared clients apply at restart only");
            return std::future::pending().await;
        }
    };
    while hangups.recv().await.is_some() {
        tracing::info!(file = %path.display(), "SIGHUP: reloading declared clients");
        if let Err(e) = auth.reconcile_declared(&path).await {
            tracing::error!(file = %path.display(), error = %e, "declared clients not reloaded; fix the file and send SIGHUP again");
        }
    }
    std::future::pending().await
}

async fn clients(config: Config, action: &ClientsAction) -> Result<(), String> {
    logging::init(&config.logger);
    let store =
        ClientStore::open(Path::new(&config.store.data_source)).map_err(|e| e.to_string())?;
    // In cluster mode the registry is the cluster store's: a change made here is every host's.
    let store = if config.cluster.enabled() {
        let cluster =
            rtcd_kit::cluster::Etcd::connect(&config.cluster).map_err(|e| e.to_string())?;
        store
            .shared_in(
                std::sync::Arc::new(cluster),
                &config.cluster.key_prefix,
                config.cluster.request_timeout(),
            )
            .await
    } else {
        store
    };
    let auth = AuthService::new(store, config.api.security.clone(), Metrics::new())
        .map_err(|e| e.to_string())?;
    let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
    match action {
        ClientsAction::Add {
            client_id,
            key_stdin,
        } => {
            let id = ClientId::parse(client_id).map_err(|e| e.to_string())?;
            let (key, generated) = if *key_stdin {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("reading the key from stdin: {e}"))?;
                (Secret::new(text.trim_end_matches(['\r', '\n'])), false)
            } else {
                (generate_key(), true)
            };
            auth.register(Some(&Principal::Admin), id.clone(), key.clone(), local)
                .await
                .map_err(|e| e.to_string())?;
            if generated {
                println!("clientID: {id}\nauthKey: {}", key.expose());
                eprintln!("Store the key now: only its bcrypt hash is kept.");
            } else {
                println!("registered {id}");
            }
        }
        ClientsAction::Remove { client_id } => {
            let id = ClientId::parse(client_id).map_err(|e| e.to_string())?;
            auth.unregister(&Principal::Admin, id.clone(), local)
                .await
                .map_err(|e| e.to_string())?;
            println!("removed {id}");
        }
        ClientsAction::List => {
            for id in auth.list().map_err(|e| e.to_string())? {
                println!("{id}");
            }
        }
    }
    auth.store().flush().await.map_err(|e| e.to_string())
}

/// Reads the dev admin secret from `data_dir/admin-secret`, creating it (0600) on first use.
fn dev_admin_secret(data_dir: &Path) -> std::io::Result<Secret> {
    std::fs::create_dir_all(data_dir)?;
    crate::auth::secret_file(&data_dir.join("admin-secret"))
}
