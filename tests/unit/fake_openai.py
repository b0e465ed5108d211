"""A tiny OpenAI-compatible streaming server for testing the load test without vLLM.

Counts prompt tokens as words (what `--tokenizer none` estimates), streams `max_tokens` tokens (one per chunk,
a short sleep apart), ends with a usage-only chunk and `[DONE]`, like vLLM with `include_usage`.
Every `fail_every`-th request (if set) gets an error event mid-stream.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler

from tests.unit.threaded_server import serve_in_thread

MODEL = "fake-model"


class FakeOpenAI(BaseHTTPRequestHandler):
    token_delay_s = 0.01
    first_token_delay_s = 0.03
    fail_every = 0
    counter = 0
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json({"error": {"message": "not found"}}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        if not chat and not self.path.endswith("/completions"):
            return self._json({"error": {"message": "not found"}}, 404)
        with FakeOpenAI.lock:
            FakeOpenAI.counter += 1
            n = FakeOpenAI.counter
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        prompt_tokens, tokens = len(text.split()), body["max_tokens"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-PDServe-Decode-Replica", "fake-1")
        self.end_headers()
        if chat:
            self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        time.sleep(self.first_token_delay_s)
        for i in range(tokens):
            if self.fail_every and n % self.fail_every == 0 and i == tokens // 2:
                self._event({"error": {"message": "fake failure", "type": "InternalServerError", "code": 500}})
                return
            piece = {"delta": {"content": " tok"}} if chat else {"text": " tok"}
            self._event({"choices": [{"index": 0, **piece, "finish_reason": "length" if i == tokens - 1 else None}]})
            time.sleep(self.token_delay_s)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
        self._event({"choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, payload: dict) -> None:
        self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
        self.wfile.flush()

    def _json(self, payload: dict, status: int = 200) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve_fake(fail_every: int = 0, token_delay_s: float = FakeOpenAI.token_delay_s):
    """Yields the base URL of a fake server running in a thread."""
    handler = type("Handler", (FakeOpenAI,), {"fail_every": fail_every, "token_delay_s": token_delay_s})
    with serve_in_thread(handler) as url:
        yield url
