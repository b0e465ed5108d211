"""Running totals of one engine's scheduler/iteration stats, fed by vLLM's stat-logger interface.

The replica reads them to answer `stats()` (what the router's `/pdserve/stats` and the tests see): whether the
decode engine really took its prompt tokens from NIXL (`prompt_tokens_external`) rather than recomputing them,
how many transfers and bytes moved, and how busy the scheduler is.
"""

from __future__ import annotations

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
    kv_connector_raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_kv_connector_stats(self, data: dict[str, Any]) -> None:
        """Fold one step's NIXL stats (`NixlKVConnectorStats.data`: lists of per-transfer values) in."""
        self.kv_transfers += len(data.get("bytes_transferred", []))
        self.kv_transfer_bytes += int(sum(data.get("bytes_transferred", [])))
        self.kv_transfer_seconds += float(sum(data.get("transfer_duration", [])))
        self.kv_transfer_failures += int(sum(data.get("num_failed_transfers", [])))
        self.kv_expired_requests += int(sum(data.get("num_kv_expired_reqs", [])))


class CountingStatLogger(StatLoggerBase):
    """A vLLM stat logger that adds every update into a shared `EngineCounters`."""

    def __init__(self, vllm_config, engine_index: int = 0, *, counters: EngineCounters):
        self.counters = counters

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        c = self.counters
        if scheduler_stats is not None:
            c.running = scheduler_stats.num_running_reqs
            c.waiting = scheduler_stats.num_waiting_reqs
            c.kv_cache_usage = scheduler_stats.kv_cache_usage
            c.prefix_cache_queries += scheduler_stats.prefix_cache_stats.queries
            c.prefix_cache_hits += scheduler_stats.prefix_cache_stats.hits
            if scheduler_stats.kv_connector_stats:
                for key, value in scheduler_stats.kv_connector_stats.items():
                    c.kv_connector_raw[key] = value if not isinstance(value, list) else len(value)
                c.add_kv_connector_stats(scheduler_stats.kv_connector_stats)
        if iteration_stats is not None:
            prompt = iteration_stats.prompt_token_stats
            c.prompt_tokens += prompt.total
            c.prompt_tokens_computed += prompt.computed
            c.prompt_tokens_local_cache += prompt.local_cache_hit
            c.prompt_tokens_external += prompt.external_kv_transfer
            c.generation_tokens += iteration_stats.num_generation_tokens
            c.finished_requests += len(iteration_stats.finished_requests)

    def log_engine_initialized(self):
        pass


def stat_logger_factory(counters: EngineCounters):
    def factory(vllm_config, engine_index: int = 0) -> CountingStatLogger:
        return CountingStatLogger(vllm_config, engine_index, counters=counters)

    return factory
