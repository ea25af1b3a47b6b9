#!/bin/bash
# Where rtcd's CPU goes under load: runs one loadgen scenario against our stack (release build,
# rtcd + proxy pinned to CPU0, the load tool to CPU1), samples CPU0 with `perf record` (software
# clock: this VM has no hardware counters) during the measurement window, and prints rtcd's
# top symbols and a breakdown by area (kernel UDP, SRTP crypto, webrtc-rs interceptors, ...).
#
# Usage: tests/bench/profile.sh [scenario args...]   (default: --scenario one-to-one)
# Needs: perf (Debian linux-perf), root (perf_event_paranoid), a release build:
#   cargo build --release -p rtcd -p rtcd-proxy -p rtcd-loadgen --bin rtcd --bin rtcd-proxy --bin loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${CARGO_TARGET_DIR:-$PWD/target}/release
ARGS=("$@")
[ ${#ARGS[@]} -eq 0 ] && ARGS=(--scenario one-to-one)
OUT=$(mktemp -d)
command -v perf >/dev/null || { echo "profile.sh: install linux-perf" >&2; exit 1; }
taskset -c 1 "$R/loadgen" --target ours --rtcd-bin "$R/rtcd" --proxy-bin "$R/rtcd-proxy" \
	--target-cpus 0 --duration 20 --quiet --out "$OUT" --name profiled "${ARGS[@]}" > "$OUT/loadgen.out" 2>&1 &
LG=$!
# Joins ramp at 20/s, then 3 s warm-up: sample from 12 s to 22 s.
sleep 12
# The newest: an rtcd left running from another run must not be the one sampled.
PID=$(pgrep -n -f "^$R/rtcd serve")
perf record -q -e cpu-clock -F 999 -C 0 -o "$OUT/perf.data" -- sleep 10 2>/dev/null
wait $LG
grep -E "forwarded|rtcd" "$OUT/loadgen.out" || true
perf report -i "$OUT/perf.data" --pid "$PID" --no-children --sort symbol -g none --stdio 2>/dev/null \
	| grep -E "^ +[0-9.]+%" > "$OUT/symbols.txt"
python3 - "$OUT/symbols.txt" <<'PY'
import re, sys
areas = [
    ("kernel: UDP send/receive, syscalls, scheduling", r"\[k\]"),
    ("SRTP crypto (aes, ghash/polyval, sha1/hmac, ring, webrtc_srtp / rtc_srtp)", r"aes|polyval|ghash|sha1|hmac|webrtc_srtp|rtc_srtp|ring::|Aes|ctr::"),
    ("webrtc-rs interceptors (NACK buffer, reports, stats, TWCC)", r"interceptor::"),
    ("webrtc-rs transport (ICE, DTLS/SRTP mux, track read/write; 0.17 and rtc 0.21)", r"webrtc_ice|webrtc_util|webrtc::|webrtc_dtls|webrtc_mdns|rtc_ice|rtc_dtls|rtc_stun|rtc::|rtp::|rtcp::"),
    ("tokio (channels, semaphores, timers, scheduler)", r"tokio::"),
    ("allocation (malloc/free/memcpy)", r"malloc|free|memcpy|memmove|memset|realloc|_int_"),
    ("rtcd's own code", r"rtcd::"),
]
total = 0.0; sums = {a: 0.0 for a, _ in areas}; other = 0.0; rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s*([0-9.]+)%\s+(.*)", line)
    if not m: continue
    pct = float(m.group(1)); sym = m.group(2).strip(); total += pct; rows.append((pct, sym))
    for a, pat in areas:
        if re.search(pat, sym):
            sums[a] += pct; break
    else:
        other += pct
print(f"\nrtcd samples: {total:.1f}% of CPU0 while sampled\n\n| area | share of rtcd's CPU |\n|---|---|")
for a, _ in areas:
    print(f"| {a} | {100*sums[a]/max(total,1e-9):.0f} % |")
print(f"| other | {100*other/max(total,1e-9):.0f} % |\n\ntop symbols (share of rtcd's CPU):")
for pct, sym in rows[:25]:
    name = re.sub(r"\s+-\s+-\s*$", "", sym)[:140]
    print(f"  {100*pct/max(total,1e-9):5.1f} %  {name}")
PY
echo "raw data: $OUT"
