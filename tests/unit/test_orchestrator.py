"""The orchestrator's plan and its execution, with the local engine and the prefill pool faked at their boundaries
(`LocalEngine.run`, and what Serve's DeploymentHandle offers)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from serving.config import PDServeConfig  # noqa: E402
from serving.orchestrator import (  # noqa: E402
    NO_REPLICA,
    ColocatedOrchestrator,
    DisaggregatedOrchestrator,
)
from serving.protocol import LegReply, error_reply  # noqa: E402
from serving.routing import plan_before_render  # noqa: E402

PARAMS = {"do_remote_prefill": True, "remote_engine_id": "p"}


class FakePrefill:
    """`handle.complete.remote(...)` as Serve's handle offers it: an awaitable reply."""

    def __init__(self, reply=None, delay_s: float = 0.0):
        self.calls: list[tuple] = []
        self.reply = reply or LegReply(200, {"kv_transfer_params": PARAMS}, "P#1", kv_deadline=123.0)
        self.delay_s = delay_s
        self.complete = SimpleNamespace(remote=self._remote)

    def _remote(self, endpoint, body):
        self.calls.append((endpoint, body))

        async def reply():
            await asyncio.sleep(self.delay_s)
            return self.reply

        return reply()


class FakeEngine:
    replica = "D#1"
    block_size = 4
    kv_blocks = 8

    def __init__(self, chunks=None):
        self.runs: list[dict] = []
        self.chunks = chunks
        self.rendered: list = []

    async def prompt_token_ids(self, endpoint, request):
        """A prompt of `request.prompt_ids` (None: the renderer refused it)."""
        self.rendered.append(request)
        return getattr(request, "prompt_ids", None)

    async def run(self, endpoint, request, *, kv_transfer_params=None, kv_deadline=None, include_usage=False,
                  raw_request=None):
        self.runs.append({"params": kv_transfer_params, "deadline": kv_deadline, "usage": include_usage})
        if self.chunks is not None:
            return LegReply(200, None, self.replica), self.chunks()
        return LegReply(200, {"ok": True}, self.replica), None


def request(**fields):
    return SimpleNamespace(**{"stream": False, "stream_options": None, "n": 1, **fields})


BODY = {"model": "m", "prompt": "hi", "max_tokens": 4, "request_id": "r1"}


def make(running: int | None = None, prefill=None, engine=None, **overrides):
    config = PDServeConfig().with_overrides(**overrides) if overrides else PDServeConfig()
    prefill, engine = prefill or FakePrefill(), engine or FakeEngine()
    return DisaggregatedOrchestrator(engine, prefill, config, running=lambda role: running), prefill, engine


def run(orchestrator, req=None):
    return asyncio.run(orchestrator("completions", req or request(), BODY))


def test_disaggregated_path_hands_decode_the_prefill_params_and_its_pull_deadline():
    orchestrator, prefill, engine = make(running=1)
    outcome = run(orchestrator)
    assert outcome.plan.path == "disaggregated" and outcome.reply.status == 200
    ((endpoint, leg),) = prefill.calls
    assert leg["max_tokens"] == 1 and leg["stream"] is False and leg["kv_transfer_params"]["do_remote_decode"]
    assert engine.runs == [{"params": PARAMS, "deadline": 123.0, "usage": False}]
    assert outcome.replicas == {"prefill": "P#1", "decode": "D#1"}
    assert "prefill" in outcome.stages


def test_a_prefill_pool_with_no_running_replica_is_skipped():
    orchestrator, prefill, engine = make(running=0)
    outcome = run(orchestrator)
    assert outcome.plan.path == "decode_only" and "no running replica" in outcome.plan.reason
    assert prefill.calls == []  # no wait for a replica that is still starting
    assert engine.runs == [{"params": None, "deadline": None, "usage": False}]
    assert outcome.replicas == {"prefill": NO_REPLICA, "decode": "D#1"}


@pytest.mark.parametrize("running,overrides", [
    (None, {}),  # not known yet: try prefill
    (0, {"router.fallback_to_decode": False}),  # fallback disabled: wait for prefill
    (0, {"prefill.replicas.min": 0, "prefill.replicas.max": 2}),  # at zero on purpose: wake it
])
def test_prefill_is_tried_when_it_is_not_known_to_be_down(running, overrides):
    assert plan_before_render(running, PDServeConfig().with_overrides(**overrides)) is None
    orchestrator, prefill, _ = make(running, **overrides)
    run(orchestrator)
    assert len(prefill.calls) == 1


def test_a_failed_prefill_is_served_by_decode_alone_with_the_reason():
    failed = error_reply("P#1", "engine died", 500, "InternalServerError", None)
    orchestrator, _, engine = make(running=1, prefill=FakePrefill(failed))
    outcome = run(orchestrator)
    assert outcome.plan.path == "decode_only" and outcome.plan.reason == "prefill failed with 500"
    assert outcome.reply.status == 200 and engine.runs[0]["params"] is None


