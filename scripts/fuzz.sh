#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets of fuzz/ (cargo-fuzz, libFuzzer) one after another and
# prints the executions of each and the total. docs/fuzzing.md says what each target covers.
#
#   scripts/fuzz.sh [-t SECONDS] [-n RUNS] [--merge] [TARGET...]
#
#   -t SECONDS  fuzz each target this long (default 60)
#   -n RUNS     or stop each target after this many executions (libFuzzer -runs)
#   --merge     no fuzzing: fold what earlier runs found (fuzz/work/) into the committed corpus
#               fuzz/corpus/<target>/, keeping only inputs that add coverage
#   TARGET...   the targets to run (default: all, `cargo fuzz list`)
#
# Needs the nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo +nightly install cargo-fuzz`). Environment:
#   FUZZ_TARGET_DIR  cargo's target dir for the fuzz build (default fuzz/target)
#   FUZZ_WORK        where new corpus entries and crash artifacts go (default fuzz/work);
#                    the committed corpus is only read
#   FUZZ_ARGS        extra libFuzzer flags
#
# Every run stops on a panic (a crash), an input taking over 10 s (-timeout: a hang), or more
# than 2 GB resident / a single allocation over 512 MB (-rss_limit_mb, -malloc_limit_mb: an
# unbounded allocation); the input is saved under $FUZZ_WORK/artifacts/<target>/ and the
# script exits non-zero. Reproduce with `cargo +nightly fuzz run <target> <file>`, then add
# the file to fuzz/corpus/<target>/ so the unit tests replay it from then on.
#
# The build uses no sanitizer (`-s none`): the crates forbid unsafe code, and the sanitizer
# would halve the executions; debug assertions are on (`-a`), so an overflow is a crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=60
runs=""
merge=false
targets=()
while [ $# -gt 0 ]; do
	case "$1" in
	-t) seconds="$2"; shift 2 ;;
	-n) runs="$2"; shift 2 ;;
	--merge) merge=true; shift ;;
	-h | --help) sed -n '2,27p' "$0"; exit 0 ;;
	-*) echo "scripts/fuzz.sh: unknown option $1" >&2; exit 64 ;;
	*) targets+=("$1"); shift ;;
	esac
done

target_dir="${FUZZ_TARGET_DIR:-target}"
work="${FUZZ_WORK:-work}"
build=(-s none -a --target-dir "$target_dir")
if [ ${#targets[@]} -eq 0 ]; then
	mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build "${build[@]}"

if $merge; then
	for t in "${targets[@]}"; do
		[ -d "$work/corpus/$t" ] || continue
		echo "== merge $t"
		cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "$work/corpus/$t" -- -merge=1 2>&1 | grep -E 'MERGE-OUTER: [0-9]+ new files' || true
	done
	exit 0
fi

limits=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)
if [ -n "$runs" ]; then
	limits+=(-runs="$runs")
else
	limits+=(-max_total_time="$seconds")
fi
total=0
status=0
summary=()
for t in "${targets[@]}"; do
	mkdir -p "$work/corpus/$t" "$work/artifacts/$t" "$work/logs"
	log="$work/logs/$t.log"
	echo "== $t"
	# The work corpus comes first: libFuzzer writes new inputs to the first directory only.
	# shellcheck disable=SC2086
	if cargo +nightly fuzz run "${build[@]}" "$t" "$work/corpus/$t" "corpus/$t" -- \
		"${limits[@]}" -artifact_prefix="$work/artifacts/$t/" ${FUZZ_ARGS:-} >"$log" 2>&1; then
		result=ok
	else
		result="FAILED (see fuzz/$log and fuzz/$work/artifacts/$t/)"
		status=1
	fi
	execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | tail -1 | awk '{print $2}')
	execs=${execs:-0}
	total=$((total + execs))
	summary+=("$(printf '%-16s %12s executions  %s' "$t" "$execs" "$result")")
	echo "${summary[-1]}"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
printf '%-16s %12s executions\n' total "$total"
exit $status
