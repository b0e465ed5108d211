"""GPU nodes: how the GPU operator partitions and shares them, and how Karpenter provisions them.

- mig-parted ConfigMap: the layout, selected on each node by the label `nvidia.com/mig.config=<name>`.
- device-plugin ConfigMap: `sharing.timeSlicing` for the shared GPU or slice (renamed `<resource>.shared`),
  selected by `nvidia.com/device-plugin.config=<name>`.
- NodePool + EC2NodeClass: GPU instances with those labels, the GPU taint and the pool's own taint.
- NodeOverlay: Karpenter cannot know that a node will advertise `nvidia.com/mig-*` (or `.shared`) resources
  once the GPU operator is done, so without it a pending slice request never triggers a node.
"""

from __future__ import annotations

from typing import Any

from serving import mig
from serving.deploy_config import KubernetesConfig
from serving.render import names
from serving.render.yamltext import dump


def gpu_operator_configs(k: KubernetesConfig) -> list[dict[str, Any]]:
    docs = []
    if k.nodes.mig_layout:
        docs.append(_mig_parted_configmap(k))
    if k.nodes.time_slicing is not None:
        docs.append(_device_plugin_configmap(k))
    return docs


def _mig_parted_configmap(k: KubernetesConfig) -> dict[str, Any]:
    config = {
        "version": "v1",
        "mig-configs": {
            "all-disabled": [{"devices": "all", "mig-enabled": False}],
            k.name: [mig.mig_parted_entry(k.nodes.gpu, k.nodes.mig_layout)],
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(names.MIG_PARTED_CONFIGMAP, k.gpu_operator_namespace, names.labels(k, "mig-config")),
        "data": {"config.yaml": dump(config)},
    }


def _device_plugin_configmap(k: KubernetesConfig) -> dict[str, Any]:
    shared = k.nodes.time_slicing
    assert shared is not None
    resource = f"nvidia.com/mig-{shared.mig_profile}" if shared.mig_profile else "nvidia.com/gpu"
    config = {
        "version": "v1",
        "flags": {"migStrategy": "mixed" if k.nodes.mig_layout else "none"},
        "sharing": {
            "timeSlicing": {
                # `.shared` names keep a request for a time-sliced GPU from ever being a dedicated one.
                "renameByDefault": True,
                "failRequestsGreaterThanOne": True,
                "resources": [{"name": resource, "replicas": shared.replicas}],
            }
        },
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": names.metadata(
            names.DEVICE_PLUGIN_CONFIGMAP, k.gpu_operator_namespace, names.labels(k, "device-plugin-config")
        ),
        "data": {k.name: dump(config)},
    }


def karpenter(k: KubernetesConfig) -> list[dict[str, Any]]:
    docs = [_ec2_node_class(k), _node_pool(k)]
    capacity = names.node_capacity(k)
    if set(capacity) != {"nvidia.com/gpu"}:
        docs.append(_node_overlay(k, capacity))
    return docs


def _node_pool(k: KubernetesConfig) -> dict[str, Any]:
    nodes = k.nodes
    requirements = [
        {
            "key": "karpenter.k8s.aws/instance-gpu-name",
            "operator": "In",
            "values": [mig.GPUS[nodes.gpu].karpenter_gpu_name],
        },
        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": list(nodes.instance_types)},
        {"key": "karpenter.sh/capacity-type", "operator": "In", "values": list(nodes.capacity_types)},
        {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
    ]
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": names.metadata(k.name, labels=names.labels(k, "nodepool")),
        "spec": {
            "template": {
                "metadata": {"labels": names.node_labels(k)},
                "spec": {
                    "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": k.name},
                    "requirements": requirements,
                    "taints": [dict(names.GPU_TAINT), names.pool_taint(k)],
                    "expireAfter": nodes.expire_after,
                },
            },
            # Only empty GPU nodes go: Ray's autoscaler drains workers first, and Ray pods are do-not-disrupt.
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": nodes.consolidate_after},
            "limits": {"nodes": nodes.max_nodes},
        },
    }


def _ec2_node_class(k: KubernetesConfig) -> dict[str, Any]:
    nodes = k.nodes
    discovery = [{"tags": {"karpenter.sh/discovery": nodes.cluster_name}}]
    return {
        "apiVersion": "karpenter.k8s.aws/v1",
        "kind": "EC2NodeClass",
        "metadata": names.metadata(k.name, labels=names.labels(k, "nodeclass")),
        "spec": {
            "role": nodes.node_role,
            "amiSelectorTerms": [{"alias": nodes.ami_alias}],
            "subnetSelectorTerms": discovery,
            "securityGroupSelectorTerms": discovery,
            # Local NVMe (p4d/p5/p5en/g6) as RAID0 for images and the model cache in pods' ephemeral storage.
            "instanceStorePolicy": "RAID0",
            "blockDeviceMappings": [
                {
                    "deviceName": "/dev/xvda",
                    "ebs": {
                        "volumeSize": nodes.root_volume,
                        "volumeType": "gp3",
                        "encrypted": True,
                        "deleteOnTermination": True,
                    },
                }
            ],
            "metadataOptions": {"httpEndpoint": "enabled", "httpPutResponseHopLimit": 1, "httpTokens": "required"},
            "tags": {"pdserve.io/pool": k.name},
        },
    }


def _node_overlay(k: KubernetesConfig, capacity: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1alpha1",
        "kind": "NodeOverlay",
        "metadata": names.metadata(k.name, labels=names.labels(k, "nodeoverlay")),
        "spec": {
            "requirements": [{"key": "karpenter.sh/nodepool", "operator": "In", "values": [k.name]}],
            "capacity": {name: str(count) for name, count in capacity.items()},
        },
    }
