"""Rules that tie the Kubernetes section to the rest of the config; each failure names the field to change.

The Kubernetes section checks itself (MIG layout, slices per role, production isolation) when the config is
loaded; these rules need the pools and the device as well, so they run when a profile is rendered.
"""

from __future__ import annotations

import re

from serving.config import PDServeConfig
from serving.deploy_config import KubernetesConfig

ROLES = ("prefill", "decode")
_CPU = re.compile(r"^([0-9.]+)(m?)$")


class RenderError(ValueError):
    """A config that cannot be rendered; the message starts with the offending field."""


def cpu_cores(quantity: str) -> float:
    match = _CPU.match(quantity)
    if not match:
        raise RenderError(f"cannot read CPU quantity {quantity!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


def check(config: PDServeConfig) -> KubernetesConfig:
    """The config's Kubernetes section, once every cross-field rule holds."""
    k = config.kubernetes
    if k is None:
        raise RenderError("kubernetes: this config has no kubernetes section to render")
    _check_serving(config)
    for role in ROLES:
        _check_pool(config, k, role)
    return k


def _check_serving(config: PDServeConfig) -> None:
    if config.mode != "disaggregated":
        raise RenderError("mode: the KubeRay manifests serve prefill and decode apart; set mode: disaggregated")
    if config.device != "cuda":
        raise RenderError("device: must be 'cuda' on GPU nodes")
    if config.kv_transfer.buffer_device != "cuda":
        raise RenderError("kv_transfer.buffer_device: must be 'cuda' so NIXL registers the GPU KV cache")
    if config.kv_transfer.side_channel_port is None:
        raise RenderError(
            "kv_transfer.side_channel_port: set a fixed port (one replica per pod; the NetworkPolicy names it)"
        )


def _check_pool(config: PDServeConfig, k: KubernetesConfig, role: str) -> None:
    pool = config.pool(role)  # type: ignore[arg-type]
    group = k.group(role)
    if pool.resources.num_gpus != 1:
        raise RenderError(f"{role}.resources.num_gpus: must be 1, one replica per {group.gpu_resource()} pod")
    if not pool.resources.resources:
        raise RenderError(
            f"{role}.resources.resources: name a custom Ray resource (e.g. {{pdserve_{role}: 1}}) so {role} "
            f"replicas can only be placed on the {role} worker group"
        )
    needed = pool.resources.num_cpus
    if cpu_cores(group.cpu) < needed:
        raise RenderError(f"kubernetes.{role}.cpu: {group.cpu} is less than the {needed:g} CPUs a {role} replica needs")
    capacity = k.nodes.slices_per_node(group.mig_profile) * k.nodes.max_nodes
    if pool.replicas.max > capacity:
        raise RenderError(
            f"{role}.replicas.max: {pool.replicas.max} exceeds the {capacity} {group.gpu_resource()} slices that "
            f"kubernetes.nodes.max_nodes={k.nodes.max_nodes} nodes hold"
        )
    if group.time_sliced:
        _check_shared_memory(config, k, role)


def _check_shared_memory(config: PDServeConfig, k: KubernetesConfig, role: str) -> None:
    """Time-sliced pods share the GPU's memory: each engine must take at most its share of it."""
    replicas = k.nodes.time_slicing.replicas  # type: ignore[union-attr]
    share = config.pool(role).engine_args.get("gpu_memory_utilization")  # type: ignore[arg-type]
    if share is None or float(share) > 1 / replicas + 1e-9:
        raise RenderError(
            f"{role}.engine_args.gpu_memory_utilization: must be set to at most 1/{replicas} on a GPU time-sliced "
            f"{replicas} ways, got {share}"
        )
