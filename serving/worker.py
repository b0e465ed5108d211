"""`LLMServer`: one vLLM engine inside a Ray Serve replica, in the role prefill, decode or colocated.

The replica runs vLLM's own OpenAI serving layer (`OpenAIServingChat`/`OpenAIServingCompletion` over an
`AsyncLLM`), so chat templates, validation and the wire format are exactly `vllm serve`'s.

Decode and colocated replicas are also the HTTP ingress (`serving.app` wraps them with `serve.ingress`; the app
comes from `serving.api`): tokens go from the engine to the client's socket in this process. Prefill replicas
are called through a Serve handle (`complete`), one unary call per request.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, ValidationError

from serving import render_once
from serving.config import PDServeConfig, Role
from serving.engine_args import engine_arg_values, parse_vllm_args, to_cli
from serving.kv import kv_pull_deadline, replica_env
from serving.model import resolve_model
from serving.protocol import Endpoint, LegReply, error_reply
from serving.streaming import ClockedEngine

log = logging.getLogger(__name__)


def _lower_niceness() -> None:
    """Ray starts workers at nice 15; an engine that should own its core must not yield it to everything."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            log.warning("pdserve: replica runs at nice %d and may not lower it (set RAY_worker_niceness=0)", current)


def validation_reply(replica: str, exc: ValidationError) -> LegReply:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or None
    message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return error_reply(replica, message, HTTPStatus.BAD_REQUEST, "BadRequestError", param)


def request_model(endpoint: Endpoint):
    """vLLM's own request model of each endpoint (what `vllm serve` validates a body with)."""
    if endpoint == "chat":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as model
    elif endpoint == "completions":
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest as model
    elif endpoint == "responses":
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest as model
    else:
        from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest as model
    return model


async def responses_sse(events: AsyncIterator[Any]) -> AsyncIterator[str]:
    """vLLM's Responses API events as the SSE lines `vllm serve` sends (named events)."""
    async for event in events:
        yield f"event: {getattr(event, 'type', 'unknown')}\ndata: {event.model_dump_json(by_alias=True)}\n\n"


def reply_json(endpoint: Endpoint, reply: BaseModel) -> dict[str, Any]:
    """A reply as the JSON `vllm serve`'s route for the endpoint sends it (Responses items use aliases)."""
    if endpoint == "responses":
        return reply.model_dump(mode="json", by_alias=True)
    if endpoint == "messages":
        return reply.model_dump(exclude_none=True)
    return reply.model_dump()


def anthropic_error(body: dict[str, Any]) -> dict[str, Any]:
    """vLLM's error object in the Anthropic shape that `vllm serve` answers /v1/messages with."""
    return {"type": "error", "error": {"type": body["error"]["type"], "message": body["error"]["message"]}}


