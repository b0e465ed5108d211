"""Wire types between the ingress replica and the engine replicas, and the OpenAI error object.

Kept apart from the engine module (as vLLM keeps `protocol.py` apart from `serving.py`), so the HTTP layer and
the orchestrator can be read and tested without importing vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal

Endpoint = Literal["chat", "completions", "responses", "messages"]
"""The generating APIs, each served through P/D: OpenAI chat completions, completions and responses, and
Anthropic-style messages."""


@dataclass
class LegReply:
    """First (or only) item a leg returns: the status, the JSON body unless streaming, who served it."""

    status: int
    body: dict[str, Any] | None
    replica: str
    kv_deadline: float | None = None
    """Prefill leg only: wall-clock time by which decode must have taken the request for its KV pull to be
    safe (see `serving.kv.kv_pull_deadline`); set by the prefill replica when its engine finished."""


def error_body(message: str, status: int, err_type: str, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object, as vLLM's ErrorResponse serializes it."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": int(status)}}


def error_reply(replica: str, message: str, status: HTTPStatus, err_type: str, param: str | None) -> LegReply:
    return LegReply(int(status), error_body(message, status, err_type, param), replica)
