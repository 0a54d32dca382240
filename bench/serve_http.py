#!/usr/bin/env python3
"""HTTP throughput of `granary serve` against the cache servers teams run
instead: bazel-remote and gocached, with nginx as the ceiling: serving
granary's files for GETs, storing bodies as files (WebDAV) for PUTs.

    python3 bench/serve_http.py                 # 3 runs of 10 s per case
    python3 bench/serve_http.py --runs 5 --seconds 20

Loads each server with wrk (2 threads) on loopback:
  GET       1 KB blobs at 64 connections and 10 MB blobs at 16, from a set
            stored beforehand (2,000 and 8 blobs);
  PUT new   the same sizes, every request a blob the server has never seen:
            a fixed body with a 16-digit counter at its end, whose digests
            are computed here beforehand (one SHA-256 of the common part,
            copied per counter), so wrk needs no hashing and no big list of
            bodies; each run starts on an empty server;
  PUT again 1 KB blobs the server already holds, as when many runners
            upload the same outputs.
nginx (Debian's, sendfile, open_file_cache) serves the files granary
stored, and stores PUT bodies with its WebDAV module (a temporary file
renamed into place, as granary does): no hashing, no index, no
accounting, so it is the ceiling.
Each stores as it does by default: bazel-remote and granary as zstd
(neither shrinks these random bodies: granary stores them as they come
after compressing their first 256 KiB, bazel-remote compresses them
whole), gocached small blobs in SQLite. With --before BINARY, an older
granary runs too ("granary-before"), for a before-and-after in one run.

Needs wrk and nginx (`apt-get install wrk nginx`), bazel-remote (`bash
scripts/setup.sh`) and gocached (`bash scripts/peers.sh`). bench/peers.py
runs the same cases as part of its comparison. Results go to
bench/results/serve-http.{md,json,svg}.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# name, blob size, blobs stored for GETs, connections, most PUTs a second
# expected (sizes the list of new keys)
SIZES = [
    ("1KB", 1000, 2000, 64, 40_000),
    ("10MB", 10 * 1000 * 1000, 8, 16, 400),
]
COUNTER_DIGITS = 16

# Each server's paths: where a blob is read and where it is written.
PATHS = {
    "granary": ("/cas/%s", "/cas/%s"),
    "granary-before": ("/cas/%s", "/cas/%s"),
    "bazel-remote": ("/cas/%s", "/cas/%s"),
    "nginx": ("/cas/%s", "/cas/%s"),
    # gocached keys by action ID and hashes what it is given itself; the
    # digest serves as both IDs.
    "gocached": ("/action/%s", "/%s/%s"),
}
HEADERS = {"gocached": {"Want-Object": "1"}}

GET_SCRIPT = """
local paths = {}
for line in io.lines("%(list)s") do paths[#paths + 1] = line end
%(headers)s
local i = math.random(#paths)
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""

# `setup` runs in wrk's main state and numbers the threads; each thread
# then writes every `threads`-th key, so no two requests share one.
PUT_SCRIPT = """
local threads = 0
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end

local file = assert(io.open("%(common)s", "rb"))
local common = file:read("*a")
file:close()
local paths = {}
for line in io.lines("%(list)s") do paths[#paths + 1] = line end
local n

request = function()
  n = n and n + %(threads)d or first
  if n >= #paths then
    error("out of keys: raise the expected rate in bench/serve_http.py")
  end
  return wrk.format("PUT", paths[n + 1], nil, common .. string.format("%%0%(digits)dd", n))
end
"""

THREADS = 2


def need(tool):
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None)
    if not path:
        sys.exit(f"{tool} not found: install it with `apt-get install {tool}`")
    return path


def gocached_binary():
    binary = common.ROOT / ".venv" / "peers" / "gocached"
    if not os.access(binary, os.X_OK):
        sys.exit("gocached not found: run `bash scripts/peers.sh` (builds it into .venv/peers)")
    return str(binary)


class Server:
    """One server on a free loopback port with its data under `work/name`."""

    def __init__(self, name, work, binaries):
        self.name, self.dir = name, work / name
        self.dir.mkdir(parents=True)
        log = work / f"{name}.log"
        self.port = common.free_port()
        address = f"127.0.0.1:{self.port}"
        if name.startswith("granary"):
            command = [binaries[name], "serve", "--dir", str(self.dir), "--listen", address,
                       "--max-size", "100GiB"]
        elif name == "bazel-remote":
            command = [common.bazel_remote_binary(), f"--dir={self.dir}", "--max_size=100",
                       f"--http_address={address}", "--grpc_address=none"]
        else:
            command = [gocached_binary(), "--listen", address, "--cache-dir", str(self.dir)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        common.wait_port(self.port, self.proc, name, log)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nginx(nginx, work, cache, put_root, sendfile=True):
    """nginx serving `cache` (granary's layout) for GETs on one port, and
    storing PUTs under `put_root` on another; returns both ports. Without
    `sendfile`, it copies files through its own buffers as other servers do."""
    conf = work / "nginx.conf"
    port, put_port = common.free_port(), common.free_port()
    # Its workers run as an unprivileged user.
    (put_root / "tmp").mkdir(parents=True)
    for directory in (put_root, put_root / "tmp"):
        directory.chmod(0o777)
    conf.write_text(f"""
worker_processes {os.cpu_count()};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile {"on" if sendfile else "off"};
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
    listen 127.0.0.1:{port};
    location ~ ^/cas/(..)(.*)$ {{ alias {cache}/cas/$1/$1$2; }}
  }}
  server {{
    listen 127.0.0.1:{put_port};
    client_max_body_size 0;
    client_body_temp_path {put_root}/tmp;
    location /cas/ {{ root {put_root}; dav_methods PUT; create_full_put_path on; }}
  }}
}}
""")
    subprocess.run([nginx, "-c", str(conf), "-e", str(work / "nginx-error.log")], check=True)
    return port, put_port


def stop_nginx(nginx, work):
    subprocess.run([nginx, "-c", str(work / "nginx.conf"), "-e", str(work / "nginx-error.log"), "-s", "stop"],
                   check=False)


def wrk(wrk_bin, port, script, connections, seconds):
    """(requests/s, p99 in ms, requests) of one wrk run; any error ends the bench."""
    out = subprocess.run(
        [wrk_bin, f"-t{THREADS}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    )
    text = out.stdout
    if re.search(r"Non-2xx or 3xx responses|Socket errors", text) or "out of keys" in out.stderr:
        sys.exit(f"wrk saw errors:\n{text}{out.stderr}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    p99_ms = float(p99.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    return rps, p99_ms, requests


def request(method, port, path, body=None, headers=None):
    """The body of one request's answer; anything but success ends the bench."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        answer = response.read()
        if response.status not in (200, 201, 204):
            sys.exit(f"{method} {path} on port {port}: {response.status}")
        return answer
    finally:
        conn.close()


def new_keys(size, count, work, name):
    """A body shared by all but its counter, and the digests of `count`
    bodies that end in counters 0.."""
    common_part = os.urandom(size - COUNTER_DIGITS)
    path = work / f"common-{name}"
    path.write_bytes(common_part)
    prefix = hashlib.sha256(common_part)
    digests = []
    for n in range(count):
        digest = prefix.copy()
        digest.update(b"%0*d" % (COUNTER_DIGITS, n))
        digests.append(digest.hexdigest())
    return path, digests


def lua_headers(server):
    return "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in HEADERS.get(server, {}).items())


def path_of(server, op, digest):
    template = PATHS[server][0 if op == "GET" else 1]
    return template % ((digest,) * template.count("%s"))


def measure(granary, work, runs, seconds, servers=("granary", "bazel-remote", "gocached"),
            before=None):
    """Every case on every server (and granary `before`, if given), runs
    interleaved; returns the rows."""
    binaries = {"granary": granary, "granary-before": before}
    if before:
        servers = ("granary", "granary-before", *servers[1:])
    wrk_bin, nginx = need("wrk"), need("nginx")
    work.chmod(0o755)  # nginx's workers run as an unprivileged user
    results = {}  # (case, server) -> [(rps, p99, requests)]
    stored = {name: Server(name, work / "stored", binaries) for name in servers}
    nginx_port = None
    try:
        scripts = {}
        for size_name, size, count, connections, rate in SIZES:
            digests = []
            for _ in range(count):
                body = os.urandom(size)
                digest = hashlib.sha256(body).hexdigest()
                digests.append(digest)
                for server in stored.values():
                    request("PUT", server.port, path_of(server.name, "PUT", digest), body)
            # Each PUT-new run starts on an empty server: the keys serve every run.
            common_path, keys = new_keys(size, rate * seconds, work, size_name)
            for server in [*servers, "nginx"]:
                listing = work / f"get-{server}-{size_name}.list"
                listing.write_text("".join(path_of(server, "GET", d) + "\n" for d in digests))
                script = work / f"get-{server}-{size_name}.lua"
                script.write_text(GET_SCRIPT % {"list": listing, "headers": lua_headers(server)})
                scripts[("GET", size_name, server)] = script
                listing = work / f"put-{server}-{size_name}.list"
                listing.write_text("".join(path_of(server, "PUT", d) + "\n" for d in keys))
                script = work / f"put-{server}-{size_name}.lua"
                script.write_text(PUT_SCRIPT % {"common": common_path, "list": listing,
                                                "threads": THREADS, "digits": COUNTER_DIGITS})
                scripts[("PUT new", size_name, server)] = script
            if size_name == "1KB":
                # The stored blobs again: bodies from files, as in the GET set.
                for server in servers:
                    scripts[("PUT again", size_name, server)] = again_script(
                        work, server, digests, stored[server], size_name)
        put_root = work / "nginx-put"
        nginx_port, nginx_put_port = start_nginx(nginx, work, stored["granary"].dir, put_root)
        cases = [("GET", s) for s, *_ in SIZES] + [("PUT new", s) for s, *_ in SIZES] \
            + [("PUT again", "1KB")]
        for run in range(runs):
            for op, size_name in cases:
                connections = next(c for s, _, _, c, _ in SIZES if s == size_name)
                names = list(servers) if op == "PUT again" else [*servers, "nginx"]
                for server in names[run % len(names):] + names[:run % len(names)]:
                    if op == "PUT new" and server == "nginx":
                        fresh, port = None, nginx_put_port
                    elif op == "PUT new":
                        fresh = Server(server, work / f"new-{server}-{size_name}-{run}", binaries)
                        port = fresh.port
                    else:
                        fresh, port = None, nginx_port if server == "nginx" else stored[server].port
                    # Each run starts with nothing left to write back from
                    # the last, and no files of another's PUT run: nginx's
                    # 5.7 GB of 10 MB blobs, kept until its next run, halved
                    # the next server's rate.
                    os.sync()
                    try:
                        script = scripts[(op, size_name, server)]
                        result = wrk(wrk_bin, port, script, connections, seconds)
                    finally:
                        if fresh:
                            fresh.stop()
                            shutil.rmtree(fresh.dir.parent, ignore_errors=True)
                        elif op == "PUT new":
                            shutil.rmtree(put_root / "cas", ignore_errors=True)
                    results.setdefault((f"{op} {size_name}", connections, server), []).append(result)
                    print(f"{op:>9} {size_name:>4} {server:>12}: {result[0]:10.0f} req/s  "
                          f"p99 {result[1]:8.2f} ms", flush=True)
    finally:
        if nginx_port:
            stop_nginx(nginx, work)
        for server in stored.values():
            server.stop()
    rows = []
    for (case, connections, server), got in results.items():
        size = next(s for n, s, *_ in SIZES if case.endswith(n))
        rps = statistics.median(r[0] for r in got)
        rows.append({"case": case, "server": server, "connections": connections,
                     "requests_per_s": round(rps), "gb_per_s": round(rps * size / 1e9, 3),
                     "p99_ms": round(statistics.median(r[1] for r in got), 2),
                     "runs_rps": [round(r[0]) for r in got]})
    return rows


def again_script(work, server, digests, stored, size_name):
    """A PUT script that sends the stored blobs again, read back from the server."""
    blobs = work / f"again-{size_name}.body"
    blobs.mkdir(exist_ok=True)
    for digest in digests:
        if not (blobs / digest).exists():
            (blobs / digest).write_bytes(request("GET", stored.port, path_of(server, "GET", digest),
                                                 headers=HEADERS.get(server, {})))
    listing = work / f"again-{server}-{size_name}.list"
    listing.write_text("".join(f"{d}\t{path_of(server, 'PUT', d)}\n" for d in digests))
    script = work / f"again-{server}-{size_name}.lua"
    script.write_text(f"""
local blobs = {{}}
for line in io.lines("{listing}") do
  local digest, path = line:match("([^\\t]+)\\t(.+)")
  local f = assert(io.open("{blobs}/" .. digest, "rb"))
  blobs[#blobs + 1] = {{path = path, body = f:read("*a")}}
  f:close()
end
local i = math.random(#blobs)
request = function()
  i = i % #blobs + 1
  return wrk.format("PUT", blobs[i].path, nil, blobs[i].body)
end
""")
    return script


def table(rows, runs, seconds):
    """The markdown table of `rows`, each against granary's figure."""
    granary = {r["case"]: r["requests_per_s"] for r in rows if r["server"] == "granary"}
    lines = ["| case | server | connections | req/s | GB/s | p99 (ms) | granary / this |",
             "|---|---|---:|---:|---:|---:|---:|"]
    order = {"granary": 0, "granary-before": 1, "bazel-remote": 2, "gocached": 3, "nginx": 4}
    for r in sorted(rows, key=lambda r: (r["case"].startswith("PUT"), r["case"], order[r["server"]])):
        ratio = granary.get(r["case"], 0) / r["requests_per_s"] if r["requests_per_s"] else 0
        r["granary_over_this"] = round(ratio, 2)
        lines.append(f"| {r['case']} | {r['server']} | {r['connections']} | {r['requests_per_s']} | "
                     f"{r['gb_per_s']:.3f} | {r['p99_ms']:.2f} | {ratio:.2f}x |")
    lines += ["", f"Median of {runs} runs of {seconds} s each, the servers' runs interleaved; wrk "
              "(2 threads) shares the machine's CPUs with the server. PUT new: every request a blob "
              "the server has not seen, on a server started empty for the run. PUT again: blobs it "
              "holds. nginx serves the files granary stored, and stores PUTs with WebDAV "
              "(no hashing)."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--before", help="an older granary binary to measure beside it")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    before = os.path.abspath(args.before) if args.before else None
    work = common.make_work("granary-serve-bench-")
    try:
        rows = measure(granary, work, args.runs, args.seconds, before=before)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(rows, args.runs, args.seconds)
    heading = f"# Cache servers on loopback, {os.cpu_count()} CPUs (wrk, 2 threads, same machine)"
    print(f"\n{heading}\n\n{text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve-http.md").write_text(f"{heading}\n\n{text}\n")
    (out / "serve-http.json").write_text(json.dumps(rows, indent=2) + "\n")
    write_chart(out / "serve-http.svg", rows)
    print(f"\nwrote {out}/serve-http.{{md,json,svg}}")


def write_chart(path, rows):
    """Each server's requests/s relative to granary's, per case."""
    granary = {r["case"]: r["requests_per_s"] for r in rows if r["server"] == "granary"}
    groups = {}
    for r in rows:
        if r["server"] != "granary" and granary.get(r["case"]):
            groups.setdefault(r["case"], {})[r["server"]] = r["requests_per_s"] / granary[r["case"]]
    common.write_bar_chart(path, "cache servers' requests/s relative to granary serve (1.0; lower is "
                           "slower)", list(groups.items()), baseline="granary")


if __name__ == "__main__":
    main()
