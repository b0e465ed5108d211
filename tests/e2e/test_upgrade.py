"""A config reload while serving: every replica is replaced, and no request is lost or answered differently.

`pdserve up` redeploys on SIGHUP as a RayService does on a `serveConfigV2` change (a Serve rolling update in the
running cluster): each replica it stops first drains its in-flight requests; requests that arrive meanwhile
wait for the new replicas. The reload turns on what operators turn on this way: a reasoning parser (off unless a
request asks for reasoning; the second test checks it through P/D) and selective disaggregation (prompts whose
part not cached on decode is shorter than `router.remote_prefill_min_tokens` skip the prefill hop; the third test).
Runs last in the `main` group: it replaces every replica of the P/D stack.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import yaml

from serving.local import wait_healthy
from tests.e2e.stack import handoff_seen, settled, total

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
STREAM_TOKENS = 150
RELOAD_WITHIN_S = 900
# vLLM's qwen3 reasoning parser, as Qwen3 users run it: reasoning only when a request asks (`reasoning_effort`).
REASONING = {"reasoning_parser": "qwen3", "default_chat_template_kwargs": {"enable_thinking": False}}
# Shown twice how, SmolLM2 (no reasoning model) answers `<thoughts></think><answer>`, which that parser splits.
THINK_SHOTS = [{"role": "system", "content": f"[{uuid.uuid4().hex[:8]}] Close your thoughts with </think>, then answer."},
               {"role": "user", "content": "What is 2+2?"},
               {"role": "assistant", "content": "Two plus two is four.</think>4"},
               {"role": "user", "content": "What is 3+3?"},
               {"role": "assistant", "content": "Three plus three is six.</think>6"},
               {"role": "user", "content": "What is 1+1?"}]
REMOTE_PREFILL_MIN_TOKENS = 64
"""Above the ~5 tokens of the short prompts below, below the ~96 of THINK_SHOTS (which must still take the hop)."""


def harbour_rules(count: int) -> str:
    return f"[{uuid.uuid4().hex}] You are the harbour master's assistant. " + " ".join(
        f"Rule {i}: ships of class {chr(65 + i)} moor at pier {i % 7} and pay {i * 3} crowns." for i in range(count))


# A conversation of ~150-190 tokens with the chat template: one whole 128-token KV block (vLLM's block on CPU),
# which decode caches, and a tail shorter than the threshold.
SYSTEM_PROMPT = harbour_rules(5)
# ~100 tokens: above the threshold, and never a whole block that decode could hold: disaggregated every time.
LONG_PROMPT = harbour_rules(3) + " The capital of France is"


def stream_to_the_end(stack, started: list[int], i: int) -> tuple[int, int, bool]:
    """(status, tokens generated, ended with [DONE]) of one streamed completion.

    Tokens are the usage chunk's count: vLLM merges outputs its consumer has not yet taken into one chunk (the
    reload keeps every core busy), so chunks may be fewer than tokens without any token being lost.
    """
    body = {"model": MODEL, "prompt": f"{uuid.uuid4().hex} tell me about ships {i}", "max_tokens": STREAM_TOKENS,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    tokens, done, finish = 0, False, None
    with httpx.stream("POST", f"{stack.api_url}/completions", json=body, timeout=RELOAD_WITHIN_S) as response:
        for line in response.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: ") and '"error"' not in line:
                event = json.loads(line[6:])
                for choice in event.get("choices") or ():
                    if choice.get("text") and i not in started:
                        started.append(i)
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        return response.status_code, tokens if finish == "length" else -1, done


def complete(stack, prompt: str) -> httpx.Response:
    return httpx.post(f"{stack.api_url}/completions", timeout=RELOAD_WITHIN_S, json={
        "model": MODEL, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True})


def reloads_done(stack) -> int:
    return stack.log_path.read_text(errors="replace").count("pdserve: reloaded")


def reload_config(stack) -> dict:
    """The stack's config with a changed environment for both engines (so Serve must replace every replica),
    the reasoning parser on and the remote prefill threshold set; written for the next SIGHUP."""
    config = yaml.safe_load(stack.config_path.read_text())
    revision = uuid.uuid4().hex[:8]
    for role in ("prefill", "decode"):
        config[role].setdefault("env", {})["PDSERVE_TEST_REVISION"] = revision
    config["model"].update(REASONING)
    config.setdefault("router", {})["remote_prefill_min_tokens"] = REMOTE_PREFILL_MIN_TOKENS
    stack.config_path.write_text(yaml.safe_dump(config))
    return config


def reloaded_once(stack) -> None:
    """The reload the first test makes, for a test run without it."""
    if yaml.safe_load(stack.config_path.read_text()).get("router", {}).get("remote_prefill_min_tokens"):
        return
    reload_config(stack)
    done_before, sent = reloads_done(stack), time.monotonic()
    os.kill(stack.proc.pid, signal.SIGHUP)
    wait_reloaded(stack, done_before, sent)


def wait_reloaded(stack, done_before: int, sent: float) -> None:
    while reloads_done(stack) <= done_before:
        assert time.monotonic() < sent + RELOAD_WITHIN_S, stack.log_tail()
        assert stack.proc.poll() is None, stack.log_tail()
        time.sleep(2)


def test_a_reload_while_serving_loses_no_request(pd_stack):
    wait_healthy(pd_stack.base_url, 300)
    before = pd_stack.stats()
    answer_before = complete(pd_stack, LONG_PROMPT).json()["choices"][0]["text"]

    reloaded = threading.Event()
    steady: list[httpx.Response] = []

    def keep_sending():  # one request after another, for as long as the reload lasts
        while not reloaded.is_set():
            steady.append(complete(pd_stack, f"{uuid.uuid4().hex} count to ten:"))

    started: list[int] = []
    with ThreadPoolExecutor(5) as pool:
        streams = [pool.submit(stream_to_the_end, pd_stack, started, i) for i in range(4)]
        deadline = time.monotonic() + 120
        while len(started) < len(streams) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(started) == len(streams), "the streams did not start"
        sender = pool.submit(keep_sending)
        reload_config(pd_stack)
        done_before, reload_sent = reloads_done(pd_stack), time.monotonic()
        os.kill(pd_stack.proc.pid, signal.SIGHUP)
        wait_reloaded(pd_stack, done_before, reload_sent)
        reload_s = time.monotonic() - reload_sent
        reloaded.set()
        results = [s.result() for s in streams]
        sender.result()

    assert results == [(200, STREAM_TOKENS, True)] * len(streams), results
    assert steady and [r.status_code for r in steady] == [200] * len(steady), [r.text[:200] for r in steady]
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in steady)

    after = pd_stack.stats()
    assert after["prefill"]["pid"] != before["prefill"]["pid"] and after["decode"]["pid"] != before["decode"]["pid"]
    # Served disaggregated again by the new replicas (the new decode replica's handle learns of the new prefill
    # replica within a second or two), and identically.
    deadline = time.monotonic() + 60
    while (reply := complete(pd_stack, LONG_PROMPT)).headers["x-pdserve-path"] != "disaggregated":
        assert time.monotonic() < deadline, reply.headers
        time.sleep(1)
    assert reply.json()["choices"][0]["text"] == answer_before
    paths = Counter(r.headers["x-pdserve-path"] for r in steady)
    print(f"reload with every replica replaced in {reload_s:.0f} s: {len(streams)} streams in flight finished "
          f"({STREAM_TOKENS} tokens each), {len(steady)}/{len(steady)} requests sent during the reload succeeded, "
          f"by path: {dict(paths)}; disaggregated again after it")


def test_a_reasoning_parser_turned_on_by_reload_splits_the_answer_through_pd(pd_stack, colocated_stack):
    """Reasoning content through P/D, streamed and not, chat and responses: the parser's split of decode's
    answer, joined again, is exactly what the same model writes with no parser (the colocated stack, which
    answers token for token as P/D does), and decode took the prompt's KV over NIXL."""
    reloaded_once(pd_stack)
    raw = chat(colocated_stack).content
    assert "</think>" in raw, f"the model did not write the separator this test needs: {raw!r}"
    thoughts, answer = raw.split("</think>", 1)

    message = chat(pd_stack)  # no reasoning asked for: the default keeps the parser off
    assert (message.content, getattr(message, "reasoning", None)) == (raw, None)

    client = openai.OpenAI(base_url=pd_stack.api_url, api_key="unused", max_retries=0, timeout=300)

    def streamed() -> tuple[str, str]:
        reasoning, content = "", ""
        for chunk in client.chat.completions.create(model=MODEL, messages=THINK_SHOTS, max_tokens=24, temperature=0,
                                                    reasoning_effort="low", stream=True):
            delta = chunk.choices[0].delta if chunk.choices else None
            reasoning += getattr(delta, "reasoning", None) or ""
            content += getattr(delta, "content", None) or ""
        return reasoning, content

    def responses() -> tuple[str, str]:
        reply = client.responses.create(model=MODEL, input=THINK_SHOTS, max_output_tokens=24, temperature=0,
                                        reasoning={"effort": "low"})
        return ("".join(part.text for item in reply.output if item.type == "reasoning" for part in item.content or ()),
                reply.output_text)

    def unary() -> tuple[str, str]:
        message = chat(pd_stack, reasoning_effort="low")
        return getattr(message, "reasoning", None), message.content

    for name, call in (("chat", unary), ("chat, stream", streamed), ("responses", responses)):
        before = pd_stack.stats()
        assert call() == (thoughts, answer), name
        assert handoff_seen(pd_stack, before, "kv") is None, name


