from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import PDServeConfig
from serving.engine_args import engine_arg_values, to_cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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


def test_every_pool_gets_the_model_front_end_flags_and_the_built_in_model_parses_tool_calls():
    config = PDServeConfig()
    for role in ("prefill", "decode"):
        values = engine_arg_values(config, role, "/models/x")
        assert values["tool_call_parser"] == "hermes" and values["enable_auto_tool_choice"] is True
    other = config.with_overrides(**{"model.source": "/models/mine"})
    assert "tool_call_parser" not in engine_arg_values(other, "decode", "/models/x")
    off = config.with_overrides(**{"model.tool_call_parser": "none"})
    assert "tool_call_parser" not in engine_arg_values(off, "decode", "/models/x")
    explicit = other.with_overrides(**{"model.tool_call_parser": "llama3_json", "model.enable_auto_tool_choice": False,
                                       "model.reasoning_parser": "qwen3"})
    values = engine_arg_values(explicit, "prefill", "/models/x")
    assert (values["tool_call_parser"], values.get("enable_auto_tool_choice"), values["reasoning_parser"]) == (
        "llama3_json", None, "qwen3")


@pytest.mark.parametrize("field", ["tool_call_parser", "reasoning_parser"])
def test_an_unknown_parser_name_fails_the_check_naming_the_field(field):
    pytest.importorskip("vllm")
    from serving.config import ConfigError
    from serving.engine_args import check_engine_args

    check_engine_args(PDServeConfig().with_overrides(**{f"model.{field}": "qwen3" if field == "reasoning_parser"
                                                        else "hermes"}), "/models/x")
    with pytest.raises(ConfigError, match=f"model.{field}: vLLM has no parser 'no-such-parser'"):
        check_engine_args(PDServeConfig().with_overrides(**{f"model.{field}": "no-such-parser"}), "/models/x")


def test_model_front_end_flags_reach_every_pool_as_vllm_serve_parses_them():
    pytest.importorskip("vllm")
    from serving.engine_args import engine_arg_values, parse_vllm_args, to_cli

    config = PDServeConfig.model_validate({"model": {
        "reasoning_parser": "qwen3", "default_chat_template_kwargs": {"enable_thinking": False}}})
    for role in ("prefill", "decode"):
        args = parse_vllm_args(to_cli(engine_arg_values(config, role, "/models/x")))
        assert (args.reasoning_parser, args.default_chat_template_kwargs) == ("qwen3", {"enable_thinking": False})
        assert (args.tool_call_parser, args.enable_auto_tool_choice) == ("hermes", True)  # the built-in model's


def test_a_bad_engine_arg_fails_the_check_naming_its_pool():
    pytest.importorskip("vllm")
    from serving.config import ConfigError
    from serving.engine_args import check_engine_args

    config = PDServeConfig.model_validate({"decode": {"engine_args": {"no_such_flag": 1}}})
    with pytest.raises(ConfigError, match="decode.engine_args: .*no-such-flag"):
        check_engine_args(config, "/models/x")


def test_pdserve_up_with_an_unknown_parser_stops_at_once_with_one_line(tmp_path):
    """Before Ray starts: exit 2, the reason on stderr, no traceback."""
    pytest.importorskip("vllm")
    import subprocess
    import sys

    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  tool_call_parser: no-such-parser\n")
    done = subprocess.run([sys.executable, "-m", "serving.cli", "up", "--config", str(config)], capture_output=True,
                          text=True, timeout=900)  # on a fresh machine it converts the built-in model first
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pdserve: error: model.tool_call_parser: vLLM has no parser 'no-such-parser'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_profile_names_parsers_vllm_has(path):
    pytest.importorskip("vllm")
    from vllm.reasoning.abs_reasoning_parsers import ReasoningParserManager
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    frontend = PDServeConfig.from_file(path).model.frontend_args()
    assert frontend.get("tool_call_parser", "hermes") in ToolParserManager.list_registered()
    assert frontend.get("reasoning_parser", "qwen3") in ReasoningParserManager.list_registered()