class LLMServer:
    """A Serve deployment class; `serving.app` binds it once per role with `.options(name=...)`."""

    async def __init__(self, config: dict[str, Any], role: Role, prefill=None):
        import ray
        from ray import serve
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        from serving.engine_stats import EngineCounters, stat_logger_factory
        from serving.metrics import PoolMetrics

        self.config = PDServeConfig.model_validate(config)
        self.role = role
        self.prefill = prefill
        """DeploymentHandle of the prefill pool (decode replicas of a disaggregated app only)."""
        context = serve.get_replica_context()
        self.replica = context.replica_id.to_full_id_str()
        _lower_niceness()
        os.environ.update(replica_env(self.config, role, ray.util.get_node_ip_address()))

        model_path = resolve_model(self.config.model.source, progress=log.info)
        args = parse_vllm_args(to_cli(engine_arg_values(self.config, role, model_path)))
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        self.counters = EngineCounters()
        self.requests_in_flight = 0  # requests inside this replica (the engine's own counts lag by an iteration)
        self.pool_metrics = PoolMetrics(role)
        self.signal_window_s = self.config.autoscaling.look_back_period_s
        self.engine = AsyncLLM.from_vllm_config(
            vllm_config=vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            # Our counters (stats endpoint, pool metrics, autoscaling signals) and vLLM's own engine metrics,
            # recorded through Ray so they are exported next to Serve's on the node's metrics port.
            stat_loggers=[stat_logger_factory(self.counters, self.pool_metrics), RayPrometheusStatLogger],
            disable_log_stats=False,
        )
        cache = vllm_config.cache_config  # the engine core reports its block count back into this config
        self.block_size, self.kv_blocks = cache.block_size, cache.num_gpu_blocks or 1024
        self.state = State()
        # vLLM's serving layer gets the engine through `ClockedEngine`, so unary replies are timed too.
        await init_app_state(ClockedEngine(self.engine), self.state, args, await self.engine.get_supported_tasks())
        for endpoint, serving in (("chat", self.state.openai_serving_chat),
                                  ("completions", self.state.openai_serving_completion)):
            render_once.install(serving, endpoint, self._count_reused_render)
        log.info("pdserve: %s replica %s ready (pid %d)", role, self.replica, os.getpid())

    def _count_reused_render(self) -> None:
        self.counters.prompt_renders_reused += 1

    async def __serve_build_asgi_app__(self):
        """The HTTP app of an ingress replica (Serve calls this once the constructor has run)."""
        from serving.api import build_api

        return build_api(self)

    # --- the engine, in this process --------------------------------------------------------------------

    async def run(self, endpoint: Endpoint, request: Any, *, kv_transfer_params: dict | None = None,
                  kv_deadline: float | None = None, include_usage: bool = False,
                  raw_request=None) -> tuple[LegReply, AsyncIterator[str] | None]:
        """Serve a parsed request on this engine: a complete reply, or a stream head plus vLLM's SSE lines.

        `kv_transfer_params` (from the prefill leg; never the client's) make the engine pull the prompt's KV
        over NIXL instead of computing it, unless `kv_deadline` has passed: the prefill engine may have released
        those blocks by then, so the prompt is recomputed instead (counted).
        """
        from vllm.entrypoints.generate.base.protocol import StreamOptions
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        update: dict[str, Any] = {"kv_transfer_params": self._fresh(kv_transfer_params, kv_deadline, request)}
        if include_usage:
            options = request.stream_options
            update["stream_options"] = StreamOptions(
                include_usage=True, continuous_usage_stats=bool(options and options.continuous_usage_stats))
        request = request.model_copy(update=update)
        try:
            result = await self._serve(endpoint, request, raw_request)
        except Exception as exc:  # vLLM raises its validation errors (VLLMValidationError & co) from here
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            body = result.model_dump()
            return LegReply(result.error.code, anthropic_error(body) if endpoint == "messages" else body,
                            self.replica), None
        if isinstance(result, BaseModel):
            return LegReply(200, reply_json(endpoint, result), self.replica), None
        return LegReply(200, None, self.replica), responses_sse(result) if endpoint == "responses" else result

    async def _serve(self, endpoint: Endpoint, request: Any, raw_request: Any) -> Any:
        """vLLM's serving layer for the endpoint: an ErrorResponse, a response model, or a stream."""
        state = self.state
        if endpoint == "chat":
            return await state.openai_serving_chat.create_chat_completion(request, raw_request)
        if endpoint == "completions":
            return await state.openai_serving_completion.create_completion(request, raw_request)
        if endpoint == "responses":
            return await state.openai_serving_responses.create_responses(request, raw_request)
        return await state.anthropic_serving_messages.create_messages(request, raw_request)

    async def prompt_token_ids(self, endpoint: Endpoint, request: Any) -> list[int] | None:
        """The prompt's token ids as this engine will see them (vLLM's renderer: chat template, tools,
        tokenizer), for the plan; None when the request does not render (decode's engine leg answers the error).
        The render is kept for this request's engine leg (`serving.render_once`).
        """
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        state = self.state
        try:
            if endpoint == "completions":
                serving = state.openai_serving_completion
                result = await serving.render_completion_request(request)
            elif endpoint == "responses":
                serving = state.openai_serving_responses
                result = await serving._render_resolved_response_inputs(request, None)
                result = result if isinstance(result, ErrorResponse) else ([], [result.engine_input])
            else:
                serving = state.openai_serving_chat
                if endpoint == "messages":  # served as the chat request vLLM converts it to
                    messages = state.anthropic_serving_messages
                    effort = "none"
                    if request.thinking is not None and request.thinking.type == "disabled":
                        effort = await messages._get_disabled_thinking_effort()
                    request = messages.to_chat_completion_request(
                        request, merge_inline_system=messages._merge_inline_system, disabled_thinking_effort=effort)
                result = await serving.render_chat_request(request)
        except Exception as exc:  # anything the renderer refuses is answered by the engine leg, the same way
            log.debug("pdserve: prompt of %s not rendered for the plan: %r", endpoint, exc)
            return None
        if isinstance(result, ErrorResponse):
            return None
        render_once.keep(endpoint, request, result)
        engine_inputs = result[1] if isinstance(result, tuple) else result
        if len(engine_inputs) != 1:  # a batch of prompts (completions): one plan cannot fit each
            return None
        return list(serving._extract_prompt_components(engine_inputs[0]).token_ids or []) or None

    def _fresh(self, params: dict | None, deadline: float | None, request: Any) -> dict | None:
        if params is None:
            return None
        if deadline is None or time.time() <= deadline:
            self.counters.kv_pulls_requested += 1
            return params
        log.warning("pdserve: %s reached decode %.1f s after its KV pull deadline; recomputing its prompt",
                    request.request_id, time.time() - deadline)
        self.counters.kv_pulls_skipped += 1
        self.pool_metrics.kv_pulls_skipped.inc(tags=self.pool_metrics.tags)
        return None

    # --- called through Serve handles ---------------------------------------------------------------------

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> LegReply:
        """A unary call from another replica (the prefill leg): JSON body in, complete reply out."""
        try:
            request = request_model(endpoint).model_validate(body)
        except ValidationError as exc:
            return validation_reply(self.replica, exc)
        self.requests_in_flight += 1
        try:
            reply, stream = await self.run(endpoint, request, kv_transfer_params=body.get("kv_transfer_params"))
            if stream is not None:  # the caller asked for stream=True on a unary call
                async for _ in stream:
                    pass
                return error_reply(self.replica, "stream requested on a unary leg",
                                   HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", "stream")
            self.counters.last_reply_at = time.time()
            if reply.status == 200 and self.role == "prefill":
                reply.kv_deadline = kv_pull_deadline(self.config, self.counters.last_reply_at)
            return reply
        except Exception as exc:  # never let an engine-side bug look like a dead replica to the caller
            return self.internal_error(exc)
        finally:
            self.requests_in_flight -= 1

    def internal_error(self, exc: Exception) -> LegReply:
        log.exception("pdserve: %s leg raised", self.role)
        return error_reply(self.replica, f"{self.role} failed: {type(exc).__name__}: {exc}",
                           HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None)

    async def models(self) -> dict[str, Any]:
        return (await self.state.openai_serving_models.show_available_models()).model_dump()

    async def stats(self) -> dict[str, Any]:
        return {"role": self.role, "replica": self.replica, "pid": os.getpid(),
                "requests_in_flight": self.requests_in_flight, **self.counters.as_dict()}

    async def ping(self) -> str:
        """Cheap call that wakes a pool that may be at zero replicas."""
        return self.replica

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for Serve's autoscaler (see `serving.autoscaling`)."""
        return self.counters.autoscaling_signals(self.signal_window_s)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
