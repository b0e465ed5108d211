"""One OpenAI request through an ingress replica: admission, the orchestrator, metrics, the HTTP response.

The routes (`serving.api`) hand each parsed request here; nothing in this module knows vLLM's engine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from serving.config import PDServeConfig
from serving.guard import ARRIVED, error_response
from serving.metrics import RouterMetrics, outcome_of
from serving.orchestrator import Outcome
from serving.protocol import Endpoint
from serving.streaming import ENGINE_CLOCK, StreamTiming, metered, usage_counts

REQUEST_ID_HEADER = "X-Request-Id"


class Admission:
    """Requests one replica serves at once (`max_ongoing_requests`) and holds waiting (`max_queued_requests`,
    -1: unbounded); past both, the request is refused at once with 429 rather than queued without bound."""

    def __init__(self, ongoing: int, queued: int):
        self.slots = asyncio.Semaphore(ongoing)
        self.queued_limit = queued
        self.waiting = 0

    async def enter(self) -> bool:
        if self.slots.locked() and 0 <= self.queued_limit <= self.waiting:
            return False
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        return True

    def leave(self) -> None:
        self.slots.release()


class Once:
    """Runs `fn` the first time it is called; later calls do nothing."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args) -> None:
        fn, self.fn = self.fn, None
        if fn is not None:
            fn(*args)


def refusal(endpoint: Endpoint, body: dict[str, Any]) -> JSONResponse | None:
    """A 400 for what a client may not ask of a P/D server; None: the request may go on."""
    if "kv_transfer_params" in body:
        return error_response(400, "kv_transfer_params is set by the server between its prefill and decode "
                              "engines, not by clients", "BadRequestError", "kv_transfer_params")
    if endpoint == "responses" and body.get("previous_response_id"):
        # Each replica would hold its own store, and a later turn may land on any replica; vLLM's store is off
        # by default for the same reason (it is in-process and never evicted).
        return error_response(400, "previous_response_id is not supported: pdserve stores no responses (as "
                              "`vllm serve` without VLLM_ENABLE_RESPONSES_API_STORE); send the earlier turns in "
                              "`input`", "BadRequestError", "previous_response_id")
    return None


def response_headers(outcome: Outcome, retry_after_s: int) -> dict[str, str]:
    headers = {"X-PDServe-Path": outcome.plan.path, "X-PDServe-Reason": outcome.plan.reason}
    if outcome.reply.status in (429, 503):
        headers["Retry-After"] = str(retry_after_s)
    for role, replica in outcome.replicas.items():
        headers[f"X-PDServe-{role.capitalize()}-Replica"] = replica
    return headers


class Ingress:
    def __init__(self, server, orchestrate, config: PDServeConfig):
        self.server, self.orchestrate, self.config = server, orchestrate, config
        pool = config.pool(server.role)
        self.admission = Admission(pool.max_ongoing_requests, pool.max_queued_requests)
        paths = ("colocated",) if server.role == "colocated" else ("disaggregated", "decode_only")
        self.metrics = RouterMetrics(config.model.served_name, paths)

    async def serve(self, endpoint: Endpoint, request: Any, raw: Request):
        arrived = raw.scope.get(ARRIVED) or time.perf_counter()
        # The JSON FastAPI has already parsed and validated with vLLM's model (cached by Starlette): the prefill
        # leg receives it as sent, since a model_dump could hold lazy iterators that cannot be pickled.
        body = await raw.json()
        refused = refusal(endpoint, body)
        if refused is not None:
            return refused
        body["request_id"] = (raw.headers.get(REQUEST_ID_HEADER) or getattr(request, "request_id", None)
                              or uuid.uuid4().hex)
        if not await self.admission.enter():
            response = error_response(429, f"{self.server.role} replica is at capacity, retry later",
                                      "RateLimitError")
            response.headers["Retry-After"] = str(self.config.router.retry_after_s)
            return response
        self.metrics.enter()
        self.server.requests_in_flight += 1
        streamed = bool(getattr(request, "stream", False))
        # A unary reply is timed from the engine's own stamps by the engine client (serving.streaming).
        clock = None if streamed else StreamTiming(start=arrived)
        clock_token = ENGINE_CLOCK.set(clock)
        try:
            outcome = await self.orchestrate(endpoint, request, body, raw_request=raw)
        except BaseException:
            self._leave()
            raise
        finally:
            ENGINE_CLOCK.reset(clock_token)
        counters = getattr(self.server, "counters", None)
        if counters is not None:
            counters.record_plan(outcome.plan.path)  # the split of traffic the autoscaler couples the pools by
        headers = response_headers(outcome, self.config.router.retry_after_s)
        if outcome.stream is None:
            self._leave()
            if clock is not None and outcome.reply.status == 200:
                clock.end = clock.last_token
                prompt, completion = usage_counts((outcome.reply.body or {}).get("usage") or {})
                clock.prompt_tokens, clock.completion_tokens = prompt or 0, completion or 0
            self._record(endpoint, outcome, arrived, outcome.reply.status, outcome.reply.body, clock, streamed)
            return JSONResponse(outcome.reply.body, status_code=outcome.reply.status, headers=headers)

        def done(timing: StreamTiming, completed: bool) -> None:
            self._leave()
            self._record(endpoint, outcome, arrived, 200 if completed else 499, None, timing, streamed)

        on_done = Once(done)
        timing = StreamTiming(start=arrived)
        stream = metered(outcome.stream, timing, drop_usage=outcome.dropped_usage, on_done=on_done)
        # A client that leaves before the first chunk may drop the stream unstarted, and an unstarted generator
        # never runs its `finally`: release the slot when it is collected.
        weakref.finalize(stream, on_done, timing, False)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    def _leave(self) -> None:
        self.admission.leave()
        self.metrics.leave()
        self.server.requests_in_flight -= 1

    def _record(self, endpoint: str, outcome: Outcome, arrived: float, status: int, body: dict | None,
                timing: StreamTiming | None, streamed: bool) -> None:
        """Record one finished request (499: the client went away mid-stream). `timing` is None for a reply
        that carries no tokens (an error)."""
        m, tags = self.metrics, self.metrics.tags(outcome.plan.path, streamed)
        outcome_name = "cancelled" if status == 499 else outcome_of(status)
        m.requests.inc(tags={**tags, "endpoint": endpoint, "outcome": outcome_name})
        m.e2e.observe(time.perf_counter() - arrived, tags=tags)
        for stage, seconds in outcome.stages.items():
            m.stage.observe(seconds, tags={**tags, "stage": stage})
        prompt, generated = usage_counts((body or {}).get("usage") or {})
        if timing is not None:
            prompt, generated = timing.prompt_tokens, timing.completion_tokens or timing.chunks_with_text
            if timing.ttft is not None:
                m.ttft.observe(timing.ttft, tags=tags)
                if outcome.decode_started is not None:
                    m.stage.observe(timing.first_token - outcome.decode_started,
                                    tags={**tags, "stage": "decode_first_token"})
            if timing.tpot is not None:
                m.tpot.observe(timing.tpot, tags=tags)
            for gap in timing.gaps:
                m.itl.observe(gap, tags=tags)
        if prompt:
            m.prompt_tokens.inc(prompt, tags=tags)
        if generated:
            m.generation_tokens.inc(generated, tags=tags)
