"""`pdserve status`: the report from RayService/RayCluster objects, and a clear error without a kubeconfig."""

from __future__ import annotations

from argparse import Namespace

import pytest

from serving import status
from tests.unit.manifests import ROOT

SERVICE = {
    "metadata": {"name": "pdserve-h100", "namespace": "pdserve"},
    "status": {
        "serviceStatus": "Running",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"},
            {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"},
        ],
        "activeServiceStatus": {
            "rayClusterName": "pdserve-h100-x7k2p",
            "applicationStatuses": {
                "pdserve": {
                    "status": "RUNNING",
                    "serveDeploymentStatuses": {
                        "PrefillServer": {"status": "HEALTHY"},
                        "DecodeServer": {"status": "UPSCALING", "message": "Upscaling from 2 to 3 replicas."},
                        "PDRouter": {"status": "HEALTHY"},
                    },
                }
            },
        },
    },
}
CLUSTER = {
    "metadata": {"name": "pdserve-h100-x7k2p"},
    "spec": {
        "workerGroupSpecs": [
            {"groupName": "prefill", "replicas": 1, "minReplicas": 1, "maxReplicas": 8},
            {"groupName": "decode", "replicas": 3, "minReplicas": 2, "maxReplicas": 16},
        ]
    },
    "status": {"state": "ready"},
}


def pod(group: str, ready: bool) -> dict:
    return {
        "metadata": {"labels": {"ray.io/group": group}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_summary_shows_conditions_app_and_groups():
    pods = [pod("prefill", True), pod("decode", True), pod("decode", True), pod("decode", False)]
    text = "\n".join(status.summarize(SERVICE, CLUSTER, pods))
    assert "RayService pdserve/pdserve-h100: Running" in text
    assert "condition Ready=True (NonZeroServeEndpoints)" in text
    assert "DecodeServer: UPSCALING - Upscaling from 2 to 3 replicas." in text
    assert "group prefill: 1/1 pods ready, desired 1 (min 1, max 8)" in text
    assert "group decode: 2/3 pods ready, desired 3 (min 2, max 16)" in text


def test_summary_before_a_cluster_exists():
    lines = status.summarize({"metadata": {"name": "x", "namespace": "y"}}, None, [])
    assert lines == ["RayService y/x: unknown", "  no active RayCluster yet"]


def test_missing_kubeconfig_is_a_clear_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("kubernetes", reason="pdserve status needs the kubernetes client (pip install kubernetes)")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(status.StatusError, match="no kubeconfig found"):
        status.connect()
    code = status.status_command(Namespace(config=str(ROOT / "configs" / "h100-mig.yaml"), namespace=None, name=None))
    assert code == 2 and "no kubeconfig found" in capsys.readouterr().err
