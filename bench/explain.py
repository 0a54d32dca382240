#!/usr/bin/env python3
"""What `granary explain` adds to the build it wraps, and how large its
records are, in one run.

    python3 bench/explain.py            # 5 runs of each case
    python3 bench/explain.py --runs 9

Jobs: `go build std`, and the CI job of github.com/yuin/goldmark v1.8.7
(`go build ./...`, `go vet ./...`, `go test ./...`; fetched with the go
command, then GOPROXY=off). Cases, each cold (an empty cache) and warm
(the same job again on the cache the cold run left):
  prog     GOCACHEPROG="granary prog"
  explain  `granary explain -- go ...` (granary as the helper too)
  godebug  GOCACHEPROG="granary prog" with GODEBUG=gocachehash=1,
           gocachetest=1 and stderr to /dev/null: what go's own printing of
           its inputs costs, which explain cannot avoid
The record's size is that of the local copy of the scope's record (zstd
JSON), divided by the actions and the build actions it holds.
Results go to bench/results/explain.{md,json}.
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODULE = ("github.com/yuin/goldmark", "v1.8.7")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-explain-bench-")
    try:
        module = fetch(go, work)
        jobs = {
            "go build std": (work, [["build", "std"]], "default"),
            "goldmark build+vet+test": (module, [["build", "./..."], ["vet", "./..."],
                                                 ["test", "./..."]], MODULE[0]),
        }
        times, records = {}, {}
        for run in range(args.runs):
            for index, (job, (cwd, commands, scope)) in enumerate(jobs.items()):
                for case in ("prog", "explain", "godebug"):
                    cache = work / f"cache-{run}-{case}-{index}"
                    for state in ("cold", "warm"):
                        elapsed = time_job(go, granary, work, cwd, commands, cache, case)
                        times.setdefault((job, case, state), []).append(elapsed)
                        print(f"{job:>24} {case:>8} {state}: {elapsed:6.2f} s", flush=True)
                    if case == "explain":
                        records[job] = record_size(cache, scope)
                    shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(go, times, records, args)


def fetch(go, work):
    return common.fetch_module(go, work, *MODULE, work / "goldmark")


def time_job(go, granary, work, cwd, commands, cache, case):
    env = common.go_env(cache, work)
    env.update(GOFLAGS="-mod=mod", GRANARY_TRIM_INTERVAL="none")
    if case != "explain":
        env["GOCACHEPROG"] = f"{granary} prog"
    if case == "godebug":
        env["GODEBUG"] = "gocachehash=1,gocachetest=1"
    start = time.perf_counter()
    for args in commands:
        argv = [granary, "explain", "--", go, *args] if case == "explain" else [go, *args]
        subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def record_size(cache, scope):
    """The local record of `scope`: (bytes, actions, build actions)."""
    action = hashlib.sha256(f"granary-explain 1\n{scope} linux/amd64".encode()).hexdigest()
    line = (cache / action[:2] / f"{action}-a").read_text().split()
    output = line[2]
    data = (cache / output[:2] / f"{output}-d").read_bytes()
    text = subprocess.run(["zstd", "-d", "-c"], input=data, capture_output=True, check=True).stdout
    actions = json.loads(text)["actions"]
    entries = sum(len(v) for v in actions.values())
    builds = sum(len(v) for k, v in actions.items() if k.startswith("build "))
    return len(data), len(text), entries, builds


def report(go, times, records, args):
    median = {key: statistics.median(v) for key, v in times.items()}
    lines = [f"# granary explain: cost and record size, {common.go_version(go)}, "
             f"{os.cpu_count()} CPUs", "",
             f"{args.runs} runs of each case, interleaved, median (s).", "",
             "| job | state | prog | explain | godebug | explain / prog | godebug / prog |",
             "|---|---|---:|---:|---:|---:|---:|"]
    rows = []
    for job in dict.fromkeys(k[0] for k in times):
        for state in ("cold", "warm"):
            prog, explain, godebug = (median[(job, c, state)] for c in ("prog", "explain", "godebug"))
            lines.append(f"| {job} | {state} | {prog:.2f} | {explain:.2f} | {godebug:.2f} | "
                         f"{explain / prog:.2f}x | {godebug / prog:.2f}x |")
            rows.append({"job": job, "state": state, "prog_s": round(prog, 3),
                         "explain_s": round(explain, 3), "godebug_s": round(godebug, 3),
                         "runs": {c: [round(t, 3) for t in times[(job, c, state)]]
                                  for c in ("prog", "explain", "godebug")}})
    lines += ["", "| job | record (zstd) | JSON | actions | build actions | bytes per build action |",
              "|---|---:|---:|---:|---:|---:|"]
    for job, (size, text, entries, builds) in records.items():
        lines.append(f"| {job} | {size / 1024:.1f} KiB | {text / 1024:.1f} KiB | {entries} | "
                     f"{builds} | {size / builds:.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain.md").write_text(table + "\n")
    (out / "explain.json").write_text(json.dumps(
        {"go": common.go_version(go), "rows": rows,
         "records": {job: dict(zip(("bytes", "json_bytes", "actions", "build_actions"), r))
                     for job, r in records.items()}}, indent=2) + "\n")
    print(f"\nwrote {out}/explain.{{md,json}}")


if __name__ == "__main__":
    main()
