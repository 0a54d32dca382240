#!/usr/bin/env python3
"""What relinking costs: cmd/go keeps linked executables only in its own
disk cache (cmd/go/internal/work/buildid.go; Go issue 72824), so with any
GOCACHEPROG helper `go run` and `go tool` link again every time. Times a
warm `go run .` of two programs with Go's own cache and with granary, in
one run.

    python3 bench/go_run.py            # 7 runs of each

Programs: hello (fmt only), and a Markdown renderer on
github.com/yuin/goldmark v1.8.7 (fetched with the go command).
Results go to bench/results/go-run.{md,json}.
"""

import argparse
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

RENDER = """package main

import (
	"os"

	"github.com/yuin/goldmark"
)

func main() { goldmark.Convert([]byte("# hi"), os.Stdout) }
"""
HELLO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hi") }\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()
    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-go-run-bench-")
    times = {}
    try:
        programs = {"hello": program(go, work, "hello", HELLO, None),
                    "goldmark renderer": program(go, work, "render", RENDER,
                                                 "github.com/yuin/goldmark@v1.8.7")}
        for run in range(args.runs + 1):
            for name, module in programs.items():
                for case in ("native", "granary"):
                    env = common.go_env(work / f"cache-{case}-{name}", work)
                    env["GOFLAGS"] = "-mod=mod"
                    if case == "granary":
                        env.update(GOCACHEPROG=f"{granary} prog", GRANARY_TRIM_INTERVAL="none")
                    start = time.perf_counter()
                    subprocess.run([go, "run", "."], cwd=module, env=env, check=True,
                                   stdout=subprocess.DEVNULL)
                    elapsed = time.perf_counter() - start
                    if run > 0:  # the first run fills the caches
                        times.setdefault((name, case), []).append(elapsed)
                        print(f"{name:>18} {case:>8}: {elapsed:6.3f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    lines = [f"# Warm `go run .`: relinking with a helper, {common.go_version(go)}, "
             f"{os.cpu_count()} CPUs", "", f"{args.runs} runs each after one that fills the "
             "caches, median (s).", "", "| program | native | granary | granary / native |",
             "|---|---:|---:|---:|"]
    for name in programs:
        native, helper = median[(name, "native")], median[(name, "granary")]
        lines.append(f"| {name} | {native:.3f} | {helper:.3f} | {helper / native:.2f}x |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "go-run.md").write_text(table + "\n")
    (out / "go-run.json").write_text(json.dumps(
        {"go": common.go_version(go),
         "runs": {f"{n} {c}": [round(t, 3) for t in v] for (n, c), v in times.items()}},
        indent=2) + "\n")


def program(go, work, name, source, requirement):
    module = work / name
    module.mkdir()
    (module / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.24\n")
    (module / "main.go").write_text(source)
    if requirement:
        subprocess.run([go, "get", requirement], cwd=module, env=common.fetch_env(work),
                       check=True, capture_output=True)
    return module


if __name__ == "__main__":
    main()
