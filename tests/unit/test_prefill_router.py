"""The prefill replica choice (`serving.prefill_router`): prompt text, placement, load guard, sessions."""

from __future__ import annotations

from collections import Counter

import pytest

from serving.prefill_router import preferred_replica, prompt_text, rendezvous
from serving.routing import PrefixIndex, block_hashes

SYSTEM = "You are the harbour master's assistant. " * 20


def chat(*turns: str) -> dict:
    return {"messages": [{"role": "system", "content": SYSTEM},
                         *({"role": "user", "content": t} for t in turns)]}


def hashes(body: dict) -> list[int]:
    return block_hashes(prompt_text(body), 64)


def indexes(*names: str) -> dict[str, PrefixIndex]:
    return {n: PrefixIndex(1, 1000) for n in names}


def test_prompt_text_keeps_prefixes_of_every_endpoint_body():
    assert prompt_text(chat("a", "b")).startswith(prompt_text(chat("a")))
    assert prompt_text({"prompt": "hello"}) == "hello"
    assert prompt_text({"input": "hi"}) == "hi"
    assert prompt_text({"system": "rules", "messages": [{"role": "user", "content": "x"}]}).startswith("rules")
    # A message boundary is text: a system prompt is not the same prefix as a user turn with its words.
    assert prompt_text({"messages": [{"role": "user", "content": SYSTEM}]}) != prompt_text(
        {"messages": [{"role": "system", "content": SYSTEM}]})
    assert prompt_text({"model": "m"}) is None and prompt_text({"prompt": 5}) is None


def test_rendezvous_is_stable_and_moves_only_the_keys_of_a_removed_replica():
    replicas = ["a", "b", "c"]
    placed = {k: rendezvous(k, replicas) for k in map(str, range(300))}
    assert set(Counter(placed.values())) == set(replicas)  # spreads
    assert placed == {k: rendezvous(k, list(reversed(replicas))) for k in placed}  # order does not matter
    after = {k: rendezvous(k, ["a", "c"]) for k in placed}
    assert all(after[k] == placed[k] for k in placed if placed[k] != "b")


def test_a_new_prefix_is_placed_by_its_first_block_and_the_next_turn_follows_where_it_went():
    idx = indexes("a", "b", "c")
    first = hashes(chat("Where do class C ships moor?"))
    choice, why = preferred_replica(first, None, idx, {}, 2)
    assert why == "new prefix" and choice == rendezvous(f"prefix:{first[0]}", ["a", "b", "c"])
    idx[choice].record_blocks(first)
    second = hashes(chat("Where do class C ships moor?", "And class D?"))
    again, why = preferred_replica(second, None, idx, {}, 2)
    assert again == choice and why.startswith("prefix: ")


def test_the_replica_holding_the_longest_prefix_wins_over_one_holding_less():
    idx = indexes("a", "b")
    long_prompt = hashes(chat("q1", "q2", "q3" * 100))
    idx["a"].record_blocks(long_prompt[:2])
    idx["b"].record_blocks(long_prompt[:6])
    assert preferred_replica(long_prompt, None, idx, {}, 2)[0] == "b"


def test_load_wins_when_the_preferred_replica_is_too_busy():
    idx = indexes("a", "b")
    prompt = hashes(chat("q"))
    idx["a"].record_blocks(prompt)
    assert preferred_replica(prompt, None, idx, {"a": 3, "b": 1}, 2)[0] == "a"  # 2 deeper: still preferred
    choice, why = preferred_replica(prompt, None, idx, {"a": 4, "b": 1}, 2)
    assert choice is None and "4 requests deep" in why


def test_equal_holders_split_by_load():
    idx = indexes("a", "b")
    prompt = hashes(chat("q"))
    idx["a"].record_blocks(prompt)
    idx["b"].record_blocks(prompt)
    assert preferred_replica(prompt, None, idx, {"a": 2, "b": 0}, 5)[0] == "b"


def test_a_session_goes_where_its_hash_points_whatever_its_prompt():
    idx = indexes("a", "b", "c")
    placed = {preferred_replica(hashes(chat(f"turn {i}")), "user-7", idx, {}, 2) for i in range(5)}
    assert placed == {(rendezvous("session:user-7", ["a", "b", "c"]), "session")}


