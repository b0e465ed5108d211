"""When each token of a request came out: streamed replies timed as their SSE lines pass, unary ones as the
engine's outputs reach vLLM's serving layer.

The figures follow the definitions of docs/metrics.md, the ones vLLM's benchmark client and `loadtest/` use:
TTFT from the request's arrival to the first chunk that carries text, TPOT = (end - first token) / (tokens - 1),
ITL = every gap between two chunks that carry text. The engine is always asked for a usage chunk (exact token
counts for TPOT); when the client did not ask for one, that chunk is dropped here, so the client sees exactly
what `vllm serve` would have sent it.

A reply that is not streamed has no chunks to time, and vLLM hands its serving layer one output at the end
(`FINAL_ONLY`). Its ingress puts a `StreamTiming` in `ENGINE_CLOCK` (a context variable, so it follows the
request into vLLM's serving code and the tasks it starts); `ClockedEngine`, the engine client vLLM's serving
layer is given, reads the engine's own per-request timestamps from that output: the first token as the engine's
front end received it (what a stream would have sent on), and the first-to-last-token time of the engine core.
So a unary TTFT is when the engine produced the first token, not when the client received the body; its TPOT
is the engine's; it has no inter-token gaps (vLLM's `vllm:inter_token_latency_seconds` has them).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamTiming:
    start: float
    first_token: float | None = None
    last_token: float | None = None
    end: float | None = None
    gaps: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    chunks_with_text: int = 0

    def token(self, now: float) -> None:
        """A chunk (or engine output) carrying text arrived at `now`."""
        if self.first_token is None:
            self.first_token = now
        else:
            self.gaps.append(now - self.last_token)
        self.last_token = now
        self.chunks_with_text += 1

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def tpot(self) -> float | None:
        if self.first_token is None or self.end is None:
            return None
        tokens = self.completion_tokens or self.chunks_with_text
        return (self.end - self.first_token) / (tokens - 1) if tokens > 1 else None


def parse_sse_data(line: str) -> dict | None:
    """The JSON object of one `data: {...}` SSE event, or None for `[DONE]`, comments and keep-alives."""
    for event in line.split("\n"):
        if event.startswith("data: ") and event[6:].strip() not in ("", "[DONE]"):
            try:
                return json.loads(event[6:])
            except ValueError:
                return None
    return None


def carries_text(event: dict) -> bool:
    """Whether one streamed event carries generated text (content, reasoning or tool-call arguments) in any of
    the stream formats: chat and completions chunks, Responses API events, Anthropic-style message events."""
    choices = event.get("choices")
    if choices is not None:  # chat / completions: the per-token path, kept to a few lookups
        for choice in choices:
            delta = choice.get("delta")
            if choice.get("text") or (delta and (delta.get("content") or delta.get("tool_calls")
                                                 or delta.get("reasoning") or delta.get("reasoning_content"))):
                return True
        return False
    kind = event.get("type") or ""
    if kind.startswith("response.") and kind.endswith(".delta"):
        return bool(event.get("delta"))
    if kind == "content_block_delta":
        delta = event.get("delta") or {}
        return bool(delta.get("text") or delta.get("partial_json") or delta.get("thinking"))
    return False


def event_usage(event: dict) -> dict | None:
    """The usage object an event carries: a chat/completions usage chunk, the Responses API's final
    `response.completed`, or an Anthropic-style `message_start` / `message_delta`."""
    usage = event.get("usage")
    if usage is not None or "choices" in event:
        return usage
    return (event.get("response") or {}).get("usage") or (event.get("message") or {}).get("usage")


def usage_counts(usage: dict) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) of an OpenAI (`prompt_tokens`) or Responses/Anthropic (`input_tokens`)
    usage object; None where the object does not say."""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return prompt, completion


def is_usage_only(event: dict) -> bool:
    return not event.get("choices") and event.get("usage") is not None


async def metered(chunks: AsyncIterator[str], timing: StreamTiming, *, drop_usage: bool,
                  on_done: Callable[[StreamTiming, bool], None]) -> AsyncIterator[str]:
    """Yield each chunk as it arrives; call `on_done(timing, completed)` once the stream ends or breaks."""
    completed = False
    try:
        async for chunk in chunks:
            event = parse_sse_data(chunk)
            if event is not None:
                if carries_text(event):
                    timing.token(time.perf_counter())
                usage = event_usage(event)
                if usage:
                    prompt, completion = usage_counts(usage)
                    timing.prompt_tokens = timing.prompt_tokens if prompt is None else prompt
                    timing.completion_tokens = timing.completion_tokens if completion is None else completion
                if drop_usage and is_usage_only(event):
                    continue
            yield chunk
        completed = True
    finally:
        timing.end = time.perf_counter()
        on_done(timing, completed)


ENGINE_CLOCK: ContextVar[StreamTiming | None] = ContextVar("pdserve_engine_clock", default=None)
"""The timing of the unary request being served in this context (None: streamed, or not an ingress request)."""


class ClockedEngine:
    """vLLM's engine client with one difference: `generate` copies the engine's timestamps of a request whose
    context holds an `ENGINE_CLOCK` into it. Everything else is the engine's own (attributes are delegated)."""

    def __init__(self, engine: Any):
        self._engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The engine's own generator for a streamed request (no extra hop per token); a unary one's, wrapped."""
        outputs = self._engine.generate(*args, **kwargs)
        timing = ENGINE_CLOCK.get()
        return outputs if timing is None else _noting_engine_times(outputs, timing)


async def _noting_engine_times(outputs: AsyncIterator[Any], timing: StreamTiming) -> AsyncIterator[Any]:
    # aclosing: a consumer that stops early closes the engine's generator now (vLLM aborts the request there),
    # not whenever the garbage collector gets to it.
    async with aclosing(outputs):
        async for output in outputs:
            if getattr(output, "finished", False):
                note_engine_times(timing, getattr(output, "metrics", None))
            yield output


def note_engine_times(timing: StreamTiming, stats: Any) -> None:
    """Put a finished request's first and last token times (vLLM's `RequestStateStats`) on `timing`'s clock.

    `arrival_time + first_token_latency` is the wall-clock time the engine's front end got the first token; the
    engine core's monotonic first/last token stamps give the time between them. A completion with several
    prompts runs one engine request per prompt: the earliest first token and the latest last token count."""
    if stats is None or not getattr(stats, "first_token_latency", 0):
        return
    first = time.perf_counter() - (time.time() - (stats.arrival_time + stats.first_token_latency))
    last = first + max(stats.last_token_ts - stats.first_token_ts, 0.0)
    if timing.first_token is None or first < timing.first_token:
        timing.first_token = first
    if timing.last_token is None or last > timing.last_token:
        timing.last_token = last
    timing.chunks_with_text += 1
