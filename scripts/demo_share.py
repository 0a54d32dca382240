#!/usr/bin/env python3
"""The second half of scripts/demo.sh: what granary is for. Two CI runners
with empty local caches share a bucket (SeaweedFS, started on loopback):
runner A builds and tests examples/go-demo and fills the bucket; runner B,
as fresh as A was, gets everything from it and compiles nothing. Then the
job summary runner B would put on its CI page (`granary stats --markdown`).

    python3 scripts/demo_share.py GRANARY WORK
"""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402


def runner(granary, work, name, env_remote):
    """`go build -x` and `go test` of examples/go-demo with an empty local
    cache `work/name`; returns (seconds, packages compiled)."""
    cache = work / name
    env = common.go_env(cache, work)
    env["GOCACHEPROG"] = f"{granary} prog --stats-file {work / (name + '.json')}"
    env.update(env_remote)
    demo = ROOT / "examples" / "go-demo"
    start = time.perf_counter()
    build = subprocess.run(["go", "build", "-x", "-o", str(work / name) + ".bin", "."],
                           cwd=demo, env=env, capture_output=True, text=True, check=True)
    subprocess.run(["go", "test", "./..."], cwd=demo, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    took = time.perf_counter() - start
    # Compilations of packages, not `compile -V=full` (the tool's version).
    compiled = sum(1 for line in build.stderr.splitlines()
                   if "/compile " in line and " -p " in line)
    return took, compiled


def main():
    granary, work = os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve()
    (work / "bucket").mkdir(parents=True, exist_ok=True)
    weed, ports = common.start_seaweedfs(work / "bucket")
    try:
        remote = common.remote_env(f"http://127.0.0.1:{ports[6]}", "demo")
        print(f"GRANARY_REMOTE={remote['GRANARY_REMOTE']} (SeaweedFS on 127.0.0.1:{ports[6]})")
        for name in ("runner-a", "runner-b"):
            took, compiled = runner(granary, work, name, remote)
            print(f"{name}: empty local cache, go build and go test in {took:.2f} s, "
                  f"{compiled} package{'s'[:compiled != 1]} compiled")
        print("\n== the job summary of runner B (granary stats --markdown)\n")
        sys.stdout.flush()
        subprocess.run([granary, "--dir", str(work / "runner-b"), "stats", "--markdown"],
                       check=True, env={k: v for k, v in os.environ.items()
                                        if not k.startswith("GRANARY_")})
    finally:
        common.stop_seaweedfs(weed, ports)


if __name__ == "__main__":
    main()
