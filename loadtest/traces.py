"""Real request traces (Azure LLM 2023 CSV, Mooncake JSONL) and their scaling into a replay schedule.

The traces come from production-size models and long contexts; a CPU run replays a window of one, with arrival
times multiplied by `time_scale` and token counts by `length_scale` (clamped to what the served model takes).
Mooncake's `hash_ids` name 512-token blocks, equal ids meaning an equal prefix; scaled, each block becomes
round(512 * length_scale) tokens, so requests that shared a prefix in the trace share one in the replay.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

MOONCAKE_BLOCK_TOKENS = 512
TRACE_FILES = {"azure": "azure_llm_2023_conv.csv", "mooncake": "mooncake_conversation.jsonl"}


@dataclass(frozen=True)
class TraceRequest:
    arrival_s: float  # since the trace's first request
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Trace:
    name: str
    requests: list[TraceRequest]  # sorted by arrival
    block_tokens: int | None = None  # tokens per hash id, where the trace has them


def parse_azure_timestamp(text: str) -> float:
    """`2023-11-16 18:15:46.6805900` (7 fractional digits, more than strptime's %f takes) -> seconds."""
    whole, _, fraction = text.strip().partition(".")
    seconds = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


def load_azure_csv(path: Path) -> Trace:
    with open(path, newline="", encoding="utf-8") as rows:
        raw = [(parse_azure_timestamp(r["TIMESTAMP"]), int(r["ContextTokens"]), int(r["GeneratedTokens"]))
               for r in csv.DictReader(rows)]
    return Trace(Path(path).stem, _relative(raw))


def load_mooncake_jsonl(path: Path) -> Trace:
    raw = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                r = json.loads(line)
                raw.append((r["timestamp"] / 1000.0, int(r["input_length"]), int(r["output_length"]),
                            tuple(r.get("hash_ids") or ())))
    return Trace(Path(path).stem, _relative(raw), block_tokens=MOONCAKE_BLOCK_TOKENS)


def _relative(raw: list[tuple]) -> list[TraceRequest]:
    raw.sort(key=lambda r: r[0])
    t0 = raw[0][0] if raw else 0.0
    return [TraceRequest(r[0] - t0, r[1], r[2], *r[3:]) for r in raw]


def traces_dir(repo_root: Path) -> Path:
    """The project's shared traces: `../shared/traces` beside the repository."""
    return repo_root.resolve().parent / "shared" / "traces"


def load_trace(spec: str, shared_traces: Path) -> Trace:
    """`azure`, `mooncake` (files in `shared_traces`) or a path to a file of either format (by suffix)."""
    path = shared_traces / TRACE_FILES[spec] if spec in TRACE_FILES else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"trace {spec!r}: {path} not found (the shared traces live in ../shared/traces/)")
    if path.suffix == ".csv":
        return load_azure_csv(path)
    if path.suffix in (".jsonl", ".json"):
        return load_mooncake_jsonl(path)
    raise ValueError(f"trace {path}: expected an Azure .csv or a Mooncake .jsonl")


@dataclass(frozen=True)
class TraceScaling:
    time_scale: float = 1.0
    length_scale: float = 1.0
    start_s: float = 0.0  # of the unscaled trace
    window_s: float | None = None  # of the unscaled trace
    max_requests: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None

    def describe(self, trace: Trace, scheduled: list[ScheduledRequest]) -> str:
        end = f"{self.start_s + self.window_s:g}" if self.window_s is not None else "end"
        text = (f"trace {trace.name}: {len(scheduled)} requests from [{self.start_s:g} s, {end}) of the trace"
                f"{f' (first {self.max_requests})' if self.max_requests else ''}; arrival times x{self.time_scale:g}; "
                f"token counts x{self.length_scale:g}, prompts clamped to [1, {self.max_input_tokens}], outputs to "
                f"[1, {self.max_output_tokens}]")
        if trace.block_tokens:
            text += f"; {trace.block_tokens}-token prefix blocks -> {self.block_tokens(trace)} tokens"
        return text

    def block_tokens(self, trace: Trace) -> int:
        return max(1, round(trace.block_tokens * self.length_scale)) if trace.block_tokens else 0


@dataclass(frozen=True)
class ScheduledRequest:
    at_s: float  # since the replay started (scaled)
    input_tokens: int
    output_tokens: int
    prefix_blocks: tuple[int, ...] = ()  # hash ids whose text the prompt starts with
    block_tokens: int = 0  # tokens per prefix block (the last block may be cut short)


def select_window(trace: Trace, start_s: float = 0.0, window_s: float | None = None,
                  max_requests: int | None = None) -> list[TraceRequest]:
    """Requests arriving in [start_s, start_s + window_s), arrival times relative to start_s."""
    end = math.inf if window_s is None else start_s + window_s
    picked = [r for r in trace.requests if start_s <= r.arrival_s < end][:max_requests]
    return [TraceRequest(r.arrival_s - start_s, r.input_tokens, r.output_tokens, r.hash_ids) for r in picked]


def time_scale_for_rate(requests: list[TraceRequest], rate: float, window_s: float | None = None) -> float:
    """The time scale that makes the window's mean arrival rate `rate` requests per second."""
    if rate <= 0 or len(requests) < 2:
        return 1.0
    span = window_s if window_s else requests[-1].arrival_s - requests[0].arrival_s
    return (len(requests) / rate) / span if span > 0 else 1.0


def scale_length(tokens: int, scale: float, upper: int | None) -> int:
    scaled = max(1, round(tokens * scale))
    return min(scaled, upper) if upper else scaled


def schedule(trace: Trace, scaling: TraceScaling) -> list[ScheduledRequest]:
    window = select_window(trace, scaling.start_s, scaling.window_s, scaling.max_requests)
    block = scaling.block_tokens(trace)
    out = []
    for r in window:
        n_in = scale_length(r.input_tokens, scaling.length_scale, scaling.max_input_tokens)
        n_out = scale_length(r.output_tokens, scaling.length_scale, scaling.max_output_tokens)
        blocks = r.hash_ids[: math.ceil(n_in / block)] if block and r.hash_ids else ()
        out.append(ScheduledRequest(r.arrival_s * scaling.time_scale, n_in, n_out, blocks, block if blocks else 0))
    return out
