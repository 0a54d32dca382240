#!/usr/bin/env python3
"""A fleet on one cache, measured on this machine: the index at millions
of entries, hundreds of runners at once, two servers behind one bucket,
and eviction under steady writes.

    python3 bench/fleet.py                               # all four parts
    python3 bench/fleet.py --parts index --index 100000,1000000
    python3 bench/fleet.py --parts runners,pair --seconds 10

Parts:
  index     tiny blobs written straight into the server's layout, 10^5 to
            the largest --index count: RSS per entry (over an empty
            server's), start-up after `kill -9` to the first blob served,
            and random GETs of them at 256 connections (wrk, 10 s); last,
            as root, a restart at the largest count with the page cache
            dropped, as after a reboot.
  runners   bench/fleet_load plays runners of `go build std` (the manifest,
            its ~1,000 blobs in the sizes `go build std` wrote, 4 at a
            time, then 5% new outputs) at 10, 100 and 500 at once:
            throughput, p50/p99 by request kind, CPU of the server and of
            the load generator per job; then 100 with the two on separate
            CPUs, to see which one limits. The sizes are taken once from a
            `go build std` into an empty cache (target/fleet-std-sizes).
  pair      two servers on one SeaweedFS bucket behind nginx, writing
            behind or through, round-robin or by key: when a blob written
            through one is readable through the other, and the bucket's
            requests per runner job.
  eviction  the largest index at its --max-size under steady new writes,
            with runners reading beside them: evictions per second, and
            GET latency against the same load on a server that evicts
            nothing.

Needs Go, wrk and nginx (`apt-get install wrk nginx`) and SeaweedFS (`bash
scripts/setup.sh`). Results go to bench/results/fleet.{md,json,svg}.
"""

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serve_http  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def metrics(port):
    """Sums of the server's counters by name."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    sums = {}
    for line in text.splitlines():
        match = re.match(r"(granary_\w+)(?:\{[^}]*\})? ([\d.e+-]+)$", line)
        if match:
            sums[match.group(1)] = sums.get(match.group(1), 0) + float(match.group(2))
    return sums


def port_of(url):
    return int(url.rsplit(":", 1)[1])


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- index ----------------------------------------------------------------

def layout_key(i):
    """The i-th tiny blob: CAS if i is even, an action result if odd."""
    return ("ac" if i % 2 else "cas"), f"{i:064x}"[::-1]


def write_layout(cache, start, end):
    for kind in ("ac", "cas"):
        for shard in range(256):
            (cache / kind / f"{shard:02x}").mkdir(parents=True, exist_ok=True)
    body = b"x" * 1000
    for i in range(start, end):
        kind, key = layout_key(i)
        fd = os.open(cache / kind / key[:2] / key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, body[: 100 + i % 900])
        os.close(fd)


RANDOM_GETS = """
math.randomseed(os.time())
request = function()
  local i = 2 * math.random(0, %(half)d - 1)
  return wrk.format("GET", "/cas/" .. string.format("%%064x", i):reverse())
end
"""


def index_part(binaries, wrk_bin, work, counts):
    """Each of `binaries` ({name: path}) on the same blobs at each count."""
    cache = work / "serve-cache"
    empty_rss = {}
    for name, granary in binaries.items():
        proc, url, _ = common.start_serve(granary, work, "--max-size", "1TiB")
        status(port_of(url), "GET", "/status")
        empty_rss[name] = rss(proc.pid)
        stop(proc)
    rows, written = [], 0
    for count in counts:
        started = time.perf_counter()
        write_layout(cache, written, count)
        written = count
        print(f"index: {count:,} blobs in the layout ({time.perf_counter() - started:.0f} s to write more)",
              flush=True)
        for name, granary in binaries.items():
            row = {"server": name, "entries": count,
                   **index_measures(granary, wrk_bin, work, count, empty_rss[name])}
            print(f"index: {row}", flush=True)
            rows.append(row)
    # Last, as dropping the page cache would slow every later measure.
    cold = {name: cold_restart(granary, work) for name, granary in binaries.items()}
    print(f"index: cold restarts at {written:,}: {cold}", flush=True)
    return {"empty_rss_mib": {name: round(r / 2**20, 1) for name, r in empty_rss.items()}, "rows": rows,
            "cold_restart_s": cold}


def drop_page_cache():
    """Whether the kernel's page cache, dentries and inodes could be
    dropped (root only): a restart after a reboot reads them from disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def restart_after_kill(proc, granary, work, key, cold):
    """`kill -9` of `proc`, and a new server on the same directory (the
    page cache dropped first if `cold`); the new process, its URL, its
    start-up line and the seconds to the first serving of `key`, or None
    for the cold restart where the cache cannot be dropped."""
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if cold and not drop_page_cache():
        return None
    started = time.perf_counter()
    proc, url, text = common.start_serve(granary, work, "--max-size", "1TiB")
    while status(port_of(url), "GET", key) != 200:
        time.sleep(0.001)
    return proc, url, text, time.perf_counter() - started


