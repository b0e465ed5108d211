"""Pure builders: a `PDServeConfig` in, a Ray Serve application out.

`build_app` is the Serve `import_path` target (`serving.app:build_app`), so a RayService `serveConfigV2` gives
it the same fields as a `configs/*.yaml` file as its `args`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serving.config import PDServeConfig, PoolConfig, Role

DEPLOYMENT_NAMES: dict[Role, str] = {"prefill": "PrefillServer", "decode": "DecodeServer", "colocated": "ColocatedServer"}
ROUTER_NAME = "PDRouter"

# Ray starts worker processes at nice 15; the engine process inherits it and would yield its core to anything.
REPLICA_ENV = {"RAY_worker_niceness": "0"}


def replica_options(pool: PoolConfig) -> dict[str, Any]:
    """Serve options for one pool: where its replicas may run and how many there are."""
    res = pool.resources
    actor = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}
    if res.resources:
        actor["resources"] = dict(res.resources)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": pool.max_ongoing_requests,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": 30,
    }
    reps = pool.replicas
    if reps.min == reps.max:
        options["num_replicas"] = reps.min
    else:
        options["autoscaling_config"] = {
            "min_replicas": reps.min,
            "max_replicas": reps.max,
            "initial_replicas": reps.initial if reps.initial is not None else max(reps.min, 1),
            "target_ongoing_requests": max(1, pool.max_ongoing_requests // 4),
        }
    return options


def build_llm_deployment(config: PDServeConfig, role: Role) -> Application:
    from serving.worker import LLMServer

    deployment = serve.deployment(LLMServer).options(name=DEPLOYMENT_NAMES[role], **replica_options(config.pool(role)))
    return deployment.bind(config.model_dump(mode="json"), role)


def build_pd_app(config: PDServeConfig) -> Application:
    """Router bound to its pools: prefill + decode, or the one colocated pool."""
    from serving.router import PDRouter

    pools = {role: build_llm_deployment(config, role) for role in config.active_roles()}
    router = serve.deployment(PDRouter).options(
        name=ROUTER_NAME,
        ray_actor_options={"num_cpus": config.router.num_cpus},
        max_ongoing_requests=config.router.max_ongoing_requests,
    )
    return router.bind(config.model_dump(mode="json"), pools)


def build_app(args: dict[str, Any]) -> Application:
    """Serve `import_path` entry point: `args` are the fields of a `PDServeConfig`.

    The model is resolved by each replica on its own node (the built-in one is converted once per node, in
    that node's cache), so the builder needs neither the weights nor vLLM.
    """
    return build_pd_app(PDServeConfig.model_validate(args or {}))
