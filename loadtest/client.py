"""One streamed OpenAI request, timed chunk by chunk. No Locust here: the locustfile fires the results.

httpx yields each network read as it arrives (under Locust, gevent makes its sockets cooperative), so a chunk's
timestamp is when the client saw it, not when a buffer filled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.records import RequestRecord, StreamTiming
from loadtest.sse import ChunkKind, iter_events, parse_chunk

PATHS = {"chat": "/chat/completions", "completions": "/completions"}
REPLICA_HEADER_PREFIX = "x-pdserve-"


@dataclass(frozen=True)
class RequestSpec:
    """What to send: the prompt is already built to its token length."""

    endpoint: str  # "chat" | "completions"
    prompt: str
    max_tokens: int
    source: str
    expected_prompt_tokens: int | None = None
    prompt_exact: bool = False
    scheduled_s: float | None = None


def api_base(host: str) -> str:
    """`http://h:8000`, `http://h:8000/` and `http://h:8000/v1` all mean the API at `http://h:8000/v1`."""
    base = host.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def request_body(spec: RequestSpec, model: str, *, ignore_eos: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": spec.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    else:
        body["prompt"] = spec.prompt
    if ignore_eos:  # vLLM extensions: the output is exactly max_tokens long, as the trace asks
        body["ignore_eos"] = True
        body["min_tokens"] = spec.max_tokens
    return body


def replica_headers(headers: httpx.Headers) -> dict[str, str]:
    """`X-PDServe-Prefill-Replica: r1` -> {"prefill": "r1"}."""
    out = {}
    for name, value in headers.items():
        name = name.lower()
        if name.startswith(REPLICA_HEADER_PREFIX) and name.endswith("-replica"):
            out[name[len(REPLICA_HEADER_PREFIX):-len("-replica")]] = value
    return out


def fetch_model(http: httpx.Client, base_url: str, api_key: str | None = None) -> str:
    """The first model of GET /v1/models."""
    response = http.get(f"{base_url}/models", headers=auth_headers(api_key), timeout=30)
    response.raise_for_status()
    models = response.json().get("data") or []
    if not models:
        raise RuntimeError(f"{base_url}/models lists no model; pass --model")
    return models[0]["id"]


class StreamClient:
    """Sends `RequestSpec`s as streamed requests and returns one `RequestRecord` each (errors included)."""

    def __init__(self, http: httpx.Client, base_url: str, model: str, *, api_key: str | None = None,
                 ignore_eos: bool = True, run_t0: float | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.http = http
        self.base_url = base_url
        self.model = model
        self.headers = auth_headers(api_key)
        self.ignore_eos = ignore_eos
        self.clock = clock
        self.run_t0 = clock() if run_t0 is None else run_t0

    def send(self, spec: RequestSpec, *, users: int | None = None) -> RequestRecord:
        request_id = uuid.uuid4().hex
        body = request_body(spec, self.model, ignore_eos=self.ignore_eos)
        headers = {**self.headers, "X-Request-Id": request_id}
        start_unix, t0 = time.time(), self.clock()
        timing = StreamTiming(t0)
        status, error, replicas = None, None, {}
        try:
            with self.http.stream("POST", self.base_url + PATHS[spec.endpoint], json=body, headers=headers) as resp:
                status = resp.status_code
                replicas = replica_headers(resp.headers)
                if status != 200:
                    resp.read()
                    error = f"HTTP {status}: {resp.text[:300]}"
                else:
                    for event in iter_events(resp.iter_lines()):
                        chunk = parse_chunk(event)
                        timing.on_chunk(self.clock(), chunk)
                        if chunk.kind is ChunkKind.DONE:
                            break
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        t_end = self.clock()
        error = error or timing.problem()
        result = timing.timing(t_end)
        return RequestRecord(
            request_id=request_id, endpoint=spec.endpoint, source=spec.source, start_unix=start_unix,
            offset_s=t0 - self.run_t0, ok=error is None, status=status, error=error,
            ttft_s=result.ttft_s, e2e_s=result.e2e_s, tpot_s=result.tpot_s, itl_s=result.itl_s,
            prompt_tokens=timing.usage.get("prompt_tokens"),
            completion_tokens=timing.completion_tokens if timing.content_times or timing.usage else None,
            expected_prompt_tokens=spec.expected_prompt_tokens,
            expected_completion_tokens=spec.max_tokens if self.ignore_eos else None,
            prompt_exact=spec.prompt_exact, usage_reported="completion_tokens" in timing.usage,
            content_chunks=len(timing.content_times), scheduled_s=spec.scheduled_s, users=users,
            replicas=replicas,
        )
