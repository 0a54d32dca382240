#!/usr/bin/env python3
"""How fast granary serve's GETs are against their floors: granary serve, a
hyper server that answers the same number of bytes from memory with the
same runtime and connection builder (crates/granary-server/examples/http_floor.rs),
and nginx serving granary's files, in one run. At 10 MB, nginx also runs
without sendfile: the fastest a server that copies the file through its own
memory gets, which is all hyper allows (it has no zero-copy path for a
body: hyperium/hyper#3026). granary serve answers these plain HTTP/1.1 GETs
before hyper, sending the files with sendfile (crates/granary-server/src/sendfile.rs).

    python3 bench/http_floor.py                 # 1 KB, 5 runs of 5 s
    python3 bench/http_floor.py --size 10MB     # 10 MB blobs
    python3 bench/http_floor.py --runs 9 --seconds 10

wrk (2 threads; 64 connections at 1 KB, 16 at 10 MB) on loopback, as
bench/serve_http.py loads them; needs wrk and nginx (`apt-get install wrk
nginx`). Results go to bench/results/http-floor[-10mb].{md,json}.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serve_http  # noqa: E402

# size: (bytes a blob, blobs, connections, results file)
SIZES = {
    "1KB": (1000, 2000, 64, "http-floor"),
    "10MB": (10_000_000, 20, 16, "http-floor-10mb"),
}


def build_floor():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "granary-server",
                    "--example", "http_floor"], cwd=common.ROOT, check=True)
    return str(common.ROOT / "target" / "release" / "examples" / "http_floor")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="1KB")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    args = parser.parse_args()
    size, blobs, connections, results_name = SIZES[args.size]
    wrk_bin, nginx = serve_http.need("wrk"), serve_http.need("nginx")
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    floor_bin = build_floor()
    work = common.make_work("granary-http-floor-")
    work.chmod(0o755)
    granary_server = serve_http.Server("granary", work, {"granary": granary})
    floor_port = common.free_port()
    floor = subprocess.Popen([floor_bin, f"127.0.0.1:{floor_port}", str(size)], stdout=subprocess.DEVNULL,
                             stderr=open(work / "floor.log", "w"))
    nginx_works = []
    results = {}
    try:
        common.wait_port(floor_port, floor, "http_floor", work / "floor.log")
        digests = []
        for _ in range(blobs):
            # Random bytes: stored as they are, never compressed.
            body = os.urandom(size)
            digest = hashlib.sha256(body).hexdigest()
            serve_http.request("PUT", granary_server.port, f"/cas/{digest}", body)
            digests.append(digest)
        ports = {"granary": granary_server.port, "hyper-floor": floor_port}
        nginxes = {"nginx": True} if size < 1 << 20 else {"nginx": True, "nginx-copying": False}
        for name, sendfile in nginxes.items():
            nginx_work = work / name
            nginx_work.mkdir()
            nginx_works.append(nginx_work)
            ports[name], _ = serve_http.start_nginx(nginx, nginx_work, granary_server.dir,
                                                    nginx_work / "put", sendfile)
        listing = work / "get.list"
        listing.write_text("".join(f"/cas/{d}\n" for d in digests))
        script = work / "get.lua"
        script.write_text(serve_http.GET_SCRIPT % {"list": listing, "headers": ""})
        names = list(ports)
        for run in range(args.runs):
            for name in names[run % len(names):] + names[:run % len(names)]:
                rps = serve_http.wrk(wrk_bin, ports[name], script, connections, args.seconds)[0]
                results.setdefault(name, []).append(rps)
                print(f"{name:>14}: {rps:10.0f} req/s", flush=True)
    finally:
        for nginx_work in nginx_works:
            serve_http.stop_nginx(nginx, nginx_work)
        floor.terminate()
        floor.wait()
        granary_server.stop()
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(runs) for name, runs in results.items()}
    lines = [f"# {args.size} GETs: granary serve, the hyper floor and nginx ({os.cpu_count()} CPUs, "
             f"wrk 2 threads, {connections} connections)", "",
             "| server | req/s | GB/s | / nginx | runs (req/s) |", "|---|---:|---:|---:|---|"]
    for name, rps in medians.items():
        runs = ", ".join(f"{r:.0f}" for r in results[name])
        lines.append(f"| {name} | {rps:.0f} | {rps * size / 1e9:.3f} | {rps / medians['nginx']:.2f}x "
                     f"| {runs} |")
    lines += ["", f"Median of {args.runs} runs of {args.seconds} s, interleaved. hyper-floor answers "
              f"{size:,} bytes from memory with granary serve's runtime and connection builder."]
    if "nginx-copying" in medians:
        lines[-1] += " nginx-copying is nginx with sendfile off."
    table = "\n".join(lines)
    print(f"\n{table}")
    (common.RESULTS / f"{results_name}.md").write_text(table + "\n")
    (common.RESULTS / f"{results_name}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {common.RESULTS}/{results_name}.{{md,json}}")


if __name__ == "__main__":
    main()
