#!/usr/bin/env bash
# The full test suite, from a fresh machine: installs what it needs, then runs the same
# gates CI runs. README's second command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# No doc tests: the crates have none, and their empty runs would be the last lines printed.
cargo test --workspace --locked --lib --bins --tests 2>&1 | tee "$log"
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo "summary: ${passed} passed, ${failed} failed"
