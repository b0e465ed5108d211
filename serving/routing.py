"""What to do with one request, decided before anything runs: a `Plan` (path and the reason for it).

Pure: the orchestrator gathers what the decision needs (the prefill pool's running replicas, the prompt's token
ids as this decode replica's engine renders them, what of the prompt this replica's prefix cache likely holds)
and executes the plan; the reason travels in the `X-PDServe-Reason` header and the `path` metric label.

Selective disaggregation: the prefill hop costs a request a fixed overhead (a Serve call, a second engine pass,
the KV pull) and saves the decode engine the prompt's compute. A prompt whose part not already cached on this
decode replica is short costs decode less than the hop costs the request, so it runs on decode alone
(`router.remote_prefill_min_tokens`, docs/routing.md says how its default was measured), as llm-d's P/D decider
and Dynamo's conditional disaggregation do.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from serving.config import PDServeConfig

Path = Literal["disaggregated", "decode_only", "colocated"]


@dataclass(frozen=True)
class Plan:
    path: Path
    reason: str


class PrefixIndex:
    """Which full prompt blocks this replica's engine has likely cached: the chained hashes of the blocks of the
    prompts it served (computed on decode alone, or imported over NIXL: vLLM caches both), least recently used
    dropped past the engine's KV capacity.

    An estimate, not vLLM's own view: the engine may evict a block earlier (its blocks also hold generated
    tokens) and then recomputes it, which is correct and only slower. vLLM's KV events (`kv_events_config`)
    would be exact, at the cost of a ZMQ subscriber per replica; a per-request plan needs only the prefix length.
    """

    def __init__(self, block_size: int, capacity_blocks: int):
        self.block_size = max(1, block_size)
        self.capacity = max(1, capacity_blocks)
        self.blocks: OrderedDict[int, None] = OrderedDict()

    def matched_blocks(self, hashes: Sequence[int]) -> int:
        """How many of the chained block hashes, from the first, this index holds (they count as just used)."""
        hits = 0
        for block in hashes:
            if block not in self.blocks:
                break
            self.blocks.move_to_end(block)
            hits += 1
        return hits

    def record_blocks(self, hashes: Sequence[int]) -> None:
        for block in hashes:
            self.blocks[block] = None
            self.blocks.move_to_end(block)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


def block_hashes(items: Sequence, block_size: int) -> list[int]:
    """Chained hashes of the whole blocks of `items` (token ids, or characters of a prompt's text): a block's hash
    covers everything before it, so equal hashes mean equal prefixes, as in vLLM's prefix cache. Stable across
    processes (Python's `hash` of a string is not), so every decode replica places a prefix alike."""
    hashes, parent = [], b""
    for start in range(0, len(items) - block_size + 1, block_size):
        chunk = items[start:start + block_size]
        data = chunk.encode() if isinstance(chunk, str) else repr(tuple(chunk)).encode()
        parent = hashlib.blake2b(parent + data, digest_size=8).digest()
        hashes.append(int.from_bytes(parent, "little"))
    return hashes


def wants_prompt_logprobs(request: Any) -> bool:
    """Whether vLLM will compute logprobs of the prompt: `prompt_logprobs`, or `echo` with (top) logprobs, as
    the chat and completions models turn them into sampling params."""
    if getattr(request, "prompt_logprobs", None) is not None:
        return True
    if not getattr(request, "echo", False):
        return False
    chat = hasattr(request, "top_logprobs")
    return (request.top_logprobs if chat else getattr(request, "logprobs", None)) is not None


def plan_before_render(prefill_running: int | None, config: PDServeConfig, request: Any = None) -> Plan | None:
    """The decisions that need no prompt tokens; None: it depends on the prompt (`plan_by_length`)."""
    if (getattr(request, "n", 1) or 1) > 1 or (getattr(request, "best_of", 1) or 1) > 1:
        # vLLM's parallel sampling forks one engine request per sample, and a prefill's KV blocks are handed to
        # one remote request only: decode computes the prompt once and shares it between its samples.
        return Plan("decode_only", "n > 1: the samples share a prompt computed on decode")
    if wants_prompt_logprobs(request):
        # vLLM skips every cached or imported block of such a request (`skip_reading_prefix_cache`): decode would
        # recompute the prompt anyway, and a prefill leg would be work thrown away.
        return Plan("decode_only", "prompt logprobs: computed where the prompt runs")
    pool_may_be_down = config.router.fallback_to_decode and config.prefill.replicas.min >= 1
    if pool_may_be_down and prefill_running == 0:
        # Its replica died and Serve is starting another: waiting would stall the request for an engine's
        # cold start; decode alone serves it now.
        return Plan("decode_only", "prefill pool has no running replica")
    return None


def plan_by_length(config: PDServeConfig, prompt_tokens: int | None, cached_tokens: int = 0) -> Plan:
    """Remote prefill for a prompt whose uncached part reaches `remote_prefill_min_tokens`; decode alone below.
    `prompt_tokens` None (not rendered: the threshold is 0, or rendering failed and decode will answer the
    error itself) disaggregates, unless it is an error, see `plan_request`."""
    threshold = config.remote_prefill_min_tokens
    if threshold <= 0 or prompt_tokens is None:
        return Plan("disaggregated", "prefill pool available")
    uncached = max(0, prompt_tokens - cached_tokens)
    cached = f", {cached_tokens} cached on decode" if cached_tokens else ""
    if uncached < threshold:
        return Plan("decode_only", f"short prompt: {uncached} uncached tokens < {threshold}"
                                   f" ({prompt_tokens} in the prompt{cached})")
    return Plan("disaggregated", f"long prompt: {uncached} uncached tokens >= {threshold}"
                                 f" ({prompt_tokens} in the prompt{cached})")
