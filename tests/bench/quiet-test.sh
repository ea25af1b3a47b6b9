#!/usr/bin/env bash
# Checks compare.sh's "wait for compilers" detection (issue 16 #14): a process named `rustc`
# must be seen even with a procps whose pgrep matches nothing for a name pattern longer than
# the 15 characters the kernel keeps (procps-ng 3.3.x warns and returns no match; newer
# versions happen to match). The pgrep here emulates that: so a check that hands pgrep one
# long alternation fails this test on any machine. Run: tests/bench/quiet-test.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)
FAKE=
cleanup() {
	[ -n "$FAKE" ] && kill "$FAKE" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
REAL_PGREP=$(command -v pgrep)
mkdir "$TMP/bin"
cat >"$TMP/bin/pgrep" <<SHIM
#!/usr/bin/env bash
# procps 3.3 semantics: without -f, a pattern over 15 characters matches nothing.
full=0
for a in "\$@"; do case \$a in -f | -*f*) [ "\${a#--}" = "\$a" ] && full=1 ;; esac; done
last=\${!#}
if [ "\$full" = 0 ] && [ \${#last} -gt 15 ]; then
	echo "pgrep: pattern that searches for process name longer than 15 characters will result in zero matches" >&2
	exit 1
fi
exec "$REAL_PGREP" "\$@"
SHIM
chmod +x "$TMP/bin/pgrep"
export PATH="$TMP/bin:$PATH"
# shellcheck source=tests/bench/quiet.sh
. "$ROOT/tests/bench/quiet.sh"

cp "$(command -v sleep)" "$TMP/rustc"
"$TMP/rustc" 30 &
FAKE=$!
sleep 0.2
if ! compiler_pids | grep -qx "$FAKE"; then
	echo "FAIL: a running rustc (pid $FAKE) is not detected" >&2
	exit 1
fi
compiler_running || { echo "FAIL: compiler_running says quiet while rustc runs" >&2; exit 1; }
compiler_names | grep -qw rustc || { echo "FAIL: compiler_names lacks rustc" >&2; exit 1; }
kill "$FAKE"
wait "$FAKE" 2>/dev/null || true
if compiler_pids | grep -qx "$FAKE"; then
	echo "FAIL: pid $FAKE still reported after it ended" >&2
	exit 1
fi
FAKE=
echo "ok: compiler detection sees rustc and forgets it when it ends"
