#!/usr/bin/env python3
"""How long `granary serve` takes to start on a directory of 1,000,000
blobs: the index is rebuilt from file names and sizes, without reading
contents (what a restart after a crash costs).

    python3 bench/serve_rebuild.py               # 1,000,000 blobs, 3 restarts
    python3 bench/serve_rebuild.py --blobs 200000

The blobs are written directly in the server's layout (small files, as
Go's action results mostly are); the page cache is warm for the first
restart as for the others, so this measures granary, not the disk.
Results go to bench/results/serve-rebuild.{md,json}.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def start_and_stop(granary, work):
    started = time.perf_counter()
    proc, _, text = common.start_serve(granary, work, "--max-size", "1TiB")
    ready = time.perf_counter() - started
    match = re.search(r"(\d+) blobs, .*index rebuilt in ([\d.]+)(ms|s|µs)", text)
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.pid}/status").read_text()).group(1))
    proc.terminate()
    proc.wait()
    unit = {"ms": 1e-3, "s": 1.0, "µs": 1e-6}[match.group(3)]
    return int(match.group(1)), float(match.group(2)) * unit, ready, rss_kb * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-serve-rebuild-")
    cache = work / "serve-cache"
    try:
        start = time.perf_counter()
        for i in range(args.blobs):
            key = f"{i:064x}"[::-1]
            kind = "ac" if i % 2 else "cas"
            shard = cache / kind / key[:2]
            if i < 512:
                shard.mkdir(parents=True, exist_ok=True)
            (shard / key).write_bytes(b"x" * (100 + i % 900))
        print(f"wrote {args.blobs} blobs in {time.perf_counter() - start:.0f} s", flush=True)
        runs = []
        for _ in range(args.runs):
            blobs, rebuild, ready, rss = start_and_stop(granary, work)
            assert blobs == args.blobs, (blobs, args.blobs)
            runs.append((rebuild, ready, rss))
            print(f"index of {blobs} blobs rebuilt in {rebuild:.2f} s; listening after {ready:.2f} s; "
                  f"RSS {rss / 2**20:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rebuild = statistics.median(r[0] for r in runs)
    ready = statistics.median(r[1] for r in runs)
    rss = statistics.median(r[2] for r in runs)
    table = "\n".join([
        f"# granary serve: start-up on {args.blobs:,} blobs, {os.cpu_count()} CPUs",
        "",
        "| blobs | index rebuilt (s) | listening after (s) | RSS (MiB) | bytes of RSS per blob |",
        "|---:|---:|---:|---:|---:|",
        f"| {args.blobs:,} | {rebuild:.2f} | {ready:.2f} | {rss / 2**20:.0f} | {rss / args.blobs:.0f} |",
        "",
        f"Median of {args.runs} restarts; blobs of 100-1,000 bytes, half action results, half CAS; "
        "page cache warm.",
    ])
    print()
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve-rebuild.md").write_text(table + "\n")
    (out / "serve-rebuild.json").write_text(json.dumps(
        {"blobs": args.blobs, "rebuild_s": rebuild, "ready_s": ready, "rss_bytes": rss,
         "runs": runs}, indent=2) + "\n")
    print(f"\nwrote {out}/serve-rebuild.{{md,json}}")


if __name__ == "__main__":
    main()
