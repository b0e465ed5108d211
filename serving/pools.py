"""What an ingress replica knows of the pools: which replicas run (from Serve's controller), their health, their
engine counters. Used by `/health`, `/pdserve/stats`, `/pdserve/replicas` and by the request plan.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError

from serving.app import DEPLOYMENT_NAMES
from serving.config import PDServeConfig

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 10
HEALTH_PROBE_TIMEOUT_S = 5
HEALTHY_STATES = ("ok", "busy", "scaled to zero")


class PoolView:
    """This replica (`local`, an `LLMServer`) plus handles to the other pools of the application."""

    def __init__(self, local, config: PDServeConfig, remote: dict[str, Any]):
        self.local, self.config, self.remote = local, config, remote

    @property
    def roles(self) -> list[str]:
        return [self.local.role, *self.remote]

    def running(self, role: str) -> int | None:
        """Running replicas of a remote pool as this replica's handle to it knows them (Serve's controller pushes
        every change to the handle's router), or None before the handle's first call. Free to ask per request,
        where `serve.status()` costs a controller round trip and rebuilds every deployment's config."""
        router = getattr(getattr(self.remote[role], "_router", None), "_asyncio_router", None)
        request_router = getattr(router, "request_router", None) if router is not None else None
        return None if request_router is None else len(request_router.curr_replicas)

    def replica_states(self) -> dict[str, dict[str, int]]:
        """Replicas per role and state, from Serve's controller (blocking, and costly: call it off the event loop,
        and not per request)."""
        app = serve.status().applications.get(serve.get_replica_context().app_name)
        if app is None:
            return {}
        return {role: dict(app.deployments[name].replica_states)
                for role, name in DEPLOYMENT_NAMES.items() if name in app.deployments}

    def running_replicas(self) -> dict[str, int]:
        return {role: states.get("RUNNING", 0) for role, states in self.replica_states().items()}

    async def health(self, requests_in_flight: int) -> dict[str, str]:
        """Each pool: ok, busy, scaled to zero, or unavailable with the reason.

        This replica's engine is probed directly. A remote pool is probed through its handle: a probe that waits
        past `HEALTH_PROBE_TIMEOUT_S` while requests are in flight is queued behind them (`max_ongoing_requests`):
        the pool is busy, not down. Without requests in flight the wait means no live replica took it (one just
        died and Serve has not replaced it yet). A probe that fails marks the pool unavailable at once.
        """
        running = await asyncio.get_running_loop().run_in_executor(None, self.running_replicas)

        async def local() -> tuple[str, str]:
            try:
                await self.local.check_health()
                return self.local.role, "ok"
            except Exception as exc:
                return self.local.role, f"unavailable: {type(exc).__name__}"

        async def remote(role: str) -> tuple[str, str]:
            if running.get(role, 0) == 0:  # nothing to probe: Serve is (re)starting it, or it may be at zero
                return role, "scaled to zero" if self.config.pool(role).replicas.min == 0 else "unavailable: no replica"
            try:
                await asyncio.wait_for(self.remote[role].check_health.remote(), HEALTH_PROBE_TIMEOUT_S)
                return role, "ok"
            except (asyncio.TimeoutError, BackPressureError):
                busy = requests_in_flight > 0
                return role, "busy" if busy else f"unavailable: no answer within {HEALTH_PROBE_TIMEOUT_S} s"
            except Exception as exc:
                return role, f"unavailable: {type(exc).__name__}"

        return dict(await asyncio.gather(local(), *(remote(role) for role in self.remote)))

    async def stats(self, role: str | None = None) -> dict[str, Any]:
        """Engine counters of this replica and of one replica of each other pool (`role` for one pool).

        A remote pool whose replicas are all busy queues this call behind its requests: after `STATS_TIMEOUT_S`
        it is reported as busy rather than holding the answer for the other pools.
        """
        running = await asyncio.get_running_loop().run_in_executor(None, self.running_replicas)

        async def one(r: str) -> dict[str, Any]:
            if r == self.local.role:
                return await self.local.stats()
            try:
                return await asyncio.wait_for(self.remote[r].stats.remote(), STATS_TIMEOUT_S)
            except Exception as exc:  # busy past the timeout, or the replica went away
                return {"role": r, "unavailable": type(exc).__name__}

        roles = [r for r in self.roles if role in (None, r) and (r == self.local.role or running.get(r, 0) > 0)]
        return dict(zip(roles, await asyncio.gather(*(one(r) for r in roles))))
