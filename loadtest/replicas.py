"""Replica counts per pool, read from the Prometheus endpoint Ray exports (the one `pdserve up` prints).

Ray Serve's controller exports `ray_serve_deployment_replica_healthy` (one 0/1 series per replica, or one
count per deployment) and, for autoscaling deployments, `ray_serve_autoscaling_target_replicas`; summed per
deployment they give the pool's healthy and target replicas. Ray refreshes them every few seconds, so the plot
lags the cluster by about that much.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HEALTHY = "ray_serve_deployment_replica_healthy"
TARGET = "ray_serve_autoscaling_target_replicas"
POOLS = {"PrefillServer": "prefill", "DecodeServer": "decode", "ColocatedServer": "colocated", "PDRouter": "router"}


def replica_counts(text: str) -> dict[str, dict[str, float]]:
    """{pool: {"healthy": n, "target": m}} from a Prometheus text exposition."""
    counts: dict[str, dict[str, float]] = defaultdict(dict)
    # Only our two metrics: Ray's page is long, and one line the parser dislikes must not cost the samples.
    wanted = "\n".join(line for line in text.splitlines() if HEALTHY in line or TARGET in line)
    for family in text_string_to_metric_families(wanted):
        kind = {HEALTHY: "healthy", TARGET: "target"}.get(family.name)
        if kind is None:
            continue
        for sample in family.samples:
            deployment = sample.labels.get("deployment")
            if deployment:
                pool = POOLS.get(deployment, deployment)
                counts[pool][kind] = counts[pool].get(kind, 0.0) + sample.value
    return dict(counts)


def read_samples(path: Path) -> list[dict]:
    """replicas.jsonl: one {"offset_s": t, "pools": {pool: {"healthy": n, "target": m}}} per sample."""
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
