"""The benchmark's workloads, each one or more runs of vLLM's own benchmark client (`vllm bench serve`).

Using vLLM's client means our figures are defined and computed exactly as the ones vLLM users publish: TTFT from
sending the request to the first streamed token, TPOT = (latency - TTFT) / (output tokens - 1), ITL = every gap
between two streamed chunks, goodput = requests per second that met every SLO (docs/metrics.md).

Output lengths are fixed (`--ignore-eos`), the first requests of each run are warm-up and not measured.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT_LENGTHS = (16, 64, 128, 256, 512, 1024)
GOODPUT_SLO_MS = {"stand-in": {"ttft": 500, "tpot": 25}, "builtin": {"ttft": 3000, "tpot": 150}}


@dataclass(frozen=True)
class Client:
    """One `vllm bench serve` run: its arguments beyond the server's address, model and tokenizer."""

    argv: tuple[str, ...]


@dataclass(frozen=True)
class Workload:
    name: str
    what: str
    clients: tuple[Client, ...]
    """Run together; the figures reported are the first client's."""
    reports_hit_rate: bool = False
    default: bool = True
    """Run when no workloads are named."""


def _random(concurrency: int | None, prompts: int, input_len: int, output_len: int, rate: float | None = None,
            warmups: int = 4) -> Client:
    argv = ["--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
            str(output_len), "--random-range-ratio", "0", "--num-prompts", str(prompts), "--num-warmups",
            str(warmups)]
    if concurrency is not None:
        argv += ["--max-concurrency", str(concurrency)]
    if rate is not None:
        argv += ["--request-rate", str(rate)]
    return Client(tuple(argv))


def _trace(path: Path, prompts: int, chunk_tokens: int, slo: dict[str, int] | None = None) -> Client:
    argv = ["--dataset-name", "timed_trace", "--dataset-path", str(path), "--num-prompts", str(prompts),
            "--timed-trace-chunk-hash-size", str(chunk_tokens), "--num-warmups", "0"]
    if slo:
        argv += ["--goodput", *(f"{k}:{v}" for k, v in slo.items())]
    return Client(tuple(argv))


SHARED_PREFIX_TOKENS = 512
"""Four whole KV blocks on CPU (128 tokens each), 32 on GPU (16)."""


def _shared(name: str, prefixes: int, per_prefix: int, what: str) -> Workload:
    """vLLM's `prefix_repetition`: `prefixes` system prompts, each with `per_prefix` own 64-token questions,
    shuffled; 16 output tokens, concurrency 4. Reports the prompt-computing pool's prefix cache hit rate."""
    prompts = prefixes * per_prefix
    return Workload(name, f"{what % prompts}, 64-token questions, 16 output tokens, concurrency 4", (Client((
        "--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", str(SHARED_PREFIX_TOKENS),
        "--prefix-repetition-suffix-len", "64", "--prefix-repetition-num-prefixes", str(prefixes),
        "--prefix-repetition-output-len", "16", "--num-prompts", str(prompts), "--max-concurrency", "4",
        "--num-warmups", "0")),), reports_hit_rate=True)


