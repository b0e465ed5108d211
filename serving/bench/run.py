"""`pdserve bench`: every workload against each server in turn, repeated, medians printed as a markdown table.

Only the server being measured runs on the machine: each one is started, measured on every workload and stopped
before the next starts (an idle Ray stack takes ~20 % of a core, and holding one still with SIGSTOP for minutes
makes Serve and HAProxy restart parts of it when it resumes). Servers are interleaved over repeats (a different
order each time), so slow drifts of a shared machine fall on all of them alike. The table gives each figure and
its ratio to bare vLLM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from serving.bench import servers as servers_lib
from serving.bench.workloads import REPO_ROOT, Client, Workload, workloads

ENGINES = {"stand-in": "builtin:stand-in", "builtin": "builtin:smollm2-135m-instruct"}
SERVED_NAME = "bench-model"
FIGURES = [  # (key in vLLM's result, column, ratio to bare: higher is worse?)
    ("median_ttft_ms", "TTFT p50 ms", True),
    ("p99_ttft_ms", "TTFT p99 ms", True),
    ("median_tpot_ms", "TPOT p50 ms", True),
    ("median_itl_ms", "ITL p50 ms", True),
    ("p99_itl_ms", "ITL p99 ms", True),
    ("output_throughput", "out tok/s", False),
    ("request_goodput", "goodput req/s", False),
]


def run_client(url: str, client: Client, tokenizer: str) -> dict[str, Any]:
    """One run of vLLM's benchmark client; returns its result dict."""
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", url, "--model", SERVED_NAME,
        "--tokenizer", tokenizer, "--ignore-eos", "--disable-tqdm", "--temperature", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
        "--ready-check-timeout-sec", "0", *client.argv])
    return main(args)


def run_workload(url: str, workload: Workload, tokenizer: str) -> dict[str, Any]:
    """All clients of a workload at once; the first one's result."""
    results: list[dict[str, Any] | BaseException] = [{} for _ in workload.clients]

    def one(i: int, client: Client) -> None:
        try:
            results[i] = run_client(url, client, tokenizer)
        except BaseException as exc:  # reported in the table, the run goes on
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(workload.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if isinstance(results[0], BaseException):
        raise results[0]
    return results[0]


def engine_counters(server: servers_lib.Server) -> dict[str, float] | None:
    """Prefix-cache lookups and hits of the engines that compute prompts (every replica of the pool), and KV
    transfer totals (pdserve)."""
    try:
        if server.name == "bare":
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            return {"queries": _sum(text, "vllm:prefix_cache_queries_total"),
                    "hits": _sum(text, "vllm:prefix_cache_hits_total")}
        if servers_lib.is_pdserve(server.name):
            stats = httpx.get(f"{server.url}/pdserve/stats", timeout=30).json()
            computing = stats.get("prefill") or stats.get("colocated")
            decode = stats.get("decode", {})
            counters = {"queries": computing["prefix_cache_queries"], "hits": computing["prefix_cache_hits"],
                        "kv_transfers": decode.get("kv_transfers", 0),
                        "kv_seconds": decode.get("kv_transfer_seconds", 0)}
            if server.metrics_url:  # /pdserve/stats shows one replica of a remote pool; Prometheus has them all
                pool = "prefill" if "prefill" in stats else "colocated"
                text = _settled_scrape(server.metrics_url)
                counters["queries"] = _sum(text, "ray_pdserve_pool_prefix_cache_queries_total", f'pool="{pool}"')
                counters["hits"] = _sum(text, "ray_pdserve_pool_prefix_cache_hits_total", f'pool="{pool}"')
            return counters
    except (httpx.HTTPError, KeyError, TypeError):
        return None
    return None


def _settled_scrape(url: str, pause_s: float = 4.0, tries: int = 8) -> str:
    """A Prometheus scrape once Ray's export has caught up (two scrapes a few seconds apart agree)."""
    last = httpx.get(url, timeout=30).text
    for _ in range(tries):
        time.sleep(pause_s)
        text = httpx.get(url, timeout=30).text
        if _sum(text, "ray_pdserve_pool_prefix_cache_queries_total") == _sum(
                last, "ray_pdserve_pool_prefix_cache_queries_total"):
            return text
        last = text
    return last


def _sum(text: str, name: str, label: str = "") -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and label in line and not line.startswith("#"))


def measure(server: servers_lib.Server, workload: Workload, tokenizer: str) -> dict[str, Any]:
    before = engine_counters(server)
    for _ in range(24 if servers_lib.is_pdserve(server.name) else 0):
        # Just after start-up a remote pool may not be listed as running for a minute (other kinds may have
        # no counters at all: Ray Serve LLM's app).
        if before is not None:
            break
        time.sleep(5)
        before = engine_counters(server)
    try:
        result = run_workload(server.url, workload, tokenizer)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    after = engine_counters(server)
    row = {key: result.get(key) for key, _, _ in FIGURES}
    row["completed"], row["failed"] = result.get("completed"), result.get("failed")
    if before and after:
        queries = after["queries"] - before["queries"]
        row["prefix_hit_rate"] = (after["hits"] - before["hits"]) / queries if queries else None
        transfers = after.get("kv_transfers", 0) - before.get("kv_transfers", 0)
        if transfers:
            row["kv_transfer_ms"] = (after["kv_seconds"] - before["kv_seconds"]) / transfers * 1e3
    return row


