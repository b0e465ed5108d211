"""Render a prompt once per request on the replica that both plans it and runs it.

The routing plan needs the prompt's token ids (its length and cached blocks decide the path), and vLLM's serving
layer renders the same request again when the engine leg runs it. Rendering is not free: vLLM runs every
tokenization on one renderer thread (`renderer_num_workers`, 1 by default), so at concurrency 16 the plan's and
the engine leg's renders queue behind each other on it (measured: the plan stage took ~90 ms a request at c16 on
the GPU-speed stand-in, docs/performance.md).

This module keeps the plan's render for the one request it belongs to, in a context variable: the plan and
the engine leg run in the same request task (asyncio copies the context into the tasks it starts), so no other
request can see it, and it is handed over at most once. vLLM's serving objects get a `render_*_request` that
returns it for that request and renders as before for any other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

_planned: contextvars.ContextVar[tuple[str, str, Any] | None] = contextvars.ContextVar("pdserve_planned_render",
                                                                                      default=None)
RENDERERS = {"chat": "render_chat_request", "completions": "render_completion_request"}
"""The endpoints whose render the engine leg can take from the plan: the name of vLLM's render method each
serving object calls (the responses and messages endpoints render through other paths and render twice)."""


def keep(endpoint: str, request: Any, result: Any) -> None:
    """Keep the plan's render `result` of `request` for its engine leg (same task)."""
    if endpoint in RENDERERS:
        _planned.set((endpoint, request.request_id, result))


def take(endpoint: str, request: Any) -> Any | None:
    """The kept render of this request, once; None when there is none (render it)."""
    planned = _planned.get()
    if planned is None or planned[0] != endpoint or planned[1] != request.request_id:
        return None
    _planned.set(None)
    return planned[2]


def install(serving: Any, endpoint: str, on_reuse: Callable[[], None] = lambda: None) -> None:
    """Make `serving` (vLLM's `OpenAIServingChat` / `OpenAIServingCompletion`) take the plan's render when its
    request has one (`on_reuse` counts those). A model without that endpoint has no serving object (None):
    nothing to do."""
    if serving is None:
        return
    name = RENDERERS[endpoint]
    render = getattr(serving, name)

    async def render_once(request: Any) -> Any:
        kept = take(endpoint, request)
        if kept is None:
            return await render(request)
        on_reuse()
        return kept

    setattr(serving, name, render_once)