def chat(stack, **kw):
    client = openai.OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=300)
    return client.chat.completions.create(model=MODEL, messages=THINK_SHOTS, max_tokens=24, temperature=0,
                                          **kw).choices[0].message


def test_short_and_cached_prompts_skip_the_prefill_hop_long_ones_take_it(pd_stack):
    """With `remote_prefill_min_tokens` set by the reload: a short prompt runs on decode alone (header, reason,
    metric, engine counters); a long one goes through prefill and decode imports its KV over NIXL; the next turn
    of that conversation, whose long system prompt decode now holds, runs on decode alone from decode's cache.
    Decode renders each prompt once: the engine leg takes the plan's render."""
    reloaded_once(pd_stack)
    client = openai.OpenAI(base_url=pd_stack.api_url, api_key="unused", max_retries=0, timeout=300)
    metrics_before = settled(pd_stack)

    start = before = pd_stack.stats()
    short = client.completions.with_raw_response.create(model=MODEL, prompt="The capital of France is",
                                                        max_tokens=4, temperature=0)
    assert short.headers["x-pdserve-path"] == "decode_only", short.headers
    assert short.headers["x-pdserve-reason"].startswith("short prompt: "), short.headers
    assert handoff_seen(pd_stack, before, "decode_only") is None

    def turn(question: str):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        return client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=4,
                                                                temperature=0)

    before = pd_stack.stats()
    first = turn("Where do class C ships moor?")
    assert first.headers["x-pdserve-path"] == "disaggregated", first.headers
    assert first.headers["x-pdserve-reason"].startswith("long prompt: "), first.headers
    assert handoff_seen(pd_stack, before, "kv") is None

    before = pd_stack.stats()
    second = turn("And class D?")
    assert second.headers["x-pdserve-path"] == "decode_only", second.headers
    assert "cached on decode" in second.headers["x-pdserve-reason"], second.headers
    assert handoff_seen(pd_stack, before, "decode_only") is None
    after = pd_stack.stats()
    # vLLM keeps the blocks decode imported over NIXL in its prefix cache: the second turn reads them there.
    assert after["decode"]["prefix_cache_hits"] - before["decode"]["prefix_cache_hits"] >= 128, after["decode"]
    # Each prompt was rendered once on decode, for the plan; the engine leg took that render (serving.render_once).
    assert after["decode"]["prompt_renders_reused"] - start["decode"]["prompt_renders_reused"] == 3, after["decode"]

    metrics_after = settled(pd_stack)
    moved = {path: total(metrics_after, "ray_pdserve_requests_total", path=path)
             - total(metrics_before, "ray_pdserve_requests_total", path=path)
             for path in ("decode_only", "disaggregated")}
    assert moved == {"decode_only": 2, "disaggregated": 1}, moved
    print(f"selective disaggregation: {short.headers['x-pdserve-reason']!r}; {first.headers['x-pdserve-reason']!r}; "
          f"{second.headers['x-pdserve-reason']!r}")
