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
    /// rtcd's UDP media port.
    #[arg(long, default_value_t = 8443)]
    udp_port: u16,
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
    };
    let result = runtime.block_on(async {
        rtcd::logging::init(&rtcd::config::LoggerConfig::default());
        let data_dir = options.data_dir.clone();
        let stack = rtcd_dev::start(options).await?;
        println!(
            "\nrtcd-dev is running. Open this in two browser tabs (change the name):\n\n    http://{}/?room=demo&name=Alice\n\nSecrets and the registry are in {}. Ctrl-C stops.\n",
            stack.proxy.addr(),
            data_dir.display()
        );
        rtcd::shutdown::signal().await;
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
