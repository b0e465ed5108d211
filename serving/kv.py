"""What a request looks like on each leg of the P/D path, and how each engine is wired for the KV handoff.

Prefill leg: the client's request with one output token, no streaming and `do_remote_decode`, so the prefill
engine keeps the prompt's KV blocks pinned (for `kv_transfer.lease_seconds`) and returns where to read them.
Decode leg: the client's request unchanged plus those `kv_transfer_params` (`LLMServer.run` sets them, and only
ever from the prefill engine's answer), so the decode engine pulls the blocks over NIXL instead of recomputing.
"""

from __future__ import annotations

import socket
from typing import Any

from serving.config import PDServeConfig, Role
from serving.protocol import Endpoint
from serving.vllm_cpu_plugin import SPIN_ENV

KV_ROLE: dict[Role, str | None] = {"prefill": "kv_producer", "decode": "kv_consumer", "colocated": None}

# Fields of the client's request that would make a one-token prefill fail validation, stream, or keep state.
_DROPPED_ON_PREFILL = ("stream_options", "min_tokens", "n", "best_of", "background")


def prefill_request(endpoint: Endpoint, body: dict[str, Any]) -> dict[str, Any]:
    """The prefill leg's body: the same prompt (so both engines see the same tokens), one output token."""
    leg = {k: v for k, v in body.items() if k not in _DROPPED_ON_PREFILL}
    leg["stream"] = False
    if endpoint == "responses":
        leg["max_output_tokens"] = 1
        leg["store"] = False  # the decode leg's reply is the response; the prefill leg's is thrown away
    else:
        leg["max_tokens"] = 1
    if "max_completion_tokens" in leg:
        leg["max_completion_tokens"] = 1
    leg["kv_transfer_params"] = {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    return leg


def kv_pull_deadline(config: PDServeConfig, prefilled_at: float) -> float:
    """Wall-clock time by which a decode replica must take the request for its KV pull to be safe.

    The prefill engine releases unpulled blocks `lease_seconds` after its reply unless the decode engine's
    heartbeats (every lease/6, from the moment vLLM receives the request) extend the lease. A decode replica that
    hands the request to its engine later than two thirds of the lease (its event loop stalled, the host
    stalled) could otherwise read blocks already handed to another request; past this deadline it recomputes the
    prompt instead. The prefill replica sets it when its engine has finished (`LegReply.kv_deadline`).
    """
    return prefilled_at + config.kv_transfer.lease_seconds * 2 / 3


def kv_transfer_config(config: PDServeConfig, role: Role) -> dict[str, Any] | None:
    kv_role = KV_ROLE[role]
    if kv_role is None:
        return None
    kv = config.kv_transfer
    transfer: dict[str, Any] = {
        "kv_connector": kv.connector,
        "kv_role": kv_role,
        "kv_buffer_device": kv.buffer_device,
        "kv_load_failure_policy": kv.load_failure_policy,
        "kv_connector_extra_config": {"backends": list(kv.backends), "kv_lease_duration": kv.lease_seconds},
    }
    if config.device == "cpu":
        transfer["kv_connector_module_path"] = "serving.nixl_cpu"
    return transfer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def replica_env(config: PDServeConfig, role: Role, node_ip: str) -> dict[str, str]:
    """Environment a replica sets before it starts its engine (the engine process inherits it)."""
    pool = config.pool(role)
    env: dict[str, str] = {}
    if config.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(pool.cpu.kvcache_space_gib)
        env["VLLM_CPU_OMP_THREADS_BIND"] = pool.cpu.threads_bind
        env[SPIN_ENV] = str(pool.cpu.engine_spin_s)
    if KV_ROLE[role] is not None:
        port = config.kv_transfer.side_channel_port or free_port()
        env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = node_ip
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(port)
    env.update(pool.env)
    return env
