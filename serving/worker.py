"""`LLMServer`: one vLLM engine inside a Ray Serve replica, in the role prefill, decode or colocated.

The replica runs vLLM's own OpenAI serving layer (`OpenAIServingChat`/`OpenAIServingCompletion` over an
`AsyncLLM`), so chat templates, validation and the wire format are exactly `vllm serve`'s. It knows nothing of
the other leg: the router decides what each leg receives (see `serving.kv`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from serving.config import PDServeConfig, Role
from serving.engine_args import engine_arg_values, parse_vllm_args, to_cli
from serving.kv import replica_env, without_kv_params
from serving.model import resolve_model

log = logging.getLogger(__name__)

Endpoint = Literal["chat", "completions"]


@dataclass
class LegReply:
    """First (or only) item a leg returns: the status, the JSON body unless streaming, who served it."""

    status: int
    body: dict[str, Any] | None
    replica: str


def _lower_niceness() -> None:
    """Ray starts workers at nice 15; an engine that should own its core must not yield it to everything."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            log.warning("pdserve: replica runs at nice %d and may not lower it (set RAY_worker_niceness=0)", current)


def error_body(message: str, status: int, err_type: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object, as vLLM's ErrorResponse serializes it."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}


def error_reply(replica: str, message: str, status: HTTPStatus, err_type: str, param: str | None) -> LegReply:
    return LegReply(int(status), error_body(message, status, err_type, param), replica)


def validation_reply(replica: str, exc: ValidationError) -> LegReply:
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or None
    message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return error_reply(replica, message, HTTPStatus.BAD_REQUEST, "BadRequestError", param)


class LLMServer:
    """A Serve deployment class; `serving.app` binds it once per role with `.options(name=...)`."""

    async def __init__(self, config: dict[str, Any], role: Role):
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
        context = serve.get_replica_context()
        self.replica = context.replica_id.to_full_id_str()
        _lower_niceness()
        os.environ.update(replica_env(self.config, role, ray.util.get_node_ip_address()))

        model_path = resolve_model(self.config.model.source, progress=log.info)
        args = parse_vllm_args(to_cli(engine_arg_values(self.config, role, model_path)))
        engine_args = AsyncEngineArgs.from_cli_args(args)
        vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        self.counters = EngineCounters()
        self.requests_in_flight = 0  # legs inside this replica (the engine's own counts lag by an iteration)
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
        self.state = State()
        await init_app_state(self.engine, self.state, args, await self.engine.get_supported_tasks())
        log.info("pdserve: %s replica %s ready (pid %d)", role, self.replica, os.getpid())

    async def _create(self, endpoint: Endpoint, body: dict[str, Any]):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        if endpoint == "chat":
            request = ChatCompletionRequest.model_validate(body)
            return await self.state.openai_serving_chat.create_chat_completion(request, None)
        request = CompletionRequest.model_validate(body)
        return await self.state.openai_serving_completion.create_completion(request, None)

    def _fresh_kv(self, body: dict[str, Any], kv_deadline: float | None) -> dict[str, Any]:
        """The decode body, without KV params whose blocks the prefill engine may have released (see
        `serving.kv.kv_pull_deadline`): this engine then computes the prompt itself."""
        if kv_deadline is None or "kv_transfer_params" not in body or time.time() <= kv_deadline:
            return body
        late = time.time() - kv_deadline
        log.warning("pdserve: %s reached decode %.1f s after its KV pull deadline; recomputing its prompt",
                    body.get("request_id"), late)
        self.counters.kv_pulls_skipped += 1
        self.pool_metrics.kv_pulls_skipped.inc(tags=self.pool_metrics.tags)
        return without_kv_params(body)

    async def _reply_or_stream(self, endpoint: Endpoint, body: dict[str, Any], kv_deadline: float | None = None):
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        body = self._fresh_kv(body, kv_deadline)
        try:
            result = await self._create(endpoint, body)
        except ValidationError as exc:
            return validation_reply(self.replica, exc), None
        except Exception as exc:  # vLLM raises its validation errors (VLLMValidationError & co) from here
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            return LegReply(result.error.code, result.model_dump(), self.replica), None
        if isinstance(result, BaseModel):
            return LegReply(200, result.model_dump(), self.replica), None
        return LegReply(200, None, self.replica), result

    async def complete(self, endpoint: Endpoint, body: dict[str, Any], kv_deadline: float | None = None) -> LegReply:
        """A non-streaming call (the prefill leg, or a client that did not ask for a stream)."""
        self.requests_in_flight += 1
        try:
            reply, stream = await self._reply_or_stream(endpoint, body, kv_deadline)
            if stream is not None:  # the caller asked for stream=True on a unary call
                async for _ in stream:
                    pass
                return error_reply(self.replica, "stream requested on a unary leg",
                                   HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", "stream")
            return reply
        except Exception as exc:  # never let an engine-side bug look like a dead replica to the router
            return self._internal_error(exc)
        finally:
            self.requests_in_flight -= 1

    async def generate(self, endpoint: Endpoint, body: dict[str, Any],
                       kv_deadline: float | None = None) -> AsyncIterator[LegReply | str]:
        """A streaming call: yields a `LegReply` first, then (when it streams) vLLM's SSE lines."""
        self.requests_in_flight += 1
        try:
            try:
                reply, stream = await self._reply_or_stream(endpoint, body, kv_deadline)
            except Exception as exc:
                yield self._internal_error(exc)
                return
            yield reply
            if stream is not None:
                async for chunk in stream:
                    yield chunk
        finally:
            self.requests_in_flight -= 1

    def _internal_error(self, exc: Exception) -> LegReply:
        log.exception("pdserve: %s leg raised", self.role)
        return error_reply(self.replica, f"{self.role} failed: {type(exc).__name__}: {exc}",
                           HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None)

    async def models(self) -> dict[str, Any]:
        return (await self.state.openai_serving_models.show_available_models()).model_dump()

    async def stats(self) -> dict[str, Any]:
        return {"role": self.role, "replica": self.replica, "pid": os.getpid(),
                "requests_in_flight": self.requests_in_flight, **self.counters.as_dict()}

    async def ping(self) -> str:
        """Cheap call the router uses to wake a pool that may be at zero replicas."""
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