@pytest.mark.parametrize("body", [{"model": "m"}, {"prompt": "short"}])
def test_no_whole_block_means_no_preference(body):
    assert preferred_replica(block_hashes(prompt_text(body) or "", 64), None, indexes("a", "b"), {}, 2) == (
        None, "no prompt")


def test_the_prefill_deployment_gets_the_router_only_when_configured():
    from serving.app import PREFILL_ROUTER_PATH, build_pd_app
    from serving.config import PDServeConfig

    def prefill_router(**overrides):
        app = build_pd_app(PDServeConfig().with_overrides(**overrides))
        prefill = app._bound_deployment.init_args[2]._bound_deployment
        return prefill._deployment_config.request_router_config

    chosen = prefill_router(**{"router.prefix_imbalance_max": 3})
    assert chosen.request_router_class == PREFILL_ROUTER_PATH and chosen.request_router_kwargs == {"imbalance_max": 3}
    default = prefill_router(**{"router.prefill_replica_choice": "power_of_two"})
    assert default.request_router_class != PREFILL_ROUTER_PATH


def test_new_prefixes_spread_over_the_replicas():
    idx = indexes("a", "b", "c")
    placed = Counter(preferred_replica(hashes({"prompt": f"{i} " + SYSTEM}), None, idx, {}, 2)[0] for i in range(60))
    assert set(placed) == {"a", "b", "c"} and max(placed.values()) < 40, placed


def test_prefix_hashes_are_the_same_in_every_process():
    import subprocess
    import sys

    code = "from serving.routing import block_hashes; print(block_hashes('x' * 200, 64), block_hashes(list(range(9)), 4))"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(runs) == 1 and runs != {""}, runs


def test_the_serve_router_ranks_the_held_replica_first_records_where_requests_went_and_heeds_queues(monkeypatch):
    """`PrefixAffinityRouter` as Serve drives it: `choose_replicas` ranks, `on_request_routed` records, the
    queue-length cache overrides, `update_replicas` forgets replicas that left."""
    import asyncio
    from types import SimpleNamespace

    from ray.serve._private.common import DeploymentHandleSource, DeploymentID
    from ray.serve.request_router import ReplicaID, RequestRouter

    from serving.prefill_router import PrefixAffinityRouter

    dep = DeploymentID(name="PrefillServer", app_name="pdserve")
    replicas = [SimpleNamespace(replica_id=ReplicaID(unique_id=u, deployment_id=dep), max_ongoing_requests=8)
                for u in ("a", "b", "c")]
    body = chat("Where do class C ships moor?")

    def pending(b):
        return SimpleNamespace(args=["chat", b], kwargs={})

    async def scenario():
        router = PrefixAffinityRouter(deployment_id=dep, handle_source=DeploymentHandleSource.UNKNOWN,
                                      use_replica_queue_len_cache=True)
        router.initialize_state(imbalance_max=2)
        ranks = await router.choose_replicas(replicas, pending(body))
        first = ranks[0][0]
        assert sorted(r.replica_id.unique_id for rank in ranks for r in rank) == ["a", "b", "c"]
        # Say Serve sent it elsewhere (the first choice was full): the next turn follows where it went.
        went = next(r for r in replicas if r is not first)
        router.on_request_routed(pending(body), went.replica_id, None)
        follow_up = chat("Where do class C ships moor?", "And class D?")
        assert (await router.choose_replicas(replicas, pending(follow_up)))[0] == [went]
        router.replica_queue_len_cache.update(went.replica_id, 5)  # 5 deeper than the idle others
        ranks = await router.choose_replicas(replicas, pending(follow_up))
        assert ranks[0] == [] and len(ranks[1]) == 2  # no preference: Serve's two at random, the shorter queue
        assert (await router.choose_replicas(replicas, pending({"model": "m"})))[0] == []
        monkeypatch.setattr(RequestRouter, "update_replicas", lambda self, rs: None)
        router.update_replicas([r for r in replicas if r is not went])
        assert went.replica_id not in router.indexes

    asyncio.run(scenario())
