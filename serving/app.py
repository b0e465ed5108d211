"""Pure builders: a `PDServeConfig` in, a Ray Serve application out.

`build_app` is the Serve `import_path` target (`serving.app:build_app`), so a RayService `serveConfigV2` gives
it the same fields as a `configs/*.yaml` file as its `args`.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serving.config import AutoscalingConfig, PDServeConfig, PoolConfig, Role

DEPLOYMENT_NAMES: dict[Role, str] = {"prefill": "PrefillServer", "decode": "DecodeServer", "colocated": "ColocatedServer"}

# Ray starts worker processes at nice 15; the engine process inherits it and would yield its core to anything.
REPLICA_ENV = {"RAY_worker_niceness": "0"}


def replica_options(pool: PoolConfig, scaling: AutoscalingConfig | None = None,
                    drain_timeout_s: float = 300.0) -> dict[str, Any]:
    """Serve options for one pool: where its replicas may run and how many there are."""
    res = pool.resources
    actor = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "runtime_env": {"env_vars": dict(REPLICA_ENV)}}
    if res.resources:
        actor["resources"] = dict(res.resources)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": pool.max_ongoing_requests,
        "max_queued_requests": pool.max_queued_requests,
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        # A stopping replica finishes what it is serving first, so a redeploy or upgrade loses no request.
        "graceful_shutdown_timeout_s": drain_timeout_s,
    }
    reps = pool.replicas
    if reps.min == reps.max:
        options["num_replicas"] = reps.min
    else:
        scaling = scaling or AutoscalingConfig()
        # The decisions come from the application-level policy (serving.autoscaling); Ray applies these bounds
        # and delays around it.
        options["autoscaling_config"] = {
            "min_replicas": reps.min,
            "max_replicas": reps.max,
            "initial_replicas": reps.initial if reps.initial is not None else max(reps.min, 1),
            "upscale_delay_s": scaling.upscale_delay_s,
            "downscale_delay_s": scaling.downscale_delay_s,
            "downscale_to_zero_delay_s": scaling.downscale_to_zero_delay_s,
            "look_back_period_s": scaling.look_back_period_s,
            "metrics_interval_s": scaling.metrics_interval_s,
        }
    return options


def build_llm_deployment(config: PDServeConfig, role: Role, prefill: Application | None = None) -> Application:
    """One pool. Decode (or colocated) is the HTTP ingress itself, so a token reaches the client from the
    process that generated it; prefill is reached through a handle."""
    from serving.worker import LLMServer

    options = replica_options(config.pool(role), config.autoscaling, config.router.drain_timeout_s)
    if role == "prefill" and config.router.prefill_replica_choice == "prefix_affinity":
        options["request_router_config"] = {"request_router_class": PREFILL_ROUTER_PATH, "request_router_kwargs": {
            "imbalance_max": config.router.prefix_imbalance_max}}
    server = LLMServer
    if role != "prefill":
        # Admission to the pool is the app's own (429 with an OpenAI error body, `serving.ingress.Admission`):
        # Serve lets every request through to it.
        server = serve.ingress()(LLMServer)
        options.update(max_ongoing_requests=config.router.max_ongoing_requests, max_queued_requests=-1)
    deployment = serve.deployment(server).options(name=DEPLOYMENT_NAMES[role], **options)
    return deployment.bind(config.model_dump(mode="json"), role, prefill)


def build_pd_app(config: PDServeConfig) -> Application:
    """Decode bound to the prefill pool (decode is the ingress), or the one colocated pool."""
    if config.mode == "colocated":
        return build_llm_deployment(config, "colocated")
    return build_llm_deployment(config, "decode", prefill=build_llm_deployment(config, "prefill"))


APP_NAME = "pdserve"
PREFILL_ROUTER_PATH = "serving.prefill_router:PrefixAffinityRouter"
IMPORT_PATH = "serving.app:build_app"
POLICY_PATH = "serving.autoscaling:PDAutoscalingPolicy"


def serve_application(config: PDServeConfig) -> dict[str, Any]:
    """The Serve application entry (`serve deploy` / RayService `serveConfigV2`) for this config.

    `pdserve up` deploys exactly this locally, so the local run and the cluster share one code path.
    """
    app: dict[str, Any] = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": config.model_dump(mode="json", exclude_none=True),
    }
    autoscaled = config.autoscaled_roles()
    if autoscaled:
        app["autoscaling_policy"] = {
            "policy_function": POLICY_PATH,
            "policy_kwargs": {
                "autoscaling": config.autoscaling.model_dump(mode="json"),
                "roles": {DEPLOYMENT_NAMES[role]: role for role in autoscaled},
            },
        }
    return app


def build_app(args: dict[str, Any]) -> Application:
    """Serve `import_path` entry point: `args` are the fields of a `PDServeConfig`.

    The model is resolved by each replica on its own node (the built-in one is converted once per node, in
    that node's cache), so the builder needs neither the weights nor vLLM.
    """
    return build_pd_app(PDServeConfig.model_validate(args or {}))