def median_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rows if "error" not in r]
    if not good:
        return {"error": rows[0]["error"] if rows else "not run"}
    keys = {k for r in good for k, v in r.items() if isinstance(v, (int, float))}
    out = {k: statistics.median(r[k] for r in good if isinstance(r.get(k), (int, float))) for k in keys}
    out["repeats"] = len(good)
    return out


def table(results: dict[str, dict[str, dict[str, Any]]], workloads_run: dict[str, Workload]) -> str:
    lines = []
    for name, per_server in results.items():
        lines += [f"### {name}: {workloads_run[name].what}", ""]
        header = ["server", *(col for _, col, _ in FIGURES), "prefix hit", "KV pull ms"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base = per_server.get("bare", {})
        for server, row in per_server.items():
            if "error" in row:
                lines.append(f"| {server} | {row['error']} |" + " |" * (len(header) - 2))
                continue
            cells = [server]
            for key, _, _ in FIGURES:
                value, ref = row.get(key), base.get(key)
                if value is None:
                    cells.append("-")
                    continue
                ratio = f" ({value / ref:.2f}x)" if server != "bare" and ref else ""
                cells.append(f"{value:.1f}{ratio}" if value >= 10 else f"{value:.2f}{ratio}")
            hit = row.get("prefix_hit_rate")
            cells.append("-" if hit is None else f"{hit:.0%}")
            kv = row.get("kv_transfer_ms")
            cells.append("-" if kv is None else f"{kv:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="side-by-side benchmark: bare vLLM, Ray Serve LLM P/D, pdserve",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=sorted(ENGINES), default="stand-in",
                        help="stand-in: random-weight model at GPU-like step times; builtin: SmolLM2 at CPU speed")
    parser.add_argument("--servers", default=",".join(servers_lib.KINDS),
                        help=f"comma-separated, of {', '.join(servers_lib.KINDS + tuple(servers_lib.PD_VARIANTS))}")
    parser.add_argument("--workloads", default="", help="comma-separated names (default: all for the engine but the len* sweep)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--target", action="append", default=[],
                        help="name=url of a running server to measure instead of starting one (repeatable)")
    parser.add_argument("--out", default="bench-results", help="folder for results.json and table.md")
    parser.set_defaults(func=bench_command)


def bench_command(args: argparse.Namespace) -> int:
    from serving.model import resolve_model

    model_dir = resolve_model(ENGINES[args.engine])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pdserve-bench-"))
    shared = REPO_ROOT.parent / "shared" / "traces"
    available = workloads(args.engine, work, shared if shared.exists() else None)
    chosen = [w for w in args.workloads.split(",") if w] or [k for k, w in available.items() if w.default]
    unknown = [w for w in chosen if w not in available]
    if unknown:
        print(f"pdserve bench: unknown workloads {unknown} (have {sorted(available)}; trace workloads need "
              f"../shared/traces)", file=sys.stderr)
        return 2
    run_these = {w: available[w] for w in chosen}
    targets = dict(t.split("=", 1) for t in args.target)
    if targets:
        servers = {name: (lambda name=name, url=url: servers_lib.Server(name, url)) for name, url in targets.items()}
    else:
        servers = {kind: (lambda kind=kind: servers_lib.start(kind, model_dir, SERVED_NAME, args.dtype, out))
                   for kind in args.servers.split(",") if kind}
    results = run_all(servers, run_these, model_dir, args.repeats)
    report = table(results, run_these)
    header = (f"engine {args.engine} ({ENGINES[args.engine]}, {args.dtype}), {args.repeats} repeats, medians; "
              f"one server on the machine at a time, servers interleaved over repeats")
    (out / "table.md").write_text(header + "\n\n" + report)
    (out / "results.json").write_text(json.dumps({"engine": args.engine, "repeats": args.repeats,
                                                   "workloads": {k: w.what for k, w in run_these.items()},
                                                   "results": results}, indent=2))
    print(header + "\n\n" + report)
    return 0


def run_all(servers: dict, run_these: dict[str, Workload], tokenizer: str,
            repeats: int) -> dict[str, dict[str, dict[str, Any]]]:
    """`servers`: name -> a function that starts the server (or names a running one) and returns it."""
    names = list(servers)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {w: {s: [] for s in names} for w in run_these}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"pdserve bench: repeat {repeat + 1}/{repeats}: starting {name} ...", flush=True)
            server = servers[name]()
            try:
                servers_lib.wait_ready(server, SERVED_NAME)
                for workload_name, workload in run_these.items():
                    row = measure(server, workload, tokenizer)
                    rows[workload_name][name].append(row)
                    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
                    print(f"pdserve bench: repeat {repeat + 1}/{repeats} {workload_name} {name}: {json.dumps(shown)}",
                          flush=True)
            finally:
                server.stop()
    return {w: {s: median_rows(r) for s, r in per.items()} for w, per in rows.items()}
