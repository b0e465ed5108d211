"""Stage 1 of the two-stage scaling: how many prefill and decode replicas, from the signals users feel.

`decide()` is pure: per-pool load (requests in and around the engines, their recent TTFT/TPOT) in, replica
counts out. `PDAutoscalingPolicy` adapts it to Ray Serve's application-level policy interface; Ray wraps it
with the per-deployment bounds, up/down delays, scale-to-zero delay and the cold-start fast path, so no
flapping logic lives here. Replicas report their signals through `record_autoscaling_stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from serving.config import AutoscalingConfig, PoolScalingConfig


@dataclass(frozen=True)
class PoolLoad:
    replicas: int
    """Replicas running now."""
    requests: float
    """Requests anywhere in the pool: queued at handles, waiting in an engine, or running."""
    waiting: float
    """Requests an engine scheduler holds but does not run yet (sum over replicas)."""
    latency_s: float = 0.0
    """Recent engine TTFT (prefill, colocated) or inter-token latency (decode); 0 when nothing finished lately."""
    min_replicas: int = 0
    max_replicas: int = 1_000_000
    target_replicas: int = 0
    """Replicas the pool is heading to (running + starting)."""
    remote_prefill_share: float = 1.0
    """Decode only: the share of its recent requests that went through prefill (the rest ran on decode alone)."""


def pool_demand(load: PoolLoad, cfg: PoolScalingConfig) -> int:
    """Replicas one pool needs on its own signals."""
    if load.requests <= 0:
        return 0
    wanted = math.ceil(load.requests / cfg.target_running_per_replica)
    if load.waiting > cfg.target_waiting_per_replica * max(load.replicas, 1):
        wanted = max(wanted, load.replicas + 1)
    if cfg.slo_s is not None and load.latency_s > cfg.slo_s:
        wanted = max(wanted, load.replicas + 1)
    return max(wanted, 1)


def clamp(value: int, load: PoolLoad) -> int:
    if load.replicas < load.target_replicas:
        # Replicas are still starting (an engine takes ~40 s on CPU): never undo a scale-up before it lands.
        value = max(value, load.target_replicas)
    return max(load.min_replicas, min(load.max_replicas, value))


def decide(loads: dict[str, PoolLoad], config: AutoscalingConfig) -> dict[str, int]:
    """Replica counts for the pools present in `loads` (prefill+decode coupled, or colocated alone)."""
    wanted = {role: pool_demand(load, getattr(config, role)) for role, load in loads.items()}
    if "prefill" in loads and "decode" in loads:
        wanted["prefill"], wanted["decode"] = couple(wanted["prefill"], wanted["decode"], config,
                                                     loads["decode"].remote_prefill_share)
    return {role: clamp(count, loads[role]) for role, count in wanted.items()}


def couple(prefill: int, decode: int, config: AutoscalingConfig, remote_share: float = 1.0) -> tuple[int, int]:
    """Raise the lagging pool so prefill:decode stays within bounds. Every prefilled request needs decode; only
    the `remote_share` of decode's requests that go through prefill need prefill (selective disaggregation
    serves short and cached prompts on decode alone), so decode's load holds prefill up in that proportion."""
    if prefill == 0 and decode == 0:
        return 0, 0
    decode = max(decode, 1)
    if remote_share > 0:
        prefill = max(prefill, 1, math.ceil(decode * config.min_prefill_per_decode * remote_share))
    decode = max(decode, math.ceil(prefill / config.max_prefill_per_decode))
    return prefill, decode


def _sum(metrics: dict[str, dict[Any, float]] | None, name: str) -> float:
    return float(sum((metrics or {}).get(name, {}).values()))


def _mean_nonzero(metrics: dict[str, dict[Any, float]] | None, name: str) -> float:
    values = [v for v in (metrics or {}).get(name, {}).values() if v > 0]
    return sum(values) / len(values) if values else 0.0


def load_from_context(ctx, latency_metric: str) -> PoolLoad:
    """Turn a Ray `AutoscalingContext` into a `PoolLoad`."""
    metrics = ctx.aggregated_metrics
    shares = list((metrics or {}).get("remote_prefill_share", {}).values())
    engine_requests = _sum(metrics, "waiting") + _sum(metrics, "running")
    return PoolLoad(
        replicas=ctx.current_num_replicas,
        requests=max(float(ctx.total_num_requests or 0), engine_requests),
        waiting=_sum(metrics, "waiting"),
        latency_s=_mean_nonzero(metrics, latency_metric),
        min_replicas=ctx.capacity_adjusted_min_replicas,
        max_replicas=ctx.capacity_adjusted_max_replicas,
        target_replicas=ctx.target_num_replicas,
        remote_prefill_share=sum(shares) / len(shares) if shares else 1.0,
    )


LATENCY_SIGNAL = {"prefill": "ttft_s", "decode": "itl_s", "colocated": "ttft_s"}


class PDAutoscalingPolicy:
    """Ray Serve application-level policy (`applications[].autoscaling_policy.policy_function`).

    policy_kwargs: `autoscaling` (an AutoscalingConfig dump) and `roles` (deployment name -> pool role).
    """

    def __init__(self, autoscaling: dict[str, Any], roles: dict[str, str]):
        self.config = AutoscalingConfig.model_validate(autoscaling)
        self.roles = roles

    def __call__(self, contexts: dict) -> tuple[dict, dict]:
        by_role = {self.roles[dep.name]: (dep, ctx) for dep, ctx in contexts.items() if dep.name in self.roles}
        loads = {role: load_from_context(ctx, LATENCY_SIGNAL[role]) for role, (_, ctx) in by_role.items()}
        counts = decide(loads, self.config)
        decisions = {by_role[role][0]: count for role, count in counts.items()}
        state = {dep: {"pdserve_load": vars(loads[role])} for role, (dep, _) in by_role.items()}
        return decisions, state
