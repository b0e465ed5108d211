"""Runs one request inside the ingress replica: remote prefill -> (KV over NIXL) -> local decode, or local only.

The ingress replica *is* a decode (or colocated) engine replica: the client's stream comes straight out of the
engine in the same process, so no Ray hop sits between a generated token and the client's socket. The only
remote call is the prefill leg (one unary call per request to the prefill pool, through a Serve handle).

What to do with a request is decided first, as a value (`Plan`: a path and the reason for it), then executed;
the reason travels in a response header and the `path` metric label.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol

from serving.config import PDServeConfig
from serving.kv import prefill_request
from serving.protocol import Endpoint, LegReply, error_body, error_reply
from serving.routing import Plan, PrefixIndex, block_hashes, plan_before_render, plan_by_length

log = logging.getLogger(__name__)

NO_REPLICA = "none"
"""Replica name in headers for a leg that did not run."""


@dataclass
class Outcome:
    reply: LegReply
    stream: AsyncIterator[str] | None = None
    replicas: dict[str, str] = field(default_factory=dict)
    plan: Plan = Plan("disaggregated", "")
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds spent in TTFT stages that end before the decode engine has the request (`plan`: the prompt's render
    and prefix lookup; `prefill`)."""
    decode_started: float | None = None
    """perf_counter() when the request was handed to the local engine; the first token is timed from it."""
    dropped_usage: bool = False
    """The engine was asked for a usage chunk the client did not request (the ingress removes it)."""


class LocalEngine(Protocol):
    """The engine of this replica, as the orchestrator uses it (`serving.worker.LLMServer`)."""

    replica: str
    block_size: int
    """Tokens per KV block of the engine (what its prefix cache holds whole)."""
    kv_blocks: int
    """KV blocks the engine has."""

    async def prompt_token_ids(self, endpoint: Endpoint, request: Any) -> list[int] | None: ...

    async def run(self, endpoint: Endpoint, request: Any, *, kv_transfer_params: dict | None = None,
                  kv_deadline: float | None = None, include_usage: bool = False,
                  raw_request: Any = None) -> tuple[LegReply, AsyncIterator[str] | None]: ...


SESSION_HEADER = "x-session-id"


def session_id(body: dict[str, Any], raw_request: Any = None) -> str | None:
    """The conversation a request belongs to: the `X-Session-Id` header, else the OpenAI `user` field."""
    headers = getattr(raw_request, "headers", None)
    session = (headers.get(SESSION_HEADER) if headers is not None else None) or body.get("user")
    return str(session) if session else None


def wants_usage(endpoint: Endpoint, request: Any) -> tuple[bool, bool]:
    """(ask the engine for a usage chunk, the client did not ask for it). Usage gives exact TPOT counts; the
    responses and messages streams always end with it."""
    if endpoint not in ("chat", "completions") or not getattr(request, "stream", False):
        return False, False
    options = getattr(request, "stream_options", None)
    asked = bool(options is not None and options.include_usage)
    return True, not asked


def _leg_failure(leg: str, exc: BaseException) -> LegReply:
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, asyncio.TimeoutError):
        return error_reply(NO_REPLICA, f"{leg} timed out", HTTPStatus.GATEWAY_TIMEOUT, "TimeoutError", None)
    if isinstance(exc, BackPressureError):
        return error_reply(NO_REPLICA, f"{leg} pool is at capacity, retry later", HTTPStatus.TOO_MANY_REQUESTS,
                           "RateLimitError", None)
    log.warning("pdserve: %s leg failed: %r", leg, exc)
    return error_reply(NO_REPLICA, f"{leg} failed: {type(exc).__name__}", HTTPStatus.SERVICE_UNAVAILABLE,
                       "ServiceUnavailableError", None)


def _error_events(endpoint: Endpoint, message: str, status: int, err_type: str) -> list[str]:
    """The end of a broken stream in the endpoint's own stream format, so the client's SDK reports an error."""
    if endpoint == "responses":  # the Responses API's `error` event
        event = {"type": "error", "code": err_type, "message": message, "param": None, "sequence_number": 0}
        return [f"event: error\ndata: {json.dumps(event)}\n\n"]
    if endpoint == "messages":  # Anthropic's `error` event
        event = {"type": "error", "error": {"type": err_type, "message": message}}
        return [f"event: error\ndata: {json.dumps(event)}\n\n"]
    return [f"data: {json.dumps(error_body(message, status, err_type))}\n\n", "data: [DONE]\n\n"]


async def _guarded(stream: AsyncIterator[str], endpoint: Endpoint, leg: str,
                   first_chunk_timeout_s: float) -> AsyncIterator[str]:
    """The engine's SSE lines. A stream whose first line does not come within the bound, or whose engine breaks
    after lines went out, ends with an error event: never a silent truncation."""
    chunks = aiter(stream)
    try:
        yield await asyncio.wait_for(anext(chunks), first_chunk_timeout_s)
        async for chunk in chunks:
            yield chunk
    except StopAsyncIteration:
        return
    except asyncio.TimeoutError:
        for line in _error_events(endpoint, f"{leg} produced no output within {first_chunk_timeout_s:g} s", 504,
                                  "TimeoutError"):
            yield line
    except Exception as exc:
        log.warning("pdserve: %s stream broke: %r", leg, exc)
        for line in _error_events(endpoint, f"{leg} failed mid-stream: {type(exc).__name__}", 500,
                                  "InternalServerError"):
            yield line


