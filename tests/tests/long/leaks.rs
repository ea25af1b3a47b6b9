//! Join / publish / leave cycles against the real rtcd process leave no file descriptors,
//! threads or tokio tasks behind (the long tier: twenty calls with media, then minutes of
//! waiting for the counts to settle on a loaded machine).

use std::path::Path;
use std::time::Duration;

use rtcd_e2e::daemon::{ADMIN_SECRET, RtcdProcess, client, key_for, metric_value, test_env};
use rtcd_e2e::media::{PATIENCE, Participant, all_permissions, basic, eventually, keeps_flowing};
use rtcd_proto::v1 as pb;
use rtcd_proto::v1::signaling_client::SignalingClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_rtcd-under-test");

/// What the leak check watches in the rtcd process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Footprint {
    /// Descriptors other than the metrics scraper's own HTTP connections (see
    /// [`http_connections`]).
    fds: usize,
    /// Threads other than sled's elastic I/O pool (`sled-io-N`: sled grows and shrinks it on
    /// its own schedule, and sessions never touch the store).
    threads: usize,
    /// Tokio tasks other than those serving the scraper's HTTP connections (one each).
    tasks: f64,
    /// The scraper's connections that were subtracted above, for the report.
    http: usize,
    rss_kib: u64,
}

/// rtcd's accepted TCP connections on `port` (its HTTP listener): the scraper's own. reqwest
/// may open a second keep-alive connection when the first is not yet back in its pool, and
/// each open connection holds a descriptor and a task in rtcd for reqwest's idle timeout
/// (90 s). They are the measurement, not the daemon, so the footprint leaves them out.
fn http_connections(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|t| {
                    t.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    const LISTEN: &str = "0A";
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let local_port = f
                        .get(1)
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| u16::from_str_radix(p, 16).ok());
                    let inode = f.get(9).and_then(|i| i.parse::<u64>().ok());
                    local_port == Some(port)
                        && f.get(3) != Some(&LISTEN)
                        && inode.is_some_and(|i| inodes.contains(&i))
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .count()
}

/// What the process holds, for a leak report: each descriptor's target, each thread's name.
fn inventory(pid: u32) -> String {
    let list = |what: &str, describe: &dyn Fn(std::path::PathBuf) -> String| {
        let mut items: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .map(|d| d.flatten().map(|e| describe(e.path())).collect())
            .unwrap_or_default();
        items.sort();
        items
    };
    let fds = list("fd", &|p| {
        std::fs::read_link(&p).map_or_else(|e| e.to_string(), |t| t.display().to_string())
    });
    let threads = list("task", &|p| {
        std::fs::read_to_string(p.join("comm")).map_or_else(|e| e.to_string(), |c| c.trim().into())
    });
    format!("fds {fds:?}, threads {threads:?}")
}

/// rtcd's metrics page (admin-authenticated on the public listener).
async fn scrape(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{base}/metrics"))
        .basic_auth("", Some(ADMIN_SECRET))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// Waits until rtcd reports no session of the client `leak`.
async fn sessions_gone(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while metric_value(
        &scrape(http, base).await?,
        "rtcd_sfu_sessions{client_id=\"leak\"}",
    ) != Some(0.0)
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn footprint(pid: u32, http: &reqwest::Client, base: &str) -> anyhow::Result<Footprint> {
    let text = scrape(http, base).await?;
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {base}"))?;
    let http_conns = http_connections(pid, port);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(Footprint {
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?
            .count()
            .saturating_sub(http_conns),
        threads: std::fs::read_dir(format!("/proc/{pid}/task"))?
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|name| !name.starts_with("sled-io-"))
            })
            .count(),
        tasks: metric_value(&text, "rtcd_runtime_alive_tasks")
            .ok_or_else(|| anyhow::anyhow!("no rtcd_runtime_alive_tasks in {text}"))?
            - http_conns as f64,
        http: http_conns,
        rss_kib,
    })
}

/// Where to take a footprint of the rtcd process (pid, metrics client, HTTP base).
type Probe<'a> = (u32, &'a reqwest::Client, &'a str);

