"""Prefill replica choice by prefix cache (`serving.prefill_router`) on a real stack with two prefill replicas
(configs/cpu-prefix-affinity.yaml): conversations that share a system prompt are prefilled on one replica, whose
vLLM prefix cache then serves the shared blocks; different prompts spread over both; a session stays on one.

Serve's default router would pick between the two replicas at random: every assertion on where requests went
would then fail with probability 1 - 2^(1-n) for n requests (97 % for the six below).
"""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.e2e.stack import settled, total

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
CONVERSATIONS = 6
SYSTEM_BLOCKS = 2
"""Whole 128-token KV blocks (vLLM's block on CPU) the shared system prompt fills."""


def system_prompt() -> str:
    # ~300 tokens: two whole blocks, unique to this run so no earlier test's cache helps.
    return f"[{uuid.uuid4().hex}] You are the harbour master's assistant. " + " ".join(
        f"Rule {i}: ships of class {chr(65 + i % 26)} moor at pier {i % 7} and pay {i * 3} crowns." for i in range(13))


def ask(client: openai.OpenAI, system: str, question: str, **kwargs):
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    reply = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=2,
                                                             temperature=0, **kwargs)
    assert reply.headers["x-pdserve-path"] == "disaggregated", reply.headers
    return reply.headers["x-pdserve-prefill-replica"]


@pytest.fixture
def client(affinity_stack):
    return openai.OpenAI(base_url=affinity_stack.api_url, api_key="unused", max_retries=0, timeout=300)


def test_conversations_sharing_a_system_prompt_are_prefilled_on_one_replica_from_its_cache(affinity_stack, client,
                                                                                          tokenizer):
    system = system_prompt()
    shared = len(tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=True,
                                               return_dict=True)["input_ids"])
    assert shared >= SYSTEM_BLOCKS * 128, shared
    before, kv_before = settled(affinity_stack), affinity_stack.stats("decode")["decode"]["kv_transfers"]
    replicas = [ask(client, system, f"Conversation {i}: where do class {chr(65 + i)} ships moor?")
                for i in range(CONVERSATIONS)]
    after, kv_after = settled(affinity_stack), affinity_stack.stats("decode")["decode"]["kv_transfers"]

    assert len(set(replicas)) == 1, replicas
    hits = (total(after, "ray_pdserve_pool_prefix_cache_hits_total", pool="prefill")
            - total(before, "ray_pdserve_pool_prefix_cache_hits_total", pool="prefill"))
    # Every conversation after the first reads the system prompt's whole blocks from that replica's cache.
    assert hits >= (CONVERSATIONS - 1) * SYSTEM_BLOCKS * 128, hits
    assert kv_after - kv_before == CONVERSATIONS  # and decode still imported each prompt's KV over NIXL


def test_different_prompts_spread_over_both_replicas(affinity_stack, client):
    replicas = {ask(client, system_prompt(), "Which pier for class B?") for _ in range(8)}
    assert len(replicas) == 2, replicas


@pytest.mark.parametrize("how", ["user", "header"])
def test_a_session_stays_on_one_replica_whatever_it_asks(affinity_stack, client, how):
    session = f"session-{uuid.uuid4().hex[:8]}"
    kwargs = {"user": session} if how == "user" else {"extra_headers": {"X-Session-Id": session}}
    replicas = {ask(client, system_prompt(), "Which pier for class C?", **kwargs) for _ in range(CONVERSATIONS)}
    assert len(replicas) == 1, replicas
