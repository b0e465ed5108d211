"""Namespace and NetworkPolicy: the app's pods talk Ray, NIXL and UCX only among themselves."""

from __future__ import annotations

from typing import Any

from serving.config import PDServeConfig
from serving.render import names

# Baseline is enforced (the pods meet `restricted` too); restricted is only warned about so that a sidecar
# KubeRay injects on some versions cannot block the cluster.
POD_SECURITY_LABELS = {
    "pod-security.kubernetes.io/enforce": "baseline",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": names.metadata(name, labels={**labels, **POD_SECURITY_LABELS}),
    }


def network_policy(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    own = {"podSelector": {"matchLabels": names.selector(k)}}

    def from_namespace(ns: str) -> dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}

    def tcp(*ports: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": port} for port in ports]

    ingress = [
        # GCS, raylets, object manager, NIXL side channel and UCX data: between this RayService's pods only.
        {"from": [own]},
        # The OpenAI API: any pod in the cluster (an Ingress/Gateway controller publishes it further).
        {"from": [{"namespaceSelector": {}}], "ports": tcp(config.router.port)},
        # KubeRay submits and polls the Serve app through the dashboard.
        {"from": [from_namespace(k.operator_namespace)], "ports": tcp(names.DASHBOARD_PORT)},
    ]
    if k.monitoring.enabled:
        metrics = (config.router.metrics_port, names.AUTOSCALER_METRICS_PORT, names.DASHBOARD_METRICS_PORT)
        ingress.append({"from": [from_namespace(k.monitoring.prometheus_namespace)], "ports": tcp(*metrics)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": names.metadata(k.name, k.namespace, names.labels(k, "network-policy")),
        "spec": {"podSelector": {"matchLabels": names.selector(k)}, "policyTypes": ["Ingress"], "ingress": ingress},
    }
