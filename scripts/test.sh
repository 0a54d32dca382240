#!/usr/bin/env bash
# The whole test suite: unit, property and end-to-end tests with the real go
# command. Installs Go into .venv first if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
# --show-output prints what passing tests measured (peak RSS of the 300 MB put).
cargo test --workspace --locked "$@" -- --show-output
