#!/usr/bin/env python3
"""A real project's whole CI job (`go build ./...`, `go vet ./...`,
`go test ./...`) on a fresh runner, cached the ways teams cache it today
and with granary, in one run.

    python3 bench/ci_job.py                         # goldmark, 3 runs of each
    python3 bench/ci_job.py --module caddy --runs 1
    python3 bench/ci_job.py --delay-ms 20 --rate-mbps 800
    TMPDIR=/dev/shm python3 bench/ci_job.py         # on a tmpfs: see the end

Modules (third-party, pinned, fetched with the go command once, then
pre-downloaded for every case: GOPROXY=off, one module cache, except in
the tarball-with-modules case, whose tarball holds the module cache as
actions/setup-go's does):
  goldmark  github.com/yuin/goldmark v1.8.7: small, its tests read files
  caddy     github.com/caddyserver/caddy/v2 v2.11.9: a large program (its
            job compiles hundreds of packages; one cold job took about 12
            minutes on 2 CPUs)

Each module becomes a git repository (commit 0) with ten more commits,
each changing one package (an init function added to the package with
the most dependencies, then the next, ...: code that runs, so that every
binary linking it changes). Runners check out at
one path, as CI workspaces are. Cases, each timed from after the
checkout to the end of the job:
  no-cache        an empty GOCACHE
  tarball         actions/cache: download a tar.zst of a previous job's
                  whole GOCACHE from the object store, unpack, run the job,
                  pack (tar | zstd -T0 -3) and upload it again
  tarball+modules the same with the module cache in the tarball
  granary-s3      `granary mtimes`, then the job with granary as the
                  helper, its remote S3 (SeaweedFS), prefetch on, each go
                  command's close detached (GRANARY_DETACH), and at the
                  end the job summary (`granary stats --markdown`), which
                  waits for the last publication: as the GitHub action
                  and the GitLab template run a job
  granary-s3-named  granary-s3 with GRANARY_LOOKUPS=named: a miss of
                  an action no manifest names is not looked up
  granary-s3-waiting  granary-s3 with GRANARY_DETACH=false: each close
                  waits for its uploads and manifest
  granary-serve   the same with `granary serve` as the remote
  laptop          native go with a warm cache and a checkout kept in
                  place (`git checkout` of the commit): the floor
  laptop-granary  the laptop with granary as its helper, no remote (it
                  reads cmd/go's own cache format): the floor of any
                  GOCACHEPROG helper, a pipe round trip per get
Scenarios:
  same   the job of commit 0 ran before
  next   the job of commit 0 ran before; the runner builds commit 1
  grown  the jobs of commits 0 to 9 ran before, one after another; the
         runner builds commit 10. The tarball keeps everything ever put;
         granary's manifest names what the last job used.
The jobs before are shared: those of commit 0 serve same and next, then
commits 1 to 9 run for grown.
Every transfer goes through scripts/s3_proxy.py, which adds --delay-ms to
each request and shares --rate-mbps among them. Timed runners upload to
a key (tarball) or namespace (granary) of their own (one per case and
run), reading `main`, so every run of a case sees the same store, as a
pull request's first job does (on S3 its manifest names `main`'s packs
and packs only what it built). The jobs before the timed ones run
without the proxy.

Rows: job wall time (median), bytes moved (tarball: down + up; granary:
its remote statistics, down + up), and test packages reused ((cached)).
Results go to bench/results/ci-job-<module>.{md,json,svg}.

The bench's files go to TMPDIR. The committed results ran with
TMPDIR=/dev/shm (a tmpfs): on the test machines' journal-less ext4,
creating files after deletions is slow enough to skew every case that
fills a cache (common.make_work warns; docs/benchmarks.md says why).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODULES = {
    "goldmark": ("github.com/yuin/goldmark", "v1.8.7"),
    "caddy": ("github.com/caddyserver/caddy/v2", "v2.11.9"),
}
JOB = [["build", "./..."], ["vet", "./..."], ["test", "./..."]]
CASES = ["no-cache", "tarball", "tarball+modules", "granary-s3", "granary-s3-named",
         "granary-s3-waiting", "granary-serve", "laptop", "laptop-granary"]
# Variants of a granary case, by suffix: settings on top of the case's.
VARIANTS = {"-named": {"GRANARY_LOOKUPS": "named"}, "-waiting": {"GRANARY_DETACH": "false"}}


def remote_of(case):
    """The remote a granary case uses, and its variant's settings."""
    for suffix, settings in VARIANTS.items():
        if case.endswith(suffix):
            return case.removesuffix(suffix), settings
    return case, {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", choices=sorted(MODULES), default="goldmark")
    parser.add_argument("--runs", type=int, default=3, help="runs of each case in each scenario")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added to every request")
    parser.add_argument("--rate-mbps", type=float, default=800.0,
                        help="bandwidth to the store, shared (800 Mbit/s: 100 MB/s)")
    parser.add_argument("--scenarios", default="same,next,grown")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="the cases to time (a large module's no-cache job takes minutes)")
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS), help="directory for the results")
    args = parser.parse_args()
    for tool in ("git", "tar", "zstd", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install {tool}")

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-ci-job-")
    args.filesystem = common.filesystem(work)
    bench = Bench(go, granary, work, args)
    try:
        bench.prepare(*MODULES[args.module])
        for scenario in args.scenarios.split(","):
            bench.scenario(scenario)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(bench, go, args)


class Bench:
    def __init__(self, go, granary, work, args):
        self.go, self.granary, self.work, self.args = go, granary, work, args
        self.checkout = work / "runner" / "src"
        self.results = []  # (scenario, case, seconds, bytes moved, reused, test packages)
        self.weed, self.ports = common.start_seaweedfs(work)
        s3 = f"http://127.0.0.1:{self.ports[6]}"
        filer = f"http://127.0.0.1:{self.ports[4]}"
        self.s3_proxy, self.slow_s3 = common.start_proxy(s3, args.delay_ms, args.rate_mbps)
        self.filer_proxy, self.slow_filer = common.start_proxy(filer, args.delay_ms, args.rate_mbps)
        self.s3, self.filer = s3, filer
        self.serve = None
        # The jobs run before the timed ones so far, and the laptop's cache
        # and checkout they left.
        self.history = 0
        self.laptop_cache = work / "laptop-cache"
        self.laptop_checkout = work / "laptop-checkout"

    def stop(self):
        for proc in (self.s3_proxy, self.filer_proxy, getattr(self, "serve_proxy", None)):
            if proc:
                proc.kill()
        if self.serve:
            self.serve.terminate()
            self.serve.wait()
        common.stop_seaweedfs(self.weed, self.ports)

    def env(self, cache, gopath=None):
        env = common.go_env(cache, self.work)
        env["GOPATH"] = str(gopath or self.work / "gopath")
        env["GOFLAGS"] = "-mod=mod"
        return env

    def prepare(self, module, version):
        """The module as a git repository with eleven commits, its
        dependencies in the shared module cache."""
        self.origin = common.fetch_module(self.go, self.work, module, version,
                                          self.work / "origin")
        git(self.origin, "init", "-q", "-b", "main")
        git(self.origin, "add", "-A")
        git(self.origin, "commit", "-q", "-m", "commit 0")
        listed = subprocess.run(
            [self.go, "list", "-f", "{{.ImportPath}} {{.Dir}} {{len .Deps}} {{.Name}}", "./..."],
            cwd=self.origin, env=self.env(self.work / "list-cache"), capture_output=True, text=True,
            check=True).stdout.split("\n")
        packages = sorted((line.split() for line in listed if line),
                          key=lambda p: -int(p[2]))
        self.commits = [git(self.origin, "rev-parse", "HEAD").strip()]
        for k in range(1, 11):
            # Commit 10 changes commit 1's package again: grown differs from
            # next only in what the store holds.
            path, directory, _, name = packages[(k - 1) % min(9, len(packages))]
            target = sorted(f for f in Path(directory).glob("*.go") if not f.name.endswith("_test.go"))[0]
            with open(target, "a") as f:
                # Code that runs, so every binary that links the package
                # changes (an unused function would be linked away, and the
                # test binaries, and so their results, would stay the same).
                f.write(f"\n// granaryBench{k} is commit {k}'s change.\nvar granaryBench{k} = {k}\n\n"
                        f"func init() {{ granaryBench{k}++ }}\n")
            git(self.origin, "commit", "-q", "-am", f"commit {k}: {path}")
            self.commits.append(git(self.origin, "rev-parse", "HEAD").strip())
            print(f"commit {k} changes {path}", flush=True)
        shutil.rmtree(self.work / "list-cache", ignore_errors=True)

    def fresh_checkout(self, commit):
        shutil.rmtree(self.checkout, ignore_errors=True)
        self.checkout.parent.mkdir(parents=True, exist_ok=True)
        git(self.checkout.parent, "clone", "-q", "--no-checkout", str(self.origin), str(self.checkout))
        git(self.checkout, "checkout", "-q", commit)

    def job(self, env):
        """Runs the job; returns (seconds, test packages, reused)."""
        start = time.perf_counter()
        tested = reused = 0
        steps, slow = [], []
        for args in JOB:
            step = time.perf_counter()
            out = subprocess.run([self.go, *args], cwd=self.checkout, env=env,
                                 capture_output=True, text=True)
            if args[0] == "test":
                results = [l for l in out.stdout.splitlines() if re.match(r"(ok|FAIL)\s", l)]
                tested = len(results)
                reused = sum("(cached)" in l for l in results)
                timed = [(float(m[2]), m[1]) for l in results
                         if (m := re.match(r"\S+\s+(\S+)\s+([0-9.]+)s", l))]
                slow = [f"{package.rsplit('/', 1)[-1]} {seconds:.1f}"
                        for seconds, package in sorted(timed, reverse=True)[:3] if seconds >= 5]
            elif out.returncode != 0 and args[0] == "build":
                sys.exit(f"go {' '.join(args)} failed:\n{out.stderr[-3000:]}")
            steps.append(f"{args[0]} {time.perf_counter() - step:.2f}")
            if slow and args[0] == "test":
                steps.append(f"slowest tests: {', '.join(slow)}")
        # Where a job's time goes, for whoever reads the log.
        print(f"  {', '.join(steps)}", flush=True)
        return time.perf_counter() - start, tested, reused

    def granary_env(self, cache, remote, namespace, read=None):
        env = self.env(cache)
        env.update(GOCACHEPROG=f"{self.granary} prog", GRANARY_TRIM_INTERVAL="none",
                   GRANARY_NAMESPACE=namespace, GRANARY_DETACH="true", **remote)
        if read:
            env["GRANARY_READ_NAMESPACES"] = read
        return env

    def summary(self, cache):
        """The job summary's step: `granary stats --markdown`, which waits
        for the detached publications of the job's go commands."""
        subprocess.run([self.granary, "--dir", str(cache), "stats", "--markdown"], check=True,
                       stdout=subprocess.DEVNULL)

    def remotes(self, slow):
        s3 = common.remote_env(self.slow_s3 if slow else self.s3, self.args.module)
        serve = {"GRANARY_REMOTE": self.slow_serve if slow else self.serve_url}
        return {"granary-s3": s3, "granary-serve": serve}

    def scenario(self, scenario):
        """The jobs before, then the timed runners of `scenario`."""
        print(f"\n== {scenario}", flush=True)
        history = 10 if scenario == "grown" else 1
        target = self.commits[{"same": 0, "next": 1, "grown": 10}[scenario]]
        self.advance(history)
        for run in range(self.args.runs):
            for case in self.args.cases.split(","):
                seconds, moved, tested, reused = self.timed(case, scenario, run, target)
                # A large module's runner holds a GiB or more.
                shutil.rmtree(self.work / f"runner-{scenario}-{case}-{run}", ignore_errors=True)
                self.results.append((scenario, case, seconds, moved, reused, tested))
                print(f"{scenario:>6} {case:>16}: {seconds:7.2f} s {moved / 2**20:8.1f} MiB "
                      f"{reused}/{tested} tests reused", flush=True)

    def advance(self, history):
        """Runs the jobs of the commits up to `history` not yet run: a
        laptop-like native cache and checkout kept from job to job (what a
        restore-and-save tarball accumulates), and granary's fresh runners,
        each writing to the namespace main; then packs the tarballs."""
        if self.serve is None:
            serve_work = self.work / "serve"
            serve_work.mkdir()
            self.serve, self.serve_url, _ = common.start_serve(self.granary, serve_work)
            self.serve_proxy, self.slow_serve = common.start_proxy(
                self.serve_url, self.args.delay_ms, self.args.rate_mbps)
        if history <= self.history:
            return
        for i in range(self.history, history):
            commit = self.commits[i]
            shutil.rmtree(self.checkout, ignore_errors=True)
            if i == 0:
                self.fresh_checkout(commit)
            else:
                subprocess.run(["cp", "-a", str(self.laptop_checkout), str(self.checkout)], check=True)
                git(self.checkout, "checkout", "-q", commit)
            self.job(self.env(self.laptop_cache))
            shutil.rmtree(self.laptop_checkout, ignore_errors=True)
            subprocess.run(["cp", "-a", str(self.checkout), str(self.laptop_checkout)], check=True)
            timed = {remote_of(case)[0] for case in self.args.cases.split(",")}
            for name, remote in self.remotes(False).items():
                if name not in timed:
                    continue
                self.fresh_checkout(commit)
                subprocess.run([self.granary, "mtimes", str(self.checkout)], check=True,
                               stdout=subprocess.DEVNULL)
                fill = self.work / f"fill-{name}-{i}"
                self.job(self.granary_env(fill, remote, "main"))
                self.summary(fill)
                # What it stored is in the remote now; a large module's
                # runner holds a GiB or more, too much to keep ten of in a
                # tmpfs.
                shutil.rmtree(fill)
        self.history = history
        for name, with_modules in (("tarball", False), ("tarball+modules", True)):
            tarball = self.work / "tarball.tar.zst"
            pack(self.laptop_cache, self.work / "gopath" if with_modules else None, tarball)
            put(self.filer, f"/tarballs/{history}/{name}.tar.zst", tarball)
            print(f"{name}: {tarball.stat().st_size / 2**20:.1f} MiB after {history} jobs", flush=True)

    def timed(self, case, scenario, run, target):
        runner = self.work / f"runner-{scenario}-{case}-{run}"
        runner.mkdir()
        if case.startswith("laptop"):
            shutil.rmtree(self.checkout, ignore_errors=True)
            subprocess.run(["cp", "-a", str(self.laptop_checkout), str(self.checkout)], check=True)
            subprocess.run(["cp", "-a", str(self.laptop_cache), str(runner / "cache")], check=True)
            env = self.env(runner / "cache")
            if case == "laptop-granary":
                env.update(GOCACHEPROG=f"{self.granary} prog", GRANARY_TRIM_INTERVAL="none")
            start = time.perf_counter()
            git(self.checkout, "checkout", "-q", target)
            _, tested, reused = self.job(env)
            return time.perf_counter() - start, 0, tested, reused
        self.fresh_checkout(target)
        start = time.perf_counter()
        if case == "no-cache":
            _, tested, reused = self.job(self.env(runner / "cache"))
            return time.perf_counter() - start, 0, tested, reused
        if case.startswith("tarball"):
            # The module cache goes where every runner has it (go keys a
            # dependency's build on its folder): the shared one steps aside.
            with_modules = case == "tarball+modules"
            gopath = self.work / "gopath" if with_modules else None
            if with_modules:
                (self.work / "gopath").rename(self.work / "gopath-shared")
            try:
                tarball = runner / "down.tar.zst"
                get(self.slow_filer, f"/tarballs/{self.history}/{case}.tar.zst", tarball)
                unpack(tarball, runner / "cache", gopath)
                _, tested, reused = self.job(self.env(runner / "cache", gopath))
                packed = runner / "up.tar.zst"
                pack(runner / "cache", gopath, packed)
                put(self.slow_filer, f"/tarballs/timed/{scenario}-{case}-{run}.tar.zst", packed)
            finally:
                if with_modules:
                    shutil.rmtree(self.work / "gopath", ignore_errors=True)
                    (self.work / "gopath-shared").rename(self.work / "gopath")
            moved = tarball.stat().st_size + packed.stat().st_size
            return time.perf_counter() - start, moved, tested, reused
        subprocess.run([self.granary, "mtimes", str(self.checkout)], check=True,
                       stdout=subprocess.DEVNULL)
        remote, variant = remote_of(case)
        namespace = f"timed-{scenario}-{case}-{run}"
        env = self.granary_env(runner / "cache", self.remotes(True)[remote], namespace,
                               read="main")
        env.update(variant)
        _, tested, reused = self.job(env)
        summary = time.perf_counter()
        self.summary(runner / "cache")
        print(f"  summary {time.perf_counter() - summary:.2f}", flush=True)
        elapsed = time.perf_counter() - start
        runs = [json.loads(line) for line in (runner / "cache" / "granary-stats.jsonl").read_text().splitlines()]
        moved = sum(r.get("remote_bytes_down", 0) + r.get("remote_bytes_up", 0) for r in runs)
        return elapsed, moved, tested, reused


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def pack(cache, gopath, tarball):
    """tar | zstd -T0 -3 of the cache (and the module cache), as actions/cache does."""
    parts = ["-C", str(cache), "."]
    if gopath:
        parts += ["-C", str(gopath), "pkg/mod"]
    subprocess.run(f"tar -cf - {' '.join(map(str, parts))} | zstd -q -T0 -3 -o {tarball} -f",
                   shell=True, check=True)


def unpack(tarball, cache, gopath):
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(f"zstd -q -d -c {tarball} | tar -xf - -C {cache}", shell=True, check=True)
    if gopath:
        (gopath / "pkg").mkdir(parents=True, exist_ok=True)
        shutil.move(str(cache / "pkg" / "mod"), str(gopath / "pkg" / "mod"))
        shutil.rmtree(cache / "pkg")


def put(filer, path, file):
    subprocess.run(["curl", "-sSf", "-X", "PUT", "-T", str(file), f"{filer}{path}"],
                   check=True, stdout=subprocess.DEVNULL)


def get(filer, path, file):
    subprocess.run(["curl", "-sSf", "-o", str(file), f"{filer}{path}"], check=True)


def report(bench, go, args):
    out = Path(args.out)
    rows = []
    scenarios = []
    for scenario, *_ in bench.results:
        if scenario not in scenarios:
            scenarios.append(scenario)
    for scenario in scenarios:
        for case in CASES:
            runs = [r for r in bench.results if r[0] == scenario and r[1] == case]
            if not runs:
                continue
            rows.append({
                "scenario": scenario, "case": case,
                "median_s": round(statistics.median(r[2] for r in runs), 2),
                "runs_s": [round(r[2], 2) for r in runs],
                "moved_mib": round(statistics.median(r[3] for r in runs) / 2**20, 1),
                "tests_reused": runs[-1][4], "test_packages": runs[-1][5],
            })
    median = {(r["scenario"], r["case"]): r["median_s"] for r in rows}
    module, version = MODULES[args.module]
    lines = [
        f"# The CI job of {module} {version} (build, vet, test) on a fresh runner: "
        f"{common.go_version(go)}, {os.cpu_count()} CPUs",
        "",
        f"Store {args.delay_ms:g} ms away, {args.rate_mbps:g} Mbit/s shared; {args.runs} runs of "
        "each case, interleaved, median. Modules pre-downloaded (GOPROXY=off) except in "
        f"tarball+modules. Runners' files on {args.filesystem}.",
        "",
        "| scenario | case | job (s) | / tarball | / laptop | moved (MiB) | tests reused |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    def ratio(row, case):
        """The row's time against `case`'s in its scenario; a dash if --cases left it out."""
        base = median.get((row["scenario"], case))
        return f"{row['median_s'] / base:.2f}x" if base else "—"

    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['case']} | {r['median_s']:.2f} | "
            f"{ratio(r, 'tarball')} | {ratio(r, 'laptop')} | "
            f"{r['moved_mib']:.1f} | {r['tests_reused']}/{r['test_packages']} |")
    table = "\n".join(lines)
    print("\n" + table)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"ci-job-{args.module}"
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps(
        {"go": common.go_version(go), "module": f"{module}@{version}", "delay_ms": args.delay_ms,
         "rate_mbps": args.rate_mbps, "filesystem": args.filesystem, "rows": rows}, indent=2) + "\n")
    common.write_bar_chart(
        out / f"{stem}.svg", f"CI job of {module} on a fresh runner, relative to the tarball",
        [(f"{r['scenario']} {r['case']}",
          {"vs tarball": r["median_s"] / median[(r["scenario"], "tarball")]})
         for r in rows if (r["scenario"], "tarball") in median],
        baseline="tarball")
    print(f"\nwrote {out}/{stem}.{{md,json,svg}}")


if __name__ == "__main__":
    main()
