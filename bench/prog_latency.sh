#!/usr/bin/env bash
# Round-trip latency of `granary prog` for get hits (the cost a warm build pays
# about a thousand times), next to the floor that the machine sets: a pipe
# ping-pong between two processes (`perf bench sched pipe`, if perf is there).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p granary --example prog_latency
for concurrent in 1 2; do
    for run in 1 2 3 4 5; do
        target/release/examples/prog_latency 20000 "$concurrent"
    done | sort -n | sed -n 3p | sed 's/^/median of 5: /'
done
if command -v perf >/dev/null && perf bench sched pipe -l 1 >/dev/null 2>&1; then
    echo "pipe ping-pong floor: $(perf bench sched pipe -l 20000 | awk '/usecs\/op/ {print $1}') us per round trip"
fi
