"""Runs one request through the pools: prefill -> (KV over NIXL) -> decode, or straight to a colocated pool.

Returns the first `LegReply` (status, body or stream head, which replicas served it) and, for a stream, the
iterator of SSE lines still to come from the decode replica. Each decode chunk is forwarded as soon as the
replica yields it; nothing here buffers tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from serving.config import PDServeConfig
from serving.kv import decode_request, kv_pull_deadline, prefill_request
from serving.worker import Endpoint, LegReply, error_body, error_reply

log = logging.getLogger(__name__)

ROUTER = "router"


@dataclass
class Outcome:
    reply: LegReply
    stream: AsyncIterator[str] | None = None
    replicas: dict[str, str] = field(default_factory=dict)
    path: str = "disaggregated"
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds spent in TTFT stages that end before the first token (`prefill`)."""
    decode_started: float | None = None
    """perf_counter() when the decode (or colocated) leg was sent; the router times its first token from it."""
    dropped_usage: bool = False
    """The decode leg was asked for a usage chunk the client did not request (the router removes it)."""


async def _first(stream) -> LegReply:
    return await stream.__anext__()


async def _rest(stream, leg: str) -> AsyncIterator[str]:
    try:
        async for chunk in stream:
            yield chunk
    except Exception as exc:  # the replica died or failed after tokens went out: say so, never just stop
        log.warning("pdserve: %s stream broke after its first chunk: %r", leg, exc)
        error = error_body(f"{leg} failed mid-stream: {type(exc).__name__}", 500, "InternalServerError")
        yield f"data: {json.dumps(error)}\n\n"
        yield "data: [DONE]\n\n"


def _unavailable(leg: str, exc: BaseException) -> LegReply:
    from ray.serve.exceptions import BackPressureError

    if isinstance(exc, asyncio.TimeoutError):
        return error_reply(ROUTER, f"{leg} timed out", HTTPStatus.GATEWAY_TIMEOUT, "TimeoutError", None)
    if isinstance(exc, BackPressureError):
        return error_reply(ROUTER, f"{leg} pool is at capacity, retry later", HTTPStatus.TOO_MANY_REQUESTS,
                           "RateLimitError", None)
    log.warning("pdserve: %s leg failed: %r", leg, exc)
    return error_reply(ROUTER, f"{leg} failed: {type(exc).__name__}", HTTPStatus.SERVICE_UNAVAILABLE,
                       "ServiceUnavailableError", None)


def retryable(reply: LegReply) -> bool:
    """A leg that failed for reasons of the server (replica gone, engine error), not of the request."""
    return reply.status >= 500


async def run_leg(handle, endpoint: Endpoint, body: dict[str, Any], stream: bool, timeout_s: float, leg: str,
                  kv_deadline: float | None = None):
    """Call one pool; a stream comes back as (head, rest-of-stream), a unary call as (reply, None)."""
    try:
        if not stream:
            return await asyncio.wait_for(handle.complete.remote(endpoint, body, kv_deadline), timeout_s), None
        chunks = handle.options(stream=True).generate.remote(endpoint, body, kv_deadline)
        head = await asyncio.wait_for(_first(chunks), timeout_s)
        return head, (_rest(chunks, leg) if head.status == 200 else None)
    except Exception as exc:  # Ray actor death, cancellation by timeout, serialization errors
        return _unavailable(leg, exc), None


def with_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The decode leg always reports usage on streams; returns (body, whether the client did not ask for it)."""
    if not body.get("stream"):
        return body, False
    options = dict(body.get("stream_options") or {})
    if options.get("include_usage"):
        return body, False
    options["include_usage"] = True
    return {**body, "stream_options": options}, True


class Orchestrator:
    """Base: pools that may be at zero replicas are woken together before the first leg is sent."""

    def __init__(self, pools: dict[str, Any], config: PDServeConfig,
                 running: Callable[[str], int | None] = lambda role: None):
        self.pools, self.config, self.router = pools, config, config.router
        self.running = running
        """Running replicas of a pool as Serve's controller last reported them (None: not known yet)."""
        # A pool allowed to scale to zero may be cold. Waking every pool at once (a cheap call each, which Serve
        # queues until a replica is up) starts them in parallel, and decode is up before prefill pins KV that
        # would otherwise expire during decode's cold start.
        self.may_be_cold = any(config.pool(role).replicas.min == 0 for role in pools)

    async def wake(self) -> LegReply | None:
        if not self.may_be_cold:
            return None
        try:
            await asyncio.wait_for(asyncio.gather(*(p.ping.remote() for p in self.pools.values())),
                                   self.router.scale_from_zero_timeout_s)
        except Exception as exc:
            return _unavailable("scale-from-zero", exc)
        return None


