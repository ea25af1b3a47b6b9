#!/usr/bin/env python3
"""Summarises the load tool's JSON reports of a side-by-side run (tests/bench/compare.sh) as
Markdown: one row per scenario and target (medians over repetitions), then the ratios that are
the headline (ours vs Janus, ours vs the raw UDP ceiling). "sent" is what the load tool's
publishers managed to send: below the scenario's rate, the client (not the target) was the
limit of that run. Capacity runs (the load tool's capacity mode) get a table of their own:
participants at the limit, what limited them, and the ratios ours / Janus and ours / raw.
Standard library only.

Usage: summarize.py DIR   (reads DIR/*.json, writes Markdown to stdout)
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TARGETS = ["ours", "ours-adaptive", "janus", "raw-udp", "raw-batched"]
SCENARIO_ORDER = ["fanout", "one-to-one", "rooms", "storm", "fanout16", "simulcast", "smoke"]
TARGET_LABELS = {"ours": "ours", "ours-adaptive": "ours, adaptive video", "janus": "Janus", "raw-udp": "raw UDP",
                 "raw-batched": "raw UDP, batched"}
LAYERS = ["q", "h", "f"]


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
        # Simulcast runs: forwarded and expected pkt/s per layer (q, h, f), as tuples so that
        # combine() takes the medians per layer.
        "layers_fwd": tuple((report.get("layers") or {}).get("forwarded_pps", []) or []) or None,
        "layers_exp": tuple((report.get("layers") or {}).get("expected_pps", []) or []) or None,
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


def capacity_metrics(report):
    """The headline of one capacity run: the last passing step (the capacity) and the step
    that stopped the ramp."""
    capacity = report["capacity"]
    steps = report.get("steps", [])
    passed = [s for s in steps if s.get("verdict") == "pass"]
    last = passed[-1] if passed else {}
    stopped = steps[-1] if steps and steps[-1].get("verdict") != "pass" else {}
    return {
        "participants": capacity.get("participants"),
        "limit": capacity.get("limit"),
        "detail": capacity.get("detail", ""),
        "cores": capacity.get("cores"),
        "rss_mib": capacity.get("rss_mib"),
        "forwarded_pps": last.get("forwarded_pps"),
        "lat_p99": last.get("latency_p99_ms"),
        "client_cores": last.get("client_cores"),
        "stop_loss": stopped.get("loss_percent"),
        "stop_p99": stopped.get("latency_p99_ms"),
        "stop_cores": stopped.get("target_cores"),
        "stop_client": stopped.get("client_cores"),
        "steps": len(steps),
        "errors": report.get("errors", []),
    }


def load(directory):
    """(runs, capacity runs), each {(scenario, target): [metrics per repetition]}."""
    runs = defaultdict(list)
    capacity = defaultdict(list)
    for path in sorted(Path(directory).glob("*.json")):
        try:
            report = json.loads(path.read_text())
            key = (report["scenario"]["name"], report["target"])
            if "capacity" in report:
                capacity[key].append(capacity_metrics(report))
            else:
                runs[key].append(metrics(report))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
    return runs, capacity


def capacity_table(capacity):
    """The capacity section: per target, medians over repetitions (the limits of every
    repetition are listed), then the ratios. A capacity limited by the client or by the
    maximum is a lower bound, shown with >=, and so is a ratio involving one."""
    LOWER = {"client-bound", "max"}
    print(
        "## Capacity (participants; `capacity`: rooms of 10, one camera each; `one-to-one`: "
        "calls of two, each publishing audio and video)\n"
    )
    print(
        "| scenario | target | reps | participants at limit | limited by | target cores at limit "
        "| target RSS MiB at limit | forwarded pkt/s at limit | latency p99 ms at limit "
        "| failing step: loss % / p99 ms / target cores / load tool cores | load tool cores at limit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    table = {}
    for (scenario, target), samples in sorted(
        capacity.items(), key=lambda kv: (kv[0][0], TARGETS.index(kv[0][1]) if kv[0][1] in TARGETS else 9)
    ):
        limits = sorted({s["limit"] for s in samples if s["limit"]})
        m = {
            field: median([s[field] for s in samples])
            for field in samples[0]
            if field not in ("limit", "detail", "errors")
        }
        m["lower_bound"] = any(limit in LOWER for limit in limits)
        table[(scenario, target)] = m
        spread = ""
        if len(samples) > 1:
            values = [s["participants"] for s in samples if s["participants"] is not None]
            if values:
                spread = f" [{min(values)}-{max(values)}]"
        details = "; ".join(sorted({s["detail"] for s in samples if s["detail"]}))
        print(
            f"| {scenario} | {TARGET_LABELS.get(target, target)} | {len(samples)} "
            f"| {'>= ' if m['lower_bound'] else ''}{fmt(m['participants'], 0)}{spread} "
            f"| {', '.join(limits)}{f' ({details})' if details else ''} "
            f"| {fmt(m['cores'], 2)} | {fmt(m['rss_mib'], 0)} | {fmt(m['forwarded_pps'], 0)} "
            f"| {fmt(m['lat_p99'], 1)} "
            f"| {fmt(m['stop_loss'], 2)} / {fmt(m['stop_p99'], 1)} / {fmt(m['stop_cores'], 2)} "
            f"/ {fmt(m['stop_client'], 2)} "
            f"| {fmt(m['client_cores'], 2)} |"
        )

    print("\n| scenario | capacity: ours / Janus | ours with adaptive video / Janus | ours / raw |")
    print("|---|---|---|---|")

    def cap_ratio(a, b):
        if a is None or b is None:
            return "-"
        text = ratio(a.get("participants"), b.get("participants"))
        # A lower bound in the numerator makes the ratio a lower bound; in the denominator, an
        # upper one; both: unknown.
        if a["lower_bound"] and b["lower_bound"]:
            return f"{text} (both lower bounds)"
        if a["lower_bound"]:
            return f">= {text}"
        if b["lower_bound"]:
            return f"<= {text}"
        return text

    for scenario in sorted({s for s, _ in table}):
        ours = table.get((scenario, "ours"))
        adaptive = table.get((scenario, "ours-adaptive"))
        janus = table.get((scenario, "janus"))
        print(
            f"| {scenario} | {cap_ratio(ours, janus)} | {cap_ratio(adaptive, janus)} "
            f"| {cap_ratio(ours, table.get((scenario, 'raw-udp')))} |"
        )


def combine(samples):
    out = {}
    for field in samples[0]:
        if field == "errors":
            out[field] = sorted({e for s in samples for e in s[field]})
        elif field in ("layers_fwd", "layers_exp"):
            rows = [s[field] for s in samples if s[field]]
            out[field] = tuple(median(list(col)) for col in zip(*rows)) if rows else None
        else:
            out[field] = median([s[field] for s in samples])
    out["reps"] = len(samples)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    runs, capacity = load(sys.argv[1])
    if not runs and not capacity:
        sys.exit(f"no reports in {sys.argv[1]}")
    if capacity:
        capacity_table(capacity)
        errors = [
            (key, sorted({e for s in samples for e in s["errors"]}))
            for key, samples in sorted(capacity.items())
        ]
        errors = [(k, e) for k, e in errors if e]
        if errors:
            print("\n## Errors reported by the load tool (capacity)\n")
            for (scenario, target), messages in errors:
                for message in messages[:5]:
                    print(f"- {scenario} / {target}: {message}")
        if not runs:
            return
        print()
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
        "| scenario | CPU per M forwarded: ours / janus | ours / raw | ours / raw batched "
        "| join p99 ms: ours / janus (ratio) | loss %: ours / janus / raw |"
    )
    print("|---|---|---|---|---|---|")
    rows = [(s, "ours") for s in scenarios] + [
        (s, "ours-adaptive") for s in scenarios if (s, "ours-adaptive") in table
    ]
    for scenario, mine in rows:
        ours = table.get((scenario, mine), {})
        janus = table.get((scenario, "janus"), {})
        raw = table.get((scenario, "raw-udp"), {})
        label = scenario if mine == "ours" else f"{scenario} (ours, adaptive video)"
        print(
            f"| {label} "
            f"| {ratio(ours.get('cpu_per_m'), janus.get('cpu_per_m'))} "
            f"| {ratio(ours.get('cpu_per_m'), raw.get('cpu_per_m'))} "
            f"| {ratio(ours.get('cpu_per_m'), table.get((scenario, 'raw-batched'), {}).get('cpu_per_m'))} "
            f"| {fmt(ours.get('join_p99'), 0)} / {fmt(janus.get('join_p99'), 0)} "
            f"({ratio(ours.get('join_p99'), janus.get('join_p99'))}) "
            f"| {fmt(ours.get('loss'), 2)} / {fmt(janus.get('loss'), 2)} / {fmt(raw.get('loss'), 2)} |"
        )

    # Issue 33's ratio: what a forwarded packet costs in two-person calls against fan-out 16,
    # per target (repetitions paired in order; the median of the per-repetition ratios).
    pairs = [
        (target, runs[("one-to-one", target)], runs[("fanout16", target)])
        for target in TARGETS
        if ("one-to-one", target) in runs and ("fanout16", target) in runs
    ]
    if pairs:
        print("\n## One-to-one per packet / fan-out 16's\n")
        print("| target | per repetition | median |")
        print("|---|---|---|")
        for target, one, fan in pairs:
            per_rep = [
                a["cpu_per_m"] / b["cpu_per_m"]
                for a, b in zip(one, fan)
                if a["cpu_per_m"] is not None and b["cpu_per_m"]
            ]
            print(
                f"| {TARGET_LABELS.get(target, target)} "
                f"| {', '.join(f'{r:.2f}' for r in per_rep) or '-'} "
                f"| {fmt(median(per_rep), 2)} |"
            )

    layered = [(key, m) for key, m in sorted(table.items()) if m.get("layers_fwd")]
    if layered:
        print("\n## Simulcast: forwarded pkt/s per layer (expected)\n")
        print("| scenario | target | " + " | ".join(f"layer {l}" for l in LAYERS) + " |")
        print("|---|---|" + "---|" * len(LAYERS))
        for (scenario, target), m in layered:
            cells = [
                f"{fmt(f, 0)} ({fmt(e, 0)})"
                for f, e in zip(m["layers_fwd"], m["layers_exp"] or [None] * len(LAYERS))
            ]
            print(f"| {scenario} | {target} | " + " | ".join(cells) + " |")

    # Adaptive video's cost: the same scenario with rtc.adaptive_video on and off, as target
    # CPU per participant-hour (every participant of these scenarios subscribes) and per
    # million forwarded packets.
    pairs = [
        (scenario, table[(scenario, "ours")], table[(scenario, "ours-adaptive")])
        for scenario in scenarios
        if (scenario, "ours") in table and (scenario, "ours-adaptive") in table
    ]
    if pairs:
        print("\n## Adaptive video on - off (ours)\n")
        print(
            "| scenario | target CPU off / on (cores) | CPU-s per subscriber-hour off / on / difference "
            "| CPU-s per M forwarded off / on / difference | at equal forwarding: CPU-s per subscriber-hour |"
        )
        print("|---|---|---|---|---|")
        for scenario, off, on in pairs:
            def per_hour(m):
                if m["cpu_util"] is None or not m["participants"]:
                    return None
                return m["cpu_util"] * 3600 / m["participants"]

            def diff(a, b):
                return None if a is None or b is None else b - a

            h_off, h_on = per_hour(off), per_hour(on)
            # The estimator lowers layers, so "on" forwards fewer packets: what "on" cost
            # beyond forwarding its own packets at "off"'s cost per packet.
            equal = None
            if None not in (on["cpu_util"], on["forwarded_pps"], off["cpu_per_m"]) and on["participants"]:
                extra = on["cpu_util"] - on["forwarded_pps"] * off["cpu_per_m"] / 1e6
                equal = extra * 3600 / on["participants"]
            print(
                f"| {scenario} | {fmt(off['cpu_util'], 3)} / {fmt(on['cpu_util'], 3)} "
                f"| {fmt(h_off, 1)} / {fmt(h_on, 1)} / {fmt(diff(h_off, h_on), 1)} "
                f"| {fmt(off['cpu_per_m'], 2)} / {fmt(on['cpu_per_m'], 2)} "
                f"/ {fmt(diff(off['cpu_per_m'], on['cpu_per_m']), 2)} "
                f"| {fmt(equal, 1)} |"
            )

    errors = [(k, m["errors"]) for k, m in sorted(table.items()) if m["errors"]]
    if errors:
        print("\n## Errors reported by the load tool\n")
        for (scenario, target), messages in errors:
            for message in messages[:5]:
                print(f"- {scenario} / {target}: {message}")


if __name__ == "__main__":
    main()
