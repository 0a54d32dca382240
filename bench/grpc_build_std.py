#!/usr/bin/env python3
"""Times `go build std` on fresh runners (empty local tier) against a warm
`granary serve`, over HTTP and over gRPC (REAPI), directly and 20 ms away,
in one run, against a warm local build.

    python3 bench/grpc_build_std.py            # 5 runs of each configuration
    python3 bench/grpc_build_std.py --runs 9 --delay-ms 30

Configurations:
  granary-warm       granary, local tier filled, no remote
  http               empty local tier, warm server over HTTP, prefetch on
  grpc               the same over gRPC (one port answers both)
  http+20ms          through scripts/tcp_delay.py, which delays every byte
  grpc+20ms          from client to server: the same delay for both
                     protocols, however they use their connections

The server is filled by a cold build over HTTP, then two warm fillers of
each protocol publish the steady-state manifest of its scope (see
prefetch_build_std.py), without packs: granary serve answers batches, to
gRPC runners too (on their gRPC connection), so both protocols read one
manifest the same way. Timed runners are read-only and get new
directories; each round alternates which protocol goes first. Target
(issue 20): gRPC within 1.1x of HTTP at 0 and at 20 ms.

Results go to bench/results/grpc-build-std.{md,json,svg}.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def start_delay(address, delay_ms):
    """scripts/tcp_delay.py in front of `address` (HOST:PORT); returns
    (process, its HOST:PORT)."""
    proc = subprocess.Popen(
        [sys.executable, str(common.ROOT / "scripts" / "tcp_delay.py"), "--upstream", address,
         "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE, text=True,
    )
    return proc, f"127.0.0.1:{int(proc.stdout.readline())}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each configuration")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the proxy's added latency")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-grpc-bench-")
    server, url, _ = common.start_serve(granary, work)
    address = url.removeprefix("http://")
    delay_proxy, slow = start_delay(address, args.delay_ms)
    timer = common.BuildTimer(go, granary, work)
    run = timer.run
    delay = f"{args.delay_ms:g}ms"
    remotes = {
        "http": f"http://{address}",
        "grpc": f"grpc://{address}",
        f"http+{delay}": f"http://{slow}",
        f"grpc+{delay}": f"grpc://{slow}",
    }
    # Each protocol's runners publish and read a scope of their own: over
    # gRPC the manifest names packs in the CAS, over HTTP the server
    # answers batches.
    def scope(name):
        return {"GRANARY_SCOPE": f"bench-{name.split('+')[0]}"}
    try:
        run("fill", work / "granary", {"GRANARY_REMOTE": url, **scope("http")}, fresh=True)
        for i in range(2):
            for protocol in ("http", "grpc"):
                run(f"fill-{protocol}", work / f"fill-{protocol}-{i}",
                    {"GRANARY_REMOTE": remotes[protocol], **scope(protocol)})
        for i in range(args.runs):
            run("granary-warm", work / "granary")
            for pair in (("http", "grpc"), (f"http+{delay}", f"grpc+{delay}")):
                for name in pair[::-1] if i % 2 else pair:
                    env = {"GRANARY_REMOTE": remotes[name], "GRANARY_READ_ONLY": "true",
                           **scope(name)}
                    run(name, work / f"fresh-{i}-{name}", env)
                    shutil.rmtree(work / f"fresh-{i}-{name}", ignore_errors=True)
    finally:
        delay_proxy.kill()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(timer, go, Path(args.out), delay, args.runs)


def report(timer, go, out, delay, runs):
    def http_of(name):
        return name.replace("grpc", "http") if name.startswith("grpc") else None
    rows = common.fresh_runner_rows(
        timer, "vs_http", http_of,
        ("gets", "hits", "remote_hits", "remote_misses", "prefetch_fetched",
         "prefetch_requests", "prefetch_ms", "remote_bytes_down"))
    lines = [
        f"# go build std on a fresh runner, granary serve over HTTP and gRPC: "
        f"{common.go_version(go)}, {os.cpu_count()} CPUs",
        "",
        "| config | median (s) | / granary warm | gRPC / HTTP | hits | prefetched (requests, ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['vs_http']:.2f}x" if "vs_http" in r else ""
        prefetched = (f"{r['prefetch_fetched']} ({r['prefetch_requests']}, {r['prefetch_ms']})"
                      if r.get("prefetch_fetched") else "")
        lines.append(f"| {r['config']} | {r['median_s']:.2f} | {r['vs_granary_warm']:.2f}x | "
                     f"{ratio} | {r.get('hits', '')} | {prefetched} |")
    lines += ["", f"{runs} runs of each configuration, interleaved; median. +{delay}: "
              "scripts/tcp_delay.py delays every byte from client to server. Fresh runners are "
              "read-only, prefetch on; counts are from the last run. Target: gRPC within 1.1x "
              "of HTTP."]
    common.write_results(
        out, "grpc-build-std", "\n".join(lines), go, rows,
        "go build std on a fresh runner, granary serve over HTTP and gRPC, relative to granary warm")


if __name__ == "__main__":
    main()
