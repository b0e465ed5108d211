"""Per-request measurements: timing of one streamed response, the record written for it, and JSONL I/O.

TTFT is the time to the first chunk that carries content (the chat role chunk and empty deltas do not count);
e2e runs to the end of the stream; TPOT = (e2e - TTFT) / (tokens - 1) with tokens from `usage` (undefined for a
single token); inter-token latencies (ITL) are the gaps between consecutive content-carrying chunks, so a chunk
that carries several tokens shows as one gap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from loadtest.sse import Chunk, ChunkKind


@dataclass(frozen=True)
class Timing:
    ttft_s: float | None
    e2e_s: float
    tpot_s: float | None
    itl_s: list[float]


def compute_timing(t0: float, content_times: list[float], t_end: float, tokens: int | None) -> Timing:
    """Timing of one stream from its send time, the arrival times of its content chunks and its end."""
    e2e = t_end - t0
    if not content_times:
        return Timing(None, e2e, None, [])
    ttft = content_times[0] - t0
    itl = [b - a for a, b in zip(content_times, content_times[1:])]
    tpot = (e2e - ttft) / (tokens - 1) if tokens and tokens > 1 else None
    return Timing(ttft, e2e, tpot, itl)


class StreamTiming:
    """Collects a stream's chunks as they arrive (with the caller's clock) and sums them up."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.content_times: list[float] = []
        self.usage: dict[str, int] = {}
        self.error: str | None = None
        self.done = False

    def on_chunk(self, t: float, chunk: Chunk) -> None:
        if chunk.kind is ChunkKind.ERROR:
            self.error = self.error or chunk.error
        elif chunk.kind is ChunkKind.DONE:
            self.done = True
        if chunk.usage:
            self.usage = dict(chunk.usage)
        if chunk.kind is ChunkKind.DELTA and chunk.has_content:
            self.content_times.append(t)

    @property
    def completion_tokens(self) -> int:
        """From usage; without usage, the count of content chunks (a lower bound)."""
        return self.usage.get("completion_tokens", len(self.content_times))

    def timing(self, t_end: float) -> Timing:
        return compute_timing(self.t0, self.content_times, t_end, self.completion_tokens)

    def problem(self) -> str | None:
        """Why this stream does not count as a success, if it does not."""
        if self.error:
            return self.error
        if not self.content_times:
            return "stream ended without content"
        return None


@dataclass
class RequestRecord:
    """One line of records.jsonl."""

    request_id: str
    endpoint: str
    source: str  # the shape or trace that sent it
    start_unix: float  # wall clock at send
    offset_s: float  # send time since the run started
    ok: bool
    status: int | None = None
    error: str | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    expected_prompt_tokens: int | None = None
    expected_completion_tokens: int | None = None
    prompt_exact: bool = False  # expected_prompt_tokens counted with the model's tokenizer (else estimated)
    usage_reported: bool = False
    content_chunks: int = 0
    scheduled_s: float | None = None  # trace replay: the (scaled) arrival time it was due at
    users: int | None = None  # closed-loop users running when it was sent
    replicas: dict[str, str] = field(default_factory=dict)  # X-PDServe-<Role>-Replica headers

    @property
    def end_offset_s(self) -> float:
        return self.offset_s + (self.e2e_s or 0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> RequestRecord:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class RecordWriter:
    """Appends records as JSON lines, flushed per line, safe to call from several greenlets or threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8")

    def write(self, record: RequestRecord) -> None:
        if self._file is None:
            return
        with self._lock:
            self._file.write(record.to_json() + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_records(path: Path) -> list[RequestRecord]:
    return list(iter_records(path))


def iter_records(path: Path) -> Iterator[RequestRecord]:
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield RequestRecord.from_dict(json.loads(line))
