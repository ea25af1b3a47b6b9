#!/usr/bin/env bash
# The calls soak (issue 10), not part of the suite: 6 browsers (4 Chromium, 2 Firefox by
# default) in one call through rtcd-dev for 10 minutes, a change every 5 s (leave and rejoin,
# mute, camera off / on, screen share), then every media gap over 1 s per participant and
# track, and the time to first remote frame (tests/src/bin/soak.rs).
#
# The soak makes its own network namespace (veth pair with private test addresses, both ends
# inside it; nothing leaves it), so it needs root. Arguments go to the soak binary, e.g.
#   sudo tests/bench/soak.sh --minutes 2 --chromium 2 --firefox 2 --change-every 3
# Environment: BUILD [1] (0: use the binary already built), CARGO_TARGET_DIR.
# Exit status: 0 no gap, 1 gaps (listed), 2 the run failed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$(id -u)" != 0 ]; then
	echo "soak.sh: needs root (it creates a network namespace)" >&2
	exit 2
fi
for bin in /usr/bin/chromium /usr/bin/chromedriver /usr/bin/firefox-esr; do
	if [ ! -x "$bin" ]; then
		echo "soak.sh: $bin missing: apt-get install -y chromium chromium-driver firefox-esr" >&2
		exit 2
	fi
done
if [ "${BUILD:-1}" = 1 ]; then
	cargo build --locked -p rtcd-e2e --bin soak
fi
exec "$TARGET_DIR/debug/soak" "$@"
