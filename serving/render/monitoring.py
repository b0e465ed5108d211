"""Prometheus-operator objects: Ray's metrics per pod, the DCGM exporter per MIG slice, per-slice recording rules.

DCGM labels each MIG instance's series with `GPU_I_PROFILE` (e.g. `3g.40gb`) and `GPU_I_ID`; on MIG,
`DCGM_FI_DEV_GPU_UTIL` is not reported, so slice busyness is `DCGM_FI_PROF_GR_ENGINE_ACTIVE`.
"""

from __future__ import annotations

from typing import Any

from serving.config import PDServeConfig
from serving.render import names

SLICE = "Hostname, gpu, GPU_I_PROFILE, GPU_I_ID"


def monitors(config: PDServeConfig) -> list[dict[str, Any]]:
    k = config.kubernetes
    assert k is not None
    if not k.monitoring.enabled:
        return []
    return [_ray_pod_monitor(config), _dcgm_service_monitor(config), _slice_rules(config)]


def _meta(config: PDServeConfig, name: str) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    return names.metadata(name, k.namespace, {**names.labels(k, "monitoring"), **k.monitoring.prometheus_labels})


def _ray_pod_monitor(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    relabel = [
        {"sourceLabels": ["__meta_kubernetes_pod_label_ray_io_group"], "targetLabel": "ray_group"},
        {"sourceLabels": ["__meta_kubernetes_pod_label_pdserve_io_role"], "targetLabel": "pdserve_role"},
        {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"},
    ]
    endpoints = [
        {"port": port, "path": "/metrics", "interval": k.monitoring.scrape_interval, "relabelings": relabel}
        for port in ("metrics", "as-metrics", "dash-metrics")
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": _meta(config, f"{k.name}-ray"),
        "spec": {"selector": {"matchLabels": names.selector(k)}, "podMetricsEndpoints": endpoints},
    }


def _dcgm_service_monitor(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _meta(config, f"{k.name}-dcgm-exporter"),
        "spec": {
            "namespaceSelector": {"matchNames": [k.gpu_operator_namespace]},
            "selector": {"matchLabels": {"app": "nvidia-dcgm-exporter"}},
            "endpoints": [
                {
                    "port": "gpu-metrics",
                    "interval": k.monitoring.scrape_interval,
                    # The exporter labels each series with the pod/namespace using the GPU: keep those.
                    "honorLabels": True,
                    "relabelings": [{"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"}],
                }
            ],
        },
    }


def _slice_rules(config: PDServeConfig) -> dict[str, Any]:
    k = config.kubernetes
    assert k is not None
    rules = [
        {"record": "pdserve:slice_gr_engine_active:avg", "expr": f"avg by ({SLICE}) (DCGM_FI_PROF_GR_ENGINE_ACTIVE)"},
        {
            "record": "pdserve:slice_fb_used:ratio",
            "expr": f"sum by ({SLICE}) (DCGM_FI_DEV_FB_USED)"
            f" / sum by ({SLICE}) (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
        },
        {
            "record": "pdserve:serve_queued_requests:sum",
            "expr": "sum by (deployment) (ray_serve_deployment_queued_queries)",
        },
    ]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": _meta(config, f"{k.name}-slices"),
        "spec": {"groups": [{"name": "pdserve-slices", "interval": k.monitoring.scrape_interval, "rules": rules}]},
    }
