#!/usr/bin/env bash
# Prepares Wine to run granary's Windows build on this Linux machine, for
# the tests: installs Debian's wine64 and mingw-w64 if they are missing,
# builds the ProcessPrng shim (processprng.c; test harness only) into a
# Wine prefix of the project's own, and prints the variables that select
# it. Usage: eval "$(bash scripts/windows/wine.sh)"
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
cat <<VARS
export WINEPREFIX='$prefix' WINEDEBUG=-all
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=wine
VARS
