"""The coupled prefill:decode policy on synthetic loads, alone and inside Ray's delay/bounds wrapper."""

from __future__ import annotations

import pytest

from serving.autoscaling import PDAutoscalingPolicy, PoolLoad, couple, decide, pool_demand
from serving.config import AutoscalingConfig, PoolScalingConfig

CFG = AutoscalingConfig(
    prefill=PoolScalingConfig(target_waiting_per_replica=1, target_running_per_replica=4, slo_s=2.0),
    decode=PoolScalingConfig(target_waiting_per_replica=1, target_running_per_replica=8, slo_s=0.25),
    min_prefill_per_decode=0.5, max_prefill_per_decode=2.0,
)


def load(replicas=1, requests=0.0, waiting=0.0, latency=0.0, lo=0, hi=8):
    return PoolLoad(replicas, requests, waiting, latency, lo, hi)


@pytest.mark.parametrize("name,pool,expected", [
    ("idle", load(requests=0), 0),
    ("light load fits one replica", load(requests=3), 1),
    ("load beyond target running", load(requests=9), 3),
    ("waiting above threshold adds one", load(replicas=2, requests=4, waiting=3), 3),
    ("waiting at threshold adds none", load(replicas=2, requests=4, waiting=2), 1),
    ("latency over SLO adds one", load(replicas=2, requests=2, latency=2.5), 3),
    ("latency under SLO", load(replicas=2, requests=2, latency=1.0), 1),
    ("from zero with a request", load(replicas=0, requests=1), 1),
])
def test_pool_demand(name, pool, expected):
    assert pool_demand(pool, CFG.prefill) == expected


@pytest.mark.parametrize("prefill,decode,expected", [
    (0, 0, (0, 0)),
    (1, 0, (1, 1)),  # a request needs both legs
    (0, 1, (1, 1)),
    (6, 1, (6, 3)),  # prefill 6 > 2 per decode: decode follows
    (1, 6, (3, 6)),  # at least 0.5 prefill per decode
    (2, 2, (2, 2)),
])
def test_couple_keeps_the_ratio_by_raising_the_lagging_pool(prefill, decode, expected):
    assert couple(prefill, decode, CFG) == expected


@pytest.mark.parametrize("prefill,decode,share,expected", [
    (0, 4, 0.0, (0, 4)),  # every request on decode alone: prefill may stay at zero
    (0, 4, 0.5, (1, 4)),  # half through prefill: 4 * 0.5 * 0.5 = 1
    (1, 6, 0.5, (2, 6)),
    (1, 6, 1.0, (3, 6)),  # all through prefill: the full ratio
    (4, 1, 0.0, (4, 2)),  # prefilled requests still need decode
])
def test_couple_holds_prefill_up_only_for_the_share_that_goes_through_it(prefill, decode, share, expected):
    assert couple(prefill, decode, CFG, share) == expected


def test_queue_spike_scales_both_pools_in_ratio():
    counts = decide({"prefill": load(requests=12, waiting=8), "decode": load(requests=2)}, CFG)
    assert counts["prefill"] >= 3 and counts["decode"] >= 2
    assert CFG.min_prefill_per_decode <= counts["prefill"] / counts["decode"] <= CFG.max_prefill_per_decode


def test_ttft_over_slo_adds_prefill_only():
    counts = decide({"prefill": load(replicas=2, requests=2, latency=3.0), "decode": load(replicas=2, requests=2)},
                    CFG)
    assert counts == {"prefill": 3, "decode": 2}


def test_tpot_over_slo_adds_decode():
    counts = decide({"prefill": load(replicas=1, requests=1), "decode": load(replicas=1, requests=4, latency=0.4)},
                    CFG)
    assert counts["decode"] == 2 and counts["prefill"] == 1


def test_idle_goes_to_min_or_zero():
    assert decide({"prefill": load(lo=0), "decode": load(lo=0)}, CFG) == {"prefill": 0, "decode": 0}
    assert decide({"prefill": load(lo=1), "decode": load(lo=2)}, CFG) == {"prefill": 1, "decode": 2}


def test_starting_replicas_are_never_scaled_away():
    starting = PoolLoad(replicas=0, requests=0, waiting=0, target_replicas=1)
    assert decide({"prefill": starting, "decode": starting}, CFG) == {"prefill": 1, "decode": 1}
    growing = PoolLoad(replicas=1, requests=1, waiting=0, target_replicas=2)
    assert decide({"prefill": growing, "decode": growing}, CFG) == {"prefill": 2, "decode": 2}


def test_bounds_are_respected():
    counts = decide({"prefill": load(requests=100, hi=2), "decode": load(requests=100, hi=3)}, CFG)
    assert counts == {"prefill": 2, "decode": 3}


def test_colocated_pool_scales_alone():
    assert decide({"colocated": load(requests=20)}, CFG) == {"colocated": 3}


# --- inside Ray Serve's application-level wrapper (bounds, delays, cold start) ---

ray_serve = pytest.importorskip("ray.serve")


