"""`PoolView.running` reads the running replicas a Serve handle's router already holds (pushed by the controller).
These fail if Ray moves the attributes it reads."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from ray.serve._private import router as serve_router  # noqa: E402
from ray.serve._private.request_router.request_router import RequestRouter  # noqa: E402

from serving.config import PDServeConfig  # noqa: E402
from serving.pools import PoolView  # noqa: E402


def test_both_router_wrappers_keep_their_asyncio_router():
    for wrapper in (serve_router.CurrentLoopRouter, serve_router.SingletonThreadRouter):
        assert "self._asyncio_router = AsyncioRouter(" in inspect.getsource(wrapper.__init__), wrapper
    assert isinstance(inspect.getattr_static(serve_router.AsyncioRouter, "request_router"), property)
    assert isinstance(inspect.getattr_static(RequestRouter, "curr_replicas"), property)


def handle_with(replicas):
    request_router = SimpleNamespace(curr_replicas={f"r{i}": object() for i in range(replicas)})
    return SimpleNamespace(_router=SimpleNamespace(_asyncio_router=SimpleNamespace(request_router=request_router)))


def test_running_counts_the_handles_replicas_and_is_unknown_before_its_first_call():
    view = PoolView(SimpleNamespace(role="decode"), PDServeConfig(), {"prefill": handle_with(2)})
    assert view.running("prefill") == 2
    view.remote["prefill"] = handle_with(0)
    assert view.running("prefill") == 0
    view.remote["prefill"] = SimpleNamespace(_router=None)  # the handle has not routed anything yet
    assert view.running("prefill") is None
