#!/usr/bin/env bash
# The churn soak (issue 16, "Hardening"), not part of the suite: one long-lived rtcd and proxy
# (real processes), and the load tool joining calls with media and leaving them, round after
# round, for MINUTES (default 60). After every round it samples both daemons: resident memory,
# open file descriptors and tokio tasks (rtcd_runtime_alive_tasks / proxy_runtime_alive_tasks),
# with the live session counts (which must be back to 0 between rounds). At the end it prints
# the series' start, end and peak and says whether they stayed flat.
#
# Everything runs on loopback inside a network namespace of its own (`unshare -n`), so it needs
# root. Environment: MINUTES [60], CALLS [3] calls of 3 participants per round (audio, video and
# screen), SECONDS_PER_ROUND [5] of media, PROFILE [debug], CARGO_TARGET_DIR, BUILD [1]
# (0: use the binaries already built), OUT [target/churn] (CSV and logs).
# Flat means: between the median of the first tenth of the rounds and of the last tenth, RSS
# grew by less than 20 % (allocator noise), descriptors by at most 8 and tasks by at most 8
# per daemon. Exit status: 0 flat, 1 grew (the CSV says where), 2 the run failed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
MINUTES=${MINUTES:-60}
CALLS=${CALLS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-5}
PROFILE=${PROFILE:-debug}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$ROOT/target/churn}

