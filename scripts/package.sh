#!/usr/bin/env bash
# Builds what a release publishes, with SHA-256 sums:
#   - the manylinux2014 wheel: `pip install granary-cache` gives the
#     `granary` command on any x86_64 Linux with glibc 2.17 or later;
#   - static (musl) `granary` binaries for x86_64 and aarch64 Linux, in
#     tarballs with the README and the licences: they run with no shared
#     library at all.
# zig (from PyPI) is the C compiler and linker of both, through maturin's
# --zig and cargo-zigbuild: it brings glibc 2.17's symbols and musl for every
# target, so the C in zstd and in the TLS crypto provider (aws-lc) builds
# without a cross toolchain on the machine.
#
# Settings (variables):
#   GRANARY_PACKAGE_OUT      where the artefacts go [default: dist]
#   GRANARY_PACKAGE_TARGETS  the musl targets [default: x86_64 and aarch64]
set -euo pipefail
cd "$(dirname "$0")/.."
MATURIN_VERSION="${GRANARY_MATURIN_VERSION:-1.16.0}"
ZIG_VERSION="${GRANARY_ZIG_VERSION:-0.17.0}"
ZIGBUILD_VERSION="${GRANARY_ZIGBUILD_VERSION:-0.24.1}"
out="${GRANARY_PACKAGE_OUT:-dist}"
targets="${GRANARY_PACKAGE_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl}"

venv=target/package-venv
if [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "maturin==${MATURIN_VERSION}" "ziglang==${ZIG_VERSION}" \
        "cargo-zigbuild==${ZIGBUILD_VERSION}"
fi
export PATH="$PWD/$venv/bin:$PATH"
# shellcheck disable=SC2086 # a list of targets
rustup target add $targets >/dev/null

rm -rf "$out"
mkdir -p "$out"
maturin build --release --locked --zig --compatibility manylinux2014 --out "$out"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
for target in $targets; do
    # The wheel is stripped by maturin (pyproject.toml); so is this.
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo zigbuild --release --locked -p granary --target "$target"
    name="granary-${version}-${target%%-unknown-linux-musl}-linux-static"
    staging="$(mktemp -d)"
    mkdir "$staging/$name"
    cp "$target_dir/$target/release/granary" README.md LICENSE-MIT LICENSE-APACHE "$staging/$name/"
    tar -czf "$out/$name.tar.gz" -C "$staging" "$name"
    rm -rf "$staging"
done
(cd "$out" && sha256sum -- * >SHA256SUMS)
cat "$out/SHA256SUMS"
