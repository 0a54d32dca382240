#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests with the real go
# command, a real S3 server, bazel-remote and Bazel; then the Windows build
# under Wine: the store's, protocol's and engine's unit tests, and
# granary.exe end to end (crates/granary/tests/windows.rs, which the Linux
# suite runs). Installs what is missing of them first (scripts/setup.sh,
# scripts/windows/wine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
eval "$(bash scripts/windows/wine.sh)"
windows=(--locked --target x86_64-pc-windows-gnu)
cargo build "${windows[@]}" -p granary

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# --show-output prints what passing tests measured (peak RSS of the 300 MB put).
set +e
cargo test --workspace --locked "$@" -- --show-output 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
cargo test "${windows[@]}" --no-fail-fast -p granary-store -p granary-protocol -p granary-prog 2>&1 | tee -a "$log"
windows_status=${PIPESTATUS[0]}
[ "$status" != 0 ] || status=$windows_status
set -e
# One line for all test binaries together (cargo prints one per binary).
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "summary: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