def test_a_prefill_that_times_out_is_served_by_decode_alone():
    orchestrator, _, engine = make(1, FakePrefill(delay_s=0.5), **{"router.prefill_timeout_s": 0.05})
    outcome = run(orchestrator)
    assert outcome.plan.reason == "prefill failed with 504" and outcome.reply.status == 200


def test_a_client_error_from_prefill_is_the_answer_and_decode_never_runs():
    bad = error_reply("P#1", "prompt too long", 400, "BadRequestError", "prompt")
    orchestrator, _, engine = make(running=1, prefill=FakePrefill(bad))
    outcome = run(orchestrator)
    assert outcome.reply.status == 400 and engine.runs == []


def test_without_fallback_a_failed_prefill_fails_the_request():
    failed = error_reply("P#1", "engine died", 503, "ServiceUnavailableError", None)
    orchestrator, _, engine = make(1, FakePrefill(failed), **{"router.fallback_to_decode": False})
    assert run(orchestrator).reply.status == 503 and engine.runs == []


@pytest.mark.parametrize("fields,reason", [({"n": 2}, "n > 1"), ({"best_of": 3}, "n > 1"),
                                           ({"prompt_logprobs": 0}, "prompt logprobs"),
                                           ({"echo": True, "logprobs": 2}, "prompt logprobs"),
                                           ({"echo": True, "top_logprobs": 0}, "prompt logprobs")])
def test_requests_that_cannot_use_imported_kv_are_served_by_decode_alone_with_the_reason(fields, reason):
    orchestrator, prefill, engine = make(running=1)
    outcome = run(orchestrator, request(**fields))
    assert outcome.plan.path == "decode_only" and outcome.plan.reason.startswith(reason)
    assert outcome.reply.status == 200 and prefill.calls == [] and engine.runs[0]["params"] is None


@pytest.mark.parametrize("fields", [{"echo": True}, {"logprobs": 2}, {"echo": True, "top_logprobs": None,
                                                                      "logprobs": True}])
def test_echo_or_logprobs_alone_still_disaggregate(fields):
    orchestrator, prefill, _ = make(running=1)
    assert run(orchestrator, request(**fields)).plan.path == "disaggregated" and len(prefill.calls) == 1


def test_a_stream_asks_the_engine_for_usage_and_says_whether_the_client_did():
    orchestrator, _, engine = make(running=1, engine=FakeEngine(chunks=lambda: _chunks(["data: {}\n\n"])))
    outcome = run(orchestrator, request(stream=True))
    assert engine.runs[0]["usage"] is True and outcome.dropped_usage is True
    asked = request(stream=True, stream_options=SimpleNamespace(include_usage=True))
    outcome = run(orchestrator, asked)
    assert outcome.dropped_usage is False


async def _chunks(items, delay_s: float = 0.0, then_raise: Exception | None = None):
    for item in items:
        await asyncio.sleep(delay_s)
        yield item
    if then_raise is not None:
        raise then_raise


def drain(outcome) -> list[str]:
    async def collect():
        return [chunk async for chunk in outcome.stream]

    return asyncio.run(collect())


def test_a_stream_that_breaks_mid_way_ends_with_an_error_event_and_done():
    chunks = lambda: _chunks(["data: {\"a\": 1}\n\n"], then_raise=RuntimeError("engine died"))  # noqa: E731
    config = PDServeConfig().with_overrides(mode="colocated")
    outcome = asyncio.run(ColocatedOrchestrator(FakeEngine(chunks), config)("chat", request(stream=True), BODY))
    lines = drain(outcome)
    assert lines[0] == "data: {\"a\": 1}\n\n" and lines[-1] == "data: [DONE]\n\n"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == 500 and "colocated failed mid-stream: RuntimeError" == error["message"]


def test_a_stream_with_no_first_chunk_in_time_ends_with_a_504_event():
    chunks = lambda: _chunks(["data: {}\n\n"], delay_s=1.0)  # noqa: E731
    config = PDServeConfig().with_overrides(mode="colocated", **{"router.decode_first_token_timeout_s": 0.05})
    outcome = asyncio.run(ColocatedOrchestrator(FakeEngine(chunks), config)("chat", request(stream=True), BODY))
    lines = drain(outcome)
    assert json.loads(lines[0][6:])["error"]["code"] == 504 and lines[-1] == "data: [DONE]\n\n"


