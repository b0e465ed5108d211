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


class FakeOutput:
    def __init__(self, *token_counts: int):
        self.outputs = [type("Completion", (), {"token_ids": [0] * n})() for n in token_counts]


class FakeEngine:
    """Yields outputs after the given clock steps; remembers whether its generator was closed."""

    model_config = "the engine's own"

    def __init__(self, clock, steps):
        self.clock, self.steps, self.closed = clock, steps, False

    async def generate(self, prompt, sampling_params, request_id):
        try:
            for step, output in self.steps:
                self.clock.now += step
                yield output
        finally:
            self.closed = True


def test_a_unary_reply_is_timed_by_the_engine_outputs_of_its_own_context(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(streaming.time, "perf_counter", clock)
    # An output without new tokens (a prefill-only step of a chunked prompt) is no token.
    engine = FakeEngine(clock, [(0.3, FakeOutput(0)), (0.2, FakeOutput(1)), (0.1, FakeOutput(2)),
                                (0.05, FakeOutput(1))])
    clocked = streaming.ClockedEngine(engine)
    assert clocked.model_config == "the engine's own"

    async def unary(clock_of_request):
        token = streaming.ENGINE_CLOCK.set(clock_of_request)
        try:
            # vLLM's serving code consumes outputs in tasks it starts: the context goes with them.
            return await asyncio.create_task(_drain(clocked.generate("p", None, request_id="r")))
        finally:
            streaming.ENGINE_CLOCK.reset(token)

    timing = StreamTiming(start=0.0)
    assert asyncio.run(unary(timing)) == 4
    assert abs(timing.ttft - 0.5) < 1e-9
    assert [round(g, 9) for g in timing.gaps] == [0.1, 0.05]
    assert timing.chunks_with_text == 3

    other = FakeEngine(clock, [(0.1, FakeOutput(1))])
    assert asyncio.run(_drain(streaming.ClockedEngine(other).generate("p", None, request_id="s"))) == 1
    assert timing.chunks_with_text == 3  # a request without a clock in its context leaves others' alone


async def _drain(outputs) -> int:
    return len([o async for o in outputs])


def test_a_consumer_that_stops_early_closes_the_engine_generator_at_once():
    engine = FakeEngine(Clock(), [(0, FakeOutput(1))] * 5)

    async def take_one():
        outputs = streaming.ClockedEngine(engine).generate("p", None, request_id="r")
        async for _ in outputs:
            break
        await outputs.aclose()
        return engine.closed

    assert asyncio.run(take_one()) is True
