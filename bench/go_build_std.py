#!/usr/bin/env python3
"""Times `go build std` with Go's native cache, with granary, and optionally
with any other GOCACHEPROG helper, in one run, and prints the median ratios.

Cold: an empty cache directory for every run. Warm: the cache that the same
configuration filled, rebuilt unchanged. Runs of the configurations are
interleaved so that drift of the machine hits them all alike.

    python3 bench/go_build_std.py                 # 3 cold, 7 warm runs
    python3 bench/go_build_std.py --cold 1 --warm 15
    python3 bench/go_build_std.py --trim-every-run  # adds granary trimming at every run
    GRANARY_BENCH_HELPER='go-cacher --cache-dir {dir}' python3 bench/go_build_std.py

GRANARY_BENCH_HELPER is a GOCACHEPROG command line; {dir} is replaced by the
run's cache directory. Results go to bench/results/go-build-std.{md,json,svg}.
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=3, help="cold runs per configuration")
    parser.add_argument("--warm", type=int, default=7, help="warm runs per configuration")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    parser.add_argument(
        "--trim-every-run",
        action="store_true",
        help="add granary with --trim-interval=0s: a background trim at every run",
    )
    args = parser.parse_args()
    if args.cold < 1 or args.warm < 1:
        parser.error("--cold and --warm must be at least 1 (a warm run needs a cold one first)")

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    configs = {"native": None, "granary": f"{granary} prog"}
    if args.trim_every_run:
        configs["granary-trim"] = f"{granary} prog --trim-interval=0s"
    helper = os.environ.get("GRANARY_BENCH_HELPER")
    if helper:
        configs[helper.split()[0].rsplit("/", 1)[-1]] = helper

    work = common.make_work("granary-bench-")
    try:
        times = {name: {"cold": [], "warm": []} for name in configs}
        for run in range(args.cold):
            for name, prog in configs.items():
                cache = work / f"{name}-{run}"
                shutil.rmtree(cache, ignore_errors=True)
                t = timed_build(go, cache, prog, work)
                times[name]["cold"].append(t)
                print(f"cold {run + 1}/{args.cold} {name:>10}: {t:7.2f} s", flush=True)
        for run in range(args.warm):
            for name, prog in configs.items():
                # The cache the last cold run of this configuration filled.
                cache = work / f"{name}-{args.cold - 1}"
                t = timed_build(go, cache, prog, work)
                times[name]["warm"].append(t)
                print(f"warm {run + 1}/{args.warm} {name:>10}: {t:7.3f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report(times, go, Path(args.out))


def timed_build(go, cache, prog, work):
    env = common.go_env(cache, work)
    if prog:
        env["GOCACHEPROG"] = prog.replace("{dir}", str(cache))
    start = time.perf_counter()
    subprocess.run([go, "build", "std"], env=env, check=True, cwd=work)
    return time.perf_counter() - start


def report(times, go, out):
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    native = {kind: statistics.median(times["native"][kind]) for kind in ("cold", "warm")}
    rows = []
    for name, runs in times.items():
        row = {"config": name}
        for kind in ("cold", "warm"):
            median = statistics.median(runs[kind])
            row[f"{kind}_median_s"] = round(median, 4)
            row[f"{kind}_ratio"] = round(median / native[kind], 3)
            row[f"{kind}_runs_s"] = [round(t, 4) for t in runs[kind]]
        rows.append(row)

    lines = [
        f"# go build std: {version}, {os.cpu_count()} CPUs",
        "",
        "| config | cold median (s) | cold / native | warm median (s) | warm / native |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['cold_median_s']:.2f} | {r['cold_ratio']:.3f}x "
            f"| {r['warm_median_s']:.3f} | {r['warm_ratio']:.3f}x |"
        )
    lines.append("")
    lines.append(
        f"Cold: {len(rows[0]['cold_runs_s'])} runs, each with an empty cache. "
        f"Warm: {len(rows[0]['warm_runs_s'])} runs on the cache the configuration filled. "
        "Targets for granary: cold at most 1.03x, warm at most 1.05x native."
    )
    table = "\n".join(lines)
    print()
    print(table)

    out.mkdir(parents=True, exist_ok=True)
    (out / "go-build-std.md").write_text(table + "\n")
    (out / "go-build-std.json").write_text(json.dumps({"go": version, "rows": rows}, indent=2) + "\n")
    common.write_bar_chart(
        out / "go-build-std.svg",
        "go build std, median time relative to Go's native cache",
        [(r["config"], {"cold": r["cold_ratio"], "warm": r["warm_ratio"]}) for r in rows],
    )
    print(f"\nwrote {out}/go-build-std.{{md,json,svg}}")


if __name__ == "__main__":
    main()
