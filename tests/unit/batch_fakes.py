"""Fakes for the batch tests: an in-process OpenAI API (httpx.MockTransport) and a tiny threaded HTTP server.

Both answer `/v1/chat/completions` and `/v1/completions` with a JSON completion that echoes the prompt. The
mock takes a `plan`: prompt -> list of outcomes for successive attempts (an int status, or an exception class
to raise as a transport error); the last outcome repeats.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx

from tests.unit.threaded_server import serve_in_thread


def chat_line(custom_id: str, prompt: str | None = None, **body: Any) -> dict[str, Any]:
    body = {"model": "fake", "messages": [{"role": "user", "content": prompt or f"say {custom_id}"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, lines: list[Any]) -> Path:
    """Objects become JSON lines; strings are written as they are (for malformed lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def prompt_of(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"] if "messages" in body else body.get("prompt", "")


def completion(body: dict[str, Any]) -> dict[str, Any]:
    text = f"echo: {prompt_of(body)}"
    usage = {"prompt_tokens": len(prompt_of(body).split()), "completion_tokens": 2, "total_tokens": 0}
    if "messages" in body:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
    return {"id": "cmpl-fake", "object": "chat.completion", "model": body.get("model"), "choices": [choice], "usage": usage}


class FakeAPI:
    """An httpx.MockTransport handler with a per-prompt plan of outcomes, counting calls and peak concurrency."""

    def __init__(self, plan: dict[str, list[Any]] | None = None, delay_s: float = 0.0) -> None:
        self.plan = plan or {}
        self.delay_s = delay_s
        self.calls: Counter[str] = Counter()
        self.requests: list[httpx.Request] = []
        self.in_flight = 0
        self.peak = 0

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        prompt = prompt_of(body)
        attempt = self.calls[prompt]
        self.calls[prompt] += 1
        outcomes = self.plan.get(prompt, [200])
        outcome = outcomes[min(attempt, len(outcomes) - 1)]
        headers = {"x-request-id": request.headers.get("x-request-id", "")}
        if isinstance(outcome, type) and issubclass(outcome, Exception):
            raise outcome("fake transport failure", request=request)
        if outcome == 429:
            headers["retry-after"] = "0"
        if outcome != 200:
            error = {"error": {"message": f"fake {outcome}", "type": "fake", "code": outcome}}
            return httpx.Response(outcome, json=error, headers=headers)
        return httpx.Response(200, json=completion(body), headers=headers)


class _Handler(BaseHTTPRequestHandler):
    delay_s = 0.0
    calls: Counter[str]

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls[prompt_of(body)] += 1
        time.sleep(self.delay_s)
        data = json.dumps(completion(body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", ""))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve_fake(delay_s: float = 0.0):
    """Yields (base URL, calls counter) of a fake OpenAI server on 127.0.0.1 in a thread."""
    calls: Counter[str] = Counter()
    handler = type("Handler", (_Handler,), {"delay_s": delay_s, "calls": calls})
    with serve_in_thread(handler, backlog=128) as url:
        yield url, calls
