#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests with the real go
# command, a real S3 server, bazel-remote and Bazel. Installs what is missing
# of them into .venv first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --show-output prints what passing tests measured (peak RSS of the 300 MB put).
set +e
cargo test --workspace --locked "$@" -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One line for all test binaries together (cargo prints one per binary).
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
