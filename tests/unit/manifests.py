"""The shipped manifests, found by glob, and small pure models of what KubeRay and the scheduler do with them."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from serving.config import PDServeConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
MANIFESTS = sorted(p for p in DEPLOY.glob("**/*.yaml") if p.name != "kustomization.yaml")
PROFILE_DIRS = sorted(p.parent for p in KUBERAY.glob("*/kustomization.yaml"))
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@cache
def documents(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def profile_docs(profile_dir: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(profile_dir.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in documents(path)]


def one(profile_dir: Path, kind: str) -> dict[str, Any]:
    found = [doc for doc in profile_docs(profile_dir) if doc["kind"] == kind]
    assert len(found) == 1, f"{profile_dir.name}: expected one {kind}, found {len(found)}"
    return found[0]


def all_of(profile_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in profile_docs(profile_dir) if doc["kind"] == kind]


def kubernetes_configs() -> dict[str, Path]:
    """Profile name -> configs/<name>.yaml, for every config that has a kubernetes section."""
    out = {}
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if (yaml.safe_load(path.read_text()) or {}).get("kubernetes"):
            out[path.stem] = path
    return out


def serve_app(rayservice: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return app


def app_config(rayservice: dict[str, Any]) -> PDServeConfig:
    return PDServeConfig.model_validate(serve_app(rayservice)["args"])


# --- KubeRay's operator-side rules (ray-operator/controllers/ray/utils/validation.go), ported ---------------

RAY_START_RESOURCE_KEYS = ("num-cpus", "num-gpus", "memory", "resources")


def kuberay_errors(rayservice: dict[str, Any]) -> list[str]:
    errors = []
    name = rayservice["metadata"]["name"]
    if len(name) > 47:
        errors.append("RayService name should be no more than 47 characters")
    if not DNS1035.match(name):
        errors.append("RayService name should be a valid DNS1035 label")
    spec = rayservice["spec"]["rayClusterConfig"]
    head = spec["headGroupSpec"]
    if not head["template"]["spec"].get("containers"):
        errors.append("headGroupSpec should have at least one container")
    groups = [("Head", head)] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    for group_name, group in groups:
        params = group.get("rayStartParams") or {}
        if any(params.get(key) for key in RAY_START_RESOURCE_KEYS) and group.get("resources"):
            errors.append(f"resource fields set in both rayStartParams and Resources for {group_name} group")
        if "labels" in params:
            errors.append(f"rayStartParams['labels'] is not supported for {group_name} group")
    workers = spec.get("workerGroupSpecs", [])
    if len({g["groupName"] for g in workers}) != len(workers):
        errors.append("worker group names must be unique")
    for group in workers:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if not group["template"]["spec"].get("containers"):
            errors.append("workerGroupSpec should have at least one container")
        if low > high:
            errors.append(f"worker group {group['groupName']}: minReplicas > maxReplicas")
        if "replicas" in group and not low <= group["replicas"] <= high:
            errors.append(f"worker group {group['groupName']}: replicas outside [minReplicas, maxReplicas]")
    autoscaler = spec.get("autoscalerOptions") or {}
    if spec.get("enableInTreeAutoscaling") and autoscaler.get("version") == "v2":
        for group_name, group in groups:
            if group["template"]["spec"].get("restartPolicy", "Never") != "Never":
                errors.append(f"restartPolicy for {group_name} should be Never or unset when using autoscaler V2")
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0].get("env", [])}
    if autoscaler.get("version") and "RAY_enable_autoscaler_v2" in head_env:
        errors.append("both .spec.autoscalerOptions.version and RAY_enable_autoscaler_v2 are set")
    return errors


# --- Ray placement: what each worker group offers, what each Serve deployment asks for --------------------


def offered(group: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in (group.get("resources") or {}).items()}


def fits(request: dict[str, float], offer: dict[str, float]) -> bool:
    return all(offer.get(name, 0.0) >= amount for name, amount in request.items() if amount)


# --- Kubernetes scheduling and admission, reduced to what the profiles rely on ----------------------------


def tolerates(pod: dict[str, Any], taint: dict[str, str]) -> bool:
    for tol in pod.get("tolerations", []):
        if tol.get("effect") not in (None, "", taint["effect"]):
            continue
        if tol.get("operator", "Equal") == "Exists" and tol.get("key") in (None, "", taint["key"]):
            return True
        if tol.get("key") == taint["key"] and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def extended_requests(pod: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for container in pod["containers"]:
        for name, amount in (container.get("resources", {}).get("requests") or {}).items():
            if "/" in name:
                out[name] = out.get(name, 0) + int(amount)
    return out


def schedulable(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    """Taints tolerated, nodeSelector matched, every extended resource (GPU, slice) offered by the node."""
    if not all(tolerates(pod, t) for t in node["taints"] if t["effect"] in ("NoSchedule", "NoExecute")):
        return False
    if any(node["labels"].get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    return all(node["capacity"].get(name, 0) >= amount for name, amount in extended_requests(pod).items())


def admitted(pod: dict[str, Any], quotas: list[dict[str, Any]]) -> bool:
    """ResourceQuota admission for extended resources: a request above a `requests.<name>` hard limit is refused."""
    for quota in quotas:
        hard = quota["spec"]["hard"]
        for name, amount in extended_requests(pod).items():
            limit = hard.get(f"requests.{name}")
            if limit is not None and amount > int(limit):
                return False
    return True


def gpu_nodes(profile_dir: Path) -> dict[str, Any]:
    """The node a profile's NodePool makes, with the capacity its NodeOverlay declares (or plain GPUs)."""
    pool = one(profile_dir, "NodePool")["spec"]["template"]
    overlays = all_of(profile_dir, "NodeOverlay")
    capacity = {k: int(v) for k, v in overlays[0]["spec"]["capacity"].items()} if overlays else {}
    return {"labels": pool["metadata"]["labels"], "taints": pool["spec"]["taints"], "capacity": capacity}


CPU_NODE = {"labels": {}, "taints": [], "capacity": {}}
