"""Server-sent events of an OpenAI streaming response, parsed into typed chunks.

`SSEParser` follows the SSE wire format (fields, multi-line `data:`, comments, blank line ends an event);
`parse_chunk` reads one event as an OpenAI chat or completions chunk. Errors arrive either as an `event: error`
or as a `data:` object with an `error` key (vLLM's mid-stream errors); both become `ChunkKind.ERROR`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum

DONE = "[DONE]"


@dataclass(frozen=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEParser:
    """Feed lines (without their line endings); complete events come out."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = "message"

    def feed(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def flush(self) -> SSEEvent | None:
        """The last event of a stream that ended without a blank line."""
        return self._dispatch()

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = "message"
            return None
        event = SSEEvent("\n".join(self._data), self._event)
        self._data, self._event = [], "message"
        return event


def iter_events(lines: Iterable[str]) -> Iterator[SSEEvent]:
    parser = SSEParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event
    last = parser.flush()
    if last is not None:
        yield last


class ChunkKind(Enum):
    DELTA = "delta"  # a chunk of choices (its text may be empty: the chat role chunk, a held-back token)
    USAGE = "usage"  # the usage-only chunk of stream_options.include_usage
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class Chunk:
    kind: ChunkKind
    text: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    error: str | None = None

    @property
    def has_content(self) -> bool:
        return bool(self.text)


def parse_chunk(event: SSEEvent) -> Chunk:
    """One SSE event of /v1/chat/completions or /v1/completions as a `Chunk`."""
    if event.data.strip() == DONE:
        return Chunk(ChunkKind.DONE)
    try:
        body = json.loads(event.data)
    except json.JSONDecodeError:
        body = None
    if event.event == "error":
        return Chunk(ChunkKind.ERROR, error=_error_text(event.data if body is None else body))
    if body is None:
        return Chunk(ChunkKind.ERROR, error=f"undecodable event: {event.data[:200]!r}")
    if isinstance(body, dict) and "error" in body:
        return Chunk(ChunkKind.ERROR, error=_error_text(body))
    if not isinstance(body, dict):
        return Chunk(ChunkKind.ERROR, error=f"unexpected event: {event.data[:200]!r}")
    usage = {k: v for k, v in (body.get("usage") or {}).items() if isinstance(v, int)}
    choices = body.get("choices") or []
    if not choices:
        return Chunk(ChunkKind.USAGE, usage=usage)
    text = "".join(_choice_text(choice) for choice in choices)
    finish = next((c.get("finish_reason") for c in choices if c.get("finish_reason")), None)
    return Chunk(ChunkKind.DELTA, text=text, usage=usage, finish_reason=finish)


def _choice_text(choice: dict) -> str:
    if "delta" in choice:  # chat
        delta = choice.get("delta") or {}
        return (delta.get("content") or "") + (delta.get("reasoning_content") or "")
    return choice.get("text") or ""  # completions


def _error_text(body: object) -> str:
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