/// One call of two publishers: join, exchange media, leave, close. With a probe, returns the
/// footprint taken while both sessions are live.
async fn cycle(
    client: &mut SignalingClient<Channel>,
    auth: &str,
    i: usize,
    probe: Option<Probe<'_>>,
) -> anyhow::Result<Option<Footprint>> {
    let call = format!("cycle-{i}");
    let mut people = Vec::new();
    for name in ["alice", "bob"] {
        let p = Participant::join(client, Some(auth), &call, name, all_permissions()).await?;
        p.add_track("audio").await?;
        p.add_track("video").await?;
        p.renegotiate().await?;
        people.push(p);
    }
    let (a, b) = (&people[0], &people[1]);
    eventually("media both ways", || {
        a.received("bob", "video") >= 5 && b.received("alice", "video") >= 5
    })
    .await?;
    for (p, other) in [(a, "bob"), (b, "alice")] {
        let flows = [format!("{other}/audio"), format!("{other}/video")];
        let flows: Vec<&str> = flows.iter().map(String::as_str).collect();
        keeps_flowing(p, &flows, Duration::from_secs(2), Duration::from_secs(1)).await?;
    }
    let live = match probe {
        Some((pid, http, base)) => Some(footprint(pid, http, base).await?),
        None => None,
    };
    for p in &people {
        p.send(pb::client_signal::Signal::Leave(pb::Leave {}))
            .await?;
    }
    for p in &people {
        eventually("left", || p.closed_because("leave")).await?;
        p.close().await;
    }
    Ok(live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_publish_leave_cycles_leak_no_fds_threads_or_tasks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut proc = RtcdProcess::spawn(Path::new(BIN), &test_env(dir.path(), &[]))?;
    let base = format!("http://{}", proc.ready().await?);
    let grpc = proc.ready_addr("grpc_addr")?;
    let pid = proc.child.id().expect("running");
    let http = client();
    let key = key_for("leak");
    let status = http
        .post(format!("{base}/register"))
        .basic_auth("", Some(ADMIN_SECRET))
        .json(&serde_json::json!({"clientID": "leak", "authKey": key}))
        .send()
        .await?
        .status();
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let auth = basic("leak", &key);
    let mut signaling = SignalingClient::connect(format!("http://{grpc}")).await?;

    // Warm-up: the first calls create what lives for the daemon's lifetime (metric series,
    // the auth cache entry, the gRPC connection's tasks, pooled worker threads).
    for i in 0..2 {
        cycle(&mut signaling, &auth, i, None).await?;
    }
    sessions_gone(&http, &base).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = footprint(pid, &http, &base).await?;

    const CYCLES: usize = 20;
    let mut live = None;
    for i in 2..2 + CYCLES {
        let probe = (i == 2).then_some((pid, &http, base.as_str()));
        live = live.or(cycle(&mut signaling, &auth, i, probe).await?);
    }
    // The measures can see a session at all: sessions add no file descriptors (they share
    // one UDP port) but each runs tasks (a few dozen on engine v1; on v2 its signaling bridge,
    // the media living on the worker threads), so with two live sessions the task gauge must
    // stand above the baseline.
    let live = live.expect("probed");
    assert!(
        live.tasks >= baseline.tasks + 2.0,
        "two live sessions should show in the task gauge: baseline {baseline:?}, live {live:?}"
    );
    sessions_gone(&http, &base).await?;
    let after = footprint(pid, &http, &base).await?;
    // Closed peer connections finish their teardown in the background (webrtc-rs closes
    // its ICE / DTLS / SCTP tasks asynchronously): wait for the counts to settle. File
    // descriptors and tasks must come back all the way to the baseline: 20 cycles x 2
    // sessions x ~25 tasks would dwarf any slack. Threads get a slack of
    // BLOCKING_POOL_SLACK: rtcd samples /proc/stat through tokio::fs every second, which runs
    // on tokio's blocking pool, and that pool keeps one or two threads (10 s keepalive, handed
    // work alternately) whatever the sessions do; a thread leaked per session would still
    // show 40 times over.
    const BLOCKING_POOL_SLACK: usize = 2;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let settled = loop {
        let now = footprint(pid, &http, &base).await?;
        if now.fds <= baseline.fds
            && now.threads <= baseline.threads + BLOCKING_POOL_SLACK
            && now.tasks <= baseline.tasks
        {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rtcd leaks after {CYCLES} cycles: baseline {baseline:?}, right after {after:?}, \
             still {now:?}; {}",
            inventory(pid)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "leak check over {CYCLES} cycles: baseline {baseline:?}, with two sessions {live:?}, \
         right after {after:?}, settled {settled:?}, RSS growth {} KiB",
        settled.rss_kib as i64 - baseline.rss_kib as i64
    );
    proc.signal("TERM")?;
    proc.wait().await?;
    Ok(())
}
