"""`pdserve loadtest`: runs `loadtest/locustfile.py` headless in a Locust subprocess, with a progress line.

The load test's options are defined once in `loadtest/options.py` and passed through to Locust; the output
folder gets records.jsonl, report.{md,json}, the PNG plots and Locust's own locust.html / locust_*.csv.
The load test is the `loadtest` package (in the wheel beside `serving`; Locust and matplotlib are the `loadtest`
extra), so the command works from an installed wheel as from a source checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

_LOADTEST = importlib.util.find_spec("loadtest")
LOCUSTFILE = Path(_LOADTEST.origin).parent / "locustfile.py" if _LOADTEST and _LOADTEST.origin else Path("-")

EPILOG = """examples:
  pdserve loadtest --shape steady -u 2 --duration 60s --out results/
  pdserve loadtest --shape bursty -u 8 --duration 90s --slo-ttft 1 --slo-tpot 0.1 \\
      --metrics-url http://127.0.0.1:8080/metrics
  pdserve loadtest --shape trace --trace mooncake --trace-rate 1 --length-scale 0.05 --max-requests 100
  pdserve loadtest --host http://other:8000 --model my-model --tokenizer none   # any OpenAI server
"""


def _options_module():
    from loadtest import options

    return options


def add_loadtest_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "loadtest", help="load-test a running server with Locust (streaming TTFT/TPOT, shapes, trace replay)",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8000", help="server base URL (with or without /v1)")
    parser.add_argument("--duration", help="Locust run time, e.g. 60s, 5m (default 60s; for --shape trace: the "
                                           "whole replay)")
    parser.add_argument("-u", "--users", type=int, default=4,
                        help="steady: users; step: most users; bursty: users in the spike")
    parser.add_argument("-r", "--spawn-rate", type=float, help="users started per second (default: all at once)")
    if LOCUSTFILE.exists():
        _options_module().add_arguments(parser)
    parser.set_defaults(func=run_loadtest, out="results")


def locust_argv(args: argparse.Namespace) -> list[str]:
    out = Path(args.out)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--host", args.host, "-u", str(args.users), "--html", str(out / "locust.html"),
            "--csv", str(out / "locust")]
    if args.spawn_rate:
        argv += ["-r", str(args.spawn_rate)]
    if args.duration:
        argv += ["-t", args.duration]
    return argv + _options_module().to_argv(args)


def run_loadtest(args: argparse.Namespace) -> int:
    if not LOCUSTFILE.exists():
        print("pdserve loadtest: the loadtest package is not installed (pip install 'pdserve[loadtest]')",
              file=sys.stderr)
        return 2
    argv = locust_argv(args)
    print("pdserve: " + shlex.join(argv), flush=True)
    # Locust imports the locustfile by path; its package's folder on the path lets it import `loadtest.*` too.
    root = str(LOCUSTFILE.parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(argv, env=env)
    # Ctrl-C reaches Locust too (same process group): it stops, writes its reports, and we wait for that.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    print(f"pdserve: load test finished (exit {code}{', some requests failed' if code == 1 else ''}); "
          f"results in {args.out}/", flush=True)
    return code
