# shellcheck shell=bash
# Sourced by compare.sh: is a compiler or linker running on the machine? It takes cores from
# the target under test and makes a benchmark run worthless.
#
# One `pgrep -x NAME` per name, not one alternation: pgrep matches the kernel's process name,
# which is cut to 15 characters, and procps (3.3.x) refuses any pattern longer than that
# without -f: it warns and matches nothing, so `pgrep -x 'rustc|cc1|...'` never fired there.
# Every name below is at most 15 characters. Not `pgrep -f` either: a command line mentioning
# "cargo" (an editor, this script's own arguments) is not a compiler. Test: quiet-test.sh.
COMPILERS=(rustc cargo cc1 cc1plus collect2 ld ld.bfd ld.gold ld.lld rust-lld mold)

# The PIDs of running compilers and linkers, one a line.
compiler_pids() {
	local name
	for name in "${COMPILERS[@]}"; do
		pgrep -x "$name" 2>/dev/null || true
	done
}

# True while any compiler or linker runs.
compiler_running() { [ -n "$(compiler_pids)" ]; }

# "pid name" of up to three of them, on one line (for busy.txt).
compiler_names() {
	local pid
	for pid in $(compiler_pids | head -3); do
		printf '%s %s ' "$pid" "$(ps -o comm= -p "$pid" 2>/dev/null)"
	done
}
