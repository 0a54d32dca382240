#!/usr/bin/env bash
# Installs zig (from PyPI), cargo-zigbuild and maturin into target/package-venv
# if they are missing, and prints the PATH that puts them first. zig is the
# C compiler and linker of the Linux and macOS cross builds (package.sh and
# .ci/run's macOS lints). Usage: eval "$(bash scripts/zig.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN_VERSION="${GRANARY_MATURIN_VERSION:-1.16.0}"
ZIG_VERSION="${GRANARY_ZIG_VERSION:-0.17.0}"
ZIGBUILD_VERSION="${GRANARY_ZIGBUILD_VERSION:-0.24.1}"
venv="$PWD/target/package-venv"
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "maturin==${MATURIN_VERSION}" "ziglang==${ZIG_VERSION}" \
        "cargo-zigbuild==${ZIGBUILD_VERSION}" >&2
fi
echo "export PATH='$venv/bin':\"\$PATH\""
