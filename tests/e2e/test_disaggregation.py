"""Disaggregation is real: two pools, and the decode engine takes every prompt's KV over NIXL."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e

TOPICS = ["rivers", "volcanoes", "bicycles", "libraries", "comets", "bread", "glaciers", "violins"]


def wait_finished(stack, before: dict, count: int, timeout_s: float = 30) -> dict:
    """Engine counters are fed by vLLM's stat loggers a step after the output: wait until all requests show."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = stack.stats()
        done = all(after[r]["finished_requests"] - before[r]["finished_requests"] >= count for r in after)
        if done or time.monotonic() > deadline:
            return after
        time.sleep(0.5)


def delta(after: dict, before: dict, role: str, key: str):
    return after[role][key] - before[role][key]


def test_every_request_of_a_batch_pulls_its_kv_over_nixl(pd_stack, model_name):
    # Unique openings, so neither engine can serve any block from its own prefix cache.
    prompts = [f"{uuid.uuid4().hex} Write {2 + i} sentences about {topic}." * (1 + i % 3)
               for i, topic in enumerate(TOPICS)]
    before = pd_stack.stats()

    def send(prompt):
        return httpx.post(f"{pd_stack.api_url}/completions", timeout=300, json={
            "model": model_name, "prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True})

    with ThreadPoolExecutor(len(prompts)) as pool:
        responses = list(pool.map(send, prompts))
    assert [r.status_code for r in responses] == [200] * len(prompts)
    prompt_tokens = sum(r.json()["usage"]["prompt_tokens"] for r in responses)
    after = wait_finished(pd_stack, before, len(prompts))

    for r in responses:
        prefill, decode = r.headers["x-pdserve-prefill-replica"], r.headers["x-pdserve-decode-replica"]
        assert "PrefillServer" in prefill and "DecodeServer" in decode
    assert after["prefill"]["pid"] != after["decode"]["pid"]

    # Prefill computed every prompt token; decode computed none and imported them all over NIXL.
    assert delta(after, before, "prefill", "prompt_tokens_computed") == prompt_tokens
    assert delta(after, before, "decode", "prompt_tokens_computed") == 0
    assert delta(after, before, "decode", "prompt_tokens_external") == prompt_tokens
    assert delta(after, before, "decode", "kv_transfers") == len(prompts)
    assert delta(after, before, "decode", "kv_transfer_bytes") > 0
    assert delta(after, before, "decode", "kv_transfer_failures") == 0
    # The prefill pool produced one token per request; all generated tokens come from decode.
    assert delta(after, before, "prefill", "generation_tokens") == len(prompts)
    assert delta(after, before, "decode", "generation_tokens") == 6 * len(prompts)


def test_streamed_request_is_disaggregated_too(pd_stack, client, model_name):
    before = pd_stack.stats()
    prompt = f"{uuid.uuid4().hex} Tell me about the sea."
    chunks = list(client.completions.create(model=model_name, prompt=prompt, max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True}))
    prompt_tokens = chunks[-1].usage.prompt_tokens
    after = wait_finished(pd_stack, before, 1)
    assert delta(after, before, "decode", "prompt_tokens_external") == prompt_tokens
    assert delta(after, before, "decode", "prompt_tokens_computed") == 0
