#!/usr/bin/env python3
"""granary side by side with the other GOCACHEPROG helpers and cache
servers that install here (scripts/peers.sh), in one run on one machine.

    bash scripts/peers.sh && python3 bench/peers.py
    python3 bench/peers.py --cold 1 --warm 3 --fresh 2     # quicker

What it measures, each configuration's runs interleaved with the others':
  local     `go build std` cold (empty directory) and warm (the same one
            again): Go's native cache, granary, and every peer with a local
            mode (go-cacher on its disk);
  fresh     a fresh runner (empty local tier) against a warm shared cache,
            at 0 ms and 20 ms added (scripts/tcp_delay.py in front of the
            server, so HTTP, gRPC and S3 get the same delay): granary on
            S3 (SeaweedFS) against go-cache-plugin on the same S3, granary
            on granary serve (HTTP and gRPC) against go-cacher on gocached,
            and granary on bazel-remote (HTTP and gRPC); the delay proxy
            counts each delayed run's connections, requests and bytes;
  disk      what each local tier takes after `go build std`, and each
            server after its fills;
  servers   granary serve, bazel-remote and gocached under wrk (GET and
            PUT, 1 KB and 10 MB; nginx as the ceiling, storing PUTs without
            hashing), as bench/serve_http.py measures them;
  memory    each helper's peak resident memory for one 300 MB output;
  bad input what each helper does with a body that does not hash to its
            OutputID, a body shorter than its BodySize, an unknown command
            and a put without an OutputID: refused (an error answer, and the
            next request still served), stored (a later get finds it), or
            broken (no answer within 10 s, or the helper exits).

Results go to bench/results/peers.{md,json}, peers-local.svg,
peers-fresh.svg and peers-servers.svg; the versions come from
.venv/peers/status.tsv, which also says why a peer is missing.
"""

import argparse
import base64
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serve_http  # noqa: E402

PEERS = common.ROOT / ".venv" / "peers"


def peer_status():
    """name -> (module@version, state, why), from scripts/peers.sh."""
    status = PEERS / "status.tsv"
    if not status.exists():
        sys.exit("no peers installed: run `bash scripts/peers.sh` first")
    rows = {}
    for line in status.read_text().splitlines():
        name, module, state, why = (line.split("\t") + [""] * 4)[:4]
        rows[name] = (module, state, why)
    return rows


def peer(name):
    binary = PEERS / name
    return str(binary) if os.access(binary, os.X_OK) else None


# Runners over gRPC publish and read a manifest of their own: it names packs
# in the CAS, where HTTP runners of granary serve use its batch endpoint.
GRPC_SCOPE = {"GRANARY_SCOPE": "bench-grpc"}


def start_delay(address, delay_ms, counts):
    """scripts/tcp_delay.py in front of `address`, keeping its counts in
    the file `counts`; returns (process, its address)."""
    proc = subprocess.Popen(
        [sys.executable, str(common.ROOT / "scripts" / "tcp_delay.py"), "--upstream", address,
         "--delay-ms", str(delay_ms), "--counts", str(counts)],
        stdout=subprocess.PIPE, text=True,
    )
    return proc, f"127.0.0.1:{int(proc.stdout.readline())}"


def read_counts(path, timeout=30):
    """The counts a delay proxy wrote, once they stopped changing (the
    helper's connections close as it exits), or after `timeout` seconds."""
    last, deadline = None, time.time() + timeout
    while True:
        current = json.loads(path.read_text()) if path.exists() else {}
        if current == last or time.time() > deadline:
            return current
        last = current
        time.sleep(0.5)


