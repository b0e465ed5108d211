"""Sends one batch request to an OpenAI-compatible endpoint and turns the outcome into a result record.

408, 429, 5xx answers and connection errors or timeouts are retried with capped exponential backoff and full
jitter (a `Retry-After` in seconds is honoured, up to the cap); other answers are final. After the last
attempt the final answer, or the transport error, becomes the record: nothing is raised for a request.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import httpx

from serving.batch.inputs import BatchRequest
from serving.batch.results import error_record, new_record_id, response_record, retryable_status

REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    """Attempts after the first for a retryable failure."""
    base_s: float = 0.5
    """Backoff before retry k (0-based) is up to base_s * 2**k seconds ..."""
    cap_s: float = 30.0
    """... and never more than this."""

    def delay(self, retry: int, retry_after_s: float | None = None) -> float:
        backoff = random.uniform(0, min(self.cap_s, self.base_s * 2**retry))
        return min(self.cap_s, max(backoff, retry_after_s or 0.0))


def api_base(endpoint: str) -> str:
    """The server root: batch lines carry `/v1/...` paths, so an endpoint given as `.../v1` loses that suffix."""
    base = endpoint.rstrip("/")
    return base.removesuffix("/v1")


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff alone decides


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {"error": {"message": response.text[:2000], "type": "non_json_response"}}


class BatchClient:
    """One HTTP connection pool to the endpoint; `send` never raises for a request's own failure."""

    def __init__(self, endpoint: str, *, api_key: str | None = None, timeout_s: float = 600.0,
                 concurrency: int = 8, retry: RetryPolicy = RetryPolicy(),
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.retry = retry
        self._http = httpx.AsyncClient(base_url=api_base(endpoint), headers=headers, timeout=timeout_s,
                                       limits=limits, transport=transport)

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def send(self, request: BatchRequest) -> dict[str, Any]:
        record_id = new_record_id()
        headers = {REQUEST_ID_HEADER: record_id}
        attempts = self.retry.max_retries + 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                response = await self._http.post(request.url, json=request.body, headers=headers)
            except httpx.TimeoutException as exc:
                failure = ("timeout", f"{type(exc).__name__}: {exc or 'timed out'}")
            except httpx.TransportError as exc:
                failure = ("connection_error", f"{type(exc).__name__}: {exc}")
            else:
                if attempt == attempts or not retryable_status(response.status_code):
                    request_id = response.headers.get(REQUEST_ID_HEADER, record_id)
                    return response_record(record_id, request.custom_id, response.status_code, request_id,
                                           _body(response))
                retry_after = _retry_after(response)
            if attempt == attempts:
                code, message = failure
                return error_record(record_id, request.custom_id, code,
                                    f"{message} (after {attempts} attempt{'s' if attempts > 1 else ''})")
            await asyncio.sleep(self.retry.delay(attempt - 1, retry_after))
        raise AssertionError("unreachable")