def workloads(engine: str, work_dir: Path, shared_traces: Path | None) -> dict[str, Workload]:
    """The workloads for `engine` (`stand-in`: GPU-speed steps; `builtin`: SmolLM2 at CPU speed)."""
    fast = engine == "stand-in"
    found: dict[str, Workload] = {
        "c1": Workload("c1", "concurrency 1, 200-token prompts, 64 output tokens",
                       (_random(1, 16 if fast else 8, 200, 64),)),
        "c16": Workload("c16", "concurrency 16, 200-token prompts, 64 output tokens",
                        (_random(16, 64 if fast else 32, 200, 64),)),
    }
    # One prompt length each, concurrency 1, two output tokens: TTFT as a function of prompt length, on the
    # P/D path and on decode alone (`pd-remote` vs `pd-local`): where the hop stops paying (docs/routing.md).
    for length in PROMPT_LENGTHS:
        found[f"len{length}"] = Workload(f"len{length}", f"concurrency 1, {length}-token prompts, 2 output tokens",
                                         (_random(1, 8 if fast else 6, length, 2, warmups=2),), default=False)
    # Conversations sharing system prompts, each with its own questions: prefix cache hit rate and TTFT of the
    # pool computing prompts, e.g. two prefill replicas chosen by prefix affinity or at random (docs/routing.md).
    found["shared"] = _shared("shared", prefixes=4, per_prefix=12 if fast else 6,
                              what="4 system prompts of 512 tokens shared by %d requests")
    # The same with 8 system prompts: 32 prefix blocks, more than one prefill replica's cache of the two-replica
    # servers holds (`servers.PREFILL_CACHE_BLOCKS`) and what the pool holds when each prompt stays on one replica.
    found["shared-spill"] = _shared("shared-spill", prefixes=8, per_prefix=8 if fast else 6,
                                    what="8 system prompts of 512 tokens (more than a 2p prefill replica's "
                                         "cache holds) shared by %d requests")
    if fast:
        found["c32"] = Workload("c32", "concurrency 32, 200-token prompts, 64 output tokens",
                                (_random(32, 128, 200, 64),))
    # Steady streams while long prompts arrive: the streams' inter-token latency shows what prefill work does to
    # decoding (disaggregation keeps it off the decode engine).
    streams = _random(4, 8 if fast else 4, 64, 256 if fast else 96)
    long_prompts = _random(None, 12 if fast else 4, 1500, 4, rate=2.0 if fast else 0.2, warmups=0)
    found["mixed"] = Workload("mixed", "4 streams of 64->%d tokens while 1500-token prompts arrive at %g/s" % (
        256 if fast else 96, 2.0 if fast else 0.2), (streams, long_prompts))
    if shared_traces is not None and shared_traces.exists():
        found.update(_trace_workloads(engine, work_dir, shared_traces))
    return found


def _trace_workloads(engine: str, work_dir: Path, shared_traces: Path) -> dict[str, Workload]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from loadtest.traces import TraceScaling, load_trace, schedule, time_scale_for_rate

    fast = engine == "stand-in"
    out: dict[str, Workload] = {}
    # Shared prefixes: Mooncake conversations (equal hash_ids = equal 512-token blocks), lengths x1/16.
    mooncake = load_trace("mooncake", shared_traces)
    window = mooncake.requests[: 48 if fast else 16]
    scaling = TraceScaling(time_scale=time_scale_for_rate(window, 4.0 if fast else 0.5), length_scale=1 / 16,
                           max_requests=len(window), max_input_tokens=1800, max_output_tokens=32)
    path = _write_timed_trace(work_dir / "mooncake.jsonl", schedule(mooncake, scaling))
    out["prefix"] = Workload("prefix", scaling.describe(mooncake, schedule(mooncake, scaling)),
                             (_trace(path, len(window), scaling.block_tokens(mooncake)),), reports_hit_rate=True)
    # Goodput on a slice of the Azure conversation trace (no shared prefixes), lengths x1/4.
    azure = load_trace("azure", shared_traces)
    window = azure.requests[: 64 if fast else 20]
    scaling = TraceScaling(time_scale=time_scale_for_rate(window, 8.0 if fast else 0.5), length_scale=1 / 4,
                           max_requests=len(window), max_input_tokens=1800, max_output_tokens=64 if fast else 48)
    scheduled = schedule(azure, scaling)
    path = _write_timed_trace(work_dir / "azure.jsonl", scheduled, unique_blocks=32)
    slo = GOODPUT_SLO_MS[engine]
    out["azure"] = Workload("azure", f"{scaling.describe(azure, scheduled)}; SLO TTFT {slo['ttft']} ms, "
                            f"TPOT {slo['tpot']} ms", (_trace(path, len(window), 32, slo),))
    return out


def _write_timed_trace(path: Path, scheduled, unique_blocks: int | None = None) -> Path:
    """vLLM's `timed_trace` format: timestamp (s), input_length, output_length, hash_ids (one per chunk).

    A trace without prefix ids gets ids of its own per request, so no two prompts share a block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    next_id = 10**9
    with open(path, "w") as out:
        for r in scheduled:
            ids = list(r.prefix_blocks)
            if not ids:
                count = math.ceil(r.input_tokens / (unique_blocks or r.block_tokens or 32))
                ids, next_id = list(range(next_id, next_id + count)), next_id + count
            out.write(json.dumps({"timestamp": r.at_s, "input_length": r.input_tokens,
                                  "output_length": r.output_tokens, "hash_ids": ids}) + "\n")
    return path
