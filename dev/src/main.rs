//! The `rtcd-dev` binary: parses its flags and runs [`rtcd_dev::start`] until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "rtcd-dev",
    version,
    about = "rtcd + proxy + demo page on one machine (development only)"
)]
struct Args {
    /// Where secrets and the client registry are kept.
    #[arg(long, default_value = "data/dev")]
    data_dir: PathBuf,
    /// The proxy's (and the demo page's) listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Advertise only 127.0.0.1 media candidates (sandboxes, headless tests). Browsers then
    /// need loopback candidates enabled (Chromium: --allow-loopback-in-peer-connection).
    #[arg(long)]
    loopback: bool,
    /// A proxy config file (the production `rtcd-proxy` format) for integrations: its
    /// `[webhooks]`, `[turn]`, `[rooms]`, `[api]`, `[limits]` and `[auth]` (keys, issuers and
    /// audiences added to the dev key's; `[auth.oidc]`) apply; `[server]` and `[rtcd]` stay
    /// the dev stack's.
    #[arg(long, value_name = "FILE")]
    proxy_config: Option<PathBuf>,
    /// rtcd's UDP media port.
    #[arg(long, default_value_t = 8443)]
    udp_port: u16,
    /// A tracing filter for both services, e.g. `debug` or `info,rtcd::sfu=debug`. Without
    /// it, `RUST_LOG` is used if set, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

/// The log filter: `--log-level`, else `RUST_LOG`, else `info` (the flag wins so a command
/// line copied into a bug report means the same thing in any shell).
fn log_level(flag: Option<String>, env: Option<String>) -> String {
    flag.or(env.filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "info".into())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rtcd-dev: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = rtcd_dev::Options {
        data_dir: args.data_dir,
        listen: args.listen,
        loopback: args.loopback,
        udp_port: args.udp_port,
        rtc: Vec::new(),
    };
    let proxy_file = match &args.proxy_config {
        None => None,
        Some(path) => match rtcd_dev::read_proxy_file(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("rtcd-dev: {}: {e}", path.display());
                return ExitCode::from(64);
            }
        },
    };
    let result = runtime.block_on(async {
        rtcd::logging::init(&rtcd::config::LoggerConfig {
            level: log_level(args.log_level, std::env::var("RUST_LOG").ok()),
            ..rtcd::config::LoggerConfig::default()
        });
        let data_dir = options.data_dir.clone();
        let stack = rtcd_dev::start_with_proxy(options, |config| {
            if let Some(file) = proxy_file {
                rtcd_dev::apply_proxy_file(config, file);
            }
        })
        .await?;
        println!(
            "\nrtcd-dev is running. Open this in two browser tabs (change the name):\n\n    http://{}/?room=demo&name=Alice\n\nSecrets and the registry are in {}. Ctrl-C stops.\n",
            stack.proxy.addr(),
            data_dir.display()
        );
        rtcd_kit::signal::terminated("stopping").await;
        stack.shutdown().await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtcd-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_flag_then_rust_log_then_info() {
        assert_eq!(
            log_level(Some("debug".into()), Some("warn".into())),
            "debug"
        );
        assert_eq!(
            log_level(None, Some("warn,rtcd=debug".into())),
            "warn,rtcd=debug"
        );
        assert_eq!(log_level(None, Some(" ".into())), "info");
        assert_eq!(log_level(None, None), "info");
    }

    #[test]
    fn flags_parse() {
        let args = Args::parse_from(["rtcd-dev", "--log-level", "debug", "--loopback"]);
        assert_eq!(args.log_level.as_deref(), Some("debug"));
        assert!(Args::parse_from(["rtcd-dev"]).log_level.is_none());
    }
}
