"""`pdserve`: parse -> config -> build -> run. No serving logic lives here."""

from __future__ import annotations

import argparse
import sys

from serving.batch.cli import add_batch_parser
from serving.bench.run import add_bench_parser
from serving.config import PDServeConfig
from serving.kube_cli import add_kube_parsers
from serving.loadtest_cli import add_loadtest_parser


def load_config(args: argparse.Namespace) -> PDServeConfig:
    config = PDServeConfig.from_file(args.config) if args.config else PDServeConfig()
    overrides = {}
    if args.mode:
        overrides["mode"] = args.mode
    if args.port:
        overrides["router.port"] = args.port
    if args.host:
        overrides["router.host"] = args.host
    if args.metrics_port:
        overrides["router.metrics_port"] = args.metrics_port
    if args.model:
        overrides["model.source"] = args.model
    return config.with_overrides(**overrides) if overrides else config


def up(args: argparse.Namespace) -> int:
    from serving.local import run_local

    from pydantic import ValidationError

    from serving.config import ConfigError

    try:
        config = load_config(args)
        return run_local(config, load=lambda: load_config(args), verbose=args.verbose)
    except (ValidationError, ConfigError) as exc:  # a config mistake: its message, not a traceback
        print(f"pdserve: error: {exc}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="pdserve", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    run = sub.add_parser("up", help="serve a model locally (Ray + Serve + vLLM), prefill and decode apart")
    run.add_argument("--config", help="a configs/*.yaml file (default: built-in model, P/D on this machine)")
    run.add_argument("--mode", choices=["disaggregated", "colocated"])
    run.add_argument("--port", type=int, help="HTTP port of the OpenAI API (default 8000)")
    run.add_argument("--host", help="HTTP host (default 127.0.0.1)")
    run.add_argument("--metrics-port", type=int, help="Prometheus export port (default 8080)")
    run.add_argument("--model", help="model.source: builtin:<name>, a local HF folder or a hub id")
    run.add_argument("--verbose", action="store_true",
                     help="print every replica's output (Ray, vLLM) here, not only a line per start-up stage")
    run.set_defaults(func=up)
    add_loadtest_parser(sub)
    add_kube_parsers(sub)
    add_batch_parser(sub)
    add_bench_parser(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