def index_measures(granary, wrk_bin, work, count, empty_rss):
    proc, url, text = common.start_serve(granary, work, "--max-size", "1TiB")
    rebuilt = re.search(r"(\d+) blobs, .*index rebuilt in ([\d.]+)(ms|s|µs)", text)
    assert int(rebuilt.group(1)) == count, text
    first_key = "/cas/" + layout_key(0)[1]
    assert status(port_of(url), "GET", first_key) == 200
    entry_rss = (rss(proc.pid) - empty_rss) / count
    proc, url, text, restart = restart_after_kill(proc, granary, work, first_key, cold=False)
    rebuilt = re.search(r"index rebuilt in ([\d.]+)(ms|s|µs)", text)
    rebuild = float(rebuilt.group(1)) * {"ms": 1e-3, "s": 1.0, "µs": 1e-6}[rebuilt.group(2)]
    script = work / "random-gets.lua"
    script.write_text(RANDOM_GETS % {"half": count // 2})
    rps, p99, _ = serve_http.wrk(wrk_bin, port_of(url), script, 256, 10)
    measures = {"rss_mib": round(rss(proc.pid) / 2**20, 1), "rss_bytes_per_entry": round(entry_rss, 1),
                "restart_s": round(restart, 2), "rebuild_s": round(rebuild, 2),
                "random_get_rps": round(rps), "random_get_p99_ms": round(p99, 2)}
    stop(proc)
    return measures


def cold_restart(granary, work):
    """`kill -9`, the page cache dropped, and the restart to the first blob
    served; None where the cache cannot be dropped."""
    proc, _, _ = common.start_serve(granary, work, "--max-size", "1TiB")
    restarted = restart_after_kill(proc, granary, work, "/cas/" + layout_key(0)[1], cold=True)
    if restarted is None:
        return None
    proc, _, _, took = restarted
    stop(proc)
    return round(took, 2)


# --- runners --------------------------------------------------------------

def std_sizes(go, out):
    """The sizes of the outputs `go build std` writes to a fresh cache:
    the shapes of a runner's blobs."""
    if out.exists():
        return out
    cache = common.ROOT / "target" / "fleet-std-gocache"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "GOCACHE": str(cache), "GOFLAGS": "-trimpath"}
    env.pop("GOCACHEPROG", None)
    subprocess.run([go, "build", "std"], env=env, check=True)
    sizes = sorted(p.stat().st_size for p in cache.glob("*/*-d"))
    shutil.rmtree(cache, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(map(str, sizes)) + "\n")
    return out


def base_sizes(std, work, entries):
    """`entries` sizes cycled from `go build std`'s, spread over its range."""
    sizes = [int(s) for s in std.read_text().split()]
    picked = [sizes[(i * 7919) % len(sizes)] for i in range(entries)]
    path = work / "base-sizes"
    path.write_text("\n".join(map(str, picked)) + "\n")
    return path


def load(binary, url, sizes, *args, cpu=None):
    """A run of bench/fleet_load; on CPU `cpu` alone if given."""
    pinned = ["taskset", "-c", str(cpu)] if cpu is not None else []
    env = {**os.environ, "GOMAXPROCS": "1"} if cpu is not None else None
    out = subprocess.run([*pinned, binary, "-url", url, "-sizes", str(sizes), *args], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"fleet_load failed:\n{out.stderr}")
    return json.loads(out.stdout) if out.stdout.strip() else None


def pin(pid, cpus):
    """Every thread of `pid` onto `cpus` (threads it starts later inherit)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def runners_part(granary, loader, sizes, work, counts, seconds):
    """Each count of runners sharing both CPUs with the server, then 100
    with the server on CPU 0 and the load generator on CPU 1: if the
    server's CPU is full and the generator's is not, the generator is
    not what limits the runs."""
    proc, url, _ = common.start_serve(granary, work, "--max-size", "100GiB")
    rows = []
    try:
        load(loader, url, sizes, "-fill")
        for runners in [*counts, "100 split"]:
            split = runners == "100 split"
            if split:
                pin(proc.pid, {0})
            before = cpu_seconds(proc.pid)
            result = load(loader, url, sizes, "-runners", str(100 if split else runners),
                          "-seconds", str(seconds), cpu=1 if split else None)
            server_cpu = cpu_seconds(proc.pid) - before
            errors = sum(k["errors"] for k in result["kinds"].values())
            misses = sum(k["misses"] for k in result["kinds"].values())
            if errors or misses:
                sys.exit(f"runners: {errors} errors, {misses} misses at {runners} runners: {result}")
            row = {"runners": runners, "jobs": result["jobs"],
                   "jobs_per_min": round(result["jobs"] / result["seconds"] * 60, 1),
                   "requests_per_s": round(result["requests"] / result["seconds"]),
                   "server_cpu_ms_per_job": round(server_cpu / result["jobs"] * 1000, 1),
                   "server_cores": round(server_cpu / result["seconds"], 2),
                   "load_cores": round(result["load_cpu_s"] / result["seconds"], 2),
                   "load_cpu_per_server_cpu": round(result["load_cpu_s"] / server_cpu, 2),
                   "kinds": result["kinds"]}
            if split:
                pin(proc.pid, set(range(os.cpu_count())))
            print(f"runners: {runners}: {row['jobs_per_min']} jobs/min, get p50 "
                  f"{row['kinds']['get']['p50_ms']:.1f} p99 {row['kinds']['get']['p99_ms']:.1f} ms; "
                  f"server {row['server_cores']} cores, load {row['load_cores']}", flush=True)
            rows.append(row)
    finally:
        stop(proc)
    return rows


# --- pair -----------------------------------------------------------------

def start_balancer(nginx, work, ports, by_key=False):
    """nginx in front of `ports`: round-robin, or `by_key` (consistent
    hashing of the path, so that each blob has one server)."""
    conf = work / "nginx.conf"
    port = common.free_port()
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in ports)
    if by_key:
        servers = "    hash $request_uri consistent;\n" + servers
    conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  upstream granary {{
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    location / {{
      proxy_pass http://granary;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    subprocess.run([nginx, "-c", str(conf), "-e", str(work / "nginx-error.log")], check=True)
    return port


BILL = ("granary_backing_fetches_total", "granary_backing_misses_total",
        "granary_backing_lookups_total", "granary_backing_uploads_total")


def start_pair(granary, work, env, write_through):
    """Two servers on the bench bucket; [(process, port)]."""
    servers = []
    for name in ("one", "two"):
        home = work / name
        home.mkdir()
        log = home / "serve.log"
        port = common.free_port()
        proc = subprocess.Popen(
            [granary, "serve", "--dir", str(home / "cache"), "--listen", f"127.0.0.1:{port}",
             "--max-size", "100GiB", "--backing", f"s3://{common.S3_BUCKET}/fleet",
             *(["--write-through"] if write_through else [])],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        servers.append((proc, port))
        common.wait_port(port, proc, "granary serve", log)
    return servers


def visibility(one, two, trials):
    """Blobs written through port `one` and read through port `two` at
    once, then every millisecond until they are there."""
    first_try, delays, puts = 0, [], []
    for _ in range(trials):
        blob = os.urandom(2000)
        path = "/cas/" + hashlib.sha256(blob).hexdigest()
        started = time.perf_counter()
        assert status(one, "PUT", path, blob) == 200
        written = time.perf_counter()
        puts.append(written - started)
        got = status(two, "GET", path)
        if got == 200:
            first_try += 1
        while got != 200:
            if time.perf_counter() - written > 30:
                sys.exit(f"pair: {path} not readable through the second server after 30 s")
            time.sleep(0.001)
            got = status(two, "GET", path)
        delays.append(time.perf_counter() - written)
    delays.sort()
    return {"trials": trials, "hit_at_once": first_try,
            "visible_p50_ms": round(delays[len(delays) // 2] * 1000, 1),
            "visible_p99_ms": round(delays[int(0.99 * (len(delays) - 1))] * 1000, 1),
            "visible_max_ms": round(delays[-1] * 1000, 1),
            "put_p50_ms": round(statistics.median(puts) * 1000, 2)}


def balanced_jobs(loader, nginx, sizes, work, servers, seconds, by_key):
    """Blobs written and read through nginx in front of `servers`, then
    10 runners through it: jobs, and the bucket's requests per job."""
    port = start_balancer(nginx, work, [p for _, p in servers], by_key)
    try:
        seen = visibility(port, port, 50)
        url = f"http://127.0.0.1:{port}"
        uploads = lambda: sum(metrics(p).get("granary_backing_uploads_total", 0) for _, p in servers)  # noqa: E731
        before_fill = uploads()
        load(loader, url, sizes, "-fill")
        deadline = time.time() + 60
        # The base set and its manifest, written behind before the jobs.
        while uploads() < before_fill + 1001:
            if time.time() > deadline:
                sys.exit("pair: the base set was not written behind within 60 s")
            time.sleep(0.1)
        # A few jobs first: the servers fetch from the bucket what the
        # other one stored (once per server and blob), then the bill is
        # what every further job costs.
        warming = [metrics(p) for _, p in servers]
        load(loader, url, sizes, "-runners", "4", "-seconds", "0.001")
        before = [metrics(p) for _, p in servers]
        result = load(loader, url, sizes, "-runners", "10", "-seconds", str(seconds))
        time.sleep(2)  # the last jobs' new blobs are written behind
        after = [metrics(p) for _, p in servers]
    finally:
        serve_http.stop_nginx(nginx, work)
    def bill_between(start, end):
        return {name.removeprefix("granary_backing_").removesuffix("_total"):
                sum(e.get(name, 0) - s.get(name, 0) for s, e in zip(start, end)) for name in BILL}
    bill = bill_between(before, after)
    jobs = result["jobs"]
    return {"hit_at_once": seen["hit_at_once"], "trials": seen["trials"],
            "jobs": jobs, "jobs_per_min": round(jobs / result["seconds"] * 60, 1),
            "misses": sum(k["misses"] for k in result["kinds"].values()),
            "bucket_requests": {k: int(v) for k, v in bill.items()},
            "warm_up_fetches": int(bill_between(warming, before)["fetches"]),
            "bucket_requests_per_job": {k: round(v / jobs, 1) for k, v in bill.items()},
            "bucket_requests_per_job_total": round(sum(bill.values()) / jobs, 1),
            "get_p99_ms": round(result["kinds"]["get"]["p99_ms"], 1),
            "put_p50_ms": round(result["kinds"]["put_cas"]["p50_ms"], 1),
            "put_p99_ms": round(result["kinds"]["put_cas"]["p99_ms"], 1)}


def pair_part(granary, loader, nginx, sizes, work, seconds, trials):
    """Both ways of writing to the bucket, behind (the default) and
    through, with a round-robin balancer; and behind with a balancer that
    sends each key to one server."""
    weed, weed_ports = common.start_seaweedfs(work)
    env = {**os.environ, **common.remote_env(f"http://127.0.0.1:{weed_ports[6]}", "fleet")}
    env.pop("GRANARY_REMOTE")
    rows = []
    try:
        for mode, write_through, by_key in (("write-behind, round-robin", False, False),
                                            ("write-through, round-robin", True, False),
                                            ("write-behind, by key", False, True)):
            home = work / re.sub(r"\W+", "-", mode)
            home.mkdir()
            servers = start_pair(granary, home, env, write_through)
            try:
                (_, one), (_, two) = servers
                row = {"mode": mode, "visibility": visibility(one, two, trials),
                       "balanced": balanced_jobs(loader, nginx, sizes, home, servers, seconds,
                                                 by_key)}
            finally:
                for proc, _ in servers:
                    stop(proc)
            print(f"pair: {row}", flush=True)
            rows.append(row)
    finally:
        common.stop_seaweedfs(weed, weed_ports)
    return rows


# --- eviction -------------------------------------------------------------

def eviction_part(granary, loader, sizes, work, seconds):
    """On the index part's directory: a run that evicts nothing, then one
    at --max-size just over what is stored, which the writers pass at
    once: the first pass evicts down to the low watermark (90%) under
    load, then the writers fill up to --max-size again."""
    cache = work / "serve-cache"
    rows = []
    for seed, name in enumerate(("no eviction", "evicting"), start=7):
        args = ["--max-size", "1TiB"]
        if name == "evicting":
            proc, url, _ = common.start_serve(granary, work, "--max-size", "1TiB")
            stored = metrics(port_of(url))["granary_disk_bytes"]
            stop(proc)
            args = ["--max-size", f"{int(stored) // 2**20 + 1}MiB"]
        proc, url, _ = common.start_serve(granary, work, *args)
        try:
            load(loader, url, sizes, "-fill")
            start = metrics(port_of(url))
            writers = subprocess.Popen(
                [loader, "-url", url, "-sizes", str(sizes), "-put-only", "-new", "1", "-runners", "4",
                 "-seconds", str(seconds), "-seed", str(seed)], stdout=subprocess.PIPE, text=True)
            readers = load(loader, url, sizes, "-runners", "20", "-seconds", str(seconds))
            written = json.loads(writers.communicate()[0])
            end = metrics(port_of(url))
        finally:
            stop(proc)
        evictions = end.get("granary_evictions_total", 0) - start.get("granary_evictions_total", 0)
        row = {"case": name, "entries_at_end": int(end["granary_blobs"]),
               "evictions_per_s": round(evictions / readers["seconds"]),
               "puts_per_s": round(written["kinds"]["put_cas"]["count"] / written["seconds"]),
               "get_p50_ms": readers["kinds"]["get"]["p50_ms"],
               "get_p99_ms": readers["kinds"]["get"]["p99_ms"],
               "get_max_ms": readers["kinds"]["get"]["max_ms"],
               "put_p99_ms": written["kinds"]["put_cas"]["p99_ms"],
               "errors": sum(k["errors"] for k in readers["kinds"].values())
               + sum(k["errors"] for k in written["kinds"].values())}
        print(f"eviction: {row}", flush=True)
        rows.append(row)
    return rows


# --- report ---------------------------------------------------------------

def extrapolate(index_rows):
    """Least squares of RSS and restart time on the entry count, taken to
    10^7 and 10^8."""
    index_rows = [r for r in index_rows if r["server"] == "granary"]
    xs = [r["entries"] for r in index_rows]
    if len(xs) < 2:
        return []
    def fit(ys):
        mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        return slope, mean_y - slope * mean_x
    rss_slope, rss_at_0 = fit([r["rss_mib"] for r in index_rows])
    restart_slope, restart_at_0 = fit([r["restart_s"] for r in index_rows])
    return [{"entries": n, "rss_gib": round((rss_at_0 + rss_slope * n) / 1024, 1),
             "restart_s": round(restart_at_0 + restart_slope * n, 0)} for n in (10**7, 10**8)]


def report(results, out):
    lines = [f"# A fleet on one cache: granary serve on {os.cpu_count()} CPUs", ""]
    lines += ["Measured: " + ", ".join(f"{part} {day}" for part, day in results["measured"].items())
              + f" ({results['go']}).", ""]
    index = results.get("index")
    if index:
        empty = ", ".join(f"{name} {mib} MiB" for name, mib in index["empty_rss_mib"].items())
        lines += ["## The index: tiny blobs, page cache warm", "",
                  f"RSS per entry is over an empty server's ({empty}).", "",
                  "| server | entries | RSS (MiB) | RSS per entry (B) | index rebuilt (s) "
                  "| kill -9 to first blob served (s) | random GETs at 256 conns (/s) | GET p99 (ms) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in index["rows"]:
            lines.append(f"| {r['server']} | {r['entries']:,} | {r['rss_mib']} | {r['rss_bytes_per_entry']} "
                         f"| {r['rebuild_s']} | {r['restart_s']} | {r['random_get_rps']:,} "
                         f"| {r['random_get_p99_ms']} |")
        cold = index.get("cold_restart_s") or {}
        if any(took is not None for took in cold.values()):
            largest = max(r["entries"] for r in index["rows"])
            lines += ["", f"With the page cache dropped first, as after a reboot, at {largest:,} entries: "
                      + ", ".join(f"{name} {took} s" for name, took in cold.items()) + " to the first blob served."]
        lines += ["", "On paper, a straight line through the measured points:", ""]
        for e in results.get("extrapolated", []):
            lines.append(f"- {e['entries']:.0e} entries: about {e['rss_gib']} GiB of RSS, "
                         f"{e['restart_s']:.0f} s to restart")
        lines.append("")
    runners = results.get("runners")
    if runners:
        lines += ["## Runners of `go build std` at once (manifest, ~1,000 GETs 4 at a time, 5% new PUTs)", "",
                  "\"100 split\": the server on CPU 0, the load generator on CPU 1.", "",
                  "| runners | jobs/min | requests/s | manifest p50/p99 (ms) | GET p50/p99 (ms) "
                  "| PUT p50/p99 (ms) | server CPU per job (ms) | server cores | load generator cores |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in runners:
            k = r["kinds"]
            lines.append(
                f"| {r['runners']} | {r['jobs_per_min']} | {r['requests_per_s']:,} "
                f"| {k['manifest']['p50_ms']:.1f} / {k['manifest']['p99_ms']:.1f} "
                f"| {k['get']['p50_ms']:.1f} / {k['get']['p99_ms']:.1f} "
                f"| {k['put_cas']['p50_ms']:.1f} / {k['put_cas']['p99_ms']:.1f} "
                f"| {r['server_cpu_ms_per_job']} | {r['server_cores']} | {r['load_cores']} |")
        lines.append("")
    pair = results.get("pair")
    if pair:
        lines += ["## Two servers on one bucket (SeaweedFS), nginx round-robin in front", "",
                  "Written through one server, read through the other at once (2 KB blobs, "
                  f"{pair[0]['visibility']['trials']} trials); written and read through the balancer at once "
                  "(50 trials); then 4 runners' first jobs through the balancer (the warm-up: each server "
                  "fetches what the other stored), then 10 runners through it.", "",
                  "| writes, balancer | one server, then the other: hit at once | readable after p50 / p99 / max (ms) "
                  "| PUT p50 (ms) | through the balancer: hit at once | jobs/min | runner misses "
                  "| warm-up fetches | bucket requests per job after | runner PUT p50 / p99 (ms) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in pair:
            v, b = r["visibility"], r["balanced"]
            bill = ", ".join(f"{k} {n}" for k, n in b["bucket_requests_per_job"].items())
            lines.append(f"| {r['mode']} | {v['hit_at_once']} of {v['trials']} | {v['visible_p50_ms']} / "
                         f"{v['visible_p99_ms']} / {v['visible_max_ms']} | {v['put_p50_ms']} "
                         f"| {b['hit_at_once']} of {b['trials']} | {b['jobs_per_min']} "
                         f"| {b['misses']} | {b['warm_up_fetches']:,} | {b['bucket_requests_per_job_total']} ({bill}) "
                         f"| {b['put_p50_ms']} / {b['put_p99_ms']} |")
        lines.append("")
    eviction = results.get("eviction")
    if eviction:
        lines += ["## Eviction at scale: 20 runners reading, 4 writing new blobs, at --max-size", "",
                  "| case | entries at the end | evictions/s | PUTs/s | GET p50 / p99 / max (ms) | PUT p99 (ms) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in eviction:
            lines.append(f"| {r['case']} | {r['entries_at_end']:,} | {r['evictions_per_s']:,} | {r['puts_per_s']} "
                         f"| {r['get_p50_ms']:.1f} / {r['get_p99_ms']:.1f} / {r['get_max_ms']:.0f} "
                         f"| {r['put_p99_ms']:.1f} |")
        lines.append("")
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.md").write_text(table + "\n")
    (out / "fleet.json").write_text(json.dumps(results, indent=2) + "\n")
    if runners:
        write_chart(out / "fleet.svg", runners)
    print(f"\nwrote {out}/fleet.{{md,json,svg}}")


def write_chart(path, runners):
    """GET p50 and p99 by runners at once, as bars."""
    bar, left, width = 16, 110, 420
    top = max(r["kinds"]["get"]["p99_ms"] for r in runners) * 1.15
    height = 50 + len(runners) * (2 * bar + 14)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           '<text x="10" y="20" font-size="14">GET latency by runners at once (ms)</text>']
    y = 40
    for r in runners:
        label = f"{r['runners']} runners" if isinstance(r["runners"], int) else "100, split CPUs"
        out.append(f'<text x="10" y="{y + bar}">{label}</text>')
        for name, color in (("p50_ms", "#4e79a7"), ("p99_ms", "#f28e2b")):
            value = r["kinds"]["get"][name]
            out.append(f'<rect x="{left}" y="{y}" width="{value / top * width:.1f}" height="{bar - 3}" '
                       f'fill="{color}"/>')
            out.append(f'<text x="{left + value / top * width + 4:.1f}" y="{y + bar - 5}">'
                       f'{name[:3]} {value:.1f}</text>')
            y += bar
        y += 14
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="index,runners,pair,eviction")
    parser.add_argument("--index", default="100000,1000000,3000000", help="entry counts of the index part")
    parser.add_argument("--runners", default="10,100,500")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--trials", type=int, default=200, help="writes read through the other server")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--before", help="an older granary binary, measured beside it in the index part")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    parts = args.parts.split(",")
    wrk_bin, nginx = serve_http.need("wrk"), serve_http.need("nginx")
    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-fleet-")
    loader = str(work / "fleet_load")
    subprocess.run([go, "build", "-o", loader, "."], cwd=common.ROOT / "bench" / "fleet_load", check=True)
    std = std_sizes(go, common.ROOT / "target" / "fleet-std-sizes")
    sizes = base_sizes(std, work, 1000)
    if "eviction" in parts and "index" not in parts:
        sys.exit("the eviction part runs on the index part's blobs: run the two together")
    results = {"go": common.go_version(go), "measured": {}}
    today = time.strftime("%Y-%m-%d")
    try:
        if "index" in parts:
            binaries = {"granary": granary, **({"before": os.path.abspath(args.before)} if args.before else {})}
            results["index"] = index_part(binaries, wrk_bin, work, [int(n) for n in args.index.split(",")])
            results["extrapolated"] = extrapolate(results["index"]["rows"])
            results["measured"]["index"] = today
        if "runners" in parts:
            (work / "runners").mkdir()
            results["runners"] = runners_part(granary, loader, sizes, work / "runners",
                                              [int(n) for n in args.runners.split(",")], args.seconds)
            results["measured"]["runners"] = today
        if "pair" in parts:
            (work / "pair").mkdir()
            results["pair"] = pair_part(granary, loader, nginx, sizes, work / "pair", args.seconds, args.trials)
            results["measured"]["pair"] = today
        if "eviction" in parts:
            results["eviction"] = eviction_part(granary, loader, sizes, work, args.seconds)
            results["measured"]["eviction"] = today
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Parts not run now keep their figures from the last run.
    previous = Path(args.out) / "fleet.json"
    if previous.exists():
        kept = json.loads(previous.read_text())
        for part in ("index", "runners", "pair", "eviction"):
            if part not in results and part in kept:
                results[part] = kept[part]
                results["measured"][part] = kept.get("measured", {}).get(part, "an earlier run")
                if part == "index":
                    results["extrapolated"] = kept["extrapolated"]
    report(results, Path(args.out))


if __name__ == "__main__":
    main()
