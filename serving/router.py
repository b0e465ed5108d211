"""`PDRouter`: the OpenAI-compatible HTTP ingress (a Ray Serve FastAPI deployment). Thin on purpose.

Requests are parsed with vLLM's own protocol models and errors rendered by vLLM's own exception handlers, so a
malformed body gets exactly the 400 `vllm serve` would give, before any engine sees it. The orchestrator
decides which pools serve it.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from serving.app import DEPLOYMENT_NAMES
from serving.config import PDServeConfig
from serving.metrics import RouterMetrics, outcome_of
from serving.orchestrator import ColocatedOrchestrator, DisaggregatedOrchestrator, Outcome
from serving.streaming import StreamTiming, metered
from serving.worker import Endpoint, error_body

REQUEST_ID_HEADER = "X-Request-Id"

app = FastAPI(title="pdserve", description="OpenAI-compatible API over prefill/decode disaggregated vLLM")
init_exception_handler(app)
# FastAPI raises Starlette's HTTPException for bodies it cannot even decode (e.g. a NUL byte); give those
# the same OpenAI-style body as every other error.
app.add_exception_handler(StarletteHTTPException, http_exception_handler)
# vLLM's handlers read `app.state.args.log_error_stack` (normally `vllm serve`'s parsed arguments).
app.state.args = argparse.Namespace(log_error_stack=False)


def error_response(status: int, message: str, err_type: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, err_type, param), status_code=status, headers=headers)


def authorized(request: Request, keys: list[str]) -> bool:
    """Like `vllm serve --api-key`: with keys set, /v1 routes need `Authorization: Bearer <key>`."""
    if not keys or not request.url.path.startswith("/v1"):
        return True
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip(), key) for key in keys)


@app.middleware("http")
async def guard(request: Request, call_next):
    """Checks that need no parsing, before anything parses: API key, then the body's declared size."""
    state = request.app.state
    if not authorized(request, getattr(state, "api_keys", [])):
        return error_response(401, "invalid or missing API key (Authorization: Bearer <key>)",
                              "AuthenticationError")
    limit = getattr(state, "max_body_bytes", None)
    length = request.headers.get("content-length")
    if limit is not None and length is not None and length.isdigit() and int(length) > limit:
        return error_response(413, f"request body of {length} bytes exceeds the limit of {limit}",
                              "RequestTooLargeError")
    return await call_next(request)


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
        self.orchestrate = orchestrator(pools, self.config)
        self.metrics = RouterMetrics(self.config.model.served_name)
        keys = os.environ.get(self.config.router.api_keys_env, "")
        app.state.api_keys = [key.strip() for key in keys.split(",") if key.strip()]
        app.state.max_body_bytes = self.config.router.max_body_bytes

    async def _serve(self, endpoint: Endpoint, request: ChatCompletionRequest | CompletionRequest, raw: Request):
        arrived = time.perf_counter()
        request_id = raw.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        # Forward what the client sent (FastAPI has validated it with vLLM's model and cached it): the replica
        # parses it again with the same model, and a model_dump could hold lazy iterators that cannot be pickled.
        body = await raw.json()
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
        """200 when every pool can serve: its engines answer, or it is scaled to zero and allowed to be."""
        running = await asyncio.get_running_loop().run_in_executor(None, self._running_replicas)
        status: dict[str, str] = {}
        for role, pool in self.pools.items():
            if running.get(role, 0) == 0 and self.config.pool(role).replicas.min == 0:
                status[role] = "scaled to zero"
                continue
            try:
                await asyncio.wait_for(pool.check_health.remote(), 10)
                status[role] = "ok"
            except Exception as exc:  # a pool with no healthy replica, or a dead engine
                status[role] = f"unavailable: {type(exc).__name__}"
        healthy = all(value in ("ok", "scaled to zero") for value in status.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "pools": status},
                            status_code=200 if healthy else 503)

    def _replica_states(self) -> dict[str, dict[str, int]]:
        """Replicas per role and state, from Serve's controller (blocking: call it off the event loop)."""
        app = serve.status().applications.get(serve.get_replica_context().app_name)
        if app is None:
            return {}
        return {role: dict(app.deployments[name].replica_states)
                for role, name in DEPLOYMENT_NAMES.items() if name in app.deployments}

    def _running_replicas(self) -> dict[str, int]:
        return {role: states.get("RUNNING", 0) for role, states in self._replica_states().items()}

    @app.get("/pdserve/stats")
    async def stats(self):
        """Engine counters of one replica per pool (KV pulled over NIXL, transfers, queue)."""
        running = await asyncio.get_running_loop().run_in_executor(None, self._running_replicas)
        return {role: await pool.stats.remote() for role, pool in self.pools.items() if running.get(role, 0) > 0}

    @app.get("/pdserve/replicas")
    async def replicas(self):
        """Replicas per pool by state (RUNNING, STARTING, PENDING_ALLOCATION, ...), from Serve's controller."""
        return await asyncio.get_running_loop().run_in_executor(None, self._replica_states)
