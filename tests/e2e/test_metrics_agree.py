"""The TTFT and TPOT the ingress exports are the ones the client feels (one definition, docs/metrics.md)."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest

from tests.e2e.stack import scrape, settled, total

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
REQUESTS = 6
TOKENS = 24


def client_timing(stack) -> tuple[float, float]:
    """(TTFT, TPOT) of one streamed completion as the client measures them, with the definitions of the docs."""
    body = {"model": MODEL, "prompt": f"{uuid.uuid4().hex} Write about the sea.", "max_tokens": TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    with httpx.stream("POST", f"{stack.api_url}/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if first is None and any(c.get("text") for c in event.get("choices") or ()):
                first = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    end = time.perf_counter()
    return first - start, (end - first) / (tokens - 1)


def unary_timing(stack) -> tuple[float, int]:
    """(latency, tokens) of one completion that is not streamed (the openai SDK's default)."""
    body = {"model": MODEL, "prompt": f"{uuid.uuid4().hex} Write about the sea.", "max_tokens": TOKENS,
            "ignore_eos": True}
    start = time.perf_counter()
    response = httpx.post(f"{stack.api_url}/completions", json=body, timeout=300)
    latency = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return latency, response.json()["usage"]["completion_tokens"]


def exported(stack, before: dict, streamed: str) -> dict:
    """A scrape once the REQUESTS sent since `before` with `streamed` ("true"/"false") are all exported."""
    def count(samples, name: str) -> float:
        return total(samples, name, streamed=streamed) - total(before, name, streamed=streamed)

    deadline = time.monotonic() + 120  # Ray exports recorded metrics every few seconds
    while True:
        after = scrape(stack)
        if count(after, "ray_pdserve_ttft_seconds_count") >= REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert count(after, "ray_pdserve_ttft_seconds_count") == REQUESTS
    assert count(after, "ray_pdserve_tpot_seconds_count") == REQUESTS
    return after


def cumulative(before: dict, after: dict, name: str, streamed: str) -> list[tuple[float, float]]:
    """(bucket bound, observations <= bound) of a histogram over the requests between two scrapes.

    Bucket counts, not `_sum`: Ray exports a histogram's sum from bucket midpoints (an approximation), while
    each bucket's count is exact."""
    def counts(samples) -> dict[float, float]:
        out: dict[float, float] = {}
        for labels, value in samples.get(f"{name}_bucket", []):
            bound = re.search(r'le="([^"]+)"', labels)[1]
            if f'streamed="{streamed}"' in labels and bound != "+Inf":
                out[float(bound)] = out.get(float(bound), 0) + value
        return out

    now, then = counts(after), counts(before)
    return sorted((bound, now[bound] - then.get(bound, 0)) for bound in now)


def test_ingress_ttft_and_tpot_agree_with_what_the_client_measures(pd_stack):
    before = settled(pd_stack)
    measured = [client_timing(pd_stack) for _ in range(REQUESTS)]
    after = exported(pd_stack, before, "true")
    ttft = cumulative(before, after, "ray_pdserve_ttft_seconds", "true")
    tpot = cumulative(before, after, "ray_pdserve_tpot_seconds", "true")
    print(f"streamed: client TTFT {sorted(round(t * 1e3, 1) for t, _ in measured)} ms, TPOT "
          f"{sorted(round(p * 1e3, 2) for _, p in measured)} ms; ingress TTFT buckets {ttft}, TPOT buckets {tpot}")

    def under(values, bound: float) -> int:
        return sum(v <= bound for v in values)

    client_ttft, client_tpot = [t for t, _ in measured], [p for _, p in measured]
    for bound, count in ttft:
        # Each request's ingress TTFT lies inside the client's (<= client + 1 ms) and misses only what happens
        # outside the replica (HAProxy, the network, the client reading): client - ingress <= 50 ms + 20 %.
        assert under(client_ttft, bound - 0.001) <= count <= under(client_ttft, (bound + 0.05) / 0.8), (bound, count)
    for bound, count in tpot:  # |client - ingress| <= 2 ms + 10 %
        assert under(client_tpot, (bound - 0.002) / 1.1) <= count <= under(client_tpot, (bound + 0.002) / 0.9), \
            (bound, count)


def test_requests_that_are_not_streamed_are_timed_too(pd_stack):
    """A unary reply has no chunks: its first token is when the engine produced it and its TPOT the engine's
    (docs/metrics.md). Each request's TTFT and TPOT fit inside the time its client waited, and the TTFT is the
    first token's, not the reply's (24 tokens take several times longer than the first)."""
    before = settled(pd_stack)
    measured = [unary_timing(pd_stack) for _ in range(REQUESTS)]
    assert all(tokens == TOKENS for _, tokens in measured)
    after = exported(pd_stack, before, "false")
    ttft = cumulative(before, after, "ray_pdserve_ttft_seconds", "false")
    tpot = cumulative(before, after, "ray_pdserve_tpot_seconds", "false")
    latency = [t for t, _ in measured]
    print(f"not streamed: client latency {sorted(round(t * 1e3, 1) for t in latency)} ms; ingress TTFT buckets "
          f"{ttft}, TPOT buckets {tpot}")

    def under(values, bound: float) -> int:
        return sum(v <= bound for v in values)

    for bound, count in ttft:
        assert count >= under(latency, bound)  # TTFT <= the client's latency
        assert count >= under([t / 2 for t in latency], bound), (bound, count)  # ... and well before the end
    for bound, count in tpot:
        assert count >= under([t / (TOKENS - 1) for t in latency], bound), (bound, count)


def test_counters_are_exported_before_they_first_move(pd_stack):
    """A dashboard's rate of a counter that has not moved yet reads 0, not "no data": every ingress and pool
    counter is exported from the replica's start, whatever has happened since."""
    samples = scrape(pd_stack)
    for name, labels in [("ray_pdserve_kv_transfer_failures_total", 'pool="decode"'),
                         ("ray_pdserve_kv_pulls_skipped_total", 'pool="decode"'),
                         ("ray_pdserve_pool_prefix_cache_hits_total", 'pool="prefill"'),
                         ("ray_pdserve_pool_prompt_tokens_total", 'source="local_cache"'),
                         ("ray_pdserve_requests_total", 'outcome="server_error"'),
                         ("ray_pdserve_requests_total", 'path="decode_only"')]:
        assert any(labels in lab for lab, _ in samples.get(name, [])), (name, labels, samples.get(name))


def test_the_colocated_path_exports_the_same_router_metrics(colocated_stack):
    """A colocated stack has no prefill leg, but users watch the same dashboards: each request it serves counts
    under path="colocated", with its tokens and latencies."""
    before = settled(colocated_stack)
    for i in range(3):
        response = httpx.post(f"{colocated_stack.api_url}/completions", timeout=300, json={
            "model": "SmolLM2-135M-Instruct", "prompt": f"{uuid.uuid4().hex} {i}", "max_tokens": 5,
            "ignore_eos": True, "stream": i == 2})
        assert response.status_code == 200 and response.headers["x-pdserve-path"] == "colocated"
    after = settled(colocated_stack)

    def moved(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("ray_pdserve_requests_total", path="colocated") == 3
    assert moved("ray_pdserve_generation_tokens_total", path="colocated") == 15
    for histogram in ("ray_pdserve_ttft_seconds_count", "ray_pdserve_e2e_latency_seconds_count"):
        assert moved(histogram, path="colocated") == 3, histogram
    assert total(after, "ray_pdserve_requests_total", path="disaggregated") == 0
