"""The ingress's stream timing: the definitions of docs/metrics.md, measured on the lines as they pass."""

from __future__ import annotations

import asyncio
import json

from serving import streaming
from serving.streaming import StreamTiming, metered


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


ROLE = sse({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
USAGE = sse({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


def token(text: str) -> str:
    return sse({"choices": [{"delta": {"content": text}}]})


def run(lines, clock, *, drop_usage: bool):
    """Feed `lines`, advancing the fake clock by the given step before each one."""
    done: list[tuple[StreamTiming, bool]] = []
    timing = StreamTiming(start=0.0)

    async def source():
        for step, line in lines:
            clock.now += step
            yield line

    async def collect():
        return [line async for line in metered(source(), timing, drop_usage=drop_usage,
                                               on_done=lambda t, ok: done.append((t, ok)))]

    return asyncio.run(collect()), timing, done


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttft_tpot_and_gaps_follow_the_one_definition(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(streaming.time, "perf_counter", clock)
    lines = [(0.10, ROLE), (0.05, token("a")), (0.02, token("b")), (0.04, token("c")), (0.01, USAGE),
             (0.0, "data: [DONE]\n\n")]
    out, timing, done = run(lines, clock, drop_usage=False)
    assert out == [line for _, line in lines]
    assert abs(timing.ttft - 0.15) < 1e-9  # the role chunk carries no text: the first token does
    assert [round(g, 9) for g in timing.gaps] == [0.02, 0.04]
    # TPOT = (end - first token) / (tokens - 1), tokens from usage: (0.22 - 0.15) / 2
    assert abs(timing.tpot - 0.035) < 1e-9
    assert (timing.prompt_tokens, timing.completion_tokens) == (7, 3)
    assert done == [(timing, True)]


def test_a_usage_chunk_the_client_did_not_ask_for_is_dropped_but_still_counted():
    out, timing, _ = run([(0, token("a")), (0, token("b")), (0, USAGE)], Clock(), drop_usage=True)
    assert USAGE not in out and len(out) == 2
    assert timing.completion_tokens == 3


def test_a_stream_that_breaks_is_reported_as_not_completed():
    timing = StreamTiming(start=0.0)
    done = []

    async def broken():
        yield token("a")
        raise RuntimeError("engine died")

    async def collect():
        async for _ in metered(broken(), timing, drop_usage=False, on_done=lambda t, ok: done.append(ok)):
            pass

    try:
        asyncio.run(collect())
    except RuntimeError:
        pass
    assert done == [False] and timing.end is not None
