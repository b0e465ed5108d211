"""`RequestGuard`: checks that need no parsing, before anything parses: the API key, then the body's size.

A pure ASGI middleware rather than Starlette's `@app.middleware("http")`, because the size check must see the
body itself: a chunked request declares no Content-Length, and FastAPI would otherwise buffer whatever it is
sent before any limit applied. Settings are read from `app.state` (`api_keys`, `max_body_bytes`), which the
router sets from its config when its replica starts.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from serving.protocol import error_body

ARRIVED = "pdserve.arrived"
"""Scope key: perf_counter() when the request reached this replica's app, the start of the TTFT it records."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def authorized(path: str, authorization: str, keys: list[str]) -> bool:
    """Like `vllm serve --api-key`: with keys set, /v1 routes need `Authorization: Bearer <key>`."""
    if not keys or not path.startswith("/v1"):
        return True
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip(), key) for key in keys)


def error_response(status: int, message: str, err_type: str, param: str | None = None) -> JSONResponse:
    """An OpenAI-style error as an HTTP response (the router's own refusals use it too)."""
    return JSONResponse(error_body(message, status, err_type, param), status_code=status)


def _too_large(size: str, limit: int) -> JSONResponse:
    return error_response(413, f"request body of {size} bytes exceeds the limit of {limit}",
                          "RequestTooLargeError")


class RequestGuard:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope[ARRIVED] = time.perf_counter()
        state = scope["app"].state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if not authorized(scope["path"], headers.get("authorization", ""), getattr(state, "api_keys", [])):
            response = error_response(401, "invalid or missing API key (Authorization: Bearer <key>)",
                                      "AuthenticationError")
            return await response(scope, receive, send)
        limit = getattr(state, "max_body_bytes", None)
        if limit is not None:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                return await _too_large(length, limit)(scope, receive, send)
            if length is None:
                # No declared size (chunked): read up to the limit here, then hand the body on as received.
                messages, size = await self._read_bounded(receive, limit)
                if size > limit:
                    return await _too_large(f"more than {limit}", limit)(scope, receive, send)
                receive = _replay(messages, receive)
        await self.app(scope, receive, send)

    @staticmethod
    async def _read_bounded(receive: Receive, limit: int) -> tuple[list[Message], int]:
        messages: list[Message] = []
        size = 0
        while size <= limit:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client went away; the app will see the disconnect
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return messages, size


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
