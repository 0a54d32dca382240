#!/usr/bin/env python3
"""Times `granary mtimes` on a fresh checkout of a repository of 10,000
files, against the floor: the same files given one fixed time with
`git ls-files | xargs touch`, which neither asks git for object IDs nor
hashes, nor times folders.

    python3 bench/mtimes.py                  # 5 fresh checkouts each
    python3 bench/mtimes.py --files 50000 --runs 3

Also one run after a change to 1% of the files, which granary hashes.
Results go to bench/results/mtimes.{md,json}.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()

    work = common.make_work("granary-bench-mtimes-")
    try:
        origin = make_repository(work / "origin", args.files)
        times = {"granary mtimes": [], "touch (floor)": [], "granary, 1% changed": []}
        for run in range(args.runs):
            checkout = fresh_checkout(origin, work / "checkout")
            times["granary mtimes"].append(timed([granary, "mtimes", str(checkout)]))
            checkout = fresh_checkout(origin, work / "checkout")
            times["touch (floor)"].append(
                timed(
                    ["sh", "-c", "git ls-files -z | xargs -0 touch -d @1000000000"],
                    cwd=checkout,
                )
            )
            checkout = fresh_checkout(origin, work / "checkout")
            for n in range(0, args.files, 100):
                path = checkout / f"d{n // 100 % 100:02d}" / f"f{n}.txt"
                path.write_text(f"changed {n}\n")
            times["granary, 1% changed"].append(timed([granary, "mtimes", str(checkout)]))
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms" for k, v in times.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = {name: statistics.median(values) for name, values in times.items()}
    table = "\n".join(
        [
            f"# granary mtimes: a fresh checkout of {args.files:,} files, {os.cpu_count()} CPUs",
            "",
            "| what | median (ms) | / floor |",
            "|---|---:|---:|",
        ]
        + [
            f"| {name} | {seconds * 1000:.0f} | {seconds / rows['touch (floor)']:.2f}x |"
            for name, seconds in rows.items()
        ]
        + ["", f"{args.runs} fresh checkouts each; the floor sets one fixed time and hashes nothing."]
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mtimes.md").write_text(table + "\n")
    (out / "mtimes.json").write_text(json.dumps({"files": args.files, "runs": times}, indent=2) + "\n")
    print("\n" + table)


def make_repository(repo, files):
    """`files` small files in 100 folders, committed."""
    for n in range(files):
        path = repo / f"d{n // 100 % 100:02d}" / f"f{n}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"file {n}\n")
    subprocess.run(GIT + ["init", "-q"], cwd=repo, check=True)
    subprocess.run(GIT + ["add", "."], cwd=repo, check=True)
    subprocess.run(GIT + ["commit", "-q", "-m", "files"], cwd=repo, check=True)
    return repo


def fresh_checkout(origin, path):
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(GIT + ["clone", "-q", str(origin), str(path)], check=True)
    return path


def timed(command, cwd=None):
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
