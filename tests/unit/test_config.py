from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.config import PDServeConfig

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_a_cpu_pd_pair_on_separate_cores():
    config = PDServeConfig()
    assert config.mode == "disaggregated" and config.device == "cpu"
    assert config.active_roles() == ("prefill", "decode")
    assert config.prefill.resources.resources == {"pdserve_prefill": 1}
    assert config.decode.resources.resources == {"pdserve_decode": 1}
    assert config.prefill.cpu.threads_bind != config.decode.cpu.threads_bind
    assert config.router.port == 8000


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    PDServeConfig.from_file(path)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        PDServeConfig.model_validate({"router": {"prot": 8000}})


def test_cuda_buffer_needs_a_gpu_device():
    with pytest.raises(ValidationError, match="buffer_device"):
        PDServeConfig.model_validate({"kv_transfer": {"buffer_device": "cuda"}})


def test_gpu_pools_must_request_gpus():
    with pytest.raises(ValidationError, match="num_gpus"):
        PDServeConfig.model_validate({"device": "cuda", "kv_transfer": {"buffer_device": "cuda"}})


def test_prefill_and_decode_may_not_share_custom_resources():
    shared = {"resources": {"resources": {"gpu_slice": 1}}}
    with pytest.raises(ValidationError, match="gpu_slice"):
        PDServeConfig.model_validate({"prefill": shared, "decode": shared})


def test_colocated_mode_ignores_the_pd_placement_rule():
    shared = {"resources": {"resources": {"gpu_slice": 1}}}
    config = PDServeConfig.model_validate({"mode": "colocated", "prefill": shared, "decode": shared})
    assert config.active_roles() == ("colocated",)


def test_reserved_engine_args_are_rejected_with_their_name():
    with pytest.raises(ValidationError, match="kv_transfer_config"):
        PDServeConfig.model_validate({"decode": {"engine_args": {"kv_transfer_config": {}}}})


def test_replica_bounds_are_checked():
    with pytest.raises(ValidationError, match="min <= initial <= max"):
        PDServeConfig.model_validate({"decode": {"replicas": {"min": 3, "max": 2}}})


def test_dotted_overrides_revalidate():
    config = PDServeConfig().with_overrides(**{"router.port": 9001, "mode": "colocated"})
    assert config.router.port == 9001 and config.mode == "colocated"
    with pytest.raises(ValidationError):
        PDServeConfig().with_overrides(**{"router.port": 0})


def test_yaml_top_level_must_be_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        PDServeConfig.from_file(bad)


def test_the_stack_gets_the_cores_no_engine_binds_or_else_the_prefill_engines():
    two = PDServeConfig()  # prefill on core 0, decode on core 1
    assert two.stack_cores({0, 1}) == {0}  # decode's core stays the decode model's alone
    assert two.stack_cores({0, 1, 2, 3}) == {2, 3}
    assert PDServeConfig(mode="colocated").stack_cores({0, 1}) == {0, 1}  # `auto` binding: vLLM decides
    pinned = PDServeConfig.model_validate({"local": {"stack_cores": "1"}})
    assert pinned.stack_cores({0, 1}) == {1}
    assert PDServeConfig.model_validate({"local": {"stack_cores": "all"}}).stack_cores({0, 1}) == {0, 1}
