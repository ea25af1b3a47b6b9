//! The load tool's command line: runs a scenario against our stack (spawned as two processes),
//! Janus, or the raw UDP relay, prints a live progress line, and writes `<out>/<name>.json`,
//! `.md` and `.svg`. Scenarios and results: docs/benchmarks.md.
//!
//! ```text
//! loadgen --target ours --scenario fanout --out results/
//! loadgen --target raw --relay 127.0.0.1:7000 --watch udp-relay=1234 --scenario fanout
//! loadgen --target janus --janus-url ws://127.0.0.1:8188 --watch janus=$(pidof janus) --scenario rooms
//! loadgen --target ours --scenario capacity --start-rooms 5 --step-rooms 5 --max-participants 1000
//! ```
//!
//! `--scenario capacity` (or `--capacity` with another room shape) ramps rooms until loss or
//! latency crosses its limit ([`crate::capacity`]) and writes `<name>.json` and `.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::capacity::{self, Limits, Ramp};
use crate::{Scenario, Target, ours, stats::Watched};
use anyhow::{Context as _, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator: C calls x P participants against ours / janus / raw-udp"
)]
struct Args {
    /// ours | janus | raw
    #[arg(long, default_value = "ours")]
    target: String,
    /// Preset: fanout, one-to-one, rooms, storm, fanout16, capacity, smoke.
    #[arg(long, default_value = "smoke")]
    scenario: String,
    /// Capacity mode with the scenario's room shape (implied by `--scenario capacity`): rooms
    /// are added step by step until a step fails; `--duration` and `--warmup` are per step.
    #[arg(long)]
    capacity: bool,
    /// Capacity: rooms in the first step.
    #[arg(long, default_value_t = 1)]
    start_rooms: usize,
    /// Capacity: rooms added per step.
    #[arg(long, default_value_t = 1)]
    step_rooms: usize,
    /// Capacity: no step above this many participants.
    #[arg(long, default_value_t = 2000)]
    max_participants: usize,
    /// Capacity: loss (percent, from sequence numbers) above this fails a step.
    #[arg(long, default_value_t = 1.0)]
    max_loss: f64,
    /// Capacity: one-way latency p99 (ms) above this fails a step.
    #[arg(long, default_value_t = 200.0)]
    max_p99_ms: f64,
    /// Capacity: forwarded below this percent of what the sent packets should produce counts
    /// as loss (streams that never arrive).
    #[arg(long, default_value_t = 90.0)]
    min_delivered: f64,
    /// Capacity: the load tool at this many cores (it is single-threaded) is client-bound.
    #[arg(long, default_value_t = 0.9)]
    client_cpu_limit: f64,
    /// Capacity: publishers sending below this percent of their schedule is client-bound.
    #[arg(long, default_value_t = 95.0)]
    min_send: f64,
    /// Capacity: frames going out later than this (ms, p99) is client-bound.
    #[arg(long, default_value_t = 50.0)]
    max_send_lag_ms: f64,
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
    /// Cameras publish three simulcast layers and participants take one each (as the
    /// `simulcast` scenario; `--video-kbps` then does not apply).
    #[arg(long)]
    simulcast: bool,
    /// Record every call (our stack only: rtcd records into its temporary data directory,
    /// started through the proxy's API once everyone joined).
    #[arg(long)]
    record: bool,
    /// The target's name in the report (default ours / janus / raw-udp): a variant of a target
    /// measured in the same run, e.g. `ours-adaptive` for rtcd with `RTCD_RTC_ADAPTIVE_VIDEO`.
    #[arg(long)]
    label: Option<String>,
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
    /// Threads for the load tool's own peers (pin as many CPUs with taskset). One keeps its cost
    /// on one core; a join storm saturates that core before the target's (docs/benchmarks.md),
    /// so measuring a server's storm needs more, on a host with cores to spare.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: u16,
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

/// The first of `names` found next to this executable: `cargo build` puts rtcd's and the
/// proxy's binaries there.
fn sibling(names: &[&str]) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?;
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.exists())
        .with_context(|| format!("none of {names:?} next to {}", exe.display()))
}

/// Parses the command line and runs it (the whole `loadgen` binary).
pub fn main() -> anyhow::Result<()> {
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
    scenario.simulcast |= args.simulcast;
    scenario.record |= args.record;
    let capacity = args.capacity || args.scenario == "capacity";
    if capacity {
        if args.step_rooms == 0 || args.start_rooms == 0 {
            bail!("--start-rooms and --step-rooms must be at least 1");
        }
        if args.max_participants < scenario.participants {
            bail!(
                "--max-participants {} holds no room of {}",
                args.max_participants,
                scenario.participants
            );
        }
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

    // One thread by default: the load tool's cost stays on one core (pin it with taskset).
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let mut stack_started = None;
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
                        record: args.record,
                    };
                    let stack = ours::Stack::start(&config).await?;
                    watched.extend(stack.watched());
                    let ws_url = stack.ws_url.clone();
                    stack_started = Some(stack);
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
        let stem = args.name.clone().unwrap_or_else(|| {
            let label = args.label.as_deref().unwrap_or(target.name());
            format!("{}-{label}", scenario.name)
        });
        if capacity {
            let ramp = Ramp {
                start_rooms: args.start_rooms,
                step_rooms: args.step_rooms,
                max_participants: args.max_participants,
                limits: Limits {
                    max_loss_percent: args.max_loss,
                    max_latency_p99_ms: args.max_p99_ms,
                    min_delivered_percent: args.min_delivered,
                    client_cpu: args.client_cpu_limit,
                    min_send_percent: args.min_send,
                    max_send_lag_p99_ms: args.max_send_lag_ms,
                },
            };
            let mut report =
                capacity::run(&scenario, &ramp, &target, &watched, !args.quiet).await?;
            if let Some(label) = &args.label {
                report.target = label.clone();
            }
            report.write(&args.out, &stem)?;
            println!("{}", report.markdown());
            println!("wrote {}/{stem}.json, .md", args.out.display());
            return Ok(());
        }
        let mut report = crate::run(&scenario, &target, &watched, !args.quiet).await?;
        if let Some(label) = &args.label {
            report.target = label.clone();
        }
        report.write(&args.out, &stem)?;
        println!("{}", report.markdown());
        println!("wrote {}/{stem}.json, .md, .svg", args.out.display());
        if let Some(stack) = &stack_started {
            let path = args.out.join(format!("{stem}.rtcd-metrics.txt"));
            std::fs::write(&path, stack.rtcd_metrics().await?)?;
            println!("wrote {}", path.display());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Args;

    #[test]
    fn threads_default_to_one_and_must_be_at_least_one() {
        assert_eq!(Args::try_parse_from(["loadgen"]).unwrap().threads, 1);
        assert_eq!(
            Args::try_parse_from(["loadgen", "--threads", "3"])
                .unwrap()
                .threads,
            3
        );
        let e = Args::try_parse_from(["loadgen", "--threads", "0"]).unwrap_err();
        assert!(e.to_string().contains("--threads"), "{e}");
    }
}
