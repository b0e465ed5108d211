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


class FakeStats:
    """vLLM's RequestStateStats of a finished request: wall-clock arrival, latency of the first token at the
    front end, engine-core monotonic stamps of the first and last token."""

    def __init__(self, arrival_time, first_token_latency, first_token_ts, last_token_ts):
        self.arrival_time, self.first_token_latency = arrival_time, first_token_latency
        self.first_token_ts, self.last_token_ts = first_token_ts, last_token_ts


class FakeOutput:
    def __init__(self, finished=False, metrics=None):
        self.finished, self.metrics = finished, metrics


class FakeEngine:
    """Yields the given outputs; remembers whether its generator was closed."""

    model_config = "the engine's own"

    def __init__(self, outputs):
        self.outputs, self.closed = outputs, False

    async def generate(self, prompt, sampling_params, request_id):
        try:
            for output in self.outputs:
                yield output
        finally:
            self.closed = True


def test_a_unary_reply_is_timed_by_the_engine_stamps_of_its_own_context(monkeypatch):
    # Wall clock 1000.0 s and perf_counter 50.0 s are the same instant.
    monkeypatch.setattr(streaming.time, "time", lambda: 1000.0)
    monkeypatch.setattr(streaming.time, "perf_counter", lambda: 50.0)
    # Arrived at the engine at wall 998.5, first token 0.3 s later; 0.6 s from first to last token.
    final = FakeOutput(True, FakeStats(arrival_time=998.5, first_token_latency=0.3, first_token_ts=7.0,
                                       last_token_ts=7.6))
    clocked = streaming.ClockedEngine(FakeEngine([FakeOutput(), final]))
    assert clocked.model_config == "the engine's own"

    async def unary(clock_of_request):
        token = streaming.ENGINE_CLOCK.set(clock_of_request)
        try:
            # vLLM's serving code consumes outputs in tasks it starts: the context goes with them.
            return await asyncio.create_task(_drain(clocked.generate("p", None, request_id="r")))
        finally:
            streaming.ENGINE_CLOCK.reset(token)

    timing = StreamTiming(start=48.0)  # the ingress got the request at wall 998.0
    assert asyncio.run(unary(timing)) == 2
    assert abs(timing.ttft - 0.8) < 1e-9  # 998.8 - 998.0
    assert abs(timing.last_token - timing.first_token - 0.6) < 1e-9
    timing.end, timing.completion_tokens = timing.last_token, 4
    assert abs(timing.tpot - 0.2) < 1e-9
    assert timing.gaps == []

    other = StreamTiming(start=48.0)
    assert asyncio.run(_drain(streaming.ClockedEngine(FakeEngine([final])).generate("p", None, request_id="s"))) == 1
    assert other.first_token is None and timing.chunks_with_text == 1  # no clock in its context: nothing noted


async def _drain(outputs) -> int:
    return len([o async for o in outputs])


def test_a_consumer_that_stops_early_closes_the_engine_generator_at_once():
    engine = FakeEngine([FakeOutput()] * 5)

    async def take_one():
        streaming.ENGINE_CLOCK.set(StreamTiming(start=0.0))  # a unary request: the wrapped generator
        outputs = streaming.ClockedEngine(engine).generate("p", None, request_id="r")
        async for _ in outputs:
            break
        await outputs.aclose()
        return engine.closed

    assert asyncio.run(take_one()) is True


def named(event: dict) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def test_responses_events_are_timed_and_counted_like_chat_chunks(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(streaming.time, "perf_counter", clock)
    created = named({"type": "response.created", "response": {"usage": None}})
    delta = [named({"type": "response.output_text.delta", "delta": t}) for t in ("a", "b", "c")]
    completed = named({"type": "response.completed",
                       "response": {"usage": {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12}}})
    out, timing, _ = run([(0.1, created), (0.05, delta[0]), (0.02, delta[1]), (0.02, delta[2]),
                          (0.01, completed)], clock, drop_usage=False)
    assert len(out) == 5 and abs(timing.ttft - 0.15) < 1e-9
    assert (timing.prompt_tokens, timing.completion_tokens) == (9, 3)
    assert abs(timing.tpot - 0.025) < 1e-9


def test_messages_events_are_timed_and_counted_from_start_and_delta_usage(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(streaming.time, "perf_counter", clock)
    start = named({"type": "message_start", "message": {"usage": {"input_tokens": 11, "output_tokens": 0}}})
    block = named({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    deltas = [named({"type": "content_block_delta", "delta": {"type": "text_delta", "text": t}}) for t in "ab"]
    tool = named({"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": "{"}})
    end = named({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}})
    _, timing, _ = run([(0.2, start), (0, block), (0.1, deltas[0]), (0.1, deltas[1]), (0.1, tool), (0, end)],
                       clock, drop_usage=False)
    assert abs(timing.ttft - 0.3) < 1e-9 and timing.chunks_with_text == 3
    assert (timing.prompt_tokens, timing.completion_tokens) == (11, 3)


def test_chat_tool_call_and_reasoning_deltas_count_as_tokens():
    tool = sse({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]})
    reasoning = sse({"choices": [{"delta": {"reasoning_content": "hm"}}]})
    _, timing, _ = run([(0, ROLE), (0, reasoning), (0, tool)], Clock(), drop_usage=False)
    assert timing.chunks_with_text == 2
