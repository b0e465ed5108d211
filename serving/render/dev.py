"""Hybrid: a dev sandbox that may use the time-sliced slice and nothing else.

Its pods tolerate the pool's taints (they run on the same nodes as production) and ask only for the
`.shared` resource; a ResourceQuota in the dev namespace sets every dedicated GPU resource to 0, so the API
server refuses any dev pod that asks for a production slice, whatever its tolerations.
"""

from __future__ import annotations

from typing import Any

from serving.config import PDServeConfig
from serving.render import names
from serving.render.cluster import namespace
from serving.render.rayservice import HOME, POD_SECURITY, RAY_CONTAINER_SECURITY
from serving.render.yamltext import dump

NAME = "pdserve-dev"
CONFIG_PATH = "/etc/pdserve/config.yaml"


def dev_config(config: PDServeConfig) -> dict[str, Any]:
    """The same model served colocated on one shared slice, with `gpu_memory_utilization` at its share."""
    k = config.kubernetes
    assert k is not None and k.dev is not None
    data = config.model_dump(mode="json", exclude={"kubernetes"}, exclude_unset=True)
    data["mode"] = "colocated"
    for role in ("prefill", "decode"):  # the production pools, which a colocated run never starts
        data.pop(role, None)
    data["router"] = {**data.get("router", {}), "host": "0.0.0.0"}
    data["colocated"] = {
        "replicas": {"min": 1, "max": 1},
        "resources": {"num_cpus": 1, "num_gpus": 1},
        "engine_args": {"gpu_memory_utilization": k.dev.gpu_memory_utilization},
    }
    PDServeConfig.model_validate(data)
    return data


def dev_sandbox(config: PDServeConfig) -> list[dict[str, Any]]:
    k = config.kubernetes
    assert k is not None and k.dev is not None
    ns = k.dev.namespace
    labels = {**names.labels(k, "dev"), "app.kubernetes.io/instance": NAME}
    return [
        namespace(ns, names.labels(k, "dev")),
        _quota(config),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": names.metadata(NAME, ns, labels),
            "data": {"config.yaml": dump(dev_config(config))},
        },
        _deployment(config, labels),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": names.metadata(NAME, ns, labels),
            "spec": {"selector": labels, "ports": [{"name": "http", "port": config.router.port, "targetPort": "http"}]},
        },
    ]


def shared_resource(config: PDServeConfig) -> str:
    k = config.kubernetes
    assert k is not None and k.nodes.time_slicing is not None
    profile = k.nodes.time_slicing.mig_profile
    return f"nvidia.com/mig-{profile}.shared" if profile else "nvidia.com/gpu.shared"


def _quota(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None and k.dev is not None
    shared = shared_resource(config)
    hard = {f"requests.{name}": "0" for name in names.node_capacity(k) if name != shared}
    hard["requests.nvidia.com/gpu"] = "0"
    hard[f"requests.{shared}"] = str(names.node_capacity(k)[shared] * k.nodes.max_nodes)
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": names.metadata(f"{NAME}-gpu", k.dev.namespace, names.labels(k, "dev")),
        "spec": {"hard": hard},
    }


def _deployment(config: PDServeConfig, labels: dict[str, str]) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None and k.dev is not None
    shared = shared_resource(config)
    size = {"cpu": k.dev.cpu, "memory": k.dev.memory}
    container = {
        "name": "pdserve",
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": ["pdserve", "up", "--config", CONFIG_PATH],
        "env": [{"name": "HF_HOME", "value": f"{HOME}/.cache/huggingface"}],
        "ports": [{"name": "http", "containerPort": config.router.port, "protocol": "TCP"}],
        "resources": {"requests": {**size, shared: 1}, "limits": {**size, shared: 1}},
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "failureThreshold": 60},
        "securityContext": dict(RAY_CONTAINER_SECURITY),
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/pdserve", "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "cache", "mountPath": f"{HOME}/.cache"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": names.metadata(NAME, k.dev.namespace, labels),
        "spec": {
            "replicas": k.dev.replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {names.POOL_LABEL: k.name},
                    "tolerations": names.tolerations(k),
                    "securityContext": dict(POD_SECURITY),
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": NAME}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}},
                        {"name": "cache", "emptyDir": {"sizeLimit": "30Gi"}},
                    ],
                },
            },
        },
    }
