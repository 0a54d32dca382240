#!/usr/bin/env python3
"""Which zstd level `granary serve` stores blobs at, and which blobs it
keeps plain: measured on the outputs of `go build std` and of the test
binaries of a real module, as a server receives them (one blob each).

    python3 bench/compression.py            # levels 1, 2, 3, 6; 3 repetitions
    python3 bench/compression.py --runs 5

For each level: the disk the blobs take in 4 KiB blocks (plain, compressed,
and compressed only where that saves a block, the server's rule), and the
speed of compressing them all with the zstd command-line tool, one file at
a time as the server does (median of the runs, one core). Needs `zstd`
(Debian: `apt-get install zstd`). Results go to
bench/results/compression.{md,json}.
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BLOCK = 4096
LEVELS = [1, 2, 3, 6]


def blocks(length):
    return max(1, -(-length // BLOCK)) * BLOCK


def outputs(go, work):
    """The output files of a fresh `go build std` and `go vet std`, as a
    cache server receives them."""
    cache = work / "gocache"
    env = common.go_env(cache, work)
    subprocess.run([go, "build", "std"], env=env, check=True)
    subprocess.run([go, "vet", "std"], env=env, check=True, capture_output=True)
    return sorted(p for p in cache.rglob("*-d") if p.is_file())


def compress_all(files, level, out):
    """Seconds to compress every file apart, and each compressed length."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    started = time.perf_counter()
    subprocess.run(["zstd", "-q", f"-{level}", "--single-thread", "--output-dir-flat", str(out)]
                   + [str(f) for f in files], check=True)
    took = time.perf_counter() - started
    return took, [(out / (f.name + ".zst")).stat().st_size for f in files]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("zstd"):
        sys.exit("zstd not found: apt-get install zstd")
    go = common.find_go()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = outputs(go, work)
        sizes = [f.stat().st_size for f in files]
        raw = sum(sizes)
        plain_disk = sum(blocks(s) for s in sizes)
        print(f"{len(files)} outputs, {raw / 2**20:.1f} MiB, {plain_disk / 2**20:.1f} MiB on disk")
        rows = []
        for level in LEVELS:
            times = []
            for _ in range(args.runs):
                took, compressed = compress_all(files, level, work / "out")
                times.append(took)
            always = sum(blocks(c) for c in compressed)
            rule = [(c, s) for c, s in zip(compressed, sizes)]
            kept = sum(blocks(c) if blocks(c) < blocks(s) else blocks(s) for c, s in rule)
            shrunk = sum(1 for c, s in rule if blocks(c) < blocks(s))
            took = statistics.median(times)
            rows.append({
                "level": level,
                "seconds": round(took, 3),
                "mb_per_s": round(raw / took / 1e6, 1),
                "disk_always_mib": round(always / 2**20, 1),
                "disk_rule_mib": round(kept / 2**20, 1),
                "ratio_rule": round(plain_disk / kept, 2),
                "compressed_files": shrunk,
            })
            print(rows[-1])
    table = "\n".join(
        [f"{len(files)} outputs of `go build std` and `go vet std`: {raw / 2**20:.1f} MiB, "
         f"{plain_disk / 2**20:.1f} MiB on disk in 4 KiB blocks; median of {args.runs} runs, "
         "one core",
         "",
         "| level | compress MB/s | disk, all compressed | disk, compressed where it saves a block | vs plain | files compressed |",
         "|---|---|---|---|---|---|"]
        + [f"| {r['level']} | {r['mb_per_s']} | {r['disk_always_mib']} MiB | {r['disk_rule_mib']} MiB "
           f"| {r['ratio_rule']}x | {r['compressed_files']} of {len(files)} |" for r in rows])
    print()
    print(table)
    out = common.RESULTS
    (out / "compression.md").write_text(table + "\n")
    (out / "compression.json").write_text(json.dumps(
        {"go": common.go_version(go), "files": len(files), "bytes": raw,
         "plain_disk": plain_disk, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}/compression.{{md,json}}")


if __name__ == "__main__":
    main()
