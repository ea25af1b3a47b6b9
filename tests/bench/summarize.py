#!/usr/bin/env python3
"""Summarises the load tool's JSON reports of a side-by-side run (tests/bench/compare.sh) as
Markdown: one row per scenario and target (medians over repetitions), then the ratios that are
the headline (ours vs Janus, ours vs the raw UDP ceiling). "sent" is what the load tool's
publishers managed to send: below the scenario's rate, the client (not the target) was the
limit of that run. Standard library only.

Usage: summarize.py DIR   (reads DIR/*.json, writes Markdown to stdout)
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TARGETS = ["ours", "janus", "raw-udp"]
SCENARIO_ORDER = ["fanout", "one-to-one", "rooms", "storm", "fanout16", "smoke"]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_per_million(report):
    """Target CPU-seconds per million forwarded packets, all measured target processes
    together (ours: rtcd + proxy; Janus: one process; raw: the relay)."""
    parts = [p.get("cpu_per_million_forwarded") for p in report.get("processes", [])]
    if not parts or any(p is None for p in parts):
        return None
    return sum(parts)


def cpu_utilisation(report):
    parts = [p.get("cpu_utilisation") for p in report.get("processes", [])]
    if not parts or any(p is None for p in parts):
        return None
    return sum(parts)


def rss_per_session(report):
    parts = [p.get("rss_per_session_kib") for p in report.get("processes", [])]
    if not parts or any(p is None for p in parts):
        return None
    return sum(parts)


def metrics(report):
    join = report.get("join_ms", {})
    latency = report.get("latency_us", {})
    return {
        "sent_pps": report.get("sent_pps"),
        "forwarded_pps": report.get("forwarded_pps"),
        "expected_pps": report.get("expected_forwarded_pps"),
        "cpu_per_m": cpu_per_million(report),
        "cpu_util": cpu_utilisation(report),
        "join_p50": join.get("p50"),
        "join_p99": join.get("p99"),
        "loss": report.get("loss_percent"),
        "lat_p50": latency.get("p50"),
        "lat_p99": latency.get("p99"),
        "rss_kib": rss_per_session(report),
        "connected": report.get("connected"),
        "participants": report.get("participants"),
        "client_cpu": report.get("client_cpu_utilisation"),
        "errors": report.get("errors", []),
    }


def fmt(value, digits=1, scale=1.0):
    if value is None:
        return "-"
    # + 0.0 turns the -0.0 of an empty Rust f64 sum (no media expected) into 0.
    return f"{value * scale + 0.0:,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def load(directory):
    runs = defaultdict(list)
    for path in sorted(Path(directory).glob("*.json")):
        try:
            report = json.loads(path.read_text())
            key = (report["scenario"]["name"], report["target"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        runs[key].append(metrics(report))
    return runs


def combine(samples):
    out = {}
    for field in samples[0]:
        if field == "errors":
            out[field] = sorted({e for s in samples for e in s[field]})
        else:
            out[field] = median([s[field] for s in samples])
    out["reps"] = len(samples)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    runs = load(sys.argv[1])
    if not runs:
        sys.exit(f"no reports in {sys.argv[1]}")
    scenarios = sorted(
        {s for s, _ in runs},
        key=lambda s: (SCENARIO_ORDER.index(s) if s in SCENARIO_ORDER else 99, s),
    )
    table = {key: combine(samples) for key, samples in runs.items()}

    print("## Per target (medians over repetitions)\n")
    print(
        "| scenario | target | reps | connected | sent pkt/s | forwarded pkt/s (expected) | target CPU "
        "| CPU-s per M forwarded | join p50 / p99 ms | loss % | latency p50 / p99 ms "
        "| RSS KiB per participant | load tool CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for target in TARGETS:
            m = table.get((scenario, target))
            if m is None:
                continue
            print(
                f"| {scenario} | {target} | {m['reps']} "
                f"| {fmt(m['connected'], 0)}/{fmt(m['participants'], 0)} "
                f"| {fmt(m['sent_pps'], 0)} "
                f"| {fmt(m['forwarded_pps'], 0)} ({fmt(m['expected_pps'], 0)}) "
                f"| {fmt(m['cpu_util'], 2)} "
                f"| {fmt(m['cpu_per_m'], 2)} "
                f"| {fmt(m['join_p50'], 0)} / {fmt(m['join_p99'], 0)} "
                f"| {fmt(m['loss'], 2)} "
                f"| {fmt(m['lat_p50'], 2, 1e-3)} / {fmt(m['lat_p99'], 2, 1e-3)} "
                f"| {fmt(m['rss_kib'], 0)} "
                f"| {fmt(m['client_cpu'], 2)} |"
            )

    print("\n## Ratios (below 1.00 = ours cheaper / faster)\n")
    print(
        "| scenario | CPU per M forwarded: ours / janus | ours / raw | join p99 ms: ours / janus "
        "(ratio) | loss %: ours / janus / raw |"
    )
    print("|---|---|---|---|---|")
    for scenario in scenarios:
        ours = table.get((scenario, "ours"), {})
        janus = table.get((scenario, "janus"), {})
        raw = table.get((scenario, "raw-udp"), {})
        print(
            f"| {scenario} "
            f"| {ratio(ours.get('cpu_per_m'), janus.get('cpu_per_m'))} "
            f"| {ratio(ours.get('cpu_per_m'), raw.get('cpu_per_m'))} "
            f"| {fmt(ours.get('join_p99'), 0)} / {fmt(janus.get('join_p99'), 0)} "
            f"({ratio(ours.get('join_p99'), janus.get('join_p99'))}) "
            f"| {fmt(ours.get('loss'), 2)} / {fmt(janus.get('loss'), 2)} / {fmt(raw.get('loss'), 2)} |"
        )

    errors = [(k, m["errors"]) for k, m in sorted(table.items()) if m["errors"]]
    if errors:
        print("\n## Errors reported by the load tool\n")
        for (scenario, target), messages in errors:
            for message in messages[:5]:
                print(f"- {scenario} / {target}: {message}")


if __name__ == "__main__":
    main()
