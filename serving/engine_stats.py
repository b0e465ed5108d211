"""Running totals of one engine's scheduler/iteration stats, fed by vLLM's stat-logger interface.

The replica reads them to answer `stats()` (what the router's `/pdserve/stats` and the tests see): whether the
decode engine really took its prompt tokens from NIXL (`prompt_tokens_external`) rather than recomputing them,
how many transfers and bytes moved, and how busy the scheduler is.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase


@dataclass
class EngineCounters:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    prompt_tokens: int = 0
    prompt_tokens_computed: int = 0
    prompt_tokens_local_cache: int = 0
    prompt_tokens_external: int = 0
    generation_tokens: int = 0
    finished_requests: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    kv_transfers: int = 0
    kv_transfer_bytes: int = 0
    kv_transfer_seconds: float = 0.0
    kv_transfer_failures: int = 0
    kv_expired_requests: int = 0
    kv_pulls_requested: int = 0
    """Requests handed to this (decode) engine with KV to pull over NIXL."""
    kv_pulls_skipped: int = 0
    """Decode requests that reached the engine after their KV pull deadline, which recomputed their prompt."""
    prompt_renders_reused: int = 0
    """Requests whose engine leg took the routing plan's render of the prompt instead of rendering it again."""
    last_reply_at: float = 0.0
    """Wall-clock time this replica last finished a unary leg (the prefill leg: when its KV lease started)."""
    kv_connector_raw: dict[str, Any] = field(default_factory=dict)
    # (monotonic time, seconds) of recent engine-side TTFTs and inter-token latencies, for autoscaling.
    recent_ttft: deque = field(default_factory=lambda: deque(maxlen=512), repr=False)
    recent_itl: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)
    # (monotonic time, 1.0 or 0.0) per request this (decode) replica planned: through prefill or not.
    recent_plans: deque = field(default_factory=lambda: deque(maxlen=4096), repr=False)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("recent_ttft", "recent_itl", "recent_plans"):
            data.pop(name)
        return data

    def record_plan(self, path: str, now: float | None = None) -> None:
        self.recent_plans.append((time.monotonic() if now is None else now, 1.0 if path == "disaggregated" else 0.0))

    def autoscaling_signals(self, window_s: float, now: float | None = None) -> dict[str, float]:
        """What this replica reports to Serve's autoscaler (`record_autoscaling_stats`)."""
        now = time.monotonic() if now is None else now
        return {
            "waiting": float(self.waiting),
            "running": float(self.running),
            "kv_cache_usage": float(self.kv_cache_usage),
            "ttft_s": _mean_since(self.recent_ttft, now - window_s),
            "itl_s": _mean_since(self.recent_itl, now - window_s),
            # Of the requests this replica planned lately, the share sent through prefill; 1.0 with none lately
            # (then the pools idle, and an idle pool asks nothing of the other).
            "remote_prefill_share": _mean_since(self.recent_plans, now - window_s, empty=1.0),
        }

    def add_kv_connector_stats(self, data: dict[str, Any]) -> None:
        """Fold one step's NIXL stats (`NixlKVConnectorStats.data`: lists of per-transfer values) in."""
        self.kv_transfers += len(data.get("bytes_transferred", []))
        self.kv_transfer_bytes += int(sum(data.get("bytes_transferred", [])))
        self.kv_transfer_seconds += float(sum(data.get("transfer_duration", [])))
        self.kv_transfer_failures += int(sum(data.get("num_failed_transfers", [])))
        self.kv_expired_requests += int(sum(data.get("num_kv_expired_reqs", [])))


def _mean_since(samples: deque, since: float, empty: float = 0.0) -> float:
    recent = [value for stamp, value in samples if stamp >= since]
    return sum(recent) / len(recent) if recent else empty


class CountingStatLogger(StatLoggerBase):
    """A vLLM stat logger that adds every update into a shared `EngineCounters` (and the pool's metrics)."""

    def __init__(self, vllm_config, engine_index: int = 0, *, counters: EngineCounters, pool_metrics=None):
        self.counters = counters
        self.pool_metrics = pool_metrics

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        if scheduler_stats is not None:
            self._record_scheduler(scheduler_stats)
        if iteration_stats is not None:
            self._record_iteration(iteration_stats)

    def _record_scheduler(self, stats) -> None:
        c = self.counters
        c.running, c.waiting, c.kv_cache_usage = stats.num_running_reqs, stats.num_waiting_reqs, stats.kv_cache_usage
        c.prefix_cache_queries += stats.prefix_cache_stats.queries
        c.prefix_cache_hits += stats.prefix_cache_stats.hits
        before = (c.kv_transfers, c.kv_transfer_bytes, c.kv_transfer_seconds, c.kv_transfer_failures)
        if stats.kv_connector_stats:
            for key, value in stats.kv_connector_stats.items():
                c.kv_connector_raw[key] = value if not isinstance(value, list) else len(value)
            c.add_kv_connector_stats(stats.kv_connector_stats)
        if self.pool_metrics is not None:
            self.pool_metrics.record_step(c.running, c.waiting, c.kv_cache_usage, stats.prefix_cache_stats.queries,
                                          stats.prefix_cache_stats.hits)
            after = (c.kv_transfers, c.kv_transfer_bytes, c.kv_transfer_seconds, c.kv_transfer_failures)
            self.pool_metrics.record_transfers(*(a - b for a, b in zip(after, before)))

    def _record_iteration(self, stats) -> None:
        c = self.counters
        prompt = stats.prompt_token_stats
        c.prompt_tokens += prompt.total
        c.prompt_tokens_computed += prompt.computed
        c.prompt_tokens_local_cache += prompt.local_cache_hit
        c.prompt_tokens_external += prompt.external_kv_transfer
        c.generation_tokens += stats.num_generation_tokens
        c.finished_requests += len(stats.finished_requests)
        now = time.monotonic()
        c.recent_ttft.extend((now, value) for value in stats.time_to_first_tokens_iter)
        c.recent_itl.extend((now, value) for value in stats.inter_token_latencies_iter)
        if self.pool_metrics is not None:
            self.pool_metrics.record_prompt(prompt.computed, prompt.local_cache_hit, prompt.external_kv_transfer)

    def log_engine_initialized(self):
        pass


def stat_logger_factory(counters: EngineCounters, pool_metrics=None):
    def factory(vllm_config, engine_index: int = 0) -> CountingStatLogger:
        return CountingStatLogger(vllm_config, engine_index, counters=counters, pool_metrics=pool_metrics)

    return factory
