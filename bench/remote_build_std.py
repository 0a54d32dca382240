#!/usr/bin/env python3
"""Times `go build std` on a fresh runner with a warm remote (SeaweedFS on
loopback), against a cold build and a warm local build, in one run; then
the same remote through a proxy that adds 20 ms to every request, as a real
bucket's round trip does.

    python3 bench/remote_build_std.py            # 1 cold run per config, 5 of the others
    python3 bench/remote_build_std.py --runs 9 --delay-ms 30

Configurations:
  native-cold      Go's own cache, empty
  granary-cold     granary, empty local tier, uploading to the empty remote
                   (its first run fills the remote for the others)
  native-warm      Go's own cache, filled
  granary-warm     granary, local tier filled, no remote
  remote           granary, empty local tier, warm remote on loopback
  remote+20ms      the same through the proxy

Results go to bench/results/remote-build-std.{md,json,svg}.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=1, help="cold runs per cold configuration")
    parser.add_argument("--runs", type=int, default=5, help="runs of the other configurations")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the proxy's added latency")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-remote-bench-")
    weed, ports = common.start_seaweedfs(work)
    endpoint = f"http://127.0.0.1:{ports[6]}"
    proxy, slow_endpoint = common.start_proxy(endpoint, args.delay_ms)
    timer = common.BuildTimer(go, granary, work)
    run = timer.run
    try:
        fast = common.remote_env(endpoint, "std")
        slow = common.remote_env(slow_endpoint, "std")
        for i in range(args.cold):
            run("native-cold", work / "native", fresh=True)
            # Each cold granary run uploads to a fresh prefix, so it is cold
            # on both tiers; the last one's prefix is the warm remote below.
            run("granary-cold", work / "granary", common.remote_env(endpoint, f"std-{i}"), fresh=True)
        fast["GRANARY_REMOTE"] = slow["GRANARY_REMOTE"] = f"s3://{common.S3_BUCKET}/std-{args.cold - 1}"
        for _ in range(args.runs):
            run("native-warm", work / "native")
            run("granary-warm", work / "granary")
            run("remote", work / "fresh", fast, fresh=True)
            run(f"remote+{args.delay_ms:g}ms", work / "fresh", slow, fresh=True)
    finally:
        proxy.kill()
        common.stop_seaweedfs(weed, ports)
        shutil.rmtree(work, ignore_errors=True)
    note = (f"Cold: {args.cold} run(s) per configuration; others: {args.runs} runs, interleaved. "
            f"The proxy adds {args.delay_ms:g} ms to every request. Remote columns are from the last run.")
    report(timer.times, timer.stats, go, Path(args.out), "remote-build-std", "a remote", note)


def report(times, stats, go, out, name, through, note):
    """Writes bench/results/<name>.{md,json,svg}: times against native Go,
    with the remote columns of granary's stats."""
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    native_cold = statistics.median(times["native-cold"])
    native_warm = statistics.median(times["native-warm"])
    rows = []
    for config, runs in times.items():
        median = statistics.median(runs)
        row = {
            "config": config,
            "median_s": round(median, 3),
            "vs_native_cold": round(median / native_cold, 3),
            "vs_native_warm": round(median / native_warm, 3),
            "runs_s": [round(t, 3) for t in runs],
        }
        if config in stats:
            last = stats[config][-1]
            for key in ("gets", "hits", "remote_hits", "remote_misses", "remote_errors",
                        "remote_bytes_down", "remote_bytes_up", "uploads", "uploads_dropped",
                        "remote_p50_us", "remote_p99_us"):
                row[key] = last.get(key, 0)
        rows.append(row)

    lines = [
        f"# go build std through {through}: {version}, {os.cpu_count()} CPUs",
        "",
        "| config | median (s) | / native cold | / native warm | remote hits | down (MiB) | up (MiB) | lookup p50 / p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        remote = "remote_hits" in r and (r["remote_hits"] or r["uploads"])
        lines.append(
            f"| {r['config']} | {r['median_s']:.2f} | {r['vs_native_cold']:.3f}x | {r['vs_native_warm']:.2f}x | "
            + (
                f"{r['remote_hits']} of {r['gets']} | {r['remote_bytes_down'] / 2**20:.1f} | "
                f"{r['remote_bytes_up'] / 2**20:.1f} | {r['remote_p50_us'] / 1000:.1f} / {r['remote_p99_us'] / 1000:.1f} |"
                if remote else "| | | |"
            )
        )
    lines += ["", note]
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps({"go": version, "rows": rows}, indent=2) + "\n")
    common.write_bar_chart(
        out / f"{name}.svg",
        "go build std, median time relative to Go's native cache, cold",
        [(r["config"], {"vs cold": r["vs_native_cold"]}) for r in rows],
    )
    print(f"\nwrote {out}/{name}.{{md,json,svg}}")


if __name__ == "__main__":
    main()
