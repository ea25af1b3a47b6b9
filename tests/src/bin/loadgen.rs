//! The load tool's command line: runs a scenario against our stack (spawned as two processes),
//! Janus, or the raw UDP relay, prints a live progress line, and writes `<out>/<name>.json`,
//! `.md` and `.svg`. Scenarios and results: docs/benchmarks.md.
//!
//! ```text
//! loadgen --target ours --scenario fanout --out results/
//! loadgen --target raw --relay 127.0.0.1:7000 --watch udp-relay=1234 --scenario fanout
//! loadgen --target janus --janus-url ws://127.0.0.1:8188 --watch janus=$(pidof janus) --scenario rooms
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use rtcd_e2e::loadgen::{self, Scenario, Target, ours, stats::Watched};

#[derive(Parser, Debug)]
#[command(about = "Load generator: C calls x P participants against ours / janus / raw-udp")]
struct Args {
    /// ours | janus | raw
    #[arg(long, default_value = "ours")]
    target: String,
    /// Preset: fanout, one-to-one, rooms, storm, fanout16, smoke.
    #[arg(long, default_value = "smoke")]
    scenario: String,
    /// Report name (file stem); defaults to `<scenario>-<target>`.
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    calls: Option<usize>,
    #[arg(long)]
    participants: Option<usize>,
    /// Audio publishers per call.
    #[arg(long)]
    audio: Option<usize>,
    /// Camera publishers per call.
    #[arg(long)]
    video: Option<usize>,
    /// Screen sharers per call.
    #[arg(long)]
    screen: Option<usize>,
    #[arg(long)]
    video_kbps: Option<u32>,
    /// Joins per second (0 = as fast as admitted).
    #[arg(long)]
    rate: Option<f64>,
    /// Measurement window, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Warm-up after the last join, seconds.
    #[arg(long)]
    warmup: Option<f64>,
    /// Address the clients bind and advertise.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// ours: the proxy URL of a running stack (tokens are minted with the e2e HS key `hs1`);
    /// without it, rtcd and the proxy are spawned from --rtcd-bin / --proxy-bin.
    #[arg(long)]
    proxy_url: Option<String>,
    /// ours: rtcd binary (default: `rtcd` or `rtcd-under-test` next to this binary).
    #[arg(long)]
    rtcd_bin: Option<PathBuf>,
    /// ours: proxy binary (default: `rtcd-proxy` or `proxy-under-test` next to this binary).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// ours: extra rtcd settings, KEY=VALUE (e.g. RTCD_RTC_ICE_INTERFACES=["veth0"]).
    #[arg(long = "rtcd-env")]
    rtcd_env: Vec<String>,
    /// ours: log level of the spawned processes.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// ours: pin the spawned rtcd and proxy to these CPUs (`taskset -c` syntax, e.g. "0").
    #[arg(long)]
    target_cpus: Option<String>,
    /// raw: the relay's address.
    #[arg(long)]
    relay: Option<SocketAddr>,
    /// janus: its WebSocket API URL.
    #[arg(long, default_value = "ws://127.0.0.1:8188")]
    janus_url: String,
    /// Processes to measure, NAME=PID (repeatable); spawned ones are added automatically.
    #[arg(long)]
    watch: Vec<String>,
    /// Where the report goes.
    #[arg(long, default_value = "loadgen-results")]
    out: PathBuf,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

fn sibling(names: &[&str]) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?;
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .with_context(|| format!("none of {names:?} next to {}", exe.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut scenario = Scenario::preset(&args.scenario)
        .with_context(|| format!("unknown scenario {:?}", args.scenario))?;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { scenario.$field = v; } )* };
    }
    set!(calls, participants, audio, video, screen, video_kbps);
    if let Some(v) = args.rate {
        scenario.join_rate = v;
    }
    if let Some(v) = args.duration {
        scenario.duration = Duration::from_secs_f64(v);
    }
    if let Some(v) = args.warmup {
        scenario.warmup = Duration::from_secs_f64(v);
    }
    if let Some(v) = args.bind {
        scenario.bind_ip = v;
    }
    let mut watched: Vec<Watched> = args
        .watch
        .iter()
        .map(|w| {
            let (name, pid) = w.split_once('=').context("--watch NAME=PID")?;
            Ok(Watched {
                name: name.into(),
                pid: pid.parse().context("--watch NAME=PID")?,
            })
        })
        .collect::<anyhow::Result<_>>()?;

    // One thread: the load tool's cost stays on one core (pin it with taskset).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut _stack = None;
        let target = match args.target.as_str() {
            "ours" => match &args.proxy_url {
                Some(url) => Target::Ours {
                    ws_url: url.clone(),
                },
                None => {
                    let rtcd_env = args
                        .rtcd_env
                        .iter()
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').context("--rtcd-env KEY=VALUE")?;
                            Ok((k.to_owned(), v.to_owned()))
                        })
                        .collect::<anyhow::Result<_>>()?;
                    let config = ours::StackConfig {
                        rtcd_bin: match &args.rtcd_bin {
                            Some(p) => p.clone(),
                            None => sibling(&["rtcd", "rtcd-under-test"])?,
                        },
                        proxy_bin: match &args.proxy_bin {
                            Some(p) => p.clone(),
                            None => sibling(&["rtcd-proxy", "proxy-under-test"])?,
                        },
                        rtcd_env,
                        log_level: args.log_level.clone(),
                        cpus: args.target_cpus.clone(),
                    };
                    let stack = ours::Stack::start(&config).await?;
                    watched.extend(stack.watched());
                    let ws_url = stack.ws_url.clone();
                    _stack = Some(stack);
                    Target::Ours { ws_url }
                }
            },
            "raw" => Target::Raw {
                relay: args.relay.context("--relay ADDRESS")?,
            },
            "janus" => Target::Janus {
                ws_url: args.janus_url.clone(),
            },
            other => bail!("unknown target {other:?} (ours, janus, raw)"),
        };
        let report = loadgen::run(&scenario, &target, &watched, !args.quiet).await?;
        let stem = args
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", scenario.name, target.name()));
        report.write(&args.out, &stem)?;
        println!("{}", report.markdown());
        println!("wrote {}/{stem}.json, .md, .svg", args.out.display());
        Ok(())
    })
}
