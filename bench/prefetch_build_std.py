#!/usr/bin/env python3
"""Times `go build std` on fresh runners (empty local tier) whose remote is
warm and 20 ms away, with and without the prefetch of the scope's manifest,
against warm local builds, in one run; for S3 (SeaweedFS), `granary serve`
and bazel-remote, each behind the proxy that adds 20 ms to every request.

    python3 bench/prefetch_build_std.py            # 5 runs of each configuration
    python3 bench/prefetch_build_std.py --runs 9 --delay-ms 30

Configurations:
  native-warm          Go's own cache, filled
  granary-warm         granary, local tier filled, no remote
  s3+20ms              empty local tier, warm bucket, prefetch on (the default)
  s3+20ms-no-prefetch  the same, --prefetch false: one lookup per action
  serve+20ms           empty local tier, warm granary serve, prefetch on
  serve+20ms-no-prefetch
  bazel-remote+20ms    empty local tier, warm bazel-remote (HTTP), prefetch on:
                       no batch endpoint, so the entries are looked up one by
                       one, 32 at a time, ahead of the build
  s3+20ms-trusted      s3+20ms with --trusted-keys: every record and manifest
  serve+20ms-trusted   checked against the signing key the fillers used

Before the timed runs, runner A fills each remote with a cold build (no
delay), publishing the manifest of scope `bench` (with packs in the
bucket); then two fresh runners, one after the other, build through the
prefetch and publish their own manifests, as every CI run does: that is
the steady state (a cold build's manifest also names entries that only a
cold build writes and a warm one never asks for, about a quarter of them
in `go build std`; the first warm job keeps them as what the job before
used, the second drops them). Timed
fresh runners are read-only, so every run sees the same remote, and each
gets a new directory: deleting the previous runner's 185 MB just before a
run leaves the file system busy discarding blocks and slows writes for
seconds, which is not what a fresh machine sees. Targets (issue 6): with
prefetch at most 2x granary-warm, and at least 10x faster than without;
checking signatures (issue 19) under 5% of the fresh build.

A fresh runner must write what the build uses, 182 MB for `go build std`,
and a warm build writes nothing; so each round also times `copy-warm`, a
plain `cp -r` of granary-warm's directory to a new one: no network, no
decompression, no checks. A helper can overlap that writing with the
build, on two CPUs, but not avoid it. On the bench machine, a virtual
machine that backs its memory only when first touched, takes back
memory left free for a few seconds, and pages out file pages unread for a
minute, writing into memory not touched lately runs at about 250 MB/s
instead of 2-3 GB/s (`dd` into a new file), so copy-warm varies from 0.3 s
to 1 s with what ran before it.

Results go to bench/results/prefetch-build-std.{md,json,svg}.
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
    parser.add_argument("--runs", type=int, default=5, help="runs of each configuration")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the proxy's added latency")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-prefetch-bench-")
    weed, ports = common.start_seaweedfs(work)
    endpoint = f"http://127.0.0.1:{ports[6]}"
    server, url, _ = common.start_serve(granary, work)
    bazel_remote, bazel_url = common.start_bazel_remote(work)
    s3_proxy, slow_endpoint = common.start_proxy(endpoint, args.delay_ms)
    serve_proxy, slow_url = common.start_proxy(url, args.delay_ms)
    bazel_proxy, slow_bazel_url = common.start_proxy(bazel_url, args.delay_ms)
    timer = common.BuildTimer(go, granary, work)
    run = timer.run
    delay = f"{args.delay_ms:g}ms"
    scope = {"GRANARY_SCOPE": "bench"}
    # The fillers sign what they write; the -trusted runners check it.
    key = work / "bench.key"
    subprocess.run([granary, "key", "generate", str(key)], check=True, capture_output=True)
    sign = {"GRANARY_SIGNING_KEY": str(key)}
    trusted = {"GRANARY_TRUSTED_KEYS": f"{key}.pub"}
    try:
        s3 = {**common.remote_env(endpoint, "std"), **scope}
        serve = {"GRANARY_REMOTE": url, **scope}
        bazel = {"GRANARY_REMOTE": bazel_url, **scope}
        # Runner A: fills each remote and publishes the manifest.
        run("native-cold", work / "native", fresh=True)
        run("fill-s3", work / "granary", {**s3, **sign}, fresh=True)
        run("fill-serve", work / "filler", {**serve, **sign}, fresh=True)
        run("fill-bazel-remote", work / "filler-bazel", bazel, fresh=True)
        for i in range(2):
            run("fill-s3-warm", work / f"fill-s3-warm-{i}", {**s3, **sign})
            run("fill-serve-warm", work / f"fill-serve-warm-{i}", {**serve, **sign})
            run("fill-bazel-remote-warm", work / f"fill-bazel-warm-{i}", bazel)
        slow_s3 = {**s3, "GRANARY_S3_ENDPOINT": slow_endpoint, "GRANARY_READ_ONLY": "true"}
        slow_serve = {**serve, "GRANARY_REMOTE": slow_url, "GRANARY_READ_ONLY": "true"}
        slow_bazel = {**bazel, "GRANARY_REMOTE": slow_bazel_url, "GRANARY_READ_ONLY": "true"}
        off = {"GRANARY_PREFETCH": "false"}
        for i in range(args.runs):
            run("native-warm", work / "native")
            run("granary-warm", work / "granary")
            copy_warm(timer, work / "granary", work / f"copy-{i}")
            for kind, remote, ends in (("s3", slow_s3, "abe"), ("serve", slow_serve, "cdf")):
                pair = [(f"{kind}+{delay}", work / f"fresh-{i}-{ends[0]}", remote),
                        (f"{kind}+{delay}-trusted", work / f"fresh-{i}-{ends[2]}",
                         {**remote, **trusted})]
                # A run slows the next while the kernel writes its 185 MB
                # back: every other round, the runner with trusted keys
                # goes first, or it would always pay for the other's writes.
                for name, cache, env in pair[::-1] if i % 2 else pair:
                    run(name, cache, env)
                run(f"{kind}+{delay}-no-prefetch", work / f"fresh-{i}-{ends[1]}", {**remote, **off})
            run(f"bazel-remote+{delay}", work / f"fresh-{i}-g", slow_bazel)
    finally:
        s3_proxy.kill()
        serve_proxy.kill()
        bazel_proxy.kill()
        bazel_remote.kill()
        server.terminate()
        server.wait()
        common.stop_seaweedfs(weed, ports)
        shutil.rmtree(work, ignore_errors=True)
    report(timer, go, Path(args.out), delay, args.runs)


def copy_warm(timer, warm, copy):
    """Times `cp -r` of the warm local tier: what writing a build's
    outputs costs on this machine, with nothing else in the way."""
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(warm), str(copy)], check=True)
    elapsed = time.perf_counter() - start
    timer.times.setdefault("copy-warm", []).append(elapsed)
    print(f"{'copy-warm':>13}: {elapsed:7.2f} s", flush=True)


def report(timer, go, out, delay, runs):
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    median = {name: statistics.median(t) for name, t in timer.times.items()}
    warm = median["granary-warm"]
    rows = []
    for name, runs_s in timer.times.items():
        if name.startswith("fill") or name == "native-cold":
            continue
        row = {
            "config": name,
            "median_s": round(median[name], 3),
            "vs_native_warm": round(median[name] / median["native-warm"], 3),
            "vs_granary_warm": round(median[name] / warm, 3),
            "runs_s": [round(t, 3) for t in runs_s],
        }
        without = median.get(f"{name}-no-prefetch")
        if without:
            row["speedup_vs_no_prefetch"] = round(without / median[name], 1)
        if name in timer.stats:
            last = timer.stats[name][-1]
            for key in ("gets", "hits", "remote_hits", "prefetch_named", "prefetch_fetched",
                        "prefetch_requests", "prefetch_bytes", "prefetch_waits", "prefetch_used",
                        "prefetch_unused", "prefetch_ms", "untrusted", "signature_check_us"):
                row[key] = last.get(key, 0)
        rows.append(row)

    lines = [
        f"# go build std on a fresh runner, remote {delay} away: {version}, {os.cpu_count()} CPUs",
        "",
        "| config | median (s) | / native warm | / granary warm | prefetch speed-up | remote lookups | prefetched (requests, MiB, ms) | used / in vain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup_vs_no_prefetch']}x" if "speedup_vs_no_prefetch" in r else ""
        if r.get("prefetch_named"):
            prefetched = (f"{r['prefetch_fetched']} ({r['prefetch_requests']}, "
                          f"{r['prefetch_bytes'] / 2**20:.1f}, {r['prefetch_ms']})")
            used = f"{r['prefetch_used']} / {r['prefetch_unused']}"
        else:
            prefetched = used = ""
        lookups = r.get("remote_hits", "") if "gets" in r and "warm" not in r["config"] else ""
        lines.append(
            f"| {r['config']} | {r['median_s']:.2f} | {r['vs_native_warm']:.2f}x | "
            f"{r['vs_granary_warm']:.2f}x | {speedup} | {lookups} | {prefetched} | {used} |"
        )
    costs = []
    for kind in ("s3", "serve"):
        name = f"{kind}+{delay}-trusted"
        checked, plain = median[name], median[f"{kind}+{delay}"]
        # The wall-clock difference is within the runs' noise; granary's
        # own count of the time it spent checking is the cost's measure.
        spent = statistics.median(s["signature_check_us"] for s in timer.stats[name]) / 1e6
        costs.append(f"{kind} {checked - plain:+.2f} s ({100 * (checked / plain - 1):+.1f}%), "
                     f"checking took {1000 * spent:.0f} ms ({100 * spent / plain:.1f}%)")
    floor = warm + median["copy-warm"]
    lines += ["", f"{runs} runs of each configuration, interleaved; median. The proxy adds "
              f"{delay} to every request. Fresh runners are read-only; remote columns are from the "
              "last run. copy-warm is `cp -r` of granary-warm's directory: writing the outputs a "
              f"fresh runner needs, and nothing else; granary-warm + copy-warm = {floor:.2f} s "
              f"({floor / warm:.2f}x). Targets: prefetch at most 2x granary-warm, at least 10x "
              "faster than without.", "",
              "Checking signatures (-trusted: the fillers signed every record and manifest, "
              "the runner has --trusted-keys), median against the same runner without, and the "
              "time granary spent checking signatures (its statistics, median): "
              + "; ".join(costs) + ". Target: under 5%."]
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefetch-build-std.md").write_text(table + "\n")
    (out / "prefetch-build-std.json").write_text(
        json.dumps({"go": version, "rows": rows}, indent=2) + "\n")
    common.write_bar_chart(
        out / "prefetch-build-std.svg",
        f"go build std on a fresh runner, remote {delay} away, relative to granary's warm local build",
        [(r["config"], {"vs granary warm": r["vs_granary_warm"]}) for r in rows],
    )
    print(f"\nwrote {out}/prefetch-build-std.{{md,json,svg}}")


if __name__ == "__main__":
    main()