def disk_kib(*paths):
    """[disk space in whole blocks, bytes of content] (KiB) of the files
    under `paths`."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if not existing:
        return [0, 0]
    sizes = []
    for apparent in ([], ["--apparent-size"]):
        out = subprocess.run(["du", "-sk", "--total", *apparent, *existing], capture_output=True,
                             text=True, check=True).stdout
        sizes.append(int(out.strip().splitlines()[-1].split()[0]))
    return sizes


def start_gocached(work):
    port = common.free_port()
    proc = subprocess.Popen(
        [peer("gocached"), "--listen", f"127.0.0.1:{port}", "--cache-dir", str(work / "gocached")],
        stdout=subprocess.DEVNULL, stderr=open(work / "gocached.log", "w"),
    )
    common.wait_port(port, proc, "gocached")
    return proc, f"127.0.0.1:{port}"


def go_cache_plugin(cache, endpoint, prefix):
    """The command line and variables of go-cache-plugin on the bench bucket."""
    key, secret = common.S3_KEY
    command = (f"{peer('go-cache-plugin')} --cache-dir {cache} --bucket {common.S3_BUCKET} "
               f"--prefix {prefix} --region us-east-1 --s3-endpoint-url {endpoint} --s3-path-style")
    return command, {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}


def local_phase(timer, granary, args):
    """Cold and warm `go build std` of every helper with a local mode."""
    work = timer.work
    helpers = {"native": None, "granary": None}
    if peer("go-cacher"):
        helpers["go-cacher"] = lambda d: f"{peer('go-cacher')} --cache-dir {d}"
    for i in range(args.cold):
        for name, prog in rotate(helpers.items(), i):
            directory = work / f"local-{name}"
            shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(work / f"gocache-{name}", ignore_errors=True)
            run_local(timer, f"{name}-cold", name, prog, work)
    # What each local tier takes after one `go build std` (granary's is in
    # GOCACHE, as Go's own; a peer's in its directory, plus what go keeps
    # in GOCACHE beside it).
    disk = {name: disk_kib(work / f"local-{name}", work / f"gocache-{name}") for name in helpers}
    for i in range(args.warm):
        for name, prog in rotate(helpers.items(), i):
            run_local(timer, f"{name}-warm", name, prog, work)
    return disk


def run_local(timer, config, name, prog, work):
    """One build of `name`: go's own cache (and granary's) in
    gocache-NAME, a peer's in local-NAME."""
    go_cache = work / f"gocache-{name}"
    timer.run(config, go_cache, prog=prog and prog(work / f"local-{name}"))


def rotate(items, i):
    items = list(items)
    shift = i % len(items)
    return items[shift:] + items[:shift]


def fresh_phase(timer, granary, args):
    """Fresh runners against warm shared caches, at 0 ms and with a delay;
    returns the delay's label, the traffic of each delayed run (counted by
    the delay proxy) and each server's disk use."""
    work = timer.work
    weed, weed_ports = common.start_seaweedfs(work)
    s3 = f"127.0.0.1:{weed_ports[6]}"
    serve, serve_url, _ = common.start_serve(granary, work)
    bazel_grpc = common.free_port()
    bazel, bazel_url = common.start_bazel_remote(work, grpc_port=bazel_grpc)
    processes = [serve, bazel]
    servers = {"s3": s3, "serve": serve_url.removeprefix("http://"),
               "bazel-remote": bazel_url.removeprefix("http://"),
               "bazel-remote-grpc": f"127.0.0.1:{bazel_grpc}"}
    if peer("gocached") and peer("go-cacher"):
        gocached, servers["gocached"] = start_gocached(work)
        processes.append(gocached)
    delay = f"+{args.delay_ms:g}ms"
    traffic = {}
    try:
        slow, counts = {}, {}
        for name, address in servers.items():
            counts[name] = work / f"counts-{name}.json"
            proxy, slow[name] = start_delay(address, args.delay_ms, counts[name])
            processes.append(proxy)

        def configs(address_of):
            """name -> (GOCACHEPROG command or None for granary, variables or
            the peer's server, the server's name)."""
            out = {
                "granary@s3": (None, common.remote_env(f"http://{address_of['s3']}", "bench"), "s3"),
                "granary@serve": (None, {"GRANARY_REMOTE": f"http://{address_of['serve']}"}, "serve"),
                "granary@serve-grpc": (
                    None, {"GRANARY_REMOTE": f"grpc://{address_of['serve']}", **GRPC_SCOPE},
                    "serve"),
                "granary@bazel-remote": (
                    None, {"GRANARY_REMOTE": f"http://{address_of['bazel-remote']}"}, "bazel-remote"),
                "granary@bazel-remote-grpc": (
                    None, {"GRANARY_REMOTE": f"grpc://{address_of['bazel-remote-grpc']}",
                           **GRPC_SCOPE},
                    "bazel-remote-grpc"),
            }
            if peer("go-cache-plugin"):
                out["go-cache-plugin@s3"] = ("go-cache-plugin", f"http://{address_of['s3']}", "s3")
            if "gocached" in address_of:
                out["go-cacher@gocached"] = (
                    "go-cacher", f"http://{address_of['gocached']}", "gocached")
            return out

        def command(kind, target, cache):
            if kind == "go-cache-plugin":
                return go_cache_plugin(cache, target, "peer-bench")
            return f"{peer('go-cacher')} --cache-dir {cache} --cache-server {target}", {}

        # Fill every shared cache: one cold build each, then (granary) two
        # more that publish the manifest of the scope, as a CI history would.
        # The gRPC configurations find the entries their HTTP ones put, and
        # publish a manifest of their own.
        for name, (kind, target, _) in configs(servers).items():
            cache = work / f"fill-{name}"
            if kind is None:
                for i in range(3):
                    timer.run(f"fill-{name}-{i}", cache / str(i), target, fresh=True)
            else:
                prog, env = command(kind, target, cache / "local")
                timer.run(f"fill-{name}", cache / "go", env, fresh=True, prog=prog)
        disk = {"granary serve": disk_kib(work / "serve-cache"),
                "bazel-remote": disk_kib(work / "bazel-remote")}
        if "gocached" in servers:
            disk["gocached"] = disk_kib(work / "gocached")

        for i in range(args.fresh):
            for address_of, suffix in ((servers, ""), (slow, delay)):
                for name, (kind, target, server) in rotate(configs(address_of).items(), i):
                    config = f"{name}{suffix}"
                    cache = work / f"fresh-{config}"
                    shutil.rmtree(cache, ignore_errors=True)
                    before = read_counts(counts[server]) if suffix else None
                    if kind is None:
                        timer.run(config, cache / "go", {**target, "GRANARY_READ_ONLY": "true"})
                    else:
                        prog, env = command(kind, target, cache / "local")
                        timer.run(config, cache / "go", env, prog=prog)
                    if suffix:
                        after = read_counts(counts[server])
                        traffic.setdefault(name, []).append(
                            {k: after.get(k, 0) - before.get(k, 0) for k in after})
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        for proc in processes:
            proc.kill()
            proc.wait()
        common.stop_seaweedfs(weed, weed_ports)
    return delay, traffic, disk