def ray_context(name, current, requests, metrics, *, lo=0, hi=4, state=None, upscale_delay=0.0, downscale_delay=0.0):
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingConfig as RayAutoscalingConfig
    from ray.serve.config import AutoscalingContext

    config = RayAutoscalingConfig(min_replicas=lo, max_replicas=hi, upscale_delay_s=upscale_delay,
                                  downscale_delay_s=downscale_delay, downscale_to_zero_delay_s=downscale_delay)
    dep = DeploymentID(name=name, app_name="pdserve")
    replicas = [f"r{i}" for i in range(current)]
    per_replica = {key: {r: value / max(current, 1) for r in replicas} for key, value in metrics.items()}
    ctx = AutoscalingContext(
        deployment_id=dep, deployment_name=name, app_name="pdserve", current_num_replicas=current,
        target_num_replicas=current, running_replicas=replicas, total_num_requests=requests,
        total_queued_requests=0, aggregated_metrics=per_replica, raw_metrics={},
        capacity_adjusted_min_replicas=lo, capacity_adjusted_max_replicas=hi, policy_state=state or {},
        last_scale_up_time=None, last_scale_down_time=None, current_time=None, config=config)
    return dep, ctx


def wrapped_policy():
    from ray.serve.autoscaling_policy import _apply_app_level_autoscaling_config

    policy = PDAutoscalingPolicy(CFG.model_dump(mode="json"), {"PrefillServer": "prefill", "DecodeServer": "decode"})
    return _apply_app_level_autoscaling_config(policy)


def test_ray_wrapper_scales_up_on_a_burst_without_delay():
    p_dep, p_ctx = ray_context("PrefillServer", 1, 10, {"waiting": 6, "running": 4})
    d_dep, d_ctx = ray_context("DecodeServer", 1, 2, {"waiting": 0, "running": 2})
    decisions, _ = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions[p_dep] > 1 and decisions[d_dep] >= 2


def test_ray_wrapper_holds_replicas_within_the_upscale_delay():
    p_dep, p_ctx = ray_context("PrefillServer", 1, 10, {"waiting": 6, "running": 4}, upscale_delay=60)
    d_dep, d_ctx = ray_context("DecodeServer", 1, 2, {"running": 2}, upscale_delay=60)
    decisions, state = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions == {p_dep: 1, d_dep: 1}  # no change until the signal persists for upscale_delay_s
    assert state[p_dep]["pdserve_load"]["requests"] == 10


def test_ray_wrapper_holds_replicas_within_the_downscale_delay():
    p_dep, p_ctx = ray_context("PrefillServer", 2, 0, {}, downscale_delay=60)
    d_dep, d_ctx = ray_context("DecodeServer", 2, 0, {}, downscale_delay=60)
    decisions, _ = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions == {p_dep: 2, d_dep: 2}


def test_ray_wrapper_goes_to_zero_when_idle_and_allowed():
    p_dep, p_ctx = ray_context("PrefillServer", 1, 0, {})
    d_dep, d_ctx = ray_context("DecodeServer", 1, 0, {})
    decisions, _ = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions == {p_dep: 0, d_dep: 0}


def test_cold_start_brings_a_pool_back_immediately():
    p_dep, p_ctx = ray_context("PrefillServer", 0, 1, {}, upscale_delay=60)
    d_dep, d_ctx = ray_context("DecodeServer", 0, 1, {}, upscale_delay=60)
    decisions, _ = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions[p_dep] >= 1 and decisions[d_dep] >= 1


def test_ray_wrapper_leaves_prefill_at_zero_while_decode_serves_every_prompt_alone():
    p_dep, p_ctx = ray_context("PrefillServer", 0, 0, {})
    d_dep, d_ctx = ray_context("DecodeServer", 1, 20, {"running": 8, "waiting": 4, "remote_prefill_share": 0.0})
    decisions, state = wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})
    assert decisions[p_dep] == 0 and decisions[d_dep] >= 2
    assert state[d_dep]["pdserve_load"]["remote_prefill_share"] == 0.0
    d_dep, d_ctx = ray_context("DecodeServer", 1, 20, {"running": 8, "waiting": 4, "remote_prefill_share": 1.0})
    assert wrapped_policy()({p_dep: p_ctx, d_dep: d_ctx})[0][p_dep] >= 1  # the same load, all prefilled


def test_decode_reports_the_share_of_its_recent_requests_that_went_through_prefill():
    from serving.engine_stats import EngineCounters

    counters = EngineCounters()
    assert counters.autoscaling_signals(10, now=100)["remote_prefill_share"] == 1.0  # none lately
    for at, path in ((80, "decode_only"), (95, "disaggregated"), (96, "decode_only"), (97, "decode_only"),
                     (98, "disaggregated")):
        counters.record_plan(path, now=at)
    assert counters.autoscaling_signals(10, now=100)["remote_prefill_share"] == 0.5  # the one at 80 is too old
    assert "recent_plans" not in counters.as_dict()
