#!/usr/bin/env bash
# Side by side, in one run: the same load (loadgen/, crate rtcd-loadgen: str0m clients) against our stack
# (rtcd + rtcd-proxy), Janus VideoRoom and the raw UDP relay ceiling, interleaved, then a
# Markdown table of the ratios (tests/bench/summarize.py). Ratios are the headline, not
# absolute times: this is a shared 2-vCPU VM (docs/benchmarks.md).
#
# Janus skips loopback interfaces when it gathers ICE candidates, and test traffic may only go
# to loopback or to addresses the run creates itself: so everything runs inside a network
# namespace made here, with a veth pair carrying private test addresses (both ends inside
# it), a default route into the pair (nothing is forwarded out: the namespace has no other
# link) and `lo` up. Every target advertises, and every client binds, the same address.
#
# The target under test runs on CPU $TARGET_CPU, the load tool on CPU $CLIENT_CPU.
# Needs root (ip netns). Environment (defaults in brackets):
#   SCENARIOS ["fanout one-to-one rooms storm"]   TARGETS ["ours janus raw"]   REPS [1]
#   DURATION [20] measurement seconds per media run   WARMUP [3]   STORM_DURATION [3]
#   OUT [target/bench/compare-<UTC time>]   BUILD [1] (0: use the binaries already built)
#   TARGET_CPU [0]   CLIENT_CPU [1]   JANUS_EVENT_LOOPS [1]   JANUS_DEBUG_LEVEL [3]
#   CLIENT_THREADS [1] the load tool's threads: give it as many CPUs in CLIENT_CPU (e.g.
#     CLIENT_CPU=1-3 CLIENT_THREADS=3) where a storm would otherwise measure the load tool
#   PROFILE [release] (debug: the dev build, for smoke runs only)
#   QUIET_WAIT [120] seconds to wait for compilers on the machine before each run
#   Repetitions alternate the order of TARGETS (reversed in every second one): use an even
#   REPS where a few percent matter.
# The `capacity` scenario (not in the default list; docs/benchmarks.md "Capacity") ramps rooms
# of 10 with one camera each until loss or p99 latency crosses its limit:
#   CAP_START_ROOMS [5]   CAP_STEP_ROOMS [5]   CAP_STEP_SECONDS [10] window per step
#   CAP_MAX [2000] participants   CAP_MAX_LOSS [1] percent   CAP_MAX_P99_MS [200]
#
#   sudo tests/bench/compare.sh                       # everything, ~15 min with the build
#   SCENARIOS=smoke TARGETS=janus BUILD=0 DURATION=5 sudo tests/bench/compare.sh
#   SCENARIOS=capacity sudo tests/bench/compare.sh    # capacity side by side
# The `capacity-dm` scenario ramps one-to-one calls instead (the `one-to-one` shape: two
# people, each publishing audio and video), the same limits, by calls:
#   CAP_DM_START_CALLS [25]   CAP_DM_STEP_CALLS [25]
#   SCENARIOS=capacity-dm TARGETS="ours ours-adaptive janus" sudo tests/bench/compare.sh
# The `simulcast` scenario (not in the default list; docs/benchmarks.md "Simulcast"): cameras
# publish three layers, subscribers take the low, middle or high one. Target `ours-adaptive`
# is ours with rtc.adaptive_video on (the estimator and allocator per subscriber: rtcd's
# default since 2026-12-04), reported apart from `ours` (run with it off, forwarding alone, as
# every earlier comparison with Janus), so the two in one run give their cost:
#   SCENARIOS=simulcast TARGETS="ours ours-adaptive janus raw" sudo tests/bench/compare.sh
# Target `raw-batched` is the raw relay with a batching server's system calls (`udp-relay
# --batched`: one recvmmsg, one sendmmsg per batch): the kernel's part of forwarding alone,
# shared the way rtcd shares it, for the question how much of one scenario's cost against
# another's no code above the socket can change (docs/benchmarks.md, issue 33):
#   SCENARIOS="one-to-one fanout16" TARGETS="ours-adaptive raw raw-batched" sudo tests/bench/compare.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

