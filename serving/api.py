"""The OpenAI-compatible HTTP app of an ingress replica (decode, or colocated). Thin on purpose.

Requests are parsed with vLLM's own protocol models and errors rendered by vLLM's own exception handlers, so a
malformed body gets exactly the 400 `vllm serve` would give, before any engine sees it. `serving.ingress`
serves each request; `serving.pools` answers for the pools.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.entrypoints.serve.utils.api_utils import validate_json_request

from serving.guard import RequestGuard
from serving.ingress import Ingress
from serving.orchestrator import ColocatedOrchestrator, DisaggregatedOrchestrator
from serving.pools import HEALTHY_STATES, PoolView


def build_api(server) -> FastAPI:
    """The app for `server`, an `LLMServer` replica in the role decode (with a prefill handle) or colocated."""
    config = server.config
    remote = {"prefill": server.prefill} if server.prefill is not None else {}
    pools = PoolView(server, config, remote)
    if server.prefill is not None:
        orchestrate = DisaggregatedOrchestrator(server, server.prefill, config, running=pools.running)
    else:
        orchestrate = ColocatedOrchestrator(server, config)
    ingress = Ingress(server, orchestrate, config)

    app = FastAPI(title="pdserve", description="OpenAI-compatible API over prefill/decode disaggregated vLLM")
    init_exception_handler(app)
    # FastAPI raises Starlette's HTTPException for bodies it cannot even decode (e.g. a NUL byte); give those
    # the same OpenAI-style body as every other error.
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    # vLLM's handlers read `app.state.args.log_error_stack` (normally `vllm serve`'s parsed arguments).
    app.state.args = argparse.Namespace(log_error_stack=False)
    keys = os.environ.get(config.router.api_keys_env, "")
    app.state.api_keys = [key.strip() for key in keys.split(",") if key.strip()]
    app.state.max_body_bytes = config.router.max_body_bytes
    app.add_middleware(RequestGuard)

    @app.post("/v1/chat/completions", dependencies=[Depends(validate_json_request)])
    async def chat_completions(request: ChatCompletionRequest, raw_request: Request):
        return await ingress.serve("chat", request, raw_request)

    @app.post("/v1/completions", dependencies=[Depends(validate_json_request)])
    async def completions(request: CompletionRequest, raw_request: Request):
        return await ingress.serve("completions", request, raw_request)

    @app.get("/v1/models")
    async def models():
        return JSONResponse(await server.models())

    @app.get("/health")
    async def health():
        """200 when every pool can serve: it answers, or is busy serving, or is at zero replicas and may be."""
        status = await pools.health(server.requests_in_flight)
        healthy = all(value in HEALTHY_STATES for value in status.values())
        return JSONResponse({"status": "ok" if healthy else "unavailable", "pools": status},
                            status_code=200 if healthy else 503)

    @app.get("/pdserve/stats")
    async def stats(role: str | None = None):
        """Engine counters (KV pulled over NIXL, transfers, queue) of this replica and one of each other pool."""
        return await pools.stats(role)

    @app.get("/pdserve/replicas")
    async def replicas():
        """Replicas per pool by state (RUNNING, STARTING, PENDING_ALLOCATION, ...), from Serve's controller."""
        return await asyncio.get_running_loop().run_in_executor(None, pools.replica_states)

    return app
