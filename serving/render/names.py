"""Names, labels, taints and ports shared by the rendered manifests, so every manifest agrees on them."""

from __future__ import annotations

from typing import Any

from serving.deploy_config import KubernetesConfig

APP = "pdserve"
POOL_LABEL = "pdserve.io/pool"
ROLE_LABEL = "pdserve.io/role"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
DEVICE_PLUGIN_CONFIG_LABEL = "nvidia.com/device-plugin.config"
MIG_PARTED_CONFIGMAP = "pdserve-mig-parted-config"
DEVICE_PLUGIN_CONFIGMAP = "pdserve-device-plugin-config"
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"

# Ray's ports (the defaults KubeRay and `ray start` use) and Serve's HTTP port.
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
DASHBOARD_AGENT_PORT = 52365
AUTOSCALER_METRICS_PORT = 44217
DASHBOARD_METRICS_PORT = 44227

# The GPU taint every GPU node carries (the NVIDIA/EKS convention) and the app's own dedicated-pool taint.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}


def pool_taint(k: KubernetesConfig) -> dict[str, str]:
    return {"key": POOL_LABEL, "value": k.name, "effect": "NoSchedule"}


def tolerations(k: KubernetesConfig) -> list[dict[str, str]]:
    """What a pod needs to land on this profile's GPU nodes: both of their taints, nothing broader."""
    return [
        {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": taint["effect"]}
        for taint in (GPU_TAINT, pool_taint(k))
    ]


def selector(k: KubernetesConfig) -> dict[str, str]:
    """Labels that pick every pod of this RayService (KubeRay copies template labels onto its pods)."""
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": k.name}


def labels(k: KubernetesConfig, component: str) -> dict[str, str]:
    return {**selector(k), "app.kubernetes.io/component": component, "app.kubernetes.io/managed-by": "pdserve-render"}


def metadata(name: str, namespace: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def node_labels(k: KubernetesConfig) -> dict[str, str]:
    """Labels Karpenter puts on every node of the pool: the pool itself, and which GPU-operator config applies."""
    out = {POOL_LABEL: k.name}
    if k.nodes.mig_layout:
        out[MIG_CONFIG_LABEL] = k.name
    if k.nodes.time_slicing is not None:
        out[DEVICE_PLUGIN_CONFIG_LABEL] = k.name
    return out


def node_capacity(k: KubernetesConfig) -> dict[str, int]:
    """Extended resources one node advertises once the GPU operator has partitioned (and shared) its GPUs."""
    nodes = k.nodes
    shared = nodes.time_slicing
    if not nodes.mig_layout:
        if shared is None:
            return {"nvidia.com/gpu": nodes.gpus_per_node}
        return {"nvidia.com/gpu.shared": nodes.gpus_per_node * shared.replicas}
    out: dict[str, int] = {}
    for profile in dict.fromkeys(nodes.mig_layout):
        is_shared = shared is not None and shared.mig_profile == profile
        name = f"nvidia.com/mig-{profile}" + (".shared" if is_shared else "")
        out[name] = nodes.slices_per_node(profile)
    return out
