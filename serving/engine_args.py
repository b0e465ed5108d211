"""Builds the vLLM command line for one pool, and parses it with vLLM's own `vllm serve` parser.

Going through vLLM's parser (rather than filling `AsyncEngineArgs` by hand) means every engine argument a user
knows from `vllm serve` works in `engine_args`, unknown ones are rejected with vLLM's message, and the
OpenAI serving layer gets the same `Namespace` it gets under `vllm serve`.
"""

from __future__ import annotations

import json
from typing import Any

from serving.config import ConfigError, PDServeConfig, Role
from serving.kv import kv_transfer_config

# Defaults that suit a P/D pool; a pool's engine_args override them.
_POOL_DEFAULTS: dict[str, Any] = {
    "enable_prompt_tokens_details": True,  # usage.prompt_tokens_details.cached_tokens shows KV pulled over NIXL
}
_CPU_DEFAULTS: dict[str, Any] = {"enforce_eager": True}


def engine_arg_values(config: PDServeConfig, role: Role, model_path: str) -> dict[str, Any]:
    pool = config.pool(role)
    values: dict[str, Any] = {
        "model": model_path,
        "served_model_name": [config.model.served_name],
        "dtype": config.model.dtype,
        "max_model_len": config.model.max_model_len,
        **_POOL_DEFAULTS,
        **(_CPU_DEFAULTS if config.device == "cpu" else {}),
        **config.model.frontend_args(),
        **pool.engine_args,
    }
    transfer = kv_transfer_config(config, role)
    if transfer is not None:
        values["kv_transfer_config"] = transfer
    return values


def to_cli(values: dict[str, Any]) -> list[str]:
    """`{"max_num_seqs": 8, "enforce_eager": True}` -> `["--max-num-seqs", "8", "--enforce-eager"]`."""
    argv: list[str] = []
    for key, value in values.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            argv += [flag, json.dumps(value)]
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def parse_vllm_args(argv: list[str]):
    """Parse with `vllm serve`'s parser; raises ValueError naming the offending flag."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="pdserve-engine", exit_on_error=False))
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse still exits on some errors (e.g. bad choice)
        raise ValueError(f"invalid engine_args: {' '.join(argv)}") from exc
    if unknown:
        raise ValueError(f"engine_args: vLLM does not know {unknown}")
    validate_parsed_serve_args(args)
    return args


def check_engine_args(config: PDServeConfig, model_path: str) -> None:
    """Every pool's command line as its replica will parse it, and the parser names, checked now: a mistake
    fails `pdserve up` at once with one line, not minutes later inside a replica."""
    from vllm.reasoning.abs_reasoning_parsers import ReasoningParserManager
    from vllm.tool_parsers.abstract_tool_parser import ToolParserManager

    frontend = config.model.frontend_args()
    for flag, registry in (("tool_call_parser", ToolParserManager), ("reasoning_parser", ReasoningParserManager)):
        name = frontend.get(flag)
        if name is not None and name not in registry.list_registered():
            raise ConfigError(f"model.{flag}: vLLM has no parser {name!r}; it has: "
                             f"{', '.join(sorted(registry.list_registered()))}")
    for role in config.active_roles():
        try:
            parse_vllm_args(to_cli(engine_arg_values(config, role, model_path)))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{role}.engine_args: {exc}") from exc
