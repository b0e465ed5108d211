"""Which prefill replica computes a prompt: the one whose prefix cache likely holds most of it, unless it is busier
than the least busy replica by more than `router.prefix_imbalance_max` requests (then Serve's power of two choices).

A Ray Serve `RequestRouter` (`request_router_config` of the prefill deployment), so it runs in each caller's
handle to the prefill pool: in every decode replica. Each keeps its own view of what every prefill replica holds
(chained hashes of the prompt's text in blocks of `block_chars`, recorded where each request was routed). Those
views differ between decode replicas; a prompt that matches nothing is placed by rendezvous hashing of its first
block, so every caller sends the first turn of a conversation, or a shared system prompt, to the same replica
without sharing state. A request with a session (`user`) goes where its session's hash points.

Why not Ray's `PrefixCacheAffinityRouter`: it reads `.prompt`/`.messages` attributes of the call's arguments
(ours are an endpoint name and a request dict), keeps its tree in one detached actor that every routing decision
waits on with a blocking `ray.get`, and matches characters of joined message contents (a system prompt and a user
turn with the same text look alike). vLLM's KV events would be exact, but need a ZMQ subscriber per replica in
every caller; which replica to prefer needs only a likely prefix length.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serving.routing import PrefixIndex, block_hashes

PROMPT_FIELDS = ("prompt", "messages", "input")
"""Where a prompt is in a request body: completions, chat and messages, responses."""


def prompt_text(body: Mapping[str, Any]) -> str | None:
    """The request's prompt as one string whose prefixes are the prompt's prefixes: a system field first, then
    each message (role and content, serialized alone, so a message boundary is part of the text), or the prompt."""
    parts: list[Any] = []
    if body.get("system") is not None:  # Anthropic messages
        parts.append(body["system"])
    for name in PROMPT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(value)
        else:
            return None
    if not parts:
        return None
    return "".join(p if isinstance(p, str) else json.dumps(p, sort_keys=True, separators=(",", ":")) for p in parts)


def rendezvous(key: str, replicas: Sequence[str]) -> str:
    """The replica `key` hashes to (highest random weight): the same answer in every process, and a replica's
    removal moves only the keys that were on it."""
    return max(replicas, key=lambda r: hashlib.blake2b(f"{key}\0{r}".encode(), digest_size=8).digest())


def preferred_replica(hashes: Sequence[int], session: str | None, indexes: Mapping[str, PrefixIndex],
                      queue_lens: Mapping[str, int | None], imbalance_max: int) -> tuple[str | None, str]:
    """(replica to prefer, why); None: no preference (no prompt to place, or the preferred one is overloaded).

    `indexes` and `queue_lens` have one entry per candidate replica; an unknown queue length counts as 0."""
    replicas = sorted(indexes)
    if not replicas:
        return None, "no replica"
    if session is not None:
        choice, why = rendezvous(f"session:{session}", replicas), "session"
    else:
        if not hashes:
            return None, "no prompt"
        matched = {r: indexes[r].matched_blocks(hashes) for r in replicas}
        best = max(matched.values())
        if best:
            # Several replicas may hold as much (a hot prefix spilled before): the least busy of them.
            held = [r for r in replicas if matched[r] == best]
            choice = min(held, key=lambda r: queue_lens.get(r) or 0)
            why = f"prefix: {best}/{len(hashes)} blocks held"
        else:
            choice, why = rendezvous(f"prefix:{hashes[0]}", replicas), "new prefix"
    least = min(queue_lens.get(r) or 0 for r in replicas)
    if (queue_lens.get(choice) or 0) - least > imbalance_max:
        return None, f"{why}, but {choice} is {queue_lens.get(choice)} requests deep (least {least})"
    return choice, why


class PrefixAffinityRouter(RequestRouter):
    """Prefill replica choice by prefix cache, load as the guard (see the module docstring).

    Not FIFO (Serve's default router hands a chosen replica to the oldest waiting request, which would send a
    prompt to the replica chosen for another one's prefix): each request gets the replica chosen for it."""

    def initialize_state(self, block_chars: int = 256, capacity_blocks: int = 65536, imbalance_max: int = 2):
        self.block_chars = block_chars
        self.capacity_blocks = capacity_blocks
        self.imbalance_max = imbalance_max
        self.indexes: dict[ReplicaID, PrefixIndex] = {}

    def _index(self, replica_id: ReplicaID) -> PrefixIndex:
        if replica_id not in self.indexes:
            self.indexes[replica_id] = PrefixIndex(1, self.capacity_blocks)
        return self.indexes[replica_id]

    def _prompt(self, pending_request: PendingRequest | None) -> tuple[list[int], str | None]:
        body = next((a for a in (pending_request.args if pending_request else ()) if isinstance(a, Mapping)), None)
        if body is None:
            return [], None
        text = prompt_text(body)
        user = body.get("user")
        return (block_hashes(text, self.block_chars) if text else []), (str(user) if user else None)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        hashes, session = self._prompt(pending_request)
        by_name = {r.replica_id.unique_id: r for r in candidate_replicas}
        cache = self.replica_queue_len_cache
        choice, _why = preferred_replica(
            hashes, session, {name: self._index(r.replica_id) for name, r in by_name.items()},
            {name: cache.get(r.replica_id) for name, r in by_name.items()}, self.imbalance_max)
        others = [r for name, r in by_name.items() if name != choice]
        random.shuffle(others)
        # Serve tries the ranks in order (an empty one is skipped) and takes the shortest queue within a rank
        # that has room: the preferred replica, then two others at random as its default router does, then all.
        return [[by_name[choice]] if choice else [], others[:2], others[2:]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        hashes, _ = self._prompt(pending_request)
        if hashes:
            self._index(replica_id).record_blocks(hashes)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        for gone in set(self.indexes) - {r.replica_id for r in replicas}:
            del self.indexes[gone]
