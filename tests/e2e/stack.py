"""Starts and stops a real `pdserve up` (Ray + Serve + vLLM + NIXL) for the end-to-end tests.

The stack is the user's own command in a subprocess, so the tests also cover the CLI: its printed URLs, its
readiness, and a clean stop on SIGINT with no process left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import psutil

from serving.local import interrupt

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = float(os.environ.get("PDSERVE_TEST_STARTUP_TIMEOUT", 900))
API_KEY = "e2e-secret-key"  # the autoscale stack is started with it in PDSERVE_API_KEYS
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Stack:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen
    descendants: set[int] = field(default_factory=set)

    @property
    def config_path(self) -> Path:
        return Path(self.proc.args[self.proc.args.index("--config") + 1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stats(self, role: str | None = None) -> dict:
        params = {"role": role} if role else None
        return httpx.get(f"{self.base_url}/pdserve/stats", params=params, timeout=30).json()


def start(name: str, port: int, metrics_port: int, log_dir: Path, *extra: str,
          env: dict[str, str] | None = None) -> Stack:
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "serving.cli", "up", "--port", str(port), "--metrics-port", str(metrics_port), *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Stack(name, port, metrics_port, log_path, proc)


BARE_VLLM_FLAGS = ("--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                   "--enable-auto-tool-choice", "--tool-call-parser", "hermes")
"""`vllm serve` as a user would start it on the built-in model with the flags of configs/cpu-exact.yaml (float32,
the built-in model's tool-call parser), for answers to compare pdserve's with."""


def start_bare(name: str, port: int, log_dir: Path, threads_bind: str = "1") -> Stack:
    """A bare vLLM server (`python -m vllm.entrypoints.openai.api_server`), its model bound to the same single
    core as a cpu-exact engine so that temperature-0 answers reduce in the same order."""
    from serving.config import BUILTIN_MODEL, PDServeConfig
    from serving.model import resolve_model

    served = PDServeConfig().model.served_name
    log_path = log_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(BUILTIN_MODEL),
           "--served-model-name", served, "--host", "127.0.0.1", "--port", str(port), *BARE_VLLM_FLAGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": threads_bind}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Stack(name, port, 0, log_path, proc)


def wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if stack.proc.poll() is not None:
            raise RuntimeError(f"{stack.name}: pdserve up exited with {stack.proc.returncode}\n{stack.log_tail()}")
        if stack.metrics_port == 0 or "pdserve: ready" in stack.log_path.read_text(errors="replace"):
            try:
                if httpx.get(f"{stack.base_url}/health", timeout=10).status_code == 200:
                    stack.descendants = {p.pid for p in psutil.Process(stack.proc.pid).children(recursive=True)}
                    return
            except httpx.HTTPError:
                pass
        time.sleep(2)
    raise TimeoutError(f"{stack.name}: not ready after {STARTUP_TIMEOUT_S:.0f}s\n{stack.log_tail()}")


def stop(stack: Stack, timeout_s: float = 180) -> int:
    """SIGINT, as Ctrl-C would; returns the exit code. Kills the whole session group if it hangs."""
    return interrupt(stack.proc, timeout_s)


def survivors(stack: Stack, grace_s: float = 30) -> list[str]:
    """Processes started under the stack that are still alive after it stopped."""
    deadline = time.monotonic() + grace_s
    alive: list[psutil.Process] = []
    while time.monotonic() < deadline:
        alive = [p for p in map(_process, stack.descendants) if p is not None]
        if not alive:
            return []
        time.sleep(1)
    return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in alive]


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.NoSuchProcess:
        return None


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(stack) -> dict[str, list[tuple[str, float]]]:
    """Metric samples by name: [(labels, value)]."""
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=30).text
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples.setdefault(match[1], []).append((match[2] or "", float(match[3])))
    return samples


def settled(stack) -> dict:
    """A scrape taken once the ingress's counters have not moved for a while: Ray exports every few seconds,
    so two equal scrapes close together can both predate the last requests' export."""
    history: list[tuple[float, float]] = []
    for _ in range(40):
        samples = scrape(stack)
        history.append((total(samples, "ray_pdserve_generation_tokens_total"),
                        total(samples, "ray_pdserve_requests_total")))
        if len(history) >= 4 and len(set(history[-4:])) == 1:
            return samples
        time.sleep(5)
    return samples



def total(samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(f'{k}="{val}"' in lab for k, val in labels.items()))


# --- fault injection: exact, by process state, never by timing -----------------------------------------------

def replica_tree(pid: int) -> list[psutil.Process]:
    """A replica process and the engine processes under it (VLLM::EngineCore, VLLM::Worker)."""
    replica = psutil.Process(pid)
    return [replica, *replica.children(recursive=True)]


def engine_processes(pid: int) -> list[psutil.Process]:
    """Only the engine processes of a replica: stopping them freezes the engine, not the replica's event loop."""
    return replica_tree(pid)[1:]


class paused:
    """SIGSTOP the processes (a stopped process takes no CPU) until `resume()` or the end of the `with` block."""

    def __init__(self, processes: list[psutil.Process]):
        self.processes = processes
        for proc in processes:
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> float:
        """SIGCONT them (once); returns the wall-clock time they were released."""
        for proc in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)
        self.processes = []
        return time.time()

    def __enter__(self) -> paused:
        return self

    def __exit__(self, *exc) -> None:
        self.resume()


def kill_tree(pid: int, timeout_s: float = 60) -> list[int]:
    """SIGKILL a replica and its engine processes, and return once every one of them is gone."""
    processes = replica_tree(pid)
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    gone, alive = psutil.wait_procs(processes, timeout=timeout_s)
    assert not alive, f"still alive after SIGKILL: {alive}"
    return [p.pid for p in gone]


Handoff = Literal["kv", "decode_only", "no_engine"]


def handoff_seen(stack, before: dict, handoff: Handoff, timeout_s: float = 30) -> str | None:
    """None if the P/D stack's engine counters show `handoff` for the call just made, else what they show.
    vLLM's stat loggers report a step after the output: poll until decode counts the request as finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = stack.stats()
        d = {role: {k: after[role][k] - before[role][k] for k in ("finished_requests", "kv_transfers",
                                                                  "kv_transfer_failures", "prompt_tokens_computed")}
             for role in ("prefill", "decode")}
        if d["decode"]["finished_requests"] >= 1 or handoff == "no_engine" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if handoff == "kv":
        ok = (d["decode"]["kv_transfers"] >= 1 and d["decode"]["kv_transfer_failures"] == 0
              and d["decode"]["prompt_tokens_computed"] == 0 and d["prefill"]["finished_requests"] >= 1)
    elif handoff == "decode_only":
        ok = d["prefill"]["finished_requests"] == 0 and d["decode"]["finished_requests"] >= 1
    else:
        ok = d["prefill"]["finished_requests"] == 0 and d["decode"]["finished_requests"] == 0
    return None if ok else f"expected {handoff}, engine counters moved by {d}"
