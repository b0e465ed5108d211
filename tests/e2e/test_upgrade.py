"""A config reload while serving: every replica is replaced, and no request is lost or answered differently.

`pdserve up` redeploys on SIGHUP as a RayService does on a `serveConfigV2` change (a Serve rolling update in the
running cluster): each replica it stops first drains its in-flight requests; requests that arrive meanwhile
wait for the new replicas. Runs last in the `main` group: it replaces every replica of the P/D stack.
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
import pytest
import yaml

from serving.local import wait_healthy

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
STREAM_TOKENS = 150
RELOAD_WITHIN_S = 900


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


def test_a_reload_while_serving_loses_no_request(pd_stack):
    wait_healthy(pd_stack.base_url, 300)
    before = pd_stack.stats()
    answer_before = complete(pd_stack, "The capital of France is").json()["choices"][0]["text"]

    # A changed environment for both engines: Serve must replace every replica; the outputs must not change.
    config = yaml.safe_load(pd_stack.config_path.read_text())
    revision = uuid.uuid4().hex[:8]
    for role in ("prefill", "decode"):
        config[role].setdefault("env", {})["PDSERVE_TEST_REVISION"] = revision

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
        pd_stack.config_path.write_text(yaml.safe_dump(config))
        reload_sent = time.monotonic()
        os.kill(pd_stack.proc.pid, signal.SIGHUP)
        deadline = reload_sent + RELOAD_WITHIN_S
        while "pdserve: reloaded" not in pd_stack.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, pd_stack.log_tail()
            assert pd_stack.proc.poll() is None, pd_stack.log_tail()
            time.sleep(2)
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
    while (reply := complete(pd_stack, "The capital of France is")).headers["x-pdserve-path"] != "disaggregated":
        assert time.monotonic() < deadline, reply.headers
        time.sleep(1)
    assert reply.json()["choices"][0]["text"] == answer_before
    paths = Counter(r.headers["x-pdserve-path"] for r in steady)
    print(f"reload with every replica replaced in {reload_s:.0f} s: {len(streams)} streams in flight finished "
          f"({STREAM_TOKENS} tokens each), {len(steady)}/{len(steady)} requests sent during the reload succeeded, "
          f"by path: {dict(paths)}; disaggregated again after it")