SCENARIOS=${SCENARIOS:-"fanout one-to-one rooms storm"}
TARGETS=${TARGETS:-"ours janus raw"}
REPS=${REPS:-1}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
STORM_DURATION=${STORM_DURATION:-3}
BUILD=${BUILD:-1}
TARGET_CPU=${TARGET_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
CLIENT_THREADS=${CLIENT_THREADS:-1}
JANUS_EVENT_LOOPS=${JANUS_EVENT_LOOPS:-1}
JANUS_DEBUG_LEVEL=${JANUS_DEBUG_LEVEL:-3}
PROFILE=${PROFILE:-release}
QUIET_WAIT=${QUIET_WAIT:-120}
CAP_START_ROOMS=${CAP_START_ROOMS:-5}
CAP_STEP_ROOMS=${CAP_STEP_ROOMS:-5}
CAP_STEP_SECONDS=${CAP_STEP_SECONDS:-10}
CAP_MAX=${CAP_MAX:-2000}
CAP_MAX_LOSS=${CAP_MAX_LOSS:-1}
CAP_MAX_P99_MS=${CAP_MAX_P99_MS:-200}
CAP_DM_START_CALLS=${CAP_DM_START_CALLS:-25}
CAP_DM_STEP_CALLS=${CAP_DM_STEP_CALLS:-25}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $PROFILE in
release) CARGO_PROFILE=release ;;
debug) CARGO_PROFILE=dev ;;
*) echo "compare.sh: PROFILE is release or debug" >&2 && exit 1 ;;
esac
BIN=$TARGET_DIR/$PROFILE
OUT=${OUT:-$TARGET_DIR/bench/compare-$(date -u +%Y%m%dT%H%M%SZ)}
NS=lgbench-$$
ADDR=10.213.0.1      # veth0: what every target advertises and every client binds
PEER_ADDR=10.213.0.2 # veth1: the other end, the default route's gateway
JANUS_WS=ws://127.0.0.1:8188

log() { echo "== $*" >&2; }
die() {
	echo "compare.sh: $*" >&2
	exit 1
}

[ "$(id -u)" = 0 ] || die "needs root (ip netns add, apt-get)"

# Janus is only installed (and configured, below) when a run needs it.
WANT_JANUS=0
case " $TARGETS " in *" janus "*) WANT_JANUS=1 ;; esac

log "system packages"
missing=()
[ "$WANT_JANUS" = 0 ] || command -v janus >/dev/null || missing+=(janus)
command -v ip >/dev/null || missing+=(iproute2)
command -v taskset >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }
fi

if [ "$BUILD" = 1 ]; then
	log "$PROFILE build"
	cargo build --profile "$CARGO_PROFILE" -p rtcd -p rtcd-proxy -p rtcd-loadgen \
		--bin rtcd --bin rtcd-proxy --bin loadgen --bin udp-relay
fi
for b in rtcd rtcd-proxy loadgen udp-relay; do
	[ -x "$BIN/$b" ] || die "$BIN/$b is missing (run with BUILD=1)"
done

mkdir -p "$OUT/reports" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

