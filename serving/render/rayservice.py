"""The RayService: a CPU-only head, a prefill and a decode worker group, and the Serve app in `serveConfigV2`.

Placement: each worker group offers the Ray resources its pods hold (`GPU: 1` for the slice plus the pool's
custom resource, e.g. `pdserve_prefill: 1`) through the group's `resources` field, and each Serve deployment
asks for exactly its pool's resources (`serving.app.replica_options`), so a prefill replica can only land on
a prefill pod, one per pod. The head offers no CPU, so no replica lands there.
"""

from __future__ import annotations

from typing import Any

from serving.config import PDServeConfig
from serving.deploy_config import GroupConfig, KubernetesConfig
from serving.ray_env import serve_env
from serving.render import names
from serving.render.checks import ROLES
from serving.render.yamltext import dump

HOME = "/home/ray"
RAY_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def serve_config(config: PDServeConfig) -> dict[str, Any]:
    """Serve's deploy config: the same application entry `pdserve up` deploys, less the Kubernetes section."""
    from serving.app import serve_application

    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": config.router.port},
        "applications": [serve_application(config.model_copy(update={"kubernetes": None}))],
    }


def rayservice(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": names.metadata(k.name, k.namespace, names.labels(k, "rayservice")),
        "spec": {
            "serveConfigV2": dump(serve_config(config)),
            # A change to rayClusterConfig brings up a new cluster and switches traffic once its app is ready; the
            # old one keeps serving its in-flight requests for the drain time before it is deleted. A change to
            # serveConfigV2 alone is a rolling update inside the running cluster (replicas drain the same way).
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterDeletionDelaySeconds": int(config.router.drain_timeout_s),
            "rayClusterConfig": {
                "rayVersion": k.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": _autoscaler(k),
                "headGroupSpec": _head_group(config),
                "workerGroupSpecs": [_worker_group(config, role) for role in ROLES],
            },
        },
    }


def _autoscaler(k: KubernetesConfig) -> dict[str, Any]:
    size = {"cpu": "500m", "memory": "512Mi"}
    return {
        "version": "v2",
        "upscalingMode": k.autoscaler.upscaling_mode,
        "idleTimeoutSeconds": k.autoscaler.idle_timeout_seconds,
        "imagePullPolicy": k.image_pull_policy,
        "resources": {"requests": dict(size), "limits": dict(size)},
        "securityContext": {
            **RAY_CONTAINER_SECURITY,
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }


def _head_group(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    size = {"cpu": k.head.cpu, "memory": k.head.memory}
    ports = {
        "gcs-server": names.GCS_PORT,
        "dashboard": names.DASHBOARD_PORT,
        "client": names.CLIENT_PORT,
        "serve": config.router.port,
        "metrics": config.router.metrics_port,
        "as-metrics": names.AUTOSCALER_METRICS_PORT,
        "dash-metrics": names.DASHBOARD_METRICS_PORT,
    }
    container = {
        "name": "ray-head",
        **_container_basics(config),
        "ports": _ports(ports),
        "resources": {"requests": dict(size), "limits": dict(size)},
        "readinessProbe": _http_probe("/api/gcs_healthz", names.DASHBOARD_PORT, initial=10, failures=10),
        "livenessProbe": _http_probe("/api/local_raylet_healthz", names.DASHBOARD_AGENT_PORT, initial=30, failures=120),
        "volumeMounts": [{"name": "ray-logs", "mountPath": "/tmp/ray"}],
    }
    return {
        "rayStartParams": {"dashboard-host": "0.0.0.0", "metrics-export-port": str(config.router.metrics_port)},
        # No CPU for Ray on the head: the Serve controller and proxy need none, and no replica may land here.
        "resources": {"CPU": "0"},
        "template": {
            "metadata": {"labels": names.labels(k, "head")},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": dict(POD_SECURITY),
                "containers": [container],
                "volumes": [{"name": "ray-logs", "emptyDir": {}}],
            },
        },
    }


def _worker_group(config: PDServeConfig, role: str) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    pool = config.pool(role)  # type: ignore[arg-type]
    group = k.group(role)
    reps = pool.replicas
    offered = {
        "CPU": group.cpu,
        "GPU": "1",
        **{name: f"{amount:g}" for name, amount in pool.resources.resources.items()},
    }
    return {
        "groupName": role,
        "replicas": reps.initial if reps.initial is not None else reps.min,
        "minReplicas": reps.min,
        "maxReplicas": reps.max,
        "resources": offered,
        "rayStartParams": {"metrics-export-port": str(config.router.metrics_port)},
        "template": {
            "metadata": {
                "labels": {**names.labels(k, role), names.ROLE_LABEL: role},
                # A running engine holds weights and KV cache that take minutes to rebuild: only Ray's
                # autoscaler (idle timeout) removes a worker, never Karpenter's consolidation.
                "annotations": {names.DO_NOT_DISRUPT: "true"},
            },
            "spec": _worker_pod(config, role, group),
        },
    }


def _worker_pod(config: PDServeConfig, role: str, group: GroupConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    gpu = group.gpu_resource()
    ports = {
        "serve": config.router.port,
        "metrics": config.router.metrics_port,
        "nixl": config.kv_transfer.side_channel_port,
    }
    container = {
        "name": "ray-worker",
        **_container_basics(config),
        "ports": _ports(ports),
        "resources": {
            "requests": {"cpu": group.cpu, "memory": group.memory, gpu: 1},
            "limits": {"cpu": group.cpu, "memory": group.memory, gpu: 1},
        },
        # Ready once this node's Serve proxy answers; alive while its raylet does (model loading takes minutes).
        "readinessProbe": _http_probe("/-/healthz", config.router.port, initial=10, failures=10),
        "livenessProbe": _http_probe("/api/local_raylet_healthz", names.DASHBOARD_AGENT_PORT, initial=30, failures=120),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "cache", "mountPath": f"{HOME}/.cache"},
            {"name": "ray-logs", "mountPath": "/tmp/ray"},
        ],
    }
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 60,
        "nodeSelector": {names.POOL_LABEL: k.name},
        "tolerations": names.tolerations(k),
        "securityContext": dict(POD_SECURITY),
        "containers": [container],
        "volumes": [
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": group.shm}},
            {"name": "cache", "emptyDir": {"sizeLimit": group.cache}},
            {"name": "ray-logs", "emptyDir": {}},
        ],
    }


def _container_basics(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    api_keys_env = config.router.api_keys_env
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": f"{HOME}/.cache/huggingface"},
        {"name": "PDSERVE_CACHE", "value": f"{HOME}/.cache/pdserve"},
        # Read by the raylet and by Serve in every Ray process of the cluster (see serving.ray_env).
        *({"name": name, "value": value} for name, value in serve_env(config).items()),
    ]
    if k.hf_token_secret:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": k.hf_token_secret, "key": "token", "optional": True}},
            }
        )
    if k.api_keys_secret:
        env.append(
            {
                "name": api_keys_env,
                "valueFrom": {"secretKeyRef": {"name": k.api_keys_secret, "key": "keys", "optional": True}},
            }
        )
    return {
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "env": env,
        "securityContext": dict(RAY_CONTAINER_SECURITY),
    }


def _ports(ports: dict[str, int | None]) -> list[dict[str, Any]]:
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports.items() if port]


def _http_probe(path: str, port: int, *, initial: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "initialDelaySeconds": initial,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }
