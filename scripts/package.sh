#!/usr/bin/env bash
# Builds what a release publishes, with SHA-256 sums:
#   - the manylinux2014 wheel: `pip install granary-cache` gives the
#     `granary` command on any x86_64 Linux with glibc 2.17 or later;
#   - static (musl) `granary` binaries for x86_64 and aarch64 Linux, in
#     tarballs with the README and the licences: they run with no shared
#     library at all;
#   - `granary` for macOS (x86_64 and aarch64) and `granary.exe` for
#     x86_64 Windows, each as a wheel (`pip install granary-cache` there
#     too) and in a tarball or a zip.
# zig (from PyPI) is the C compiler and linker of the Linux and macOS
# builds, through maturin's --zig and cargo-zigbuild: it brings glibc 2.17's
# symbols, musl and macOS's libSystem for every target, so the C in zstd and
# in the TLS crypto provider (aws-lc) builds without a cross toolchain. The
# two system frameworks the macOS TLS stack links (Security and
# CoreFoundation, for the keychain's roots) are described by the stubs in
# scripts/macos/sdk: the binary links them by their install names and
# macOS supplies them. Windows is linked by Debian's mingw-w64
# (`apt-get install gcc-mingw-w64-x86-64`).
#
# Settings (variables):
#   GRANARY_PACKAGE_OUT      where the artefacts go [default: dist]
#   GRANARY_PACKAGE_TARGETS  the target triples [default: all five above]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${GRANARY_PACKAGE_OUT:-dist}"
targets="${GRANARY_PACKAGE_TARGETS:-x86_64-unknown-linux-musl aarch64-unknown-linux-musl \
    x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-gnu}"

eval "$(bash scripts/zig.sh)"
# shellcheck disable=SC2086 # a list of targets
rustup target add $targets >/dev/null

rm -rf "$out"
mkdir -p "$out"
maturin build --release --locked --zig --compatibility manylinux2014 --out "$out"

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
# A folder named $2 holding $1, the README and the licences, packed as $3.
pack() {
    local binary="$1" name="$2" archive="$3" staging
    staging="$(mktemp -d)"
    mkdir "$staging/$name"
    cp "$binary" README.md LICENSE-MIT LICENSE-APACHE "$staging/$name/"
    case "$archive" in
    *.zip)
        archive="$(realpath -m "$archive")"
        (cd "$staging" && python3 -m zipfile -c "$archive" "$name")
        ;;
    *) tar -czf "$archive" -C "$staging" "$name" ;;
    esac
    rm -rf "$staging"
}

# The wheels are stripped by maturin (pyproject.toml); so are the archives'.
export CARGO_PROFILE_RELEASE_STRIP=symbols
for target in $targets; do
    built="$target_dir/$target/release/granary"
    case "$target" in
    *-linux-musl)
        cargo zigbuild --release --locked -p granary --target "$target"
        pack "$built" "granary-${version}-${target%%-unknown-linux-musl}-linux-static" \
            "$out/granary-${version}-${target%%-unknown-linux-musl}-linux-static.tar.gz"
        ;;
    *-apple-darwin)
        # One build gives the wheel and the tarball's binary.
        SDKROOT="$PWD/scripts/macos/sdk" maturin build --release --locked --zig --target "$target" --out "$out"
        pack "$built" "granary-${version}-${target%%-apple-darwin}-macos" \
            "$out/granary-${version}-${target%%-apple-darwin}-macos.tar.gz"
        ;;
    *-pc-windows-gnu)
        command -v "${target%%-pc-windows-gnu}-w64-mingw32-gcc" >/dev/null || {
            echo "package.sh: $target needs mingw-w64: apt-get install gcc-mingw-w64-x86-64" >&2
            exit 1
        }
        linker="CARGO_TARGET_$(echo "$target" | tr 'a-z-' 'A-Z_')_LINKER"
        env "$linker=${target%%-pc-windows-gnu}-w64-mingw32-gcc" \
            maturin build --release --locked --target "$target" --out "$out"
        pack "$built.exe" "granary-${version}-${target%%-pc-windows-gnu}-windows" \
            "$out/granary-${version}-${target%%-pc-windows-gnu}-windows.zip"
        ;;
    *)
        echo "package.sh: no packaging for $target" >&2
        exit 1
        ;;
    esac
done
(cd "$out" && sha256sum -- * >SHA256SUMS)
cat "$out/SHA256SUMS"