# Only what this script started is stopped, by PID; then the namespace goes.
STARTED=()
stop_pid() {
	local pid=$1 child
	# loadgen's own children (the rtcd and proxy it spawned) first: SIGTERM skips its cleanup.
	for child in $(pgrep -P "$pid" 2>/dev/null); do
		kill "$child" 2>/dev/null || true
	done
	kill "$pid" 2>/dev/null || return 0
	for _ in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$?
	for pid in "${STARTED[@]}"; do
		stop_pid "$pid"
	done
	ip netns del "$NS" 2>/dev/null || true
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "network namespace $NS ($ADDR <-> $PEER_ADDR)"
ip netns add "$NS"
in_ns() { ip netns exec "$NS" "$@"; }
in_ns ip link set lo up
in_ns ip link add veth0 type veth peer name veth1
in_ns ip addr add "$ADDR/24" dev veth0
in_ns ip addr add "$PEER_ADDR/24" dev veth1
in_ns ip link set veth0 up
in_ns ip link set veth1 up
in_ns ip route add default via "$PEER_ADDR" dev veth0

log "environment"
{
	date -u
	uname -a
	nproc
	grep -m1 'model name' /proc/cpuinfo || true
	cat /proc/loadavg
	janus --version 2>&1 | head -2 || true
	git -C "$ROOT" rev-parse HEAD 2>/dev/null || true
	echo "SCENARIOS=$SCENARIOS TARGETS=$TARGETS REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP"
	echo "TARGET_CPU=$TARGET_CPU CLIENT_CPU=$CLIENT_CPU CLIENT_THREADS=$CLIENT_THREADS JANUS_EVENT_LOOPS=$JANUS_EVENT_LOOPS PROFILE=$PROFILE"
	echo "CAP_START_ROOMS=$CAP_START_ROOMS CAP_STEP_ROOMS=$CAP_STEP_ROOMS CAP_STEP_SECONDS=$CAP_STEP_SECONDS CAP_MAX=$CAP_MAX CAP_MAX_LOSS=$CAP_MAX_LOSS CAP_MAX_P99_MS=$CAP_MAX_P99_MS CAP_DM_START_CALLS=$CAP_DM_START_CALLS CAP_DM_STEP_CALLS=$CAP_DM_STEP_CALLS"
} >"$OUT/environment.txt"

# Janus configuration: Debian's files copied, then the ones that matter rewritten
# (see the top of this file and docs/benchmarks.md): ICE only on veth0, no STUN, a fixed RTP
# port range, only the VideoRoom plugin and the WebSocket transport on 127.0.0.1:8188, fixed
# event loops, log level 3.
JANUS_CFG=$OUT/janus-cfg
configure_janus() {
	rm -rf "$JANUS_CFG"
	cp -r /etc/janus "$JANUS_CFG"
	folder() { sed -n "s/^[[:space:]]*$1 = \"\([^\"]*\)\".*/\1/p" /etc/janus/janus.jcfg | head -1; }
	PLUGINS=$(folder plugins_folder)
	TRANSPORTS=$(folder transports_folder)
	EVENTS=$(folder events_folder)
	LOGGERS=$(folder loggers_folder)
	[ -f "$PLUGINS/libjanus_videoroom.so" ] || die "no VideoRoom plugin in '$PLUGINS'"
	others() { (cd "$1" && ls -1 ./*.so 2>/dev/null | sed 's|^\./||' | grep -vx "$2" | paste -sd, -); }
	cat >"$JANUS_CFG/janus.jcfg" <<EOF
general: {
	configs_folder = "$JANUS_CFG"
	plugins_folder = "$PLUGINS"
	transports_folder = "$TRANSPORTS"
	events_folder = "$EVENTS"
	loggers_folder = "$LOGGERS"
	debug_level = $JANUS_DEBUG_LEVEL
	event_loops = $JANUS_EVENT_LOOPS
	session_timeout = 60
}
certificates: {
}
media: {
	ipv6 = false
	rtp_port_range = "20000-40000"
}
nat: {
	nice_debug = false
	full_trickle = false
	ice_enforce_list = "veth0"
	ignore_mdns = true
}
plugins: {
	disable = "$(others "$PLUGINS" libjanus_videoroom.so)"
}
transports: {
	disable = "$(others "$TRANSPORTS" libjanus_websockets.so)"
}
loggers: {
	disable = "$(others "$LOGGERS" none)"
}
events: {
	broadcast = false
	disable = "$(others "$EVENTS" none)"
}
EOF
cat >"$JANUS_CFG/janus.transport.websockets.jcfg" <<EOF
general: {
	json = "compact"
	ws = true
	ws_port = 8188
	ws_ip = "127.0.0.1"
	wss = false
}
admin: {
	admin_ws = false
	admin_wss = false
}
EOF
# No preconfigured rooms: the load tool creates its own, with the fairness settings.
printf 'general: {\n}\n' >"$JANUS_CFG/janus.plugin.videoroom.jcfg"
}
[ "$WANT_JANUS" = 0 ] || configure_janus

# The target of the current run (Janus, the relay), by PID.
TARGET_PID=
start_janus() {
	local log=$1
	# Not through in_ns: a backgrounded function would be a subshell, and $! its PID. `ip
	# netns exec` and taskset exec, so $! is Janus itself.
	ip netns exec "$NS" taskset -c "$TARGET_CPU" janus -C "$JANUS_CFG/janus.jcfg" -F "$JANUS_CFG" -N -o \
		-L "$log" >/dev/null 2>&1 &
	TARGET_PID=$!
	STARTED+=("$TARGET_PID")
	for _ in $(seq 100); do
		if in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/8188' 2>/dev/null; then
			return 0
		fi
		kill -0 "$TARGET_PID" 2>/dev/null || die "Janus exited at start (see $log)"
		sleep 0.1
	done
	die "Janus did not open 127.0.0.1:8188 in 10 s (see $log)"
}
RELAY=
start_relay() {
	local log=$1 mode=${2:-}
	ip netns exec "$NS" taskset -c "$TARGET_CPU" "$BIN/udp-relay" $mode "$ADDR:0" >"$log" 2>&1 &
	TARGET_PID=$!
	STARTED+=("$TARGET_PID")
	for _ in $(seq 100); do
		# The log may not exist yet: the backgrounded redirect races this loop.
		RELAY=$(sed -n 's/^udp-relay listening on //p' "$log" 2>/dev/null || true)
		[ -n "$RELAY" ] && return 0
		kill -0 "$TARGET_PID" 2>/dev/null || die "udp-relay exited at start (see $log)"
		sleep 0.1
	done
	die "udp-relay did not start (see $log)"
}
stop_target() {
	[ -n "$TARGET_PID" ] || return 0
	stop_pid "$TARGET_PID"
	local kept=()
	for pid in "${STARTED[@]}"; do
		[ "$pid" = "$TARGET_PID" ] || kept+=("$pid")
	done
	STARTED=("${kept[@]}")
	TARGET_PID=
}

# One run: a fresh target process (so its memory and rooms start clean), the load tool on the
# other CPU, the report as reports/<scenario>-<target>-<rep>.json.
FAILED=0
# A compiler or linker on the machine takes cores from the target and makes a run worthless
# (one such run had ours at 44 % loss): wait up to 2 minutes for it to finish, then run anyway
# but record the run in busy.txt so that nobody publishes it.
# shellcheck source=tests/bench/quiet.sh
. "$ROOT/tests/bench/quiet.sh"
wait_until_quiet() {
	local name=$1
	for _ in $(seq "$QUIET_WAIT"); do
		compiler_running || return 0
		sleep 1
	done
	echo "$name: a compiler was running ($(compiler_names))" >>"$OUT/busy.txt"
	log "WARNING: $name runs while a compiler is running (recorded in busy.txt)"
}

run_one() {
	local scenario=$1 target=$2 rep=$3
	wait_until_quiet "$scenario-$target-$rep"
	local name=$scenario-$target-$rep
	local preset=$scenario
	[ "$scenario" = capacity-dm ] && preset=one-to-one
	local args=(--scenario "$preset" --bind "$ADDR" --out "$OUT/reports" --name "$name" --quiet
		--warmup "$WARMUP" --threads "$CLIENT_THREADS")
	case $scenario in
	storm) args+=(--duration "$STORM_DURATION") ;;
	capacity)
		args+=(--duration "$CAP_STEP_SECONDS" --start-rooms "$CAP_START_ROOMS"
			--step-rooms "$CAP_STEP_ROOMS" --max-participants "$CAP_MAX"
			--max-loss "$CAP_MAX_LOSS" --max-p99-ms "$CAP_MAX_P99_MS")
		;;
	capacity-dm)
		args+=(--capacity --duration "$CAP_STEP_SECONDS" --start-rooms "$CAP_DM_START_CALLS"
			--step-rooms "$CAP_DM_STEP_CALLS" --max-participants "$CAP_MAX"
			--max-loss "$CAP_MAX_LOSS" --max-p99-ms "$CAP_MAX_P99_MS")
		;;
	*) args+=(--duration "$DURATION") ;;
	esac
	case $target in
	ours | ours-adaptive)
		args+=(--target ours --target-cpus "$TARGET_CPU"
			--rtcd-env "RTCD_RTC_ICE_ADDRESS_UDP=$ADDR"
			--rtcd-env 'RTCD_RTC_ICE_INTERFACES=["veth0"]'
			--rtcd-env RTCD_RTC_INCLUDE_LOOPBACK_CANDIDATES=false)
		if [ "$target" = ours-adaptive ]; then
			args+=(--rtcd-env RTCD_RTC_ADAPTIVE_VIDEO=true --label ours-adaptive)
		else
			args+=(--rtcd-env RTCD_RTC_ADAPTIVE_VIDEO=false)
		fi
		;;
	janus)
		start_janus "$OUT/logs/$name.janus.log"
		args+=(--target janus --janus-url "$JANUS_WS" --watch "janus=$TARGET_PID")
		;;
	raw)
		start_relay "$OUT/logs/$name.relay.log"
		args+=(--target raw --relay "$RELAY" --watch "udp-relay=$TARGET_PID")
		;;
	raw-batched)
		start_relay "$OUT/logs/$name.relay.log" --batched
		args+=(--target raw --relay "$RELAY" --watch "udp-relay=$TARGET_PID" --label raw-batched)
		;;
	*) die "unknown target $target (ours, ours-adaptive, janus, raw, raw-batched)" ;;
	esac
	log "$name"
	local rc=0
	ip netns exec "$NS" taskset -c "$CLIENT_CPU" "$BIN/loadgen" "${args[@]}" \
		>"$OUT/logs/$name.loadgen.log" 2>&1 &
	local pid=$!
	STARTED+=("$pid")
	wait "$pid" || rc=$?
	local kept=()
	for p in "${STARTED[@]}"; do
		[ "$p" = "$pid" ] || kept+=("$p")
	done
	STARTED=("${kept[@]}")
	stop_target
	if [ "$rc" != 0 ]; then
		FAILED=$((FAILED + 1))
		echo "   failed (rc=$rc): $(tail -3 "$OUT/logs/$name.loadgen.log" | tr '\n' ' ')" >&2
	fi
	sleep 2 # let TIME_WAIT sockets and the last packets drain between runs
}

# Every second repetition runs the targets in reverse order: the target measured second in a
# pair cost ~2.3 CPU-s per M forwarded more than the first, whichever it was (docs/benchmarks.md,
# 2026-12-04 evening), as much as the differences these runs are asked to show. With an even
# REPS the order cancels out of the medians.
for rep in $(seq "$REPS"); do
	order=$TARGETS
	if [ $((rep % 2)) = 0 ]; then
		order=$(echo "$TARGETS" | tr ' ' '\n' | tac | tr '\n' ' ')
	fi
	for scenario in $SCENARIOS; do
		for target in $order; do
			run_one "$scenario" "$target" "$rep"
		done
	done
done

log "summary ($OUT/summary.md)"
python3 "$ROOT/tests/bench/summarize.py" "$OUT/reports" | tee "$OUT/summary.md"
if [ -s "$OUT/busy.txt" ]; then
	log "WARNING: some runs shared the machine with a compiler; see $OUT/busy.txt"
fi
[ "$FAILED" = 0 ] || die "$FAILED run(s) failed; see $OUT/logs"