class Orchestrator:
    def __init__(self, local: LocalEngine, config: PDServeConfig, role: str):
        self.local, self.config, self.router, self.role = local, config, config.router, role

    async def _local(self, endpoint: Endpoint, request: Any, outcome: Outcome, raw_request: Any,
                     kv_transfer_params: dict | None = None, kv_deadline: float | None = None) -> Outcome:
        """Hand the request to this replica's engine: a unary reply must finish within `request_timeout_s`, a
        stream must start within `decode_first_token_timeout_s`."""
        include_usage, outcome.dropped_usage = wants_usage(endpoint, request)
        outcome.decode_started = time.perf_counter()
        stream = bool(getattr(request, "stream", False))
        try:
            reply, chunks = await asyncio.wait_for(
                self.local.run(endpoint, request, kv_transfer_params=kv_transfer_params, kv_deadline=kv_deadline,
                               include_usage=include_usage, raw_request=raw_request),
                self.router.leg_timeout_s(stream))
        except asyncio.TimeoutError as exc:
            reply, chunks = _leg_failure(self.role, exc), None
        outcome.reply, outcome.replicas[self.role] = reply, self.local.replica
        if chunks is not None:
            outcome.stream = _guarded(chunks, endpoint, self.role, self.router.decode_first_token_timeout_s)
        return outcome


class ColocatedOrchestrator(Orchestrator):
    def __init__(self, local: LocalEngine, config: PDServeConfig):
        super().__init__(local, config, "colocated")

    async def __call__(self, endpoint: Endpoint, request: Any, body: dict[str, Any],
                       raw_request: Any = None) -> Outcome:
        outcome = Outcome(LegReply(0, None, NO_REPLICA), plan=Plan("colocated", "colocated mode"))
        return await self._local(endpoint, request, outcome, raw_request)


class DisaggregatedOrchestrator(Orchestrator):
    def __init__(self, local: LocalEngine, prefill, config: PDServeConfig,
                 running: Callable[[str], int | None] = lambda role: None):
        super().__init__(local, config, "decode")
        self.prefill = prefill
        """DeploymentHandle of the prefill pool."""
        self.running = running
        """Running replicas of a pool as Serve's controller last reported them (None: not known yet)."""
        self.prefix = PrefixIndex(local.block_size, local.kv_blocks)
        """What of each prompt this replica's engine likely holds (for `remote_prefill_min_tokens`)."""

    def prefill_timeout_s(self) -> float:
        cold = self.config.prefill.replicas.min == 0 and not self.running("prefill")
        return self.router.scale_from_zero_timeout_s if cold else self.router.prefill_timeout_s

    async def __call__(self, endpoint: Endpoint, request: Any, body: dict[str, Any],
                       raw_request: Any = None) -> Outcome:
        started = time.perf_counter()
        plan = await self.plan(endpoint, request)
        outcome = Outcome(LegReply(0, None, NO_REPLICA), replicas={"prefill": NO_REPLICA}, plan=plan)
        outcome.stages["plan"] = time.perf_counter() - started
        if plan.path == "decode_only":
            return await self._local(endpoint, request, outcome, raw_request)

        started = time.perf_counter()
        prefill = await self._prefill(endpoint, body, session_id(body, raw_request))
        outcome.stages["prefill"] = time.perf_counter() - started
        outcome.replicas["prefill"] = prefill.replica
        params = (prefill.body or {}).get("kv_transfer_params") if prefill.status == 200 else None
        if prefill.status == 200 and not params:
            prefill = error_reply(prefill.replica, "prefill returned no kv_transfer_params (is kv_role "
                                  "kv_producer?)", HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None)
        if prefill.status != 200:
            if not (prefill.status >= 500 and self.router.fallback_to_decode):
                outcome.reply = prefill
                return outcome
            # Decode recomputes the prompt itself: slower, but the request is served.
            log.warning("pdserve: prefill failed (%s); serving %s on decode alone", prefill.status,
                        body.get("request_id"))
            outcome.plan = Plan("decode_only", f"prefill failed with {prefill.status}")
            return await self._local(endpoint, request, outcome, raw_request)
        return await self._local(endpoint, request, outcome, raw_request, kv_transfer_params=params,
                                 kv_deadline=prefill.kv_deadline)

    async def plan(self, endpoint: Endpoint, request: Any) -> Plan:
        """The plan of one request. The prompt is rendered here (vLLM's renderer, as the engine leg renders it
        again: ~0.5 ms) only when its length can decide, and its blocks are then counted as held by this
        replica's engine, whichever path computes or imports them."""
        plan = plan_before_render(self.running("prefill"), self.config, request)
        if plan is not None:
            return plan
        if self.config.remote_prefill_min_tokens <= 0:
            return plan_by_length(self.config, None)
        token_ids = await self.local.prompt_token_ids(endpoint, request)
        if token_ids is None:
            return plan_by_length(self.config, None)
        hashes = block_hashes(token_ids, self.prefix.block_size)  # once, for the lookup and the record
        plan = plan_by_length(self.config, len(token_ids), self.prefix.matched_blocks(hashes) * self.prefix.block_size)
        self.prefix.record_blocks(hashes)
        return plan

    async def _prefill(self, endpoint: Endpoint, body: dict[str, Any], session: str | None = None) -> LegReply:
        leg = prefill_request(endpoint, body)
        if session is not None:
            leg["user"] = session  # what the prefill pool's router keeps a session on (serving.prefill_router)
        try:
            return await asyncio.wait_for(self.prefill.complete.remote(endpoint, leg), self.prefill_timeout_s())
        except Exception as exc:  # Ray actor death, cancellation by timeout, back-pressure
            return _leg_failure("prefill", exc)
