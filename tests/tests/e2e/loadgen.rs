//! The load tool's smoke runs (issue: load tool and side-by-side benchmarks): a few
//! participants for a few seconds through the real CLI, against our stack (rtcd + proxy as
//! processes) and against the raw UDP relay, so that the tool cannot rot. They assert that
//! media flowed and that the JSON report is complete, never how fast anything was.

use std::process::Stdio;

use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");
const RTCD: &str = env!("CARGO_BIN_EXE_rtcd-under-test");
const PROXY: &str = env!("CARGO_BIN_EXE_proxy-under-test");
const RELAY: &str = env!("CARGO_BIN_EXE_udp-relay");

/// Runs the CLI with `args` and returns the parsed `<out>/<name>.json` plus the Markdown.
fn loadgen(args: &[&str], out: &std::path::Path) -> anyhow::Result<(Value, String)> {
    let output = std::process::Command::new(LOADGEN)
        .args(args)
        .args([
            "--scenario",
            "smoke",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--quiet",
        ])
        .args(["--name", "run", "--out"])
        .arg(out)
        .stdin(Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "loadgen failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&std::fs::read(out.join("run.json"))?)?;
    let markdown = std::fs::read_to_string(out.join("run.md"))?;
    let svg = std::fs::read_to_string(out.join("run.svg"))?;
    anyhow::ensure!(
        svg.starts_with("<svg") && svg.ends_with("</svg>"),
        "svg: {svg}"
    );
    Ok((json, markdown))
}

/// The fields every report must have, with media having flowed to every participant.
fn assert_complete(report: &Value, processes: &[&str]) {
    let participants = report["participants"].as_u64().unwrap();
    assert_eq!(participants, 3, "{report:#}");
    assert_eq!(
        report["connected"], 3,
        "every participant connected: {report:#}"
    );
    assert_eq!(report["failed"], 0, "{report:#}");
    for q in ["p50", "p95", "p99", "max"] {
        assert!(
            report["join_ms"][q].as_f64().unwrap() > 0.0,
            "join_ms.{q}: {report:#}"
        );
    }
    assert!(
        report["forwarded_pps"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(report["forwarded_bits_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["expected_forwarded_pps"].as_f64().unwrap() > 0.0);
    // smoke: 3 participants, p0 sends audio+camera+screen, p1 and p2 audio: 10 streams arrive.
    assert_eq!(report["loss"]["streams"], 10, "{report:#}");
    assert!(report["loss"]["received"].as_u64().unwrap() > 0);
    assert!(
        report["loss_percent"].as_f64().unwrap() < 50.0,
        "{report:#}"
    );
    assert!(report["latency_us"]["p50"].as_u64().is_some(), "{report:#}");
    assert!(report["latency_us"]["p99"].as_u64().is_some());
    assert!(report["client_cpu_utilisation"].as_f64().is_some());
    assert!(!report["series"].as_array().unwrap().is_empty());
    let names: Vec<&str> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, processes, "{report:#}");
    for p in report["processes"].as_array().unwrap() {
        assert!(p["cpu_seconds"].as_f64().is_some(), "{p}");
        assert!(p["peak_rss_kib"].as_u64().unwrap() > 0, "{p}");
        assert!(p["rss_per_session_kib"].as_f64().is_some(), "{p}");
    }
    assert!(report["scenario"]["name"] == "smoke");
}

#[test]
fn smoke_against_our_stack() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let (report, markdown) = loadgen(
        &["--target", "ours", "--rtcd-bin", RTCD, "--proxy-bin", PROXY],
        out.path(),
    )?;
    assert_complete(&report, &["rtcd", "proxy"]);
    assert_eq!(report["target"], "ours");
    let rtcd = &report["processes"][0];
    assert!(
        rtcd["cpu_per_million_forwarded"].as_f64().unwrap() > 0.0,
        "{rtcd}"
    );
    assert!(
        markdown.contains("smoke on ours") && markdown.contains("| rtcd |"),
        "{markdown}"
    );
    Ok(())
}

#[test]
fn smoke_against_the_raw_relay() -> anyhow::Result<()> {
    let mut relay = std::process::Command::new(RELAY)
        .stdout(Stdio::piped())
        .spawn()?;
    let result = (|| {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(relay.stdout.as_mut().unwrap()),
            &mut line,
        )?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        let out = tempfile::tempdir()?;
        let watch = format!("udp-relay={}", relay.id());
        let (report, _) = loadgen(
            &["--target", "raw", "--relay", &addr, "--watch", &watch],
            out.path(),
        )?;
        assert_complete(&report, &["udp-relay"]);
        assert_eq!(report["target"], "raw-udp");
        anyhow::Ok(())
    })();
    let _ = relay.kill();
    let _ = relay.wait();
    result
}

#[test]
fn bad_arguments_are_refused_clearly() -> anyhow::Result<()> {
    for (args, expected) in [
        (vec!["--scenario", "nope"], "unknown scenario"),
        (vec!["--target", "nope"], "unknown target"),
        (vec!["--target", "raw"], "--relay"),
        (vec!["--watch", "rtcd"], "--watch NAME=PID"),
    ] {
        let output = std::process::Command::new(LOADGEN)
            .args(&args)
            .args(["--rtcd-bin", RTCD, "--proxy-bin", PROXY, "--quiet"])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    Ok(())
}
