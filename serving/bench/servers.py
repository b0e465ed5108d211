"""The servers a benchmark compares, started on this machine from one model folder, each in its own process group.

- `bare`: `vllm serve` itself (`python -m vllm.entrypoints.openai.api_server`): the floor.
- `rayllm`: Ray Serve LLM's prefill/decode app (`ray.serve.llm.build_pd_openai_app`), see `serving.bench.rayllm`.
- `colocated`, `pd`: `pdserve up` in either mode.
- `pd-remote`, `pd-local`: `pdserve up` P/D with every prompt sent to prefill (`router.remote_prefill_min_tokens` 0)
  or none (decode computes every prompt): the two sides of the threshold, measured per prompt length by the
  `len*` workloads (docs/routing.md).
- `pd-2p-affinity`, `pd-2p-pow2`: P/D with two prefill replicas, the prefill replica chosen by prefix cache
  (`serving.prefill_router`) or by Serve's default router; the `shared` and `shared-spill` workloads compare them.
  Each prefill replica's KV cache holds `PREFILL_CACHE_BLOCKS` blocks, so that the `shared-spill` system prompts
  outgrow one replica's cache and fit the pool's when each stays on one replica: the regime of a production pool,
  where the conversations and system prompts in flight outgrow one replica's cache, scaled down to what a CPU
  computes in minutes.

`pdserve bench` runs one of them at a time, each in its own process group, stopped (SIGINT, as Ctrl-C) before the
next starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from serving.kv import free_port
from serving.local import interrupt

KINDS = ("bare", "rayllm", "colocated", "pd")
PREFILL_CACHE_BLOCKS = 28
"""KV blocks of each prefill replica in the two-replica kinds (vLLM's `num_gpu_blocks_override`; 3584 tokens on
CPU, whose block is 128 tokens): 16 blocks of system prompts and the blocks of the requests in flight."""
_TWO_PREFILL = {"replicas": {"min": 2, "max": 2}, "resources": {"resources": {"pdserve_prefill": 1}},
                "cpu": {"threads_bind": "0"}, "engine_args": {"num_gpu_blocks_override": PREFILL_CACHE_BLOCKS}}
PD_VARIANTS: dict[str, dict] = {
    "pd-remote": {"router": {"remote_prefill_min_tokens": 0}},
    "pd-local": {"router": {"remote_prefill_min_tokens": 10**9}},
    "pd-2p-affinity": {"router": {"prefill_replica_choice": "prefix_affinity"}, "prefill": _TWO_PREFILL},
    "pd-2p-pow2": {"router": {"prefill_replica_choice": "power_of_two"}, "prefill": _TWO_PREFILL},
}
"""Extra kinds (not run by default): P/D with these config fields set."""
READY_TIMEOUT_S = 900


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    metrics_url: str | None = None
    """Ray's Prometheus export of a pdserve server (pool-wide engine counters)."""

    def stop(self, timeout_s: float = 180) -> None:
        if self.proc is not None:  # a `--target` server is not ours to stop
            interrupt(self.proc, timeout_s)


def is_pdserve(kind: str) -> bool:
    """A `pdserve up` server (it answers /pdserve/stats and exports Ray's metrics)."""
    return kind == "colocated" or kind.startswith("pd")


def command(kind: str, model_dir: str, served_name: str, port: int, dtype: str,
            metrics_port: int | None = None) -> list[str]:
    if kind == "bare":
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                "--served-model-name", served_name, "--port", str(port), "--host", "127.0.0.1", "--dtype", dtype,
                "--max-model-len", "2048", "--enforce-eager", "--disable-uvicorn-access-log"]
    if kind == "rayllm":
        return [sys.executable, "-m", "serving.bench.rayllm", "--model", model_dir, "--served-name", served_name,
                "--port", str(port), "--dtype", dtype]
    if kind not in ("colocated", "pd", *PD_VARIANTS):
        raise ValueError(f"unknown server kind {kind!r} (have {', '.join(KINDS + tuple(PD_VARIANTS))})")
    mode = "colocated" if kind == "colocated" else "disaggregated"
    config: dict = {"model": {"served_name": served_name, "dtype": dtype}, **PD_VARIANTS.get(kind, {})}
    return [sys.executable, "-m", "serving.cli", "up", "--model", model_dir, "--mode", mode, "--port", str(port),
            "--metrics-port", str(metrics_port or free_port()), "--config", str(_pdserve_config(config))]


def _pdserve_config(config: dict) -> Path:
    import tempfile

    import yaml

    path = Path(tempfile.mkdtemp(prefix="pdserve-bench-")) / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(kind: str, model_dir: str, served_name: str, dtype: str, log_dir: Path) -> Server:
    """Start one server; returns at once (see `wait_ready`)."""
    port, metrics_port = free_port(), free_port()
    log_path = log_dir / f"{kind}.log"
    # Each of them binds the model like `vllm serve` does unless told otherwise; the KV cache is 1 GiB for all.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command(kind, model_dir, served_name, port, dtype, metrics_port), stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Server(kind, f"http://127.0.0.1:{port}", proc, log_path,
                  f"http://127.0.0.1:{metrics_port}/metrics" if is_pdserve(kind) else None)


def wait_ready(server: Server, served_name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until a one-token completion succeeds (every server kind answers it the same way)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:] if server.log_path else ""
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{tail}")
        try:
            reply = httpx.post(f"{server.url}/v1/completions", timeout=30,
                               json={"model": served_name, "prompt": "hi", "max_tokens": 1})
            if reply.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(3)
    raise TimeoutError(f"{server.name}: not ready after {timeout_s:.0f} s")
