"""Metrics and Stage-1 autoscaling on a live stack whose pools scale between 0 and 2 (configs/cpu-autoscale.yaml).

Runs in file order on a fresh stack: known traffic -> every documented metric with plausible values; a real
Prometheus evaluates every dashboard and rule query under load; a burst -> the decode pool grows; idle -> both
pools go to zero; the first request after that brings them back.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import AUTH, scrape, settled, total

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct"
def documented_metrics() -> set[str]:
    return set(re.findall(r"`(ray_pdserve_[a-z0-9_]+)`", (ROOT / "docs" / "metrics.md").read_text()))


def replicas(stack) -> dict[str, dict[str, int]]:
    return httpx.get(f"{stack.base_url}/pdserve/replicas", timeout=30).json()


def send_traffic(stack) -> dict[str, int]:
    """Two streamed chats and two unary completions with known token counts; unique openings, so that no
    engine finds a block in its own prefix cache and every request pulls its KV over NIXL."""
    sent = {"requests": 0, "generated": 0, "prompt": 0}
    for i in range(2):
        with httpx.stream("POST", f"{stack.api_url}/chat/completions", timeout=300, headers=AUTH, json={
                "model": MODEL, "messages": [{"role": "user", "content": f"{uuid.uuid4().hex} Count to {i + 5}."}],
                "max_tokens": 8,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        usage = httpx.Response(200, content=lines[-1][6:]).json()["usage"]
        sent["requests"] += 1
        sent["generated"] += usage["completion_tokens"]
        sent["prompt"] += usage["prompt_tokens"]
    for i in range(2):
        body = httpx.post(f"{stack.api_url}/completions", timeout=300, headers=AUTH, json={
            "model": MODEL, "prompt": f"{uuid.uuid4().hex} Request {i}: the weather today is", "max_tokens": 6,
            "ignore_eos": True}).json()
        sent["requests"] += 1
        sent["generated"] += body["usage"]["completion_tokens"]
        sent["prompt"] += body["usage"]["prompt_tokens"]
    return sent


class Delta:
    def __init__(self, before, after):
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return total(self.after, name, **labels) - total(self.before, name, **labels)


def test_every_documented_metric_is_exported_with_plausible_values(autoscale_stack):
    before = settled(autoscale_stack)
    sent = send_traffic(autoscale_stack)
    # Every counter is exported from its replica's start (at 0 until it moves): none may be missing.
    # Ray pushes metrics to its exporter every few seconds, and the pools may have been woken from zero by this
    # traffic: their new replicas' series appear a little after the router's.
    deadline = time.monotonic() + 120
    while True:
        samples = scrape(autoscale_stack)
        exported = {re.sub(r"_(bucket|sum|count)$", "", name) for name in samples}
        done = (Delta(before, samples)("ray_pdserve_generation_tokens_total") >= sent["generated"]
                and documented_metrics() <= exported)
        if done or time.monotonic() > deadline:
            break
        time.sleep(3)
    delta = Delta(before, samples)
    assert documented_metrics() <= exported, documented_metrics() - exported

    assert delta("ray_pdserve_generation_tokens_total") == sent["generated"]
    assert delta("ray_pdserve_prompt_tokens_total") == sent["prompt"]
    assert delta("ray_pdserve_requests_total", outcome="ok") == sent["requests"]
    # Streamed or not, every request is timed (a unary reply by its engine's outputs).
    assert delta("ray_pdserve_ttft_seconds_count", streamed="true") == 2
    assert delta("ray_pdserve_ttft_seconds_count", streamed="false") == 2
    ttft = delta("ray_pdserve_ttft_seconds_sum") / delta("ray_pdserve_ttft_seconds_count")
    e2e = delta("ray_pdserve_e2e_latency_seconds_sum") / delta("ray_pdserve_e2e_latency_seconds_count")
    assert 0 < ttft < e2e
    assert delta("ray_pdserve_ttft_stage_seconds_count", stage="prefill") == sent["requests"]
    assert delta("ray_pdserve_ttft_stage_seconds_count", stage="decode_first_token") == sent["requests"]
    assert 0 < delta("ray_pdserve_tpot_seconds_sum") / delta("ray_pdserve_tpot_seconds_count") < 5
    # Pool series belong to replica processes, which this stack scales to zero and back: a replica that stopped
    # takes its series with it, so pool counters are read as they are now rather than as deltas.
    assert total(samples, "ray_pdserve_kv_transfers_total", pool="decode") >= 1
    assert total(samples, "ray_pdserve_kv_transfer_bytes_total", pool="decode") > 0
    assert total(samples, "ray_pdserve_pool_prompt_tokens_total", pool="decode", source="kv_transfer") > 0
    assert total(samples, "ray_pdserve_pool_prompt_tokens_total", pool="prefill", source="computed") > 0
    assert "ray_vllm_num_requests_running" in samples  # vLLM's own engine metrics ride along


def test_a_real_prometheus_evaluates_every_dashboard_and_rule_query(autoscale_stack, tmp_path):
    """Prometheus scrapes the stack while it serves streamed and unary requests: every dashboard query returns a
    number (DCGM's aside: no GPU here), every rule (shipped, and a rendered profile's) evaluates without error,
    every recorded series has a number, and no alert fires on this healthy traffic. The load runs until the
    queries are done: an idle pool of this stack goes to zero within seconds, and its gauges with it."""
    from tests.e2e import prometheus as prometheus_lib

    if not prometheus_lib.installed() and not os.environ.get("CI"):
        pytest.skip("prometheus not installed: `scripts/install.sh cpu,test` installs Debian's prometheus package "
                    "when it runs as root with apt")
    server = prometheus_lib.start(autoscale_stack.metrics_port, tmp_path)
    done = threading.Event()
    sent: list[int] = []

    def load():  # streamed chats and unary completions, one after another
        while not done.is_set():
            sent.append(send_traffic(autoscale_stack)["requests"])

    loader = threading.Thread(target=load, daemon=True)
    try:
        deadline = time.monotonic() + 60
        while server.scrapes() < 3:  # samples from before the traffic, so rates see it begin
            assert time.monotonic() < deadline, "prometheus did not scrape the stack"
            time.sleep(1)
        before = sum(server.finite_values("sum(ray_pdserve_requests_total)"))
        loader.start()
        deadline = time.monotonic() + 300  # the load may wake pools from zero first
        while sum(server.finite_values("sum(ray_pdserve_requests_total)")) < before + 4:
            assert time.monotonic() < deadline, "the traffic never reached prometheus"
            time.sleep(1)
        # A pool woken from zero by this load exports its replicas' series a few seconds after the ingress's.
        queries = [(title, expr) for title, expr in prometheus_lib.dashboard_queries()
                   if not prometheus_lib.needs_gpu(expr)]
        recorded = [r["name"] for r in server.rules()
                    if r["type"] == "recording" and not prometheus_lib.needs_gpu(r["query"])]
        deadline = time.monotonic() + 60
        while True:
            empty = [f"{title}: {expr}" for title, expr in queries if not server.finite_values(expr)]
            empty += [f"recorded: {name}" for name in recorded if not server.finite_values(name)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not empty, "queries without a number after a minute of load:\n" + "\n".join(empty)

        rules = server.rules()
        assert len(rules) == sum(len(g["rules"]) for g in prometheus_lib.rule_groups())
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        assert [r["name"] for r in rules if r["type"] == "alerting" and r["state"] == "firing"] == []
    finally:
        done.set()
        if loader.is_alive():
            loader.join(120)
        server.stop()
    assert sum(sent) >= 4


def test_dashboard_and_alert_queries_name_exported_metrics(autoscale_stack):
    samples = scrape(autoscale_stack)
    exported = {re.sub(r"_(bucket|sum|count)$", "", name) for name in samples}  # what a live scrape has
    queries = []
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.suffix in (".json", ".yaml") and ("dashboard" in path.name or "alert" in path.name
                                                 or "rules" in path.name):
            queries.append((path, path.read_text()))
    assert queries, "no dashboard or alert files under deploy/"
    for path, text in queries:
        for name in set(re.findall(r"\b(ray_(?:pdserve|vllm|serve)_[a-zA-Z0-9_:]+)", text)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported, f"{path.relative_to(ROOT)} queries {name}, which nothing exports"


def test_a_burst_grows_the_decode_pool(autoscale_stack):
    def one(i):
        return httpx.post(f"{autoscale_stack.api_url}/completions", timeout=600, headers=AUTH, json={
            "model": MODEL, "prompt": f"{i}: tell me a long story about a dragon", "max_tokens": 64,
            "ignore_eos": True}).status_code

    seen = []
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(16)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            seen.append(replicas(autoscale_stack))
            if sum(seen[-1].get("decode", {}).values()) > 1:
                break
            time.sleep(1)
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 16
    assert sum(seen[-1].get("decode", {}).values()) > 1, seen[-5:]


def reported_replicas(stack) -> str:
    """The last replica line `pdserve up` printed (it reports every change, from outside the request path: an
    API call would itself wake a pool at zero, since the decode replica is the ingress)."""
    lines = [line for line in stack.log_path.read_text(errors="replace").splitlines()
             if line.startswith("pdserve: replicas ")]
    return lines[-1] if lines else ""


def test_idle_pools_go_to_zero_and_the_first_request_brings_them_back(autoscale_stack):
    deadline = time.monotonic() + 240
    while reported_replicas(autoscale_stack) != "pdserve: replicas prefill=0 decode=0":
        assert time.monotonic() < deadline, reported_replicas(autoscale_stack)
        time.sleep(3)

    started = time.monotonic()
    reply = httpx.post(f"{autoscale_stack.api_url}/chat/completions", timeout=600, headers=AUTH, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hello again"}], "max_tokens": 8})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]
    print(f"scale from zero: first request served in {time.monotonic() - started:.1f}s")
    assert replicas(autoscale_stack)["decode"].get("RUNNING", 0) >= 1
