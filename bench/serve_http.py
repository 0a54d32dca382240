#!/usr/bin/env python3
"""HTTP throughput of `granary serve` against nginx serving the same files.

    python3 bench/serve_http.py                 # 3 runs of 10 s per case
    python3 bench/serve_http.py --runs 5 --seconds 20

Loads granary serve with wrk: concurrent GETs and PUTs of 1 KB and 10 MB
blobs (requests/s, GB/s, p99 latency), then nginx (Debian's) serving the
very files granary stored, from the same disk, as the reference for raw
HTTP speed: nginx does no hashing, no index and no accounting, so it is
the ceiling. Target: granary's GET throughput at least 0.8x nginx's.

Needs wrk and nginx (`apt-get install wrk nginx`); both listen on loopback
only. Results go to bench/results/serve-http.{md,json,svg}.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CASES = [
    # name, blob size, blob count, connections
    ("1KB", 1000, 2000, 64),
    ("10MB", 10 * 1000 * 1000, 8, 16),
]

GET_SCRIPT = """
local paths = {}
for line in io.lines("%(list)s") do paths[#paths + 1] = line end
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""

PUT_SCRIPT = """
local blobs = {}
for line in io.lines("%(list)s") do
  local f = io.open("%(dir)s/" .. line, "rb")
  blobs[#blobs + 1] = {path = "/cas/" .. line, body = f:read("*a")}
  f:close()
end
local i = math.random(#blobs)
request = function()
  i = i %% #blobs + 1
  return wrk.format("PUT", blobs[i].path, nil, blobs[i].body)
end
"""


def need(tool):
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None)
    if not path:
        sys.exit(f"{tool} not found: install it with `apt-get install {tool}`")
    return path


def start_nginx(nginx, work, cache):
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes {os.cpu_count()};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  open_file_cache max=10000;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  server {{
    listen 127.0.0.1:0;
    location ~ ^/cas/(..)(.*)$ {{ alias {cache}/cas/$1/$1$2; }}
  }}
}}
""")
    # nginx cannot listen on port 0: pick a free port.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf.write_text(conf.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    subprocess.run([nginx, "-c", str(conf), "-e", str(work / "nginx-error.log")], check=True)
    return port


def stop_nginx(nginx, work):
    subprocess.run([nginx, "-c", str(work / "nginx.conf"), "-e", str(work / "nginx-error.log"), "-s", "stop"],
                   check=False)


def wrk(wrk_bin, port, script, connections, seconds):
    out = subprocess.run(
        [wrk_bin, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        sys.exit(f"wrk saw errors:\n{out}")
    return rps, p99_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    wrk_bin, nginx = need("wrk"), need("nginx")
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = Path(tempfile.mkdtemp(prefix="granary-serve-bench-"))
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    proc, url, _ = common.start_serve(granary, work, "--max-size", "100GiB")
    port = int(url.rsplit(":", 1)[1])
    nginx_port = None
    rows = []
    try:
        blobs = work / "blobs"
        blobs.mkdir()
        for name, size, count, _ in CASES:
            listing = []
            conn = http.client.HTTPConnection("127.0.0.1", port)
            for i in range(count):
                body = os.urandom(size)
                digest = hashlib.sha256(body).hexdigest()
                (blobs / digest).write_bytes(body)
                conn.request("PUT", f"/cas/{digest}", body)
                response = conn.getresponse()
                response.read()
                assert response.status == 200, response.status
                listing.append(digest)
            (work / f"{name}.list").write_text("\n".join(listing) + "\n")
            (work / f"{name}.paths").write_text("".join(f"/cas/{d}\n" for d in listing))
            (work / f"get-{name}.lua").write_text(GET_SCRIPT % {"list": work / f"{name}.paths"})
            (work / f"put-{name}.lua").write_text(PUT_SCRIPT % {"list": work / f"{name}.list", "dir": blobs})
        nginx_port = start_nginx(nginx, work, work / "serve-cache")
        for name, size, _, connections in CASES:
            for op, server, target in [("GET", "granary", port), ("GET", "nginx", nginx_port),
                                       ("PUT", "granary", port)]:
                script = work / f"{op.lower()}-{name}.lua"
                runs = [wrk(wrk_bin, target, script, connections, args.seconds) for _ in range(args.runs)]
                rps = statistics.median(r[0] for r in runs)
                p99 = statistics.median(r[1] for r in runs)
                row = {"case": f"{op} {name}", "server": server, "connections": connections,
                       "requests_per_s": round(rps), "gb_per_s": round(rps * size / 1e9, 3),
                       "p99_ms": round(p99, 2), "runs_rps": [round(r[0]) for r in runs]}
                rows.append(row)
                print(f"{row['case']:>9} {server:>8}: {rps:10.0f} req/s  {row['gb_per_s']:7.3f} GB/s  "
                      f"p99 {p99:7.2f} ms", flush=True)
    finally:
        if nginx_port:
            stop_nginx(nginx, work)
        proc.terminate()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args, Path(args.out))


def report(rows, args, out):
    nginx = {r["case"]: r["requests_per_s"] for r in rows if r["server"] == "nginx"}
    lines = [
        f"# granary serve vs nginx on loopback, {os.cpu_count()} CPUs (wrk, 2 threads, same machine)",
        "",
        "| case | server | connections | req/s | GB/s | p99 (ms) | / nginx |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["requests_per_s"] / nginx[r["case"]] if r["case"] in nginx else None
        r["vs_nginx"] = round(ratio, 3) if ratio else None
        lines.append(
            f"| {r['case']} | {r['server']} | {r['connections']} | {r['requests_per_s']} | {r['gb_per_s']:.3f} | "
            f"{r['p99_ms']:.2f} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    lines += ["", f"Median of {args.runs} runs of {args.seconds} s each. nginx serves the files granary "
              "stored (sendfile, open_file_cache); wrk shares the 2 CPUs with the server."]
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve-http.md").write_text(table + "\n")
    (out / "serve-http.json").write_text(json.dumps(rows, indent=2) + "\n")
    common.write_bar_chart(
        out / "serve-http.svg",
        "granary serve GET throughput relative to nginx (1.0)",
        [(r["case"], {"granary / nginx": r["vs_nginx"]}) for r in rows if r["server"] == "granary" and r["vs_nginx"]],
    )
    print(f"\nwrote {out}/serve-http.{{md,json,svg}}")


if __name__ == "__main__":
    main()
