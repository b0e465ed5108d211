"""`PDRouter`: the OpenAI-compatible HTTP ingress (a Ray Serve FastAPI deployment). Thin on purpose.

Requests are parsed with vLLM's own protocol models and errors rendered by vLLM's own exception handlers, so a
malformed body gets exactly the 400 `vllm serve` would give, before any engine sees it. The orchestrator
decides which pools serve it.
"""

from __future__ import annotations

import argparse
import asyncio
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

from serving.config import PDServeConfig
from serving.orchestrator import ColocatedOrchestrator, DisaggregatedOrchestrator, Outcome
from serving.worker import Endpoint

REQUEST_ID_HEADER = "X-Request-Id"

app = FastAPI(title="pdserve", description="OpenAI-compatible API over prefill/decode disaggregated vLLM")
init_exception_handler(app)
# FastAPI raises Starlette's HTTPException for bodies it cannot even decode (e.g. a NUL byte); give those
# the same OpenAI-style body as every other error.
app.add_exception_handler(StarletteHTTPException, http_exception_handler)
# vLLM's handlers read `app.state.args.log_error_stack` (normally `vllm serve`'s parsed arguments).
app.state.args = argparse.Namespace(log_error_stack=False)


def _headers(outcome: Outcome) -> dict[str, str]:
    # X-Request-Id itself is echoed by Serve's proxy (it honours the client's value and passes it to us).
    headers = {}
    for role, replica in outcome.replicas.items():
        headers[f"X-PDServe-{role.capitalize()}-Replica"] = replica
    return headers


@serve.ingress(app)
class PDRouter:
    def __init__(self, config: dict[str, Any], pools: dict[str, Any]):
        self.config = PDServeConfig.model_validate(config)
        self.pools = pools  # role -> DeploymentHandle
        if self.config.mode == "disaggregated":
            self.orchestrate = DisaggregatedOrchestrator(pools["prefill"], pools["decode"], self.config.router)
        else:
            self.orchestrate = ColocatedOrchestrator(pools["colocated"], self.config.router)

    async def _serve(self, endpoint: Endpoint, request: ChatCompletionRequest | CompletionRequest, raw: Request):
        request_id = raw.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        body = request.model_dump(exclude_unset=True)
        body["request_id"] = request_id
        outcome = await self.orchestrate(endpoint, body)
        headers = _headers(outcome)
        if outcome.stream is None:
            return JSONResponse(outcome.reply.body, status_code=outcome.reply.status, headers=headers)
        return StreamingResponse(outcome.stream, media_type="text/event-stream", headers=headers)

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
        checks = {role: pool.check_health.remote() for role, pool in self.pools.items()}
        status: dict[str, str] = {}
        for role, pending in checks.items():
            try:
                await asyncio.wait_for(pending, 10)
                status[role] = "ok"
            except Exception as exc:  # a pool with no healthy replica, or a dead engine
                status[role] = f"unavailable: {type(exc).__name__}"
        healthy = all(value == "ok" for value in status.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "pools": status},
                            status_code=200 if healthy else 503)

    @app.get("/pdserve/stats")
    async def stats(self):
        """Engine counters of one replica per pool (KV pulled over NIXL, transfers, queue)."""
        return {role: await pool.stats.remote() for role, pool in self.pools.items()}
