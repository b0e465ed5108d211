"""`pdserve`: parse -> config -> build -> run. No serving logic lives here."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
from collections import Counter

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


def cluster_resources(config: PDServeConfig) -> tuple[int, dict[str, float]]:
    """Logical CPUs and custom resources a local Ray node needs so every pool can reach its max replicas."""
    cpus = config.router.num_cpus + 1  # + Serve's controller and proxy
    custom: Counter[str] = Counter()
    for role in config.active_roles():
        pool = config.pool(role)
        cpus += pool.resources.num_cpus * pool.replicas.max
        for name, amount in pool.resources.resources.items():
            custom[name] += amount * pool.replicas.max
    return math.ceil(cpus), dict(custom)


def up(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from serving.app import build_pd_app
    from serving.model import resolve_model

    config = load_config(args)
    resolve_model(config.model.source)  # convert the built-in model once, with progress, before Ray starts
    num_cpus, resources = cluster_resources(config)
    ray.init(
        address="local",  # always a private cluster: `pdserve up` must not attach to whatever else runs here
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=False,
        _metrics_export_port=config.router.metrics_port,
        logging_level="WARNING",
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.router.host, "port": config.router.port})
        print(f"pdserve: starting {config.mode} serving of {config.model.served_name} ...", flush=True)
        serve.run(build_pd_app(config), name="pdserve", route_prefix="/", blocking=False)
        base = f"http://{config.router.host}:{config.router.port}"
        print(f"pdserve: API      {base}/v1  (model {config.model.served_name!r}, mode {config.mode})", flush=True)
        print(f"pdserve: health   {base}/health", flush=True)
        print(f"pdserve: metrics http://127.0.0.1:{config.router.metrics_port}/metrics", flush=True)
        print("pdserve: ready; Ctrl-C stops", flush=True)
        stop.wait()
    finally:
        print("pdserve: shutting down ...", flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        print("pdserve: stopped", flush=True)
    return 0


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
    run.set_defaults(func=up)
    add_loadtest_parser(sub)
    add_kube_parsers(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
