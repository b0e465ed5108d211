"""`PoolView.running` reads the running replicas a Serve handle's router already holds (pushed by the controller).
These fail if Ray moves the attributes it reads."""

from __future__ import annotations

import asyncio
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


class Remote:
    """A Serve handle to a pool: `.check_health.remote()` / `.stats.remote()` run the given coroutines."""

    def __init__(self, health=None, stats=None):
        self.check_health = SimpleNamespace(remote=lambda: (health or answer)())
        self.stats = SimpleNamespace(remote=lambda: (stats or answer)())


async def answer():
    return {"role": "prefill", "running": 0}


async def silent():
    await asyncio.sleep(3600)


async def dead():
    raise RuntimeError("the actor died")


class Local:
    role = "decode"

    def __init__(self, healthy=True):
        self.healthy = healthy

    async def check_health(self):
        if not self.healthy:
            raise EngineDeadError()

    async def stats(self):
        return {"role": "decode", "running": 1}


class EngineDeadError(Exception):
    pass


def view(remote, running=1, prefill_min=1, local=None):
    config = PDServeConfig.model_validate({"prefill": {"replicas": {"min": prefill_min, "max": 2}}})
    pools = PoolView(local or Local(), config, {"prefill": remote})
    pools.running_replicas = lambda: {"prefill": running, "decode": 1}  # what Serve's controller says
    return pools


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch):
    from serving import pools

    monkeypatch.setattr(pools, "HEALTH_PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(pools, "STATS_TIMEOUT_S", 0.05)


@pytest.mark.parametrize("remote,running,prefill_min,in_flight,local,expected", [
    (Remote(), 1, 1, 0, Local(), {"decode": "ok", "prefill": "ok"}),
    # a probe queued behind requests is a busy pool; with none in flight, no live replica took it
    (Remote(health=silent), 1, 1, 3, Local(), {"decode": "ok", "prefill": "busy"}),
    (Remote(health=silent), 1, 1, 0, Local(), {"decode": "ok", "prefill": "unavailable: no answer within 0.05 s"}),
    (Remote(health=dead), 1, 1, 3, Local(), {"decode": "ok", "prefill": "unavailable: RuntimeError"}),
    (Remote(), 0, 0, 0, Local(), {"decode": "ok", "prefill": "scaled to zero"}),
    (Remote(), 0, 1, 0, Local(), {"decode": "ok", "prefill": "unavailable: no replica"}),
    (Remote(), 1, 1, 0, Local(healthy=False), {"decode": "unavailable: EngineDeadError", "prefill": "ok"}),
], ids=["ok", "busy", "silent-idle", "dead", "at-zero-allowed", "at-zero-not-allowed", "local-engine-dead"])
def test_health_tells_busy_from_down(remote, running, prefill_min, in_flight, local, expected):
    from serving.pools import HEALTHY_STATES

    health = asyncio.run(view(remote, running, prefill_min, local).health(in_flight))
    assert health == expected
    # /health answers 503 exactly when a pool is in none of the healthy states
    assert all(v in HEALTHY_STATES for v in health.values()) == (not any("unavailable" in v for v in expected.values()))


def test_stats_of_a_pool_too_busy_to_answer_say_so_and_the_others_still_come():
    stats = asyncio.run(view(Remote(stats=silent)).stats())
    assert stats == {"decode": {"role": "decode", "running": 1},
                     "prefill": {"role": "prefill", "unavailable": "TimeoutError"}}
    assert asyncio.run(view(Remote(), running=0).stats()) == {"decode": {"role": "decode", "running": 1}}
    assert asyncio.run(view(Remote()).stats("prefill")) == {"prefill": {"role": "prefill", "running": 0}}