if [ "${CHURN_IN_NAMESPACE:-0}" != 1 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "churn.sh: needs root (it runs in a network namespace of its own)" >&2
		exit 2
	fi
	if [ "${BUILD:-1}" = 1 ]; then
		flag=()
		[ "$PROFILE" = release ] && flag=(--release)
		cargo build --locked "${flag[@]}" -p rtcd-e2e -p rtcd-loadgen --bin rtcd-under-test --bin proxy-under-test --bin loadgen
	fi
	export CHURN_IN_NAMESPACE=1 MINUTES CALLS SECONDS_PER_ROUND PROFILE OUT CARGO_TARGET_DIR="$TARGET_DIR"
	exec unshare -n sh -c 'ip link set lo up && exec "$0"' "$0"
fi

mkdir -p "$OUT"
work=$(mktemp -d)
bin="$work/bin"
mkdir -p "$bin"
# Copies: a rebuild during the soak must not swap a binary under it.
for b in rtcd-under-test proxy-under-test loadgen; do
	cp "$TARGET_DIR/$PROFILE/$b" "$bin/"
done
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# The e2e harness's secrets (tests/src/daemon.rs, tests/src/proxy.rs): the load tool mints
# tokens with HS key hs1.
ADMIN=test-admin-secret-0123456789abcdef
HS=e2e-test-secret-0123456789abcdef0123456789
KEY=churn-proxy-key-0123456789abcdef0123456789

env -i PATH="$PATH" \
	RTCD_API_HTTP_LISTEN_ADDRESS=127.0.0.1:18045 \
	RTCD_API_METRICS_LISTEN_ADDRESS=127.0.0.1:18046 \
	RTCD_API_SECURITY_ENABLE_ADMIN=true \
	RTCD_API_SECURITY_ADMIN_SECRET_KEY=$ADMIN \
	RTCD_API_SECURITY_BCRYPT_COST=4 \
	RTCD_GRPC_LISTEN_ADDRESS=127.0.0.1:18047 \
	RTCD_RTC_ICE_ADDRESS_UDP=127.0.0.1 \
	RTCD_RTC_ICE_PORT_UDP=18443 \
	RTCD_RTC_ICE_INTERFACES='["lo"]' \
	RTCD_RTC_INCLUDE_LOOPBACK_CANDIDATES=true \
	RTCD_RTC_MAX_SESSIONS_PER_CALL=1000 \
	RTCD_RTC_MAX_SESSIONS_PER_CLIENT=100000 \
	RTCD_STORE_DATA_SOURCE="$work/db" \
	RTCD_LOGGER_LEVEL=warn \
	"$bin/rtcd-under-test" serve 2>"$OUT/rtcd.log" &
rtcd=$!
pids+=("$rtcd")
for _ in $(seq 100); do
	curl -sf http://127.0.0.1:18046/readyz >/dev/null 2>&1 && break
	sleep 0.2
done
curl -sf -u ":$ADMIN" -d "{\"clientID\":\"churn\",\"authKey\":\"$KEY\"}" http://127.0.0.1:18045/register >/dev/null

env -i PATH="$PATH" \
	PROXY_SERVER_LISTEN_ADDRESS=127.0.0.1:18080 \
	PROXY_SERVER_METRICS_LISTEN_ADDRESS=127.0.0.1:18081 \
	PROXY_SERVER_MAX_HTTP_CONNECTIONS_PER_IP=4096 \
	PROXY_AUTH_ISSUERS=e2e-platform \
	PROXY_AUTH_AUDIENCES=rtcd-proxy \
	PROXY_AUTH_KEYS="[{\"kid\":\"hs1\",\"algorithms\":[\"HS256\"],\"secret\":\"$HS\"}]" \
	PROXY_LIMITS_CONNECTION_BURST=100000 \
	PROXY_LIMITS_CONNECTIONS_PER_MINUTE=1000000 \
	PROXY_LIMITS_MESSAGE_BURST=100000 \
	PROXY_LIMITS_MESSAGES_PER_SECOND=100000 \
	PROXY_LIMITS_MAX_SESSIONS_PER_USER=0 \
	PROXY_RTCD_URL=http://127.0.0.1:18047 \
	PROXY_RTCD_CLIENT_ID=churn \
	PROXY_RTCD_AUTH_KEY=$KEY \
	PROXY_RTCD_API_PORT=18045 \
	PROXY_LOGGER_LEVEL=warn \
	"$bin/proxy-under-test" serve 2>"$OUT/proxy.log" &
proxy=$!
pids+=("$proxy")
for _ in $(seq 100); do
	curl -sf http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break
	sleep 0.2
done

metric() { # URL NAME: the sum of NAME's samples
	curl -sf "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }

csv="$OUT/churn.csv"
echo "round,seconds,loadgen_ok,rtcd_rss_kib,rtcd_fds,rtcd_tasks,rtcd_sessions,proxy_rss_kib,proxy_fds,proxy_tasks,proxy_sessions" >"$csv"
start=$(date +%s)
round=0
failed=0
while [ $(($(date +%s) - start)) -lt $((MINUTES * 60)) ]; do
	round=$((round + 1))
	ok=1
	if ! "$bin/loadgen" --proxy-url ws://127.0.0.1:18080/ws --scenario smoke --calls "$CALLS" \
		--duration "$SECONDS_PER_ROUND" --quiet --out "$work/reports" >>"$OUT/loadgen.log" 2>&1; then
		ok=0
		failed=$((failed + 1))
	fi
	sleep 2 # sessions end asynchronously after the clients leave
	echo "$round,$(($(date +%s) - start)),$ok,$(rss $rtcd),$(fds $rtcd),$(metric http://127.0.0.1:18046 rtcd_runtime_alive_tasks),$(metric http://127.0.0.1:18046 rtcd_sfu_sessions),$(rss $proxy),$(fds $proxy),$(metric http://127.0.0.1:18081 proxy_runtime_alive_tasks),$(metric http://127.0.0.1:18081 proxy_sessions)" >>"$csv"
done

python3 - "$csv" "$failed" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
failed = int(sys.argv[2])
if len(rows) < 10:
    print(f"only {len(rows)} rounds: too few to judge"); sys.exit(2)
tenth = max(1, len(rows) // 10)
def series(col): return [float(r[col]) for r in rows]
verdict = 0
print(f"{len(rows)} rounds in {rows[-1]['seconds']} s, {failed} load-tool rounds failed")
for daemon in ("rtcd", "proxy"):
    for col, limit, kind in (("rss_kib", 0.20, "ratio"), ("fds", 8, "abs"), ("tasks", 8, "abs"), ("sessions", 0, "abs")):
        s = series(f"{daemon}_{col}")
        first, last = statistics.median(s[:tenth]), statistics.median(s[-tenth:])
        grew = (last - first) / first if kind == "ratio" and first else last - first
        flat = grew <= limit
        verdict |= 0 if flat else 1
        print(f"{daemon:5} {col:8} first {first:>10.0f} last {last:>10.0f} peak {max(s):>10.0f}  {'flat' if flat else 'GREW'}")
if failed > len(rows) // 20:
    print("more than 5 % of rounds failed"); verdict = 2
sys.exit(verdict)
EOF
