"""The orchestrator's choices with pools faked at the handle boundary (what Serve's DeploymentHandle offers)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray")

from serving.config import PDServeConfig  # noqa: E402
from serving.orchestrator import DisaggregatedOrchestrator  # noqa: E402
from serving.worker import LegReply  # noqa: E402


class FakeMethod:
    def __init__(self, pool, name):
        self.pool, self.name = pool, name

    def remote(self, *args):
        self.pool.calls.append((self.name, args))

        async def reply():
            return "replica" if self.name == "ping" else self.pool.reply(*args)

        return reply()


class FakePool:
    def __init__(self, reply):
        self.reply, self.calls = reply, []
        self.complete = FakeMethod(self, "complete")
        self.ping = FakeMethod(self, "ping")


def prefill_ok(endpoint, body, kv_deadline=None):
    return LegReply(200, {"kv_transfer_params": {"do_remote_prefill": True, "remote_engine_id": "p"}}, "P#1")


def decode_ok(endpoint, body, kv_deadline=None):
    return LegReply(200, {"got_params": body.get("kv_transfer_params"), "kv_deadline": kv_deadline}, "D#1")


def run(orchestrator, body):
    return asyncio.run(orchestrator("completions", body))


BODY = {"model": "m", "prompt": "hi", "max_tokens": 4, "request_id": "r1"}


def make(running: dict[str, int], **overrides):
    config = PDServeConfig().with_overrides(**overrides) if overrides else PDServeConfig()
    pools = {"prefill": FakePool(prefill_ok), "decode": FakePool(decode_ok)}
    return DisaggregatedOrchestrator(pools, config, running=running.get), pools


def test_disaggregated_path_hands_decode_the_prefill_params_and_a_pull_deadline():
    orchestrator, pools = make({"prefill": 1, "decode": 1})
    outcome = run(orchestrator, BODY)
    assert outcome.path == "disaggregated" and outcome.reply.status == 200
    assert outcome.reply.body["got_params"]["remote_engine_id"] == "p"
    assert outcome.reply.body["kv_deadline"] is not None
    assert [c[0] for c in pools["prefill"].calls] == ["complete"]


def test_a_prefill_pool_with_no_running_replica_is_skipped():
    orchestrator, pools = make({"prefill": 0, "decode": 1})
    outcome = run(orchestrator, BODY)
    assert outcome.path == "fallback" and outcome.reply.status == 200
    assert pools["prefill"].calls == []  # no wait for a replica that is still starting
    assert outcome.reply.body == {"got_params": None, "kv_deadline": None}
    assert outcome.replicas == {"prefill": "router", "decode": "D#1"}


@pytest.mark.parametrize("running,overrides", [
    ({}, {}),  # not known yet: try prefill
    ({"prefill": 0}, {"router.fallback_to_decode": False}),  # fallback disabled: wait for prefill
    ({"prefill": 0}, {"prefill.replicas.min": 0, "prefill.replicas.max": 2}),  # at zero on purpose: wake it
])
def test_prefill_is_tried_when_it_is_not_known_to_be_down(running, overrides):
    orchestrator, pools = make(running, **overrides)
    run(orchestrator, BODY)
    assert [c[0] for c in pools["prefill"].calls if c[0] == "complete"] == ["complete"]
