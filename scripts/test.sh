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
cargo test --workspace --locked
