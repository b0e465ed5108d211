"""`pdserve status`: a profile's RayService as the cluster sees it (conditions, Serve app, worker groups).

Uses the official `kubernetes` client (`pip install kubernetes`): `CustomObjectsApi` for the RayService and
its RayCluster, `CoreV1Api` for the worker pods. `summarize` is pure, so the report is tested without a cluster.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any

from serving.config import PDServeConfig

GROUP, VERSION = "ray.io", "v1"


class StatusError(RuntimeError):
    pass


def connect() -> tuple[Any, Any]:
    """CustomObjectsApi and CoreV1Api from the kubeconfig, or the in-cluster service account."""
    try:
        from kubernetes import client
        from kubernetes import config as kube_config
        from kubernetes.config.config_exception import ConfigException
    except ImportError as exc:
        raise StatusError("the kubernetes client is not installed: pip install kubernetes") from exc
    try:
        kube_config.load_kube_config()
    except (ConfigException, FileNotFoundError):
        try:
            kube_config.load_incluster_config()
        except ConfigException:
            raise StatusError(
                "no kubeconfig found: set KUBECONFIG or create ~/.kube/config (e.g. `aws eks update-kubeconfig`), "
                "or run inside the cluster"
            ) from None
    return client.CustomObjectsApi(), client.CoreV1Api()


def fetch(custom: Any, core: Any, namespace: str, name: str) -> tuple[dict, dict | None, list[dict]]:
    """The RayService, its active RayCluster (None before one exists) and that cluster's pods."""
    service = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "rayservices", name)
    cluster_name = (service.get("status") or {}).get("activeServiceStatus", {}).get("rayClusterName")
    if not cluster_name:
        return service, None, []
    cluster = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "rayclusters", cluster_name)
    pods = core.list_namespaced_pod(namespace, label_selector=f"ray.io/cluster={cluster_name}")
    return service, cluster, [pod.to_dict() for pod in pods.items]


def _ready(pod: dict) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def summarize(service: dict, cluster: dict | None, pods: list[dict]) -> list[str]:
    """Human-readable lines: RayService conditions, Serve app and deployment states, worker group sizes."""
    status = service.get("status") or {}
    name = service["metadata"]["name"]
    lines = [
        f"RayService {service['metadata'].get('namespace', '')}/{name}: {status.get('serviceStatus') or 'unknown'}"
    ]
    for cond in status.get("conditions") or []:
        detail = f" ({cond['reason']})" if cond.get("reason") else ""
        lines.append(f"  condition {cond['type']}={cond['status']}{detail}")
    active = status.get("activeServiceStatus") or {}
    for app, app_status in (active.get("applicationStatuses") or {}).items():
        lines.append(f"  app {app}: {app_status.get('status', 'unknown')}")
        for deployment, dep in (app_status.get("serveDeploymentStatuses") or {}).items():
            message = f" - {dep['message']}" if dep.get("message") else ""
            lines.append(f"    {deployment}: {dep.get('status', 'unknown')}{message}")
    if status.get("pendingServiceStatus", {}).get("rayClusterName"):
        lines.append(f"  upgrade pending on RayCluster {status['pendingServiceStatus']['rayClusterName']}")
    if cluster is None:
        lines.append("  no active RayCluster yet")
        return lines
    labels = [((p.get("metadata") or {}).get("labels") or {}).get("ray.io/group") for p in pods]
    ready = Counter(g for g, p in zip(labels, pods, strict=True) if _ready(p))
    total = Counter(labels)
    lines.append(f"  RayCluster {cluster['metadata']['name']}: {(cluster.get('status') or {}).get('state', 'unknown')}")
    for group in cluster["spec"].get("workerGroupSpecs", []):
        g = group["groupName"]
        lines.append(
            f"    group {g}: {ready[g]}/{total[g]} pods ready, desired {group.get('replicas', 0)} "
            f"(min {group.get('minReplicas', 0)}, max {group.get('maxReplicas', 0)})"
        )
    return lines


def status_command(args: argparse.Namespace) -> int:
    namespace, name = args.namespace, args.name
    if args.config:
        k = PDServeConfig.from_file(args.config).kubernetes
        if k is None:
            print(f"pdserve status: {args.config} has no kubernetes section", file=sys.stderr)
            return 2
        namespace, name = namespace or k.namespace, name or k.name
    if not (namespace and name):
        print("pdserve status: give --config, or --namespace and --name", file=sys.stderr)
        return 2
    try:
        custom, core = connect()
        service, cluster, pods = fetch(custom, core, namespace, name)
    except StatusError as exc:
        print(f"pdserve status: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the client's ApiException, connection errors: report them, not a traceback
        print(f"pdserve status: cannot read RayService {namespace}/{name}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summarize(service, cluster, pods)))
    return 0
