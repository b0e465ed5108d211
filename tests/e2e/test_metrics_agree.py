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


def test_ingress_ttft_and_tpot_agree_with_what_the_client_measures(pd_stack):
    before = settled(pd_stack)
    measured = [client_timing(pd_stack) for _ in range(REQUESTS)]
    deadline = time.monotonic() + 120  # Ray exports recorded metrics every few seconds
    while True:
        after = scrape(pd_stack)
        count = total(after, "ray_pdserve_ttft_seconds_count") - total(before, "ray_pdserve_ttft_seconds_count")
        if count >= REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert count == REQUESTS

    def server_mean(name: str) -> float:
        return (total(after, f"{name}_sum") - total(before, f"{name}_sum")) / REQUESTS

    client_ttft = sum(t for t, _ in measured) / REQUESTS
    client_tpot = sum(p for _, p in measured) / REQUESTS
    server_ttft, server_tpot = server_mean("ray_pdserve_ttft_seconds"), server_mean("ray_pdserve_tpot_seconds")
    print(f"mean TTFT: client {client_ttft * 1e3:.1f} ms, ingress {server_ttft * 1e3:.1f} ms; mean TPOT: client "
          f"{client_tpot * 1e3:.2f} ms, ingress {server_tpot * 1e3:.2f} ms")
    # The ingress's interval lies inside the client's: it can only miss what happens outside the replica
    # (HAProxy, the network, the client reading), which the stated margin bounds.
    assert server_ttft <= client_ttft + 0.001
    assert client_ttft - server_ttft <= 0.05 + 0.2 * client_ttft
    assert abs(client_tpot - server_tpot) <= 0.002 + 0.1 * client_tpot