@pytest.mark.parametrize("endpoint", ["responses", "messages"])
def test_a_broken_responses_or_messages_stream_ends_with_that_api_error_event(endpoint):
    chunks = lambda: _chunks(["event: x\ndata: {}\n\n"], then_raise=RuntimeError("engine died"))  # noqa: E731
    config = PDServeConfig().with_overrides(mode="colocated")
    outcome = asyncio.run(ColocatedOrchestrator(FakeEngine(chunks), config)(endpoint, request(stream=True), BODY))
    lines = drain(outcome)
    assert len(lines) == 2 and lines[-1].startswith("event: error\ndata: ")
    event = json.loads(lines[-1].split("data: ", 1)[1])
    assert event["type"] == "error"
    message = event["message"] if endpoint == "responses" else event["error"]["message"]
    assert message == "colocated failed mid-stream: RuntimeError"


@pytest.mark.parametrize("endpoint,fields,expected", [
    ("chat", {}, False), ("chat", {"logprobs": True, "top_logprobs": 2}, False), ("chat", {"echo": True}, True),
    ("chat", {"prompt_logprobs": 1}, True), ("completions", {"echo": True}, False),
    ("completions", {"logprobs": 2}, False), ("completions", {"echo": True, "logprobs": 2}, True)])
def test_prompt_logprobs_are_detected_as_vllm_turns_the_request_into_sampling_params(endpoint, fields, expected):
    """Against vLLM's own request models: whatever makes their sampling params carry prompt_logprobs (which
    makes vLLM skip imported KV) is what sends a request to decode alone."""
    pytest.importorskip("vllm")
    from serving.routing import wants_prompt_logprobs
    from serving.worker import request_model

    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} if endpoint == "chat" else {
        "model": "m", "prompt": "hi"}
    parsed = request_model(endpoint).model_validate({**base, **fields})
    assert wants_prompt_logprobs(parsed) is expected
    params = parsed.to_sampling_params(8, {}) if endpoint == "completions" else None
    if params is not None:
        assert (params.prompt_logprobs is not None) is expected


def selective(threshold: int, **kwargs):
    return make(running=1, **{"router.remote_prefill_min_tokens": threshold}, **kwargs)


def test_a_short_prompt_runs_on_decode_alone_and_a_long_one_goes_through_prefill():
    orchestrator, prefill, engine = selective(8)
    short = run(orchestrator, request(prompt_ids=list(range(7))))
    assert short.plan.path == "decode_only" and short.plan.reason.startswith("short prompt: 7 uncached tokens < 8")
    assert prefill.calls == [] and engine.runs[0]["params"] is None
    long = run(orchestrator, request(prompt_ids=list(range(100, 108))))
    assert long.plan.path == "disaggregated" and long.plan.reason.startswith("long prompt: 8 uncached tokens")
    assert len(prefill.calls) == 1 and engine.runs[1]["params"] == PARAMS


def test_a_prompt_this_replica_served_before_is_counted_as_cached_and_runs_on_decode_alone():
    orchestrator, prefill, _ = selective(8)
    system = list(range(16))  # four blocks of 4
    first = run(orchestrator, request(prompt_ids=system + [100, 101]))
    assert first.plan.path == "disaggregated" and len(prefill.calls) == 1
    again = run(orchestrator, request(prompt_ids=system + [200, 201, 202]))  # same system prompt, new turn
    assert again.plan.path == "decode_only" and "3 uncached tokens" in again.plan.reason
    assert "16 cached on decode" in again.plan.reason and len(prefill.calls) == 1


def test_without_a_threshold_the_prompt_is_never_rendered_for_the_plan():
    orchestrator, prefill, engine = selective(0)
    assert run(orchestrator, request(prompt_ids=[1])).plan.path == "disaggregated"
    assert engine.rendered == [] and len(prefill.calls) == 1


def test_a_prompt_the_renderer_refuses_takes_the_prefill_leg_which_answers_the_error():
    orchestrator, prefill, engine = selective(8)
    assert run(orchestrator, request(prompt_ids=None)).plan.path == "disaggregated" and len(prefill.calls) == 1


def test_decisions_that_need_no_prompt_come_first_and_render_nothing():
    orchestrator, prefill, engine = selective(8)
    outcome = run(orchestrator, request(n=2, prompt_ids=list(range(50))))
    assert outcome.plan.reason.startswith("n > 1") and engine.rendered == [] and prefill.calls == []


@pytest.mark.parametrize("headers,body_user,expected", [
    ({"x-session-id": "s-1"}, "u-1", "s-1"),  # the header wins
    ({}, "u-1", "u-1"),  # the OpenAI `user` field
    ({}, None, None),  # no session: the prefill leg is the request as sent
])
def test_the_prefill_leg_carries_the_session_its_router_keeps_together(headers, body_user, expected):
    orchestrator, prefill, _ = make(running=1)
    body = {**BODY, **({"user": body_user} if body_user else {})}
    asyncio.run(orchestrator("completions", request(), body, SimpleNamespace(headers=headers)))
    ((_, leg),) = prefill.calls
    assert leg.get("user") == expected
