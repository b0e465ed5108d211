"""API keys reach the pods from a Secret, never as a literal in a shipped manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICES = sorted((ROOT / "deploy" / "kuberay").glob("*/rayservice.yaml"))


def containers(doc: dict):
    spec = doc["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
        yield from group["template"]["spec"]["containers"]


@pytest.mark.parametrize("path", RAYSERVICES, ids=lambda p: p.parent.name)
def test_api_keys_come_from_a_secret(path):
    doc = yaml.safe_load(path.read_text())
    env_name = doc["spec"]["serveConfigV2"] and yaml.safe_load(doc["spec"]["serveConfigV2"])[
        "applications"][0]["args"]["router"]["api_keys_env"]
    found = 0
    for container in containers(doc):
        for env in container.get("env", []):
            if env["name"] == env_name:
                found += 1
                assert "value" not in env and env["valueFrom"]["secretKeyRef"]["optional"] is True
    assert found >= 1, f"{path}: no container gets {env_name}"
