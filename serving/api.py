"""The OpenAI-compatible HTTP app of an ingress replica (decode, or colocated). Thin on purpose.

Requests are parsed with vLLM's own protocol models and errors rendered by vLLM's own exception handlers, so a
malformed body gets exactly the 400 `vllm serve` would give, before any engine sees it. `serving.ingress`
serves each generating request (chat, completions, responses, messages: all through P/D); routes that run no
engine (tokenize, count_tokens, stored responses) are vLLM's own, over this replica's serving objects.
`serving.pools` answers for the pools.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm import __version__ as vllm_version
from vllm.entrypoints.anthropic import api_router as anthropic_routes
from vllm.entrypoints.openai.responses import api_router as responses_routes
from vllm.entrypoints.serve.tokenize.api_router import router as tokenize_router
from vllm.entrypoints.serve.exception_handling.handlers.http import http_exception_handler
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler
from vllm.entrypoints.serve.utils.api_utils import validate_json_request
from vllm.exceptions import VLLMValidationError

from serving.body_checks import body_problem
from serving.guard import RequestGuard
from serving.ingress import Ingress
from serving.orchestrator import ColocatedOrchestrator, DisaggregatedOrchestrator
from serving.pools import HEALTHY_STATES, PoolView
from serving.protocol import Endpoint
from serving.worker import request_model


GENERATING_ROUTES: dict[Endpoint, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                                          "responses": "/v1/responses", "messages": "/v1/messages"}


def generating_route(ingress: Ingress, endpoint: Endpoint):
    """The route of one generating endpoint: the body parsed with vLLM's model of it, then the ingress."""

    async def route(request, raw_request: Request):
        return await ingress.serve(endpoint, request, raw_request)

    # FastAPI reads the model to parse the body with from the annotation (a class, not a string, here).
    route.__annotations__ = {"request": request_model(endpoint), "raw_request": Request}
    route.__name__ = endpoint
    return route


def body_check(endpoint: Endpoint):
    """A dependency of the route: FastAPI runs it before the body is parsed with vLLM's model, so what that model
    lets through or crashes on (serving.body_checks) is answered first, as a 400 naming the field."""
    model = request_model(endpoint)

    async def check(raw_request: Request) -> None:
        try:
            body = await raw_request.json()  # parsed once: Starlette keeps it for the route
        except ValueError:
            return  # not JSON: FastAPI's own parse answers it
        problem = body_problem(endpoint, model, body)
        if problem is not None:
            raise VLLMValidationError(problem.message, parameter=problem.param)

    return check


def add_generating_routes(app: FastAPI, ingress: Ingress) -> None:
    for endpoint, path in GENERATING_ROUTES.items():
        app.add_api_route(path, generating_route(ingress, endpoint), methods=["POST"],
                          dependencies=[Depends(validate_json_request), Depends(body_check(endpoint))])


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
    # vLLM's own routes read its serving objects from the app's state, as under `vllm serve`.
    for name in ("serving_tokenization", "openai_serving_responses", "anthropic_serving_messages"):
        setattr(app.state, name, getattr(server.state, name, None))
    app.state.enable_server_load_tracking = False
    app.include_router(tokenize_router)

    add_generating_routes(app, ingress)

    # Stored responses: vLLM keeps none unless VLLM_ENABLE_RESPONSES_API_STORE is set (pdserve: see
    # `serving.ingress.refusal`), so these answer exactly as `vllm serve` does by default.
    app.add_api_route("/v1/responses/{response_id}", responses_routes.retrieve_responses, methods=["GET"])
    app.add_api_route("/v1/responses/{response_id}/cancel", responses_routes.cancel_responses, methods=["POST"])
    app.add_api_route("/v1/messages/count_tokens", anthropic_routes.count_tokens, methods=["POST"],
                      dependencies=[Depends(validate_json_request)])

    @app.get("/version")
    async def version():
        return JSONResponse({"version": vllm_version})

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
