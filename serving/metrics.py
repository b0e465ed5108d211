"""pdserve's own metrics, recorded with `ray.serve.metrics` so Ray exports them with every other Serve metric.

Ray prefixes exported names with `ray_`: `pdserve_ttft_seconds` is scraped as `ray_pdserve_ttft_seconds`.
Objects are built once per replica and injected (no import-time registration). The table of names lives in
docs/metrics.md.
"""

from __future__ import annotations

from typing import get_args

from ray.serve import metrics

from serving.protocol import Endpoint

# 5 ms .. 60 s, denser where interactive latencies live.
LATENCY_BUCKETS = [0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                   5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0]


OUTCOMES = ("ok", "client_error", "server_error", "cancelled")
"""Values of the `outcome` label of `pdserve_requests_total` (cancelled: the client left mid-stream)."""


def exported_at_zero(counter: metrics.Counter, tags: dict[str, str]) -> None:
    """Export a counter's series at 0 from start-up: Ray exports only series it has recorded, and a rate over a
    missing series reads "no data" on a dashboard where it should read 0 (no KV transfer failed yet).
    `Counter.inc` refuses 0; `_record` is what it calls once it has checked the value."""
    counter._record(0.0, tags=tags)


class RouterMetrics:
    """What users feel, measured at the ingress per model, path (disaggregated / decode_only / colocated) and
    whether the reply was streamed (`streamed`: "true" / "false")."""

    def __init__(self, model: str, paths: tuple[str, ...] = ()):
        self.model = model
        keys = ("model", "path", "streamed")
        self.ttft = metrics.Histogram("pdserve_ttft_seconds", "Time to first token (streamed: first chunk with "
                                      "text sent; unary: first token out of the engine).",
                                      LATENCY_BUCKETS, tag_keys=keys)
        self.tpot = metrics.Histogram("pdserve_tpot_seconds", "Time per output token after the first, per request.",
                                      LATENCY_BUCKETS, tag_keys=keys)
        self.itl = metrics.Histogram("pdserve_inter_token_latency_seconds", "Gap between streamed chunks that "
                                     "carry tokens.", LATENCY_BUCKETS, tag_keys=keys)
        self.e2e = metrics.Histogram("pdserve_e2e_latency_seconds", "Request latency, arrival to last byte.",
                                     LATENCY_BUCKETS, tag_keys=keys)
        self.stage = metrics.Histogram("pdserve_ttft_stage_seconds",
                                       "TTFT by stage: plan (prompt render + prefix lookup), prefill (queue "
                                       "included), decode_first_token (KV pull + first step).", LATENCY_BUCKETS,
                                       tag_keys=(*keys, "stage"))
        self.requests = metrics.Counter("pdserve_requests_total", "Requests by outcome.",
                                        tag_keys=(*keys, "endpoint", "outcome"))
        self.in_flight = metrics.Gauge("pdserve_in_flight_requests", "Requests inside the router now.",
                                       tag_keys=("model",))
        self.prompt_tokens = metrics.Counter("pdserve_prompt_tokens_total", "Prompt tokens of finished requests.",
                                             tag_keys=keys)
        self.generation_tokens = metrics.Counter("pdserve_generation_tokens_total",
                                                 "Generated tokens of finished requests.", tag_keys=keys)
        self._in_flight = 0
        for path in paths:  # the series a dashboard reads from the start, at 0
            for streamed in (True, False):
                tags = self.tags(path, streamed)
                exported_at_zero(self.prompt_tokens, tags)
                exported_at_zero(self.generation_tokens, tags)
                for endpoint in get_args(Endpoint):
                    for outcome in OUTCOMES:
                        exported_at_zero(self.requests, {**tags, "endpoint": endpoint, "outcome": outcome})

    @property
    def requests_in_flight(self) -> int:
        return self._in_flight

    def tags(self, path: str, streamed: bool) -> dict[str, str]:
        return {"model": self.model, "path": path, "streamed": "true" if streamed else "false"}

    def enter(self) -> None:
        self._in_flight += 1
        self.in_flight.set(self._in_flight, tags={"model": self.model})

    def leave(self) -> None:
        self._in_flight -= 1
        self.in_flight.set(self._in_flight, tags={"model": self.model})


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    return "client_error" if status < 500 else "server_error"


