"""`PDRouter`: the OpenAI-compatible HTTP ingress (a Ray Serve FastAPI deployment). Thin on purpose.

Requests are parsed with vLLM's own protocol models and errors rendered by vLLM's own exception handlers, so a
malformed body gets exactly the 400 `vllm serve` would give, before any engine sees it. The orchestrator
decides which pools serve it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from serving.app import DEPLOYMENT_NAMES
from serving.config import PDServeConfig
from serving.guard import RequestGuard, error_response
from serving.metrics import RouterMetrics, outcome_of
from serving.orchestrator import ColocatedOrchestrator, DisaggregatedOrchestrator, Outcome
from serving.streaming import StreamTiming, metered
from serving.worker import Endpoint

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
STATS_TIMEOUT_S = 10
HEALTH_PROBE_TIMEOUT_S = 5
REPLICA_WATCH_INTERVAL_S = 1.0
HEALTHY_STATES = ("ok", "busy", "scaled to zero")

app = FastAPI(title="pdserve", description="OpenAI-compatible API over prefill/decode disaggregated vLLM")
init_exception_handler(app)
# FastAPI raises Starlette's HTTPException for bodies it cannot even decode (e.g. a NUL byte); give those
# the same OpenAI-style body as every other error.
app.add_exception_handler(StarletteHTTPException, http_exception_handler)
# vLLM's handlers read `app.state.args.log_error_stack` (normally `vllm serve`'s parsed arguments).
app.state.args = argparse.Namespace(log_error_stack=False)
app.add_middleware(RequestGuard)


def _headers(outcome: Outcome, retry_after_s: int) -> dict[str, str]:
    # X-Request-Id itself is echoed by Serve's proxy (it honours the client's value and passes it to us).
    headers = {}
    if outcome.reply.status in (429, 503):
        headers["Retry-After"] = str(retry_after_s)
    for role, replica in outcome.replicas.items():
        headers[f"X-PDServe-{role.capitalize()}-Replica"] = replica
    return headers


@serve.ingress(app)
class PDRouter:
    def __init__(self, config: dict[str, Any], pools: dict[str, Any]):
        self.config = PDServeConfig.model_validate(config)
        self.pools = pools  # role -> DeploymentHandle
        orchestrator = DisaggregatedOrchestrator if self.config.mode == "disaggregated" else ColocatedOrchestrator
        self.orchestrate = orchestrator(pools, self.config, running=lambda role: self.running.get(role))
        self.running: dict[str, int] = {}  # refreshed from Serve's controller by `_watch_replicas`
        self._watcher: asyncio.Task | None = None
        self.metrics = RouterMetrics(self.config.model.served_name)
        keys = os.environ.get(self.config.router.api_keys_env, "")
        app.state.api_keys = [key.strip() for key in keys.split(",") if key.strip()]
        app.state.max_body_bytes = self.config.router.max_body_bytes

    async def _serve(self, endpoint: Endpoint, request: ChatCompletionRequest | CompletionRequest, raw: Request):
        arrived = time.perf_counter()
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_replicas())
        request_id = raw.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        # Forward what the client sent (FastAPI has validated it with vLLM's model and cached it): the replica
        # parses it again with the same model, and a model_dump could hold lazy iterators that cannot be pickled.
        body = await raw.json()
        if "kv_transfer_params" in body:
            return error_response(400, "kv_transfer_params is set by the server between its prefill and decode "
                                  "engines, not by clients", "BadRequestError", "kv_transfer_params")
        body["request_id"] = request_id
        self.metrics.enter()
        try:
            outcome = await self.orchestrate(endpoint, body)
        except BaseException:
            self.metrics.leave()
            raise
        headers = _headers(outcome, self.config.router.retry_after_s)
        if outcome.stream is None:
            self._finish(endpoint, outcome, arrived, outcome.reply.status, outcome.reply.body)
            return JSONResponse(outcome.reply.body, status_code=outcome.reply.status, headers=headers)
        timing = StreamTiming(start=arrived)

        def done(timing: StreamTiming, completed: bool) -> None:
            self._finish(endpoint, outcome, arrived, 200 if completed else 499, None, timing)

        stream = metered(outcome.stream, timing, drop_usage=outcome.dropped_usage, on_done=done)
        return StreamingResponse(stream, media_type="text/event-stream", headers=headers)

    def _finish(self, endpoint: str, outcome: Outcome, arrived: float, status: int, body: dict | None,
                timing: StreamTiming | None = None) -> None:
        """Record one finished request (499: the client went away mid-stream)."""
        m, tags = self.metrics, self.metrics.tags(outcome.path)
        m.leave()
        outcome_name = "cancelled" if status == 499 else outcome_of(status)
        m.requests.inc(tags={**tags, "endpoint": endpoint, "outcome": outcome_name})
        m.e2e.observe(time.perf_counter() - arrived, tags=tags)
        for stage, seconds in outcome.stages.items():
            m.stage.observe(seconds, tags={**tags, "stage": stage})
        usage = (body or {}).get("usage") or {}
        prompt, generated = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
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

    @app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
    async def chat_completions(self, request: ChatCompletionRequest, raw_request: Request):
        return await self._serve("chat", request, raw_request)

    @app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
    async def completions(self, request: CompletionRequest, raw_request: Request):
        return await self._serve("completions", request, raw_request)

    @app.get("/v1/models")
    async def models(self):
        pool = self.pools.get("decode") or self.pools["colocated"]
        return JSONResponse(await pool.models.remote())

    @app.get("/health")
    async def health(self):
        """200 when every pool can serve: a replica answers, or is busy serving, or the pool is scaled to zero and
        allowed to be.

        A probe that waits past `HEALTH_PROBE_TIMEOUT_S` while this router has requests in flight is queued
        behind them (`max_ongoing_requests`): the pool is busy, not down. Without requests in flight the wait means
        no live replica took it (one just died and Serve has not replaced it yet): unavailable. A probe that
        fails (the replica died, its engine is dead) marks the pool unavailable at once.
        """
        running = await asyncio.get_running_loop().run_in_executor(None, self._running_replicas)
        status = dict(await asyncio.gather(*(self._pool_health(role, running.get(role, 0)) for role in self.pools)))
        healthy = all(value in HEALTHY_STATES for value in status.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "pools": status},
                            status_code=200 if healthy else 503)

    async def _pool_health(self, role: str, running: int) -> tuple[str, str]:
        if running == 0:  # nothing to probe: Serve is (re)starting it, or it is allowed to be at zero
            return role, "scaled to zero" if self.config.pool(role).replicas.min == 0 else "unavailable: no replica"
        try:
            await asyncio.wait_for(self.pools[role].check_health.remote(), HEALTH_PROBE_TIMEOUT_S)
            return role, "ok"
        except (asyncio.TimeoutError, BackPressureError):  # queued behind requests, or the queue is full
            busy = self.metrics.requests_in_flight > 0
            return role, "busy" if busy else f"unavailable: no answer within {HEALTH_PROBE_TIMEOUT_S} s"
        except Exception as exc:  # a dead replica or engine
            return role, f"unavailable: {type(exc).__name__}"

    def _replica_states(self) -> dict[str, dict[str, int]]:
        """Replicas per role and state, from Serve's controller (blocking: call it off the event loop)."""
        app = serve.status().applications.get(serve.get_replica_context().app_name)
        if app is None:
            return {}
        return {role: dict(app.deployments[name].replica_states)
                for role, name in DEPLOYMENT_NAMES.items() if name in app.deployments}

    def _running_replicas(self) -> dict[str, int]:
        return {role: states.get("RUNNING", 0) for role, states in self._replica_states().items()}

    async def _watch_replicas(self) -> None:
        """Keep `self.running` current, so a request can skip a pool whose replicas are all gone."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.running = await loop.run_in_executor(None, self._running_replicas)
            except Exception as exc:  # the controller is restarting: keep the last view, try again
                log.warning("pdserve: could not read replica states: %r", exc)
            await asyncio.sleep(REPLICA_WATCH_INTERVAL_S)

    @app.get("/pdserve/stats")
    async def stats(self, role: str | None = None):
        """Engine counters of one replica per pool (KV pulled over NIXL, transfers, queue); `?role=` for one pool.

        A pool whose replicas are all busy queues this call behind its requests: after `STATS_TIMEOUT_S` it is
        reported as busy rather than holding the answer for the other pools.
        """
        running = await asyncio.get_running_loop().run_in_executor(None, self._running_replicas)
        roles = [r for r in self.pools if running.get(r, 0) > 0 and role in (None, r)]

        async def one(r: str) -> dict[str, Any]:
            try:
                return await asyncio.wait_for(self.pools[r].stats.remote(), STATS_TIMEOUT_S)
            except Exception as exc:  # busy past the timeout, or the replica went away
                return {"role": r, "unavailable": type(exc).__name__}

        return dict(zip(roles, await asyncio.gather(*(one(r) for r in roles))))

    @app.get("/pdserve/replicas")
    async def replicas(self):
        """Replicas per pool by state (RUNNING, STARTING, PENDING_ALLOCATION, ...), from Serve's controller."""
        return await asyncio.get_running_loop().run_in_executor(None, self._replica_states)
