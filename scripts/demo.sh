#!/usr/bin/env bash
# granary's main job in one command: build granary, install Go if it is
# missing, then build and test a Go module through granary twice, first with
# an empty cache and then warm, and show the cache statistics; then what
# granary is for: two fresh CI runners sharing a bucket (SeaweedFS on
# loopback), the second compiling nothing, and its job summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bash scripts/setup.sh --demo
export PATH="$PWD/.venv/bin:$PATH"
cargo build --release --locked --quiet -p granary
granary="$PWD/target/release/granary"

work="$PWD/target/demo"
rm -rf "$work"
mkdir -p "$work"
# A cache of its own, so that the first build is really cold; everything
# else about the go command stays as the user has it.
export GOCACHE="$work/cache" GOTOOLCHAIN=local GOPROXY=off
export GOCACHEPROG="$granary prog --verbose --stats-file $work/stats.json"
echo "GOCACHEPROG=$GOCACHEPROG"
echo "GOCACHE=$GOCACHE"
cd examples/go-demo

for run in cold warm; do
    echo
    echo "== $run: go build and go test through granary"
    rm -f "$work/go-demo"
    start=$(date +%s.%N)
    go build -o "$work/go-demo" .
    go test ./...
    end=$(date +%s.%N)
    python3 -c "print('$run run took %.2f s' % ($end - $start))"
done

echo
echo "== the demo program, built from the cache"
echo "the go command asks granary, granary answers from the cache" | "$work/go-demo"
echo
echo "== granary's statistics of the last go command ($work/stats.json)"
cat "$work/stats.json"
echo
echo
echo "== sharing: two CI runners with empty local caches and one bucket"
python3 "$root/scripts/demo_share.py" "$granary" "$work/share"
echo
"$granary" --version
