#!/usr/bin/env bash
# Installs the other GOCACHEPROG helpers and cache servers that bench/peers.py
# compares granary with, pinned, into .venv/peers (ignored by git), from the
# Go module proxy. A peer that cannot be had is recorded with the reason in
# .venv/peers/status.tsv and skipped; the bench reports it.
#
#   bash scripts/peers.sh        # then: python3 bench/peers.py
#
# Each is built in its own module directory (`go mod download` then `go
# build`), as setup.sh builds bazel-remote: `go install module@version`
# first asks the proxy for the module's version list, which the proxy here
# refuses even where it serves the version. Dependencies are checked against
# each peer's own go.sum.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="$PWD/.venv/peers"
mkdir -p "$bin"

# module@version, the package to build in it, the binary's name.
PEERS="
github.com/bradfitz/go-tool-cache@v0.0.0-20260722201841-0bb331e19f64 ./cmd/go-cacher go-cacher
github.com/bradfitz/go-tool-cache@v0.0.0-20260722201841-0bb331e19f64 ./cmd/gocached gocached
github.com/tailscale/go-cache-plugin@v0.1.1 ./cmd/go-cache-plugin go-cache-plugin
github.com/vearutop/gocacheprog@v0.0.9 . gocacheprog
github.com/richardartoul/gobuildcache@v1.5.0 . richardartoul-gobuildcache
github.com/saracen/gobuildcache@v0.0.0-20250125174822-83bfeb837b93 . saracen-gobuildcache
github.com/jakebailey/gocachez@v0.0.0-20260701214731-c0431eb8adeb . gocachez
github.com/HackToHell/rbe_gocacheprog@v0.0.0 . rbe_gocacheprog
"

: >"$bin/status.tsv"
printf '%s\n' "$PEERS" | while read -r module package name; do
    [ -n "$module" ] || continue
    if [ -x "$bin/$name" ]; then
        printf '%s\t%s\tinstalled\t\n' "$name" "$module" >>"$bin/status.tsv"
        continue
    fi
    if ! answer="$(go mod download -json "$module" 2>&1)"; then
        why="$(printf '%s' "$answer" | grep -m1 -oE '403 Forbidden|404 Not Found|410 Gone')"
        printf '%s\t%s\tunavailable\tproxy: %s\n' "$name" "$module" "${why:-no answer}" >>"$bin/status.tsv"
        echo "peers: $name ($module) unavailable: ${why:-no answer}" >&2
        continue
    fi
    dir="$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    if log="$(cd "$dir" && go build -o "$bin/$name" "$package" 2>&1)"; then
        printf '%s\t%s\tinstalled\t\n' "$name" "$module" >>"$bin/status.tsv"
        echo "peers: $name installed" >&2
    else
        why="$(printf '%s' "$log" | tail -n 1 | head -c 160)"
        printf '%s\t%s\tbuild failed\t%s\n' "$name" "$module" "$why" >>"$bin/status.tsv"
        echo "peers: $name ($module) does not build: $why" >&2
    fi
done
