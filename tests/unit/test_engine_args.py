from __future__ import annotations

import pytest

from serving.config import PDServeConfig
from serving.engine_args import engine_arg_values, to_cli


def test_to_cli_renders_each_kind_of_value():
    argv = to_cli({"max_num_seqs": 8, "enforce_eager": True, "enable_prefix_caching": False,
                   "served_model_name": ["a", "b"], "kv_transfer_config": {"kv_role": "kv_producer"}, "skip": None})
    assert argv == ["--max-num-seqs", "8", "--enforce-eager", "--no-enable-prefix-caching",
                    "--served-model-name", "a", "b", "--kv-transfer-config", '{"kv_role": "kv_producer"}']


def test_pool_engine_args_override_defaults():
    config = PDServeConfig.model_validate({"decode": {"engine_args": {"max_num_seqs": 4, "enforce_eager": False}}})
    values = engine_arg_values(config, "decode", "/models/x")
    assert values["max_num_seqs"] == 4 and values["enforce_eager"] is False
    assert values["model"] == "/models/x" and values["kv_transfer_config"]["kv_role"] == "kv_consumer"
    assert "kv_transfer_config" not in engine_arg_values(config, "colocated", "/models/x")


def test_vllm_parser_accepts_our_arguments_and_rejects_unknown_ones():
    pytest.importorskip("vllm")
    from serving.engine_args import parse_vllm_args

    config = PDServeConfig.model_validate({"prefill": {"engine_args": {"max_num_seqs": 3}}})
    args = parse_vllm_args(to_cli(engine_arg_values(config, "prefill", "/models/x")))
    assert args.max_num_seqs == 3 and args.served_model_name == ["SmolLM2-135M-Instruct"]
    assert args.kv_transfer_config.kv_role == "kv_producer"
    assert args.kv_transfer_config.kv_connector_module_path == "serving.nixl_cpu"
    with pytest.raises(ValueError, match="no-such-flag"):
        parse_vllm_args(["--model", "/models/x", "--no-such-flag", "1"])
