#!/usr/bin/env bash
# Builds what a release publishes into dist/, with SHA-256 sums: the
# manylinux2014 wheel (`pip install granary-cache` gives the `granary`
# command on any x86_64 Linux with glibc 2.17 or later), built by maturin
# with zig as the C compiler and linker (both from PyPI), so that the C in
# zstd and the TLS crypto provider (aws-lc) links against glibc 2.17.
# Still to come (issue 22): static musl binaries for x86_64 and aarch64.
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN_VERSION="${GRANARY_MATURIN_VERSION:-1.16.0}"
ZIG_VERSION="${GRANARY_ZIG_VERSION:-0.17.0}"

venv=target/package-venv
if [ ! -x "$venv/bin/maturin" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "maturin==${MATURIN_VERSION}" "ziglang==${ZIG_VERSION}"
fi
rm -rf dist
PATH="$PWD/$venv/bin:$PATH" maturin build --release --locked --zig \
    --compatibility manylinux2014 --out dist
(cd dist && sha256sum -- * >SHA256SUMS)
cat dist/SHA256SUMS
