#!/usr/bin/env python3
"""Times `go build std` on a fresh runner whose only shared cache is a
`granary serve` on loopback, against a cold build and a warm local build, in
one run; then the same server behind a proxy that adds 20 ms per request.

    python3 bench/serve_build_std.py             # 1 cold run per config, 5 of the others
    python3 bench/serve_build_std.py --runs 9

Configurations:
  native-cold      Go's own cache, empty
  granary-cold     granary, empty local tier, uploading to the empty server
                   (runner A: it fills the server for the others)
  native-warm      Go's own cache, filled
  granary-warm     granary, local tier filled, no remote
  server           granary, empty local tier, warm server (runner B)
  server+20ms      the same through the proxy

Results go to bench/results/serve-build-std.{md,json,svg}.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from remote_build_std import report  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--granary", help="granary binary (default: build target/release/granary)")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args()

    go = common.find_go()
    granary = os.path.abspath(args.granary) if args.granary else common.build_granary()
    work = common.make_work("granary-serve-build-")
    server, url, _ = common.start_serve(granary, work)
    proxy, slow_url = common.start_proxy(url, args.delay_ms)
    timer = common.BuildTimer(go, granary, work)
    run = timer.run
    try:
        for _ in range(args.cold):
            run("native-cold", work / "native", fresh=True)
            run("granary-cold", work / "granary", {"GRANARY_REMOTE": url}, fresh=True)
        for _ in range(args.runs):
            run("native-warm", work / "native")
            run("granary-warm", work / "granary")
            run("server", work / "fresh", {"GRANARY_REMOTE": url}, fresh=True)
            run(f"server+{args.delay_ms:g}ms", work / "fresh", {"GRANARY_REMOTE": slow_url}, fresh=True)
    finally:
        proxy.kill()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)
    note = (f"Cold: {args.cold} run(s) per configuration; others: {args.runs} runs, interleaved. "
            f"granary serve on loopback, on the same 2 CPUs; the proxy adds {args.delay_ms:g} ms "
            "to every request. Remote columns are from the last run.")
    report(timer.times, timer.stats, go, Path(args.out), "serve-build-std", "granary serve", note)


if __name__ == "__main__":
    main()
