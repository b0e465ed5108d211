"""The Kubernetes (KubeRay) section of a profile: `PDServeConfig.kubernetes`. `pdserve up` ignores it.

It says where the same app runs on a cluster: which GPU and MIG layout each node gets, which slice each worker
group asks for, how Karpenter provisions the nodes, and what is shared by time-slicing. Replica counts are not
repeated here: each worker group scales between its pool's `replicas.min` and `replicas.max`, one replica per
pod, so Serve's autoscaler and KubeRay's cannot disagree. Checks that need the rest of the config (device,
pools) live in `serving.render.checks`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serving import mig

Tier = Literal["production", "development"]
CapacityType = Literal["on-demand", "spot", "reserved"]

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
# KubeRay rejects longer RayService names: the generated RayCluster/Service names must stay DNS labels.
MAX_RAYSERVICE_NAME = 47


class DeployModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _quantity(value: str) -> str:
    if not QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '4', '500m', '32Gi')")
    return value


class GroupConfig(DeployModel):
    """One Ray worker group: the pods of one pool (prefill or decode)."""

    mig_profile: str | None = None
    """MIG profile each pod gets, e.g. `3g.40gb` (must be in `nodes.mig_layout`); None = a whole GPU."""
    time_sliced: bool = False
    """Ask for the time-sliced replica of the GPU/slice (`nvidia.com/<...>.shared`): development only."""
    cpu: str = "4"
    memory: str = "32Gi"
    shm: str = "8Gi"
    """Size of the memory-backed `/dev/shm` (Ray's object store, NCCL/UCX); counts against `memory`."""
    cache: str = "50Gi"
    """Ephemeral storage for the Hugging Face cache (model weights) in the pod."""

    _quantities = field_validator("cpu", "memory", "shm", "cache")(_quantity)

    def gpu_resource(self) -> str:
        base = f"nvidia.com/mig-{self.mig_profile}" if self.mig_profile else "nvidia.com/gpu"
        return f"{base}.shared" if self.time_sliced else base


class HeadConfig(DeployModel):
    """The CPU-only head: GCS, dashboard, Serve controller and proxy, the autoscaler sidecar. No replicas."""

    cpu: str = "2"
    memory: str = "8Gi"

    _quantities = field_validator("cpu", "memory")(_quantity)


class AutoscalerConfig(DeployModel):
    """KubeRay's in-tree autoscaler (v2): turns pending Serve replicas into worker pods, removes idle ones."""

    idle_timeout_seconds: int = Field(300, ge=0)
    upscaling_mode: Literal["Default", "Aggressive", "Conservative"] = "Default"


class TimeSlicingConfig(DeployModel):
    """NVIDIA device-plugin `sharing.timeSlicing`: each GPU (or one MIG profile) is advertised `replicas` times."""

    mig_profile: str | None = None
    """The MIG profile to share (hybrid); None shares whole GPUs."""
    replicas: int = Field(4, ge=2, le=16)


class NodePoolConfig(DeployModel):
    """The GPU nodes: GPU model and MIG layout, and the Karpenter NodePool/EC2NodeClass that provisions them."""

    gpu: mig.GPUModel
    gpus_per_node: int = Field(8, ge=1, le=16)
    mig_layout: list[str] = Field(default_factory=list)
    """Slices on every GPU of a node, e.g. `[3g.40gb, 2g.20gb, 2g.20gb]`; empty = MIG disabled."""
    time_slicing: TimeSlicingConfig | None = None
    instance_types: list[str] = Field(min_length=1)
    capacity_types: list[CapacityType] = Field(default_factory=lambda: ["on-demand"], min_length=1)
    max_nodes: int = Field(2, ge=1)
    """Karpenter `limits.nodes`: the most GPU nodes this profile may ever hold."""
    consolidate_after: str = "10m"
    expire_after: str = "720h"
    cluster_name: str = "pdserve"
    """EKS cluster name: subnets and security groups are found by the tag `karpenter.sh/discovery: <name>`."""
    node_role: str = "KarpenterNodeRole-pdserve"
    ami_alias: str = "al2023@latest"
    """EKS-optimized AMI; AL2023 resolves to its NVIDIA variant on GPU instances. Pin a version in production."""
    root_volume: str = "300Gi"

    _root = field_validator("root_volume")(_quantity)

    @field_validator("mig_layout")
    @classmethod
    def _layout_fits(cls, layout: list[str], info) -> list[str]:
        """Known profiles of this GPU, placeable on it by NVIDIA's compute/memory slice rules (`serving.mig`)."""
        gpu = info.data.get("gpu")
        if layout and gpu is not None:
            for name in layout:
                mig.profile(gpu, name)  # LayoutError is a ValueError: pydantic reports it on this field
            try:
                mig.place(gpu, layout)
            except mig.LayoutError as exc:
                raise ValueError(f"{layout} does not fit a {gpu}: {exc}") from None
        return layout

    @model_validator(mode="after")
    def _time_slicing_target_exists(self) -> NodePoolConfig:
        """A time-shared MIG profile is in the layout; whole GPUs are only time-shared without MIG."""
        shared = self.time_slicing
        if shared is None:
            return self
        if shared.mig_profile is None and self.mig_layout:
            raise ValueError("nodes.time_slicing.mig_profile must name a slice of nodes.mig_layout when MIG is on")
        if shared.mig_profile is not None and shared.mig_profile not in self.mig_layout:
            raise ValueError(f"nodes.time_slicing.mig_profile {shared.mig_profile!r} is not in nodes.mig_layout")
        return self

    def slices_per_node(self, mig_profile: str | None) -> int:
        """How many pods asking for one `mig_profile` slice (None: one whole GPU) a node can hold."""
        per_gpu = 1 if mig_profile is None else self.mig_layout.count(mig_profile)
        shared = self.time_slicing
        if shared is not None and shared.mig_profile == mig_profile:
            per_gpu *= shared.replicas
        return per_gpu * self.gpus_per_node


class MonitoringConfig(DeployModel):
    enabled: bool = True
    prometheus_labels: dict[str, str] = Field(default_factory=lambda: {"release": "kube-prometheus-stack"})
    """Labels the Prometheus operator's `podMonitorSelector`/`serviceMonitorSelector` match."""
    prometheus_namespace: str = "monitoring"
    """Where Prometheus runs: the NetworkPolicy lets it scrape the Ray metrics ports."""
    scrape_interval: str = "15s"


class DevSandboxConfig(DeployModel):
    """Hybrid: a colocated dev endpoint in its own namespace on the time-sliced slice, never a production one."""

    namespace: str = "pdserve-dev"
    replicas: int = Field(1, ge=0)
    cpu: str = "4"
    memory: str = "24Gi"
    gpu_memory_utilization: float = Field(0.4, gt=0, le=0.95)
    """vLLM's share of the slice; time-sliced pods share its memory, so keep it <= 1 / time_slicing.replicas."""

    _quantities = field_validator("cpu", "memory")(_quantity)


class KubernetesConfig(DeployModel):
    """Where and how a profile runs on Kubernetes with KubeRay, the NVIDIA GPU operator and Karpenter."""

    name: str = "pdserve"
    """RayService name; also names the NodePool, EC2NodeClass and monitors."""
    namespace: str = "pdserve"
    tier: Tier = "production"
    """`production` forbids shared slices: prefill and decode each get their own MIG profile."""
    image: str
    image_pull_policy: Literal["IfNotPresent", "Always"] = "IfNotPresent"
    ray_version: str = "2.60.0"
    """Ray in `image`; KubeRay uses it to pick compatible behaviour."""
    hf_token_secret: str | None = "hf-token"
    """Secret (key `token`) exported as HF_TOKEN for gated models; optional, pods start without it."""
    api_keys_secret: str | None = "pdserve-api-keys"
    """Secret (key `keys`: comma-separated API keys) exported as `router.api_keys_env`; optional: without it the
    API is open. Keys never appear in a manifest."""
    operator_namespace: str = "kuberay-system"
    """Where the KubeRay operator runs: the NetworkPolicy lets it reach the dashboard."""
    gpu_operator_namespace: str = "gpu-operator"
    """Where the NVIDIA GPU operator runs: its MIG manager and device plugin read the ConfigMaps rendered there."""
    head: HeadConfig = Field(default_factory=HeadConfig)
    prefill: GroupConfig
    decode: GroupConfig
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    nodes: NodePoolConfig
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    dev: DevSandboxConfig | None = None

    @field_validator("name")
    @classmethod
    def _rayservice_name(cls, name: str) -> str:
        """KubeRay's RayService name rules: a DNS-1035 label of at most 47 characters."""
        if len(name) > MAX_RAYSERVICE_NAME:
            raise ValueError(f"at most {MAX_RAYSERVICE_NAME} characters (KubeRay), got {len(name)}")
        if not DNS1035.match(name):
            raise ValueError(f"{name!r} is not a DNS-1035 label (lowercase letters, digits, '-')")
        return name

    @field_validator("namespace", "operator_namespace", "gpu_operator_namespace")
    @classmethod
    def _namespace(cls, name: str) -> str:
        if not DNS1035.match(name) or len(name) > 63:
            raise ValueError(f"{name!r} is not a valid namespace name")
        return name

    @model_validator(mode="after")
    def _groups_use_layout_slices(self) -> KubernetesConfig:
        """Each group's MIG profile is a slice the nodes are partitioned into."""
        for role in ("prefill", "decode"):
            group: GroupConfig = getattr(self, role)
            if group.mig_profile is None and self.nodes.mig_layout:
                raise ValueError(
                    f"kubernetes.{role}.mig_profile must be set: the nodes run MIG {self.nodes.mig_layout}"
                )
            if group.mig_profile is not None and group.mig_profile not in self.nodes.mig_layout:
                raise ValueError(
                    f"kubernetes.{role}.mig_profile {group.mig_profile!r} is not in "
                    f"nodes.mig_layout {self.nodes.mig_layout}"
                )
        return self

    @model_validator(mode="after")
    def _shared_groups_match_time_slicing(self) -> KubernetesConfig:
        """A time-sliced group asks for exactly what the device plugin shares; a shared profile has no other users."""
        shared = self.nodes.time_slicing
        for role in ("prefill", "decode"):
            group: GroupConfig = getattr(self, role)
            if group.time_sliced and (shared is None or shared.mig_profile != group.mig_profile):
                raise ValueError(
                    f"kubernetes.{role}.time_sliced needs nodes.time_slicing.mig_profile == {group.mig_profile!r}"
                )
            if not group.time_sliced and shared is not None and shared.mig_profile == group.mig_profile:
                raise ValueError(
                    f"kubernetes.{role}.mig_profile {group.mig_profile!r} is time-sliced on these nodes "
                    "(the device plugin renames it to '.shared'): set time_sliced or pick another slice"
                )
        return self

    @model_validator(mode="after")
    def _production_slices_dedicated(self) -> KubernetesConfig:
        """In production prefill and decode never share a slice: no time-slicing, and one MIG profile per role."""
        if self.tier != "production":
            return self
        for role in ("prefill", "decode"):
            if getattr(self, role).time_sliced:
                raise ValueError(f"kubernetes.{role}.time_sliced: production slices are dedicated, not time-sliced")
        if self.prefill.mig_profile == self.decode.mig_profile:
            what = self.prefill.mig_profile or "whole GPUs"
            raise ValueError(
                f"kubernetes.decode.mig_profile: prefill and decode share {what!r} in production; give each role its "
                "own slice profile so the layout (and Karpenter's capacity) pins each role to its own slices"
            )
        return self

    @model_validator(mode="after")
    def _dev_sandbox_on_shared_slice(self) -> KubernetesConfig:
        """The dev sandbox needs a time-shared slice and its own namespace."""
        if self.dev is None:
            return self
        if self.nodes.time_slicing is None:
            raise ValueError("kubernetes.dev needs nodes.time_slicing: the sandbox runs on a time-sliced slice")
        if self.dev.namespace == self.namespace:
            raise ValueError("kubernetes.dev.namespace must differ from kubernetes.namespace")
        ways = self.nodes.time_slicing.replicas
        if self.dev.gpu_memory_utilization > 1 / ways + 1e-9:
            raise ValueError(
                f"kubernetes.dev.gpu_memory_utilization {self.dev.gpu_memory_utilization} exceeds 1/{ways}: "
                "time-sliced pods share the slice's memory"
            )
        return self

    def group(self, role: str) -> GroupConfig:
        return getattr(self, role)
