#!/usr/bin/env python3
"""granary du and trim on a cache of a million entries.

Generates a synthetic cache in cmd/go's format (one action record and one
object per entry, object sizes from 64 B to 4 KiB, last uses spread over 30
days), then measures with the release binary:

- `granary du --json`, several times (median);
- two full trim passes, each of which scans every file: the first to 90% of
  the size (it removes the least recently used tenth), the second to half
  of the original size (it removes about 40% more).

Time is wall-clock; memory is the peak resident set of the granary process
(from wait4). Results go to bench/results/cache-scale.{md,json}.

    python3 bench/cache_scale.py [--entries 1000000] [--dir /tmp/granary-scale] [--keep]
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, build_granary  # noqa: E402

DAY = 24 * 3600
SPREAD = 30 * DAY


def generate_part(args):
    """Writes entries first, first+step, ... below `count` into `cache`."""
    cache, first, step, count, now = args
    rng = random.Random(first)
    for n in range(first, count, step):
        action = hashlib.sha256(b"synthetic action %d" % n).hexdigest()
        body = rng.randbytes(rng.randint(64, 4096))
        output = hashlib.sha256(body).hexdigest()
        put_ns = (now - SPREAD) * 10**9
        record = f"v1 {action} {output} {len(body):20d} {put_ns:20d}\n".encode()
        used = now - rng.randint(0, SPREAD)
        for path, data in ((f"{cache}/{action[:2]}/{action}-a", record), (f"{cache}/{output[:2]}/{output}-d", body)):
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, (used, used))


def generate(cache, entries):
    cache.mkdir(parents=True)
    for prefix in range(256):
        (cache / f"{prefix:02x}").mkdir()
    now = int(time.time())
    workers = os.cpu_count() or 2
    with Pool(workers) as pool:
        pool.map(generate_part, [(str(cache), i, workers, entries, now) for i in range(workers)])


def measure(cmd):
    """Runs cmd; returns (seconds, peak RSS in MiB, parsed JSON stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed: {err.decode()}")
    return took, usage.ru_maxrss / 1024, json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/granary-scale"))
    parser.add_argument("--runs", type=int, default=3, help="du repetitions (median)")
    parser.add_argument("--keep", action="store_true", help="reuse and keep the generated cache")
    args = parser.parse_args()

    granary = build_granary()
    cache = args.dir / "cache"
    if not (args.keep and cache.is_dir()):
        shutil.rmtree(args.dir, ignore_errors=True)
        start = time.perf_counter()
        print(f"generating {args.entries:,} entries in {cache} ...", flush=True)
        generate(cache, args.entries)
        print(f"generated in {time.perf_counter() - start:.0f} s", flush=True)

    base = [granary, "--dir", str(cache)]
    du_runs = [measure(base + ["du", "--json"]) for _ in range(args.runs)]
    du_time = statistics.median(t for t, _, _ in du_runs)
    du_rss = max(m for _, m, _ in du_runs)
    usage = du_runs[0][2]
    files = usage["total"]["files"]
    size = usage["total"]["bytes"]
    print(f"du: {files:,} files, {size / 2**30:.2f} GiB, median {du_time:.2f} s, peak RSS {du_rss:.0f} MiB")

    trims = []
    for share in (0.9, 0.5):
        took, rss, report = measure(base + ["trim", "--json", "--grace=0s", "--max-age=none", f"--max-size={int(size * share)}"])
        removed = report["removed"]
        trims.append({"ceiling": share, "seconds": took, "peak_rss_mib": rss, "removed_files": removed["files"], "removed_bytes": removed["bytes"]})
        print(f"trim to {share:.0%}: removed {removed['files']:,} files ({removed['bytes'] / 2**30:.2f} GiB) in {took:.2f} s, peak RSS {rss:.0f} MiB, {removed['files'] / took:,.0f} removals/s")

    result = {
        "entries": args.entries,
        "files": files,
        "bytes": size,
        "du": {"median_s": du_time, "runs_s": [t for t, _, _ in du_runs], "peak_rss_mib": du_rss},
        "trims": trims,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache-scale.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = "".join(
        f"| `granary trim` to {t['ceiling']:.0%} of the original size: {t['removed_files']:,} files removed "
        f"| {t['seconds']:.2f} s | {t['peak_rss_mib']:.0f} MiB | {t['removed_files'] / t['seconds']:,.0f} |\n"
        for t in trims
    )
    (RESULTS / "cache-scale.md").write_text(
        f"# granary du and trim on {args.entries:,} entries\n\n"
        f"{files:,} files, {size / 2**30:.2f} GiB on disk, {os.cpu_count()} CPUs; `python3 bench/cache_scale.py`\n\n"
        "| command | time | peak RSS | removals/s |\n|---|---|---|---|\n"
        f"| `granary du` (median of {args.runs}) | {du_time:.2f} s | {du_rss:.0f} MiB | |\n" + rows
    )
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
