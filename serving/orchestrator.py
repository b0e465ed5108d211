"""Runs one request through the pools: prefill -> (KV over NIXL) -> decode, or straight to a colocated pool.

Returns the first `LegReply` (status, body or stream head, which replicas served it) and, for a stream, the
iterator of SSE lines still to come from the decode replica. Each decode chunk is forwarded as soon as the
replica yields it; nothing here buffers tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from serving.config import RouterConfig
from serving.kv import decode_request, prefill_request
from serving.worker import Endpoint, LegReply, error_reply

log = logging.getLogger(__name__)

ROUTER = "router"


@dataclass
class Outcome:
    reply: LegReply
    stream: AsyncIterator[str] | None = None
    replicas: dict[str, str] = field(default_factory=dict)


async def _first(stream) -> LegReply:
    return await stream.__anext__()


async def _rest(stream) -> AsyncIterator[str]:
    async for chunk in stream:
        yield chunk


def _unavailable(leg: str, exc: BaseException) -> LegReply:
    if isinstance(exc, asyncio.TimeoutError):
        return error_reply(ROUTER, f"{leg} timed out", HTTPStatus.GATEWAY_TIMEOUT, "TimeoutError", None)
    log.exception("pdserve: %s leg failed", leg, exc_info=exc)
    return error_reply(ROUTER, f"{leg} failed: {type(exc).__name__}: {exc}", HTTPStatus.SERVICE_UNAVAILABLE,
                       "ServiceUnavailableError", None)


async def run_leg(handle, endpoint: Endpoint, body: dict[str, Any], stream: bool, timeout_s: float, leg: str):
    """Call one pool; a stream comes back as (head, rest-of-stream), a unary call as (reply, None)."""
    try:
        if not stream:
            return await asyncio.wait_for(handle.complete.remote(endpoint, body), timeout_s), None
        chunks = handle.options(stream=True).generate.remote(endpoint, body)
        head = await asyncio.wait_for(_first(chunks), timeout_s)
        return head, (_rest(chunks) if head.status == 200 else None)
    except Exception as exc:  # Ray actor death, cancellation by timeout, serialization errors
        return _unavailable(leg, exc), None


class DisaggregatedOrchestrator:
    def __init__(self, prefill, decode, router: RouterConfig):
        self.prefill, self.decode, self.router = prefill, decode, router

    async def __call__(self, endpoint: Endpoint, body: dict[str, Any]) -> Outcome:
        if body.get("n", 1) != 1:
            return Outcome(error_reply(ROUTER, "n > 1 is not supported by disaggregated serving",
                                       HTTPStatus.BAD_REQUEST, "BadRequestError", "n"))
        prefill, _ = await run_leg(self.prefill, endpoint, prefill_request(body), False,
                                   self.router.prefill_timeout_s, "prefill")
        replicas = {"prefill": prefill.replica}
        if prefill.status != 200:
            return Outcome(prefill, replicas=replicas)
        params = (prefill.body or {}).get("kv_transfer_params")
        if not params:
            reply = error_reply(ROUTER, "prefill returned no kv_transfer_params (is kv_role kv_producer?)",
                                HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", None)
            return Outcome(reply, replicas=replicas)
        stream = bool(body.get("stream"))
        head, rest = await run_leg(self.decode, endpoint, decode_request(body, params), stream,
                                   self.router.leg_timeout_s(stream), "decode")
        replicas["decode"] = head.replica
        return Outcome(head, rest, replicas)


class ColocatedOrchestrator:
    def __init__(self, colocated, router: RouterConfig):
        self.colocated, self.router = colocated, router

    async def __call__(self, endpoint: Endpoint, body: dict[str, Any]) -> Outcome:
        stream = bool(body.get("stream"))
        head, rest = await run_leg(self.colocated, endpoint, body, stream, self.router.leg_timeout_s(stream),
                                   "colocated")
        return Outcome(head, rest, {"colocated": head.replica})
