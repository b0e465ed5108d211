"""Ray Serve LLM's own prefill/decode app (`ray.serve.llm.build_pd_openai_app`, from the installed Ray) on this
CPU, for `pdserve bench`: `python -m serving.bench.rayllm --model <folder> --port 8000`.

It is given the same CPU fixes pdserve's engines run with, so that the comparison is about the serving
structure and not about which side knows the machine: one core per engine (`VLLM_CPU_OMP_THREADS_BIND`), 1 GiB of
KV cache, NIXL without its busy progress thread and with the model thread's affinity kept
(`kv_connector_module_path: serving.nixl_cpu`), the engines' shorter busy-wait (`serving.vllm_cpu_plugin`),
Ray workers at nice 0, and Ray with the rest of the stack on the prefill engine's core (`local.stack_cores`). Everything else is Ray Serve LLM's default: its OpenAI ingress deployment in front of the
decode server, which calls prefill.
"""

from __future__ import annotations

import argparse
import signal
import time

from serving.local import Signals


def llm_config(role: str, model: str, served_name: str, dtype: str, core: str) -> dict:
    kv_role = {"prefill": "kv_producer", "decode": "kv_consumer"}[role]
    env = {"VLLM_CPU_OMP_THREADS_BIND": core, "VLLM_CPU_KVCACHE_SPACE": "1", "PDSERVE_ENGINE_SPIN_S": "0.01",
           "RAY_worker_niceness": "0"}
    return {
        "model_loading_config": {"model_id": served_name, "model_source": model},
        "accelerator_config": {"kind": "cpu"},
        "placement_group_config": {"bundles": [{"CPU": 1}]},
        "engine_kwargs": {
            "dtype": dtype, "max_model_len": 2048, "enforce_eager": True,
            "kv_transfer_config": {
                "kv_connector": "NixlConnector", "kv_role": kv_role, "kv_buffer_device": "cpu",
                "kv_connector_module_path": "serving.nixl_cpu",
                "kv_connector_extra_config": {"backends": ["UCX"]},
            },
        },
        "deployment_config": {"num_replicas": 1},
        "runtime_env": {"env_vars": env},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local Hugging Face folder")
    parser.add_argument("--served-name", default="bench-model")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    import os

    os.environ["RAY_worker_niceness"] = "0"
    os.sched_setaffinity(0, {0} & os.sched_getaffinity(0) or os.sched_getaffinity(0))
    import ray
    from ray import serve
    from ray.serve.llm import build_pd_openai_app

    # Logical CPUs only: the engines are pinned to their cores, the rest is Ray's accounting.
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="WARNING")
    signals = Signals()
    signal.signal(signal.SIGTERM, signals.on_signal)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        app = build_pd_openai_app({
            "prefill_config": llm_config("prefill", args.model, args.served_name, args.dtype, "0"),
            "decode_config": llm_config("decode", args.model, args.served_name, args.dtype, "1"),
        })
        serve.run(app, blocking=False)  # SIGINT (KeyboardInterrupt) stops it while it deploys too
        signal.signal(signal.SIGINT, signals.on_signal)
        print("rayllm: ready", flush=True)
        while not signals.stop:
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
