"""The plan of one request by prompt length (selective disaggregation) and the estimate of what a decode
replica's prefix cache holds."""

from __future__ import annotations

import pytest

from serving.config import PDServeConfig
from serving.routing import PrefixIndex, block_hashes, plan_by_length


def config(threshold: int) -> PDServeConfig:
    return PDServeConfig().with_overrides(**{"router.remote_prefill_min_tokens": threshold})


@pytest.mark.parametrize("prompt,cached,path", [
    (99, 0, "decode_only"),  # one token short of the threshold
    (100, 0, "disaggregated"),  # at the threshold
    (500, 420, "decode_only"),  # long, but all but 80 tokens already on decode
    (500, 400, "disaggregated"),  # exactly 100 left to compute
    (50, 80, "decode_only"),  # an estimate past the prompt's length counts as fully cached
])
def test_the_uncached_part_of_the_prompt_decides_at_the_threshold(prompt, cached, path):
    plan = plan_by_length(config(100), prompt, cached)
    assert plan.path == path
    assert f"{max(0, prompt - cached)} uncached tokens" in plan.reason and f"{prompt} in the prompt" in plan.reason


def test_threshold_zero_or_an_unknown_length_disaggregates():
    assert plan_by_length(config(0), 3).path == "disaggregated"
    assert plan_by_length(config(100), None).path == "disaggregated"


class TokenIndex(PrefixIndex):
    """The index as the orchestrator uses it, by token ids."""

    def cached_tokens(self, token_ids):
        return self.matched_blocks(block_hashes(token_ids, self.block_size)) * self.block_size

    def record(self, token_ids):
        self.record_blocks(block_hashes(token_ids, self.block_size))


def test_the_prefix_index_counts_whole_blocks_of_a_shared_start_only():
    index = TokenIndex(block_size=4, capacity_blocks=100)
    system = list(range(10))  # two whole blocks and a part
    index.record(system + [100, 101, 102, 103, 104])
    assert index.cached_tokens(system + [100, 101, 102, 103, 104]) == 12  # 15 tokens: three whole blocks
    assert index.cached_tokens(system + [7, 7, 7, 7]) == 8  # diverges inside the third block
    assert index.cached_tokens([1] + system) == 0  # a shifted prompt shares no block
    assert index.cached_tokens([0, 1, 2]) == 0  # shorter than a block


def test_a_block_is_only_a_hit_after_the_same_blocks_before_it():
    index = TokenIndex(block_size=2, capacity_blocks=100)
    index.record([1, 2, 3, 4])
    assert index.cached_tokens([9, 9, 3, 4]) == 0  # same second block, different first


def test_the_least_recently_used_blocks_go_first_past_the_capacity():
    index = TokenIndex(block_size=2, capacity_blocks=4)
    old, hot = [1, 2, 3, 4], [5, 6, 7, 8]
    index.record(old)
    index.record(hot)
    assert index.cached_tokens(old) == 4  # touching `old` makes `hot` the least recently used
    index.record([9, 10, 11, 12])
    assert index.cached_tokens(old) == 4 and index.cached_tokens(hot) == 0


def test_the_threshold_defaults_per_device_and_an_explicit_zero_stays_zero():
    from serving.config import REMOTE_PREFILL_MIN_TOKENS

    assert PDServeConfig().remote_prefill_min_tokens == REMOTE_PREFILL_MIN_TOKENS["cpu"] > 0
    assert plan_by_length(PDServeConfig(), REMOTE_PREFILL_MIN_TOKENS["cpu"] - 1).path == "decode_only"
    assert config(0).remote_prefill_min_tokens == 0 and plan_by_length(config(0), 1).path == "disaggregated"
    from pathlib import Path

    gpu = PDServeConfig.from_file(Path(__file__).resolve().parents[2] / "configs" / "gpu-smoke.yaml")
    assert gpu.device == "cuda" and gpu.remote_prefill_min_tokens == REMOTE_PREFILL_MIN_TOKENS["cuda"]