class Helper:
    """A GOCACHEPROG helper driven through its protocol."""

    def __init__(self, command, env, cwd):
        # Unbuffered, so that select() sees every line the helper wrote.
        self.proc = subprocess.Popen(
            shlex.split(command), env=env, cwd=cwd, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self.next_id = 1
        self.answer(timeout=30)  # the KnownCommands line

    def send(self, request, body=None):
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        if body is not None:
            self.proc.stdin.write(b'"' + base64.b64encode(body) + b'"\n')
        self.proc.stdin.flush()

    def answer(self, timeout=10):
        """The next response line, or None after `timeout` seconds or if
        the helper exited."""
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line.strip() else None

    def request(self, command, **fields):
        request = {"ID": self.next_id, "Command": command, **fields}
        self.next_id += 1
        return request

    def close(self):
        try:
            self.send(self.request("close"))
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()


def b64(data):
    return base64.b64encode(data).decode()


def bad_input_phase(helpers, work):
    """What each helper does with four kinds of bad input."""
    results = {}
    for name, (command, env) in helpers.items():
        row = {}
        for case in ("hash mismatch", "short body", "unknown command", "no OutputID"):
            directory = work / f"bad-{name}-{case.replace(' ', '-')}"
            directory.mkdir(parents=True, exist_ok=True)
            try:
                helper = Helper(command(directory), env, directory)
            except (OSError, json.JSONDecodeError):
                row[case] = "did not start"
                continue
            action = hashlib.sha256(f"{name} {case}".encode()).digest()
            body = b"the real output\n" * 64
            if case == "hash mismatch":
                put = helper.request("put", ActionID=b64(action),
                                     OutputID=b64(hashlib.sha256(b"another").digest()),
                                     BodySize=len(body))
                helper.send(put, body)
            elif case == "short body":
                put = helper.request("put", ActionID=b64(action),
                                     OutputID=b64(hashlib.sha256(body).digest()),
                                     BodySize=len(body) * 2)
                helper.send(put, body)
            elif case == "unknown command":
                helper.send(helper.request("frobnicate", ActionID=b64(action)))
            else:
                put = helper.request("put", ActionID=b64(action), BodySize=len(body))
                helper.send(put, body)
            first = helper.answer()
            if first is None:
                row[case] = "broken: no answer in 10 s" if helper.proc.poll() is None \
                    else f"broken: exited ({helper.proc.returncode})"
                helper.close()
                continue
            helper.send(helper.request("get", ActionID=b64(action)))
            second = helper.answer()
            helper.close()
            if second is None:
                row[case] = "broken: the next request got no answer"
            elif first.get("Err"):
                row[case] = "refused"
            elif case == "unknown command":
                row[case] = "ignored (no error)"
            elif not second.get("Miss") and second.get("Err") is None:
                row[case] = "stored (served later)"
            else:
                row[case] = "accepted silently, not served"
        results[name] = row
        print(f"{name:>16}: {row}", flush=True)
    return results


def memory_phase(helpers, work, size):
    """Each helper's peak RSS (MiB) for one output of `size` bytes."""
    results = {}
    block = os.urandom(3 << 20)  # a multiple of 3: base64 pieces join up
    blocks, rest = divmod(size, len(block))
    digest = hashlib.sha256()
    for _ in range(blocks):
        digest.update(block)
    digest.update(block[:rest])
    for name, (command, env) in helpers.items():
        directory = work / f"memory-{name}"
        directory.mkdir(parents=True, exist_ok=True)
        helper = Helper(command(directory), env, directory)
        request = helper.request("put", ActionID=b64(hashlib.sha256(name.encode()).digest()),
                                 OutputID=b64(digest.digest()), BodySize=size)
        stdin = helper.proc.stdin
        stdin.write((json.dumps(request) + "\n").encode() + b'"')
        for _ in range(blocks):
            stdin.write(base64.b64encode(block))
        stdin.write(base64.b64encode(block[:rest]) + b'"\n')
        stdin.flush()
        answer = helper.answer(timeout=120)
        peak = peak_rss_mib(helper.proc.pid)
        helper.close()
        results[name] = {"peak_mib": peak, "ok": bool(answer) and not answer.get("Err")}
        print(f"{name:>16}: {peak} MiB peak, answer {answer}", flush=True)
        shutil.rmtree(directory, ignore_errors=True)
    return results


def peak_rss_mib(pid):
    """The peak resident memory (VmHWM) of a running process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=3, help="cold local runs per helper")
    parser.add_argument("--warm", type=int, default=5, help="warm local runs per helper")
    parser.add_argument("--fresh", type=int, default=3, help="fresh-runner runs per configuration")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the delayed runs' latency")
    parser.add_argument("--memory-mb", type=int, default=300, help="the big output's size")
    parser.add_argument("--server-runs", type=int, default=3, help="wrk runs per server and case")
    parser.add_argument("--server-seconds", type=int, default=10, help="each wrk run's length")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()

    status = peer_status()
    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-peers-")
    timer = common.BuildTimer(go, granary, work)
    try:
        local_disk = local_phase(timer, granary, args)
        delay, traffic, server_disk = fresh_phase(timer, granary, args)
        servers_work = common.make_work("granary-peers-servers-")
        try:
            servers = serve_http.measure(granary, servers_work, args.server_runs, args.server_seconds)
        finally:
            shutil.rmtree(servers_work, ignore_errors=True)
        (work / "protocol").mkdir()
        weed, weed_ports = common.start_seaweedfs(work / "protocol")
        endpoint = f"http://127.0.0.1:{weed_ports[6]}"
        helpers = {"granary": (lambda d: f"{granary} prog --dir {d}",
                               {**os.environ, "GRANARY_TRIM_INTERVAL": "none"})}
        if peer("go-cacher"):
            helpers["go-cacher"] = (lambda d: f"{peer('go-cacher')} --cache-dir {d}", dict(os.environ))
        if peer("go-cache-plugin"):
            def plugin(d):
                return go_cache_plugin(d, endpoint, "protocol")[0]
            helpers["go-cache-plugin"] = (plugin, {**os.environ,
                                                   **go_cache_plugin(work, endpoint, "p")[1]})
        try:
            bad = bad_input_phase(helpers, work)
            memory = memory_phase(helpers, work, args.memory_mb << 20)
        finally:
            common.stop_seaweedfs(weed, weed_ports)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(timer, go, Path(args.out), args, delay, status, bad, memory,
           {"traffic": traffic, "local_disk_kib": local_disk, "server_disk_kib": server_disk,
            "servers": servers})


def report(timer, go, out, args, delay, status, bad, memory, extra):
    median = {name: statistics.median(t) for name, t in timer.times.items()
              if not name.startswith("fill")}
    rows = [{"config": name, "median_s": round(m, 3),
             "runs_s": [round(t, 3) for t in timer.times[name]]} for name, m in median.items()]
    lines = [f"# granary and its peers: {common.go_version(go)}, {os.cpu_count()} CPUs", ""]
    lines += ["## Peers", "", "| peer | module@version | state |", "|---|---|---|"]
    lines += [f"| {name} | {module} | {state}{': ' + why if why else ''} |"
              for name, (module, state, why) in status.items()]
    lines += ["", "## Local `go build std`", "",
              "| helper | cold (s) | / native | warm (s) | / native |", "|---|---:|---:|---:|---:|"]
    for helper in ("native", "granary", "go-cacher"):
        if f"{helper}-cold" not in median:
            continue
        cold, warm = median[f"{helper}-cold"], median[f"{helper}-warm"]
        lines.append(f"| {helper} | {cold:.2f} | {cold / median['native-cold']:.2f}x | "
                     f"{warm:.2f} | {warm / median['native-warm']:.2f}x |")
    lines += ["", f"## A fresh runner against a warm shared cache, at 0 ms and {delay}", "",
              "| helper / remote | 0 ms (s) | / granary warm | " + delay + " (s) | / granary warm |",
              "|---|---:|---:|---:|---:|"]
    warm = median["granary-warm"]
    for name in [n for n in median if "@" in n and not n.endswith(delay)]:
        slow = median.get(f"{name}{delay}")
        lines.append(f"| {name} | {median[name]:.2f} | {median[name] / warm:.2f}x | "
                     f"{slow:.2f} | {slow / warm:.2f}x |" if slow else
                     f"| {name} | {median[name]:.2f} | {median[name] / warm:.2f}x | | |")
    lines += ["", f"## What a fresh runner sends and receives (the {delay} runs, counted by the "
              "delay proxy; medians)", "",
              "| helper / remote | connections | HTTP/1.1 requests | MB sent | MB received |",
              "|---|---:|---:|---:|---:|"]
    for name, runs in extra["traffic"].items():
        def med(key):
            return statistics.median(run.get(key, 0) for run in runs)
        requests = "(HTTP/2)" if name.endswith("grpc") else f"{med('http_requests'):.0f}"
        lines.append(f"| {name} | {med('connections'):.0f} | {requests} | "
                     f"{med('to_server') / 1e6:.1f} | {med('to_client') / 1e6:.1f} |")
    lines += ["", "## Disk used after `go build std` (MiB: in whole blocks, and of content)", "",
              "| local tier | on disk | content |", "|---|---:|---:|"]
    lines += [f"| {name} | {disk / 1024:.0f} | {content / 1024:.0f} |"
              for name, (disk, content) in extra["local_disk_kib"].items()]
    lines += ["", "| server, after its fills | on disk | content |", "|---|---:|---:|"]
    lines += [f"| {name} | {disk / 1024:.0f} | {content / 1024:.0f} |"
              for name, (disk, content) in extra["server_disk_kib"].items()]
    lines += ["", "## Cache servers: requests/s on loopback (wrk, 2 threads)", "",
              serve_http.table(extra["servers"], args.server_runs, args.server_seconds)]
    cases = ("hash mismatch", "short body", "unknown command", "no OutputID")
    lines += ["", "## Bad input", "", "| helper | " + " | ".join(cases) + " |",
              "|---|" + "---|" * len(cases)]
    lines += [f"| {name} | " + " | ".join(row[c] for c in cases) + " |" for name, row in bad.items()]
    lines += ["", f"## Memory for one {args.memory_mb} MB output", "",
              "| helper | peak RSS (MiB) | put answered |", "|---|---:|---|"]
    lines += [f"| {name} | {m['peak_mib']} | {'yes' if m['ok'] else 'no'} |"
              for name, m in memory.items()]
    lines += ["", f"Local: {args.cold} cold and {args.warm} warm runs of each helper, fresh runners "
              f"{args.fresh} runs of each configuration, interleaved with rotating order; medians. "
              f"{delay}: scripts/tcp_delay.py delays every byte from client to server (S3, HTTP, gRPC "
              "alike). granary's fresh runners are read-only with prefetch on, after two fills "
              "that publish the manifest; peers' runners read and write as they do by default."]
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.md").write_text(table + "\n")
    (out / "peers.json").write_text(json.dumps(
        {"go": common.go_version(go), "rows": rows, "bad_input": bad, "memory": memory,
         "peers": {n: list(s) for n, s in status.items()}, **extra}, indent=2) + "\n")
    local = [(helper, {kind: median[f"{helper}-{kind}"] / median[f"native-{kind}"]
                       for kind in ("cold", "warm")})
             for helper in ("granary", "go-cacher") if f"{helper}-cold" in median]
    common.write_bar_chart(out / "peers-local.svg",
                           "go build std with a local cache, relative to Go's own (lower is better)",
                           local)
    fresh = [(name, {"0 ms": median[name] / warm,
                     delay: median.get(f"{name}{delay}", 0) / warm})
             for name in median if "@" in name and not name.endswith(delay)]
    common.write_bar_chart(out / "peers-fresh.svg",
                           "go build std on a fresh runner, relative to granary warm (lower is better)",
                           fresh, baseline="granary warm")
    serve_http.write_chart(out / "peers-servers.svg", extra["servers"])
    print(f"\nwrote {out}/peers.{{md,json}}, peers-local.svg, peers-fresh.svg and peers-servers.svg")


if __name__ == "__main__":
    main()