class PoolMetrics:
    """One engine's load and KV traffic, labelled by pool (prefill / decode / colocated)."""

    def __init__(self, pool: str):
        self.tags = {"pool": pool}
        self.queue = metrics.Gauge("pdserve_pool_requests", "Requests in the engine scheduler by state.",
                                   tag_keys=("pool", "state"))
        self.kv_usage = metrics.Gauge("pdserve_pool_kv_cache_usage_ratio", "Fraction of KV blocks in use.",
                                      tag_keys=("pool",))
        self.prefix_queries = metrics.Counter("pdserve_pool_prefix_cache_queries_total",
                                              "Prompt tokens looked up in the local prefix cache.", tag_keys=("pool",))
        self.prefix_hits = metrics.Counter("pdserve_pool_prefix_cache_hits_total",
                                           "Prompt tokens found in the local prefix cache.", tag_keys=("pool",))
        self.prompt_tokens = metrics.Counter("pdserve_pool_prompt_tokens_total",
                                             "Prompt tokens by source: computed, local_cache, kv_transfer.",
                                             tag_keys=("pool", "source"))
        self.kv_transfers = metrics.Counter("pdserve_kv_transfers_total", "KV transfers pulled over NIXL.",
                                            tag_keys=("pool",))
        self.kv_bytes = metrics.Counter("pdserve_kv_transfer_bytes_total", "Bytes of KV pulled over NIXL.",
                                        tag_keys=("pool",))
        self.kv_seconds = metrics.Counter("pdserve_kv_transfer_seconds_total", "Time spent in NIXL transfers.",
                                          tag_keys=("pool",))
        self.kv_failures = metrics.Counter("pdserve_kv_transfer_failures_total", "Failed NIXL transfers.",
                                           tag_keys=("pool",))
        self.kv_pulls_skipped = metrics.Counter(
            "pdserve_kv_pulls_skipped_total",
            "Decode requests that waited for a replica past their KV pull deadline and recomputed the prompt.",
            tag_keys=("pool",))
        for counter in (self.prefix_queries, self.prefix_hits, self.kv_transfers, self.kv_bytes, self.kv_seconds,
                        self.kv_failures, self.kv_pulls_skipped):
            exported_at_zero(counter, self.tags)
        for source in ("computed", "local_cache", "kv_transfer"):
            exported_at_zero(self.prompt_tokens, {**self.tags, "source": source})

    def record_step(self, running: int, waiting: int, kv_usage: float, queries: int, hits: int) -> None:
        self.queue.set(running, tags={**self.tags, "state": "running"})
        self.queue.set(waiting, tags={**self.tags, "state": "waiting"})
        self.kv_usage.set(kv_usage, tags=self.tags)
        if queries:
            self.prefix_queries.inc(queries, tags=self.tags)
        if hits:
            self.prefix_hits.inc(hits, tags=self.tags)

    def record_prompt(self, computed: int, local_cache: int, kv_transfer: int) -> None:
        for source, value in (("computed", computed), ("local_cache", local_cache), ("kv_transfer", kv_transfer)):
            if value:
                self.prompt_tokens.inc(value, tags={**self.tags, "source": source})

    def record_transfers(self, count: int, nbytes: int, seconds: float, failures: int) -> None:
        if count:
            self.kv_transfers.inc(count, tags=self.tags)
            self.kv_bytes.inc(nbytes, tags=self.tags)
            self.kv_seconds.inc(seconds, tags=self.tags)
        if failures:
            self.kv_failures.inc(failures, tags=self.tags)
