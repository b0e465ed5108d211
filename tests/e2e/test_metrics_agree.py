"""The TTFT and TPOT the ingress exports are the ones the client feels (one definition, docs/metrics.md)."""

from __future__ import annotations

import json
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


def exported(stack, before: dict, streamed: str) -> tuple[dict, float, float]:
    """(scrape, mean TTFT, mean TPOT) over the REQUESTS sent since `before` with `streamed` ("true"/"false")."""
    def count(samples) -> float:
        return total(samples, "ray_pdserve_ttft_seconds_count", streamed=streamed)

    deadline = time.monotonic() + 120  # Ray exports recorded metrics every few seconds
    while True:
        after = scrape(stack)
        if count(after) - count(before) >= REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert count(after) - count(before) == REQUESTS
    assert total(after, "ray_pdserve_tpot_seconds_count", streamed=streamed) - total(
        before, "ray_pdserve_tpot_seconds_count", streamed=streamed) == REQUESTS

    def mean(name: str) -> float:
        return (total(after, f"{name}_sum", streamed=streamed) - total(before, f"{name}_sum", streamed=streamed)) \
            / REQUESTS

    return after, mean("ray_pdserve_ttft_seconds"), mean("ray_pdserve_tpot_seconds")


def test_ingress_ttft_and_tpot_agree_with_what_the_client_measures(pd_stack):
    before = settled(pd_stack)
    measured = [client_timing(pd_stack) for _ in range(REQUESTS)]
    _, server_ttft, server_tpot = exported(pd_stack, before, "true")
    client_ttft = sum(t for t, _ in measured) / REQUESTS
    client_tpot = sum(p for _, p in measured) / REQUESTS
    print(f"streamed, mean TTFT: client {client_ttft * 1e3:.1f} ms, ingress {server_ttft * 1e3:.1f} ms; mean TPOT: "
          f"client {client_tpot * 1e3:.2f} ms, ingress {server_tpot * 1e3:.2f} ms")
    # The ingress's interval lies inside the client's: it can only miss what happens outside the replica
    # (HAProxy, the network, the client reading), which the stated margin bounds.
    assert server_ttft <= client_ttft + 0.001
    assert client_ttft - server_ttft <= 0.05 + 0.2 * client_ttft
    assert abs(client_tpot - server_tpot) <= 0.002 + 0.1 * client_tpot


def test_requests_that_are_not_streamed_are_timed_too(pd_stack):
    """A unary reply has no chunks: its first token is when the engine produced it (docs/metrics.md), so TTFT
    and (tokens - 1) x TPOT must add up to the time the client waited, less only the reply's trip out."""
    before = settled(pd_stack)
    measured = [unary_timing(pd_stack) for _ in range(REQUESTS)]
    assert all(tokens == TOKENS for _, tokens in measured)
    after, server_ttft, server_tpot = exported(pd_stack, before, "false")
    client_latency = sum(latency for latency, _ in measured) / REQUESTS
    server_last_token = server_ttft + (TOKENS - 1) * server_tpot
    print(f"not streamed: client latency {client_latency * 1e3:.1f} ms; ingress TTFT {server_ttft * 1e3:.1f} ms, "
          f"TPOT {server_tpot * 1e3:.2f} ms, last token at {server_last_token * 1e3:.1f} ms")
    assert 0 < server_ttft < server_last_token <= client_latency + 0.001
    assert client_latency - server_last_token <= 0.05 + 0.2 * client_latency
    gaps = total(after, "ray_pdserve_inter_token_latency_seconds_count", streamed="false") - total(
        before, "ray_pdserve_inter_token_latency_seconds_count", streamed="false")
    assert 0 < gaps <= REQUESTS * (TOKENS - 1)  # outputs the serving layer had not yet taken arrive merged


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
