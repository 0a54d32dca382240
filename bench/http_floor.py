#!/usr/bin/env python3
"""How far granary serve's 1 KB GETs can get on hyper: granary serve,
a hyper server that answers 1,000 bytes from memory with the same runtime
and connection builder (crates/granary-server/examples/http_floor.rs), and
nginx serving granary's files, in one run.

    python3 bench/http_floor.py                 # 5 runs of 5 s
    python3 bench/http_floor.py --runs 9 --seconds 10

wrk (2 threads, 64 connections) on loopback, as bench/serve_http.py loads
them; needs wrk and nginx (`apt-get install wrk nginx`). Results go to
bench/results/http-floor.{md,json}.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serve_http  # noqa: E402

CONNECTIONS = 64
BLOBS = 2000


def build_floor():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "granary-server",
                    "--example", "http_floor"], cwd=common.ROOT, check=True)
    return str(common.ROOT / "target" / "release" / "examples" / "http_floor")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    args = parser.parse_args()
    wrk_bin, nginx = serve_http.need("wrk"), serve_http.need("nginx")
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    floor_bin = build_floor()
    work = Path(tempfile.mkdtemp(prefix="granary-http-floor-"))
    work.chmod(0o755)
    granary_server = serve_http.Server("granary", work, {"granary": granary})
    floor_port = common.free_port()
    floor = subprocess.Popen([floor_bin, f"127.0.0.1:{floor_port}"], stdout=subprocess.DEVNULL,
                             stderr=open(work / "floor.log", "w"))
    nginx_port = None
    results = {}
    try:
        common.wait_port(floor_port, floor, "http_floor", work / "floor.log")
        digests = []
        for _ in range(BLOBS):
            body = os.urandom(1000)
            digest = hashlib.sha256(body).hexdigest()
            serve_http.request("PUT", granary_server.port, f"/cas/{digest}", body)
            digests.append(digest)
        nginx_port, _ = serve_http.start_nginx(nginx, work, granary_server.dir, work / "nginx-put")
        listing = work / "get.list"
        listing.write_text("".join(f"/cas/{d}\n" for d in digests))
        script = work / "get.lua"
        script.write_text(serve_http.GET_SCRIPT % {"list": listing, "headers": ""})
        ports = {"granary": granary_server.port, "hyper-floor": floor_port, "nginx": nginx_port}
        names = list(ports)
        for run in range(args.runs):
            for name in names[run % len(names):] + names[:run % len(names)]:
                rps = serve_http.wrk(wrk_bin, ports[name], script, CONNECTIONS, args.seconds)[0]
                results.setdefault(name, []).append(rps)
                print(f"{name:>12}: {rps:10.0f} req/s", flush=True)
    finally:
        if nginx_port:
            serve_http.stop_nginx(nginx, work)
        floor.terminate()
        floor.wait()
        granary_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(runs) for name, runs in results.items()}
    lines = [f"# 1 KB GETs: granary serve, the hyper floor and nginx ({os.cpu_count()} CPUs, wrk 2 "
             f"threads, {CONNECTIONS} connections)", "",
             "| server | req/s | / nginx | runs |", "|---|---:|---:|---|"]
    for name, rps in medians.items():
        runs = ", ".join(f"{r:.0f}" for r in results[name])
        lines.append(f"| {name} | {rps:.0f} | {rps / medians['nginx']:.2f}x | {runs} |")
    lines += ["", f"Median of {args.runs} runs of {args.seconds} s, interleaved. hyper-floor answers "
              "1,000 bytes from memory with granary serve's runtime and connection builder."]
    table = "\n".join(lines)
    print(f"\n{table}")
    (common.RESULTS / "http-floor.md").write_text(table + "\n")
    (common.RESULTS / "http-floor.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {common.RESULTS}/http-floor.{{md,json}}")


if __name__ == "__main__":
    main()
