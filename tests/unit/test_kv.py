from __future__ import annotations

import pytest

from serving.config import PDServeConfig
from serving.kv import kv_pull_deadline, kv_transfer_config, prefill_request, replica_env

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 50,
        "stream_options": {"include_usage": True}, "min_tokens": 10, "temperature": 0.3, "ignore_eos": True}


def test_prefill_leg_is_one_unstreamed_token_that_keeps_its_kv():
    leg = prefill_request("chat", BODY)
    assert leg["stream"] is False and leg["max_tokens"] == 1
    assert "stream_options" not in leg and "min_tokens" not in leg
    assert leg["kv_transfer_params"]["do_remote_decode"] is True
    assert leg["kv_transfer_params"]["do_remote_prefill"] is False
    assert leg["temperature"] == 0.3 and leg["ignore_eos"] is True
    assert BODY["max_tokens"] == 50  # the client's request is not mutated


def test_prefill_leg_caps_max_completion_tokens_too():
    assert prefill_request("chat", {**BODY, "max_completion_tokens": 40})["max_completion_tokens"] == 1


RESPONSES_BODY = {"model": "m", "input": "hi", "stream": True, "max_output_tokens": 50, "store": True,
                  "background": False, "temperature": 0.3}
MESSAGES_BODY = {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}],
                 "temperature": 0.3}


def test_responses_prefill_leg_is_one_unstreamed_unstored_output_token():
    leg = prefill_request("responses", RESPONSES_BODY)
    assert leg["stream"] is False and leg["max_output_tokens"] == 1 and leg["store"] is False
    assert "max_tokens" not in leg and "background" not in leg
    assert leg["kv_transfer_params"]["do_remote_decode"] is True
    assert leg["input"] == "hi" and leg["temperature"] == 0.3


def test_messages_prefill_leg_is_one_unstreamed_token():
    leg = prefill_request("messages", MESSAGES_BODY)
    assert leg["stream"] is False and leg["max_tokens"] == 1
    assert leg["kv_transfer_params"]["do_remote_decode"] is True and leg["messages"] == MESSAGES_BODY["messages"]


@pytest.mark.parametrize("endpoint,body", [("chat", BODY), ("completions", {"model": "m", "prompt": "hi",
                                                                             "max_tokens": 9, "n": 1}),
                                           ("responses", RESPONSES_BODY), ("messages", MESSAGES_BODY)])
def test_every_prefill_leg_is_a_valid_vllm_request_for_one_token(endpoint, body):
    """The leg must pass vLLM's own validation of the endpoint and ask the engine for exactly one token."""
    pytest.importorskip("vllm")
    from serving.worker import request_model

    leg = request_model(endpoint).model_validate(prefill_request(endpoint, body))
    assert leg.kv_transfer_params["do_remote_decode"] is True
    assert (leg.max_output_tokens if endpoint == "responses" else leg.max_tokens) == 1


def test_kv_roles_and_cpu_connector_module():
    config = PDServeConfig()
    prefill, decode = kv_transfer_config(config, "prefill"), kv_transfer_config(config, "decode")
    assert prefill["kv_role"] == "kv_producer" and decode["kv_role"] == "kv_consumer"
    assert prefill["kv_connector"] == "NixlConnector"
    assert prefill["kv_connector_module_path"] == "serving.nixl_cpu"
    assert prefill["kv_connector_extra_config"]["kv_lease_duration"] == config.kv_transfer.lease_seconds
    assert kv_transfer_config(config, "colocated") is None


def test_gpu_uses_the_upstream_connector():
    config = PDServeConfig.model_validate({
        "device": "cuda", "kv_transfer": {"buffer_device": "cuda"},
        "prefill": {"resources": {"num_gpus": 1, "resources": {"pdserve_prefill": 1}}},
        "decode": {"resources": {"num_gpus": 1, "resources": {"pdserve_decode": 1}}}})
    transfer = kv_transfer_config(config, "decode")
    assert "kv_connector_module_path" not in transfer and transfer["kv_buffer_device"] == "cuda"


def test_replica_env_binds_cores_and_gives_each_replica_a_side_channel_port():
    config = PDServeConfig()
    env = replica_env(config, "decode", "10.0.0.5")
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == config.decode.cpu.threads_bind
    assert env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == "10.0.0.5"
    assert int(env["VLLM_NIXL_SIDE_CHANNEL_PORT"]) > 0
    assert "VLLM_NIXL_SIDE_CHANNEL_PORT" not in replica_env(config, "colocated", "10.0.0.5")
    fixed = config.with_overrides(**{"kv_transfer.side_channel_port": 5600})
    assert replica_env(fixed, "prefill", "h")["VLLM_NIXL_SIDE_CHANNEL_PORT"] == "5600"


def test_decode_must_take_the_kv_before_the_prefill_lease_can_lapse():
    config = PDServeConfig().with_overrides(**{"kv_transfer.lease_seconds": 30})
    # vLLM's decode engine heartbeats every lease/6 once it has the request: two thirds leave room for one.
    assert kv_pull_deadline(config, 1000.0) == 1020.0