class DisaggregatedOrchestrator(Orchestrator):
    async def __call__(self, endpoint: Endpoint, body: dict[str, Any]) -> Outcome:
        if body.get("n", 1) != 1:
            return Outcome(error_reply(ROUTER, "n > 1 is not supported by disaggregated serving",
                                       HTTPStatus.BAD_REQUEST, "BadRequestError", "n"))
        if (failure := await self.wake()) is not None:
            return Outcome(failure)
        started = time.perf_counter()
        if self.prefill_down():
            # Its replica died and Serve is starting another: waiting would stall the request for an engine's
            # cold start; decode alone serves it now.
            prefill = error_reply(ROUTER, "prefill pool has no running replica", HTTPStatus.SERVICE_UNAVAILABLE,
                                  "ServiceUnavailableError", None)
        else:
            prefill, _ = await run_leg(self.pools["prefill"], endpoint, prefill_request(body), False,
                                       self.router.prefill_timeout_s, "prefill")
        stages = {"prefill": time.perf_counter() - started}
        replicas = {"prefill": prefill.replica}
        params = (prefill.body or {}).get("kv_transfer_params") if prefill.status == 200 else None
        path = "disaggregated"
        kv_deadline = kv_pull_deadline(self.config, time.time()) if params else None
        if prefill.status == 200 and not params:
            prefill = error_reply(ROUTER, "prefill returned no kv_transfer_params (is kv_role kv_producer?)",
                                  HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None)
        if prefill.status != 200:
            if not (retryable(prefill) and self.router.fallback_to_decode):
                return Outcome(prefill, replicas=replicas, stages=stages)
            # Decode recomputes the prompt itself: slower, but the request is served.
            log.warning("pdserve: prefill failed (%s); serving %s on decode alone", prefill.status,
                        body.get("request_id"))
            path = "fallback"
        return await self._decode(endpoint, decode_request(body, params), replicas, path, stages, kv_deadline)

    def prefill_down(self) -> bool:
        """A prefill pool that should have replicas (min >= 1) and has none running, with fallback allowed."""
        return (self.router.fallback_to_decode and self.config.prefill.replicas.min >= 1
                and self.running("prefill") == 0)

    async def _decode(self, endpoint: Endpoint, body: dict[str, Any], replicas: dict[str, str], path: str,
                      stages: dict[str, float], kv_deadline: float | None) -> Outcome:
        """The decode leg, retried once when it fails before its first reply (another replica may take it)."""
        stream = bool(body.get("stream"))
        decode_body, dropped = with_usage(body)
        for attempt in range(2):
            started = time.perf_counter()
            head, rest = await run_leg(self.pools["decode"], endpoint, decode_body, stream,
                                       self.router.leg_timeout_s(stream), "decode", kv_deadline)
            if not (retryable(head) and head.replica == ROUTER and attempt == 0):
                break
        replicas["decode"] = head.replica
        return Outcome(head, rest, replicas, path, stages, started, dropped)


class ColocatedOrchestrator(Orchestrator):
    async def __call__(self, endpoint: Endpoint, body: dict[str, Any]) -> Outcome:
        if (failure := await self.wake()) is not None:
            return Outcome(failure, path="colocated")
        stream = bool(body.get("stream"))
        leg_body, dropped = with_usage(body)
        started = time.perf_counter()
        head, rest = await run_leg(self.pools["colocated"], endpoint, leg_body, stream,
                                   self.router.leg_timeout_s(stream), "colocated")
        return Outcome(head, rest, {"colocated": head.replica}, "colocated", {}, started, dropped)
