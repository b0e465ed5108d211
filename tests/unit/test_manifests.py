"""Every manifest under deploy/ (found by glob) is valid, complete, and exactly what `pdserve render` writes."""

from __future__ import annotations

import copy

import pytest
import yaml

from serving.config import PDServeConfig
from serving.render import render
from tests.unit import kube_schema
from tests.unit.manifests import (
    KUBERAY,
    MANIFESTS,
    PROFILE_DIRS,
    ROOT,
    app_config,
    documents,
    kubernetes_configs,
    one,
    serve_app,
)

BUILTIN_GROUPS = {"v1", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}
needs_crds = pytest.mark.skipif(
    not kube_schema.CRD_DIR.is_dir(), reason=f"{kube_schema.CRD_DIR} is absent: the CRD schemas live in ../shared"
)


def _group(doc: dict) -> str:
    return doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else "v1"


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def test_every_profile_is_rendered_and_committed():
    assert MANIFESTS, "no manifests found under deploy/"
    assert {p.name for p in PROFILE_DIRS} == set(kubernetes_configs())
    assert {"h100-mig", "h200-mig", "a100-mig", "dev-timeslice", "hybrid"} <= set(kubernetes_configs())


@needs_crds
@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_custom_resources_validate_against_their_crd(path):
    for doc in documents(path):
        if _group(doc) in BUILTIN_GROUPS:
            continue
        assert kube_schema.is_custom(doc), f"{doc['apiVersion']} {doc['kind']}: no CRD for it in ../shared/crds"
        assert kube_schema.validate_custom(doc) == [], f"{path.name} {doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("path", MANIFESTS, ids=_ids(MANIFESTS))
def test_builtin_kinds_validate_against_kubernetes(path):
    pytest.importorskip(
        "kubernetes_validate", reason="built-in kinds need kubernetes-validate (pip install kubernetes-validate)"
    )
    for doc in documents(path):
        if _group(doc) in BUILTIN_GROUPS:
            assert kube_schema.validate_builtin(doc) == [], f"{path.name} {doc['kind']} {doc['metadata']['name']}"


@needs_crds
@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda rs: rs["spec"]["rayClusterConfig"].update(bogus=1), "Additional properties are not allowed ('bogus'"),
        (lambda rs: rs["spec"]["rayClusterConfig"]["autoscalerOptions"].update(version="v3"), "'v3' is not one of"),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas="1"),
            "'1' is not of type 'integer'",
        ),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
            "'groupName' is a required property",
        ),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["autoscalerOptions"].update(upscalingMode="Fast"),
            "'Fast' is not one of",
        ),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
                port=80
            ),
            "Additional properties are not allowed ('port'",
        ),
    ],
)
def test_crd_validation_is_strict(mutate, expected):
    rayservice = copy.deepcopy(one(KUBERAY / "h100-mig", "RayService"))
    mutate(rayservice)
    assert any(expected in err for err in kube_schema.validate_custom(rayservice)), kube_schema.validate_custom(
        rayservice
    )


@needs_crds
def test_required_fields_with_defaults_are_defaulted_first():
    pool = copy.deepcopy(one(KUBERAY / "h100-mig", "NodePool"))
    del pool["spec"]["disruption"]  # `disruption.consolidateAfter` is required, and defaulted to 0s
    assert kube_schema.validate_custom(pool) == []
    pool["spec"]["disruption"] = {"consolidationPolicy": "WhenEmpty"}  # no default of its own: still required
    assert any("'consolidateAfter' is a required property" in e for e in kube_schema.validate_custom(pool))


def _first_requirement(pool: dict) -> dict:
    return pool["spec"]["template"]["spec"]["requirements"][0]


@needs_crds
@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [
        ("EC2NodeClass", lambda nc: nc["spec"].update(instanceProfile="p"), "must specify exactly one of ['role', 'instanceProfile']"),
        ("EC2NodeClass", lambda nc: nc["spec"].update(amiSelectorTerms=[{"alias": "al2023@latest", "id": "ami-1"}]), "CEL"),
        ("EC2NodeClass", lambda nc: nc["spec"].update(amiFamily="Bottlerocket"), "CEL"),
        ("NodePool", lambda pool: _first_requirement(pool).update(operator="In", values=[]), "CEL"),
        ("NodePool", lambda pool: _first_requirement(pool).update(key="karpenter.sh/nodepool"), "CEL"),
        ("NodePool", lambda pool: pool["spec"]["template"]["metadata"].setdefault("labels", {}).update(
            {"karpenter.sh/nodepool": "x"}), "CEL"),
        ("RayService", lambda rs: rs["spec"]["rayClusterConfig"].update(managedBy="someone-else"), "CEL"),
    ],
)
def test_crd_cel_rules_are_evaluated(kind, mutate, expected):
    doc = copy.deepcopy(one(KUBERAY / "h100-mig", kind))
    assert kube_schema.validate_custom(doc) == []
    mutate(doc)
    errors = kube_schema.validate_custom(doc)
    assert any(expected in e for e in errors), errors


@needs_crds
def test_cel_transition_rules_are_left_to_updates():
    rule = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "immutable"}], "type": "string"}
    assert kube_schema.cel_violations(rule, "anything") == []
    rule["x-kubernetes-validations"].append({"rule": "self != 'anything'", "message": "no"})
    assert kube_schema.cel_violations(rule, "anything") == ["<root>: no (CEL: self != 'anything')"]


@pytest.mark.parametrize("profile_dir", PROFILE_DIRS, ids=[p.name for p in PROFILE_DIRS])
def test_kustomization_lists_every_file(profile_dir):
    (kustomization,) = documents(profile_dir / "kustomization.yaml")
    files = {p.name for p in profile_dir.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


@pytest.mark.parametrize("profile_dir", PROFILE_DIRS, ids=[p.name for p in PROFILE_DIRS])
def test_serve_config_validates_with_ray_and_pdserve(profile_dir):
    from ray.serve.schema import ServeDeploySchema

    rayservice = one(profile_dir, "RayService")
    ServeDeploySchema.model_validate(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    app = serve_app(rayservice)
    assert app["import_path"] == "serving.app:build_app"
    assert "kubernetes" not in app["args"]
    config = app_config(rayservice)
    assert config.device == "cuda" and config.kv_transfer.buffer_device == "cuda"
    assert config.mode == "disaggregated"


@pytest.mark.parametrize("profile_dir", PROFILE_DIRS, ids=[p.name for p in PROFILE_DIRS])
def test_serve_args_are_the_profile_config(profile_dir):
    source = PDServeConfig.from_file(kubernetes_configs()[profile_dir.name])
    args = app_config(one(profile_dir, "RayService"))
    assert args == source.model_copy(update={"kubernetes": None})


@pytest.mark.parametrize("name", sorted(kubernetes_configs()))
def test_committed_manifests_equal_a_fresh_render(name):
    config = PDServeConfig.from_file(kubernetes_configs()[name])
    fresh = render(config, f"configs/{name}.yaml")
    committed_dir = KUBERAY / name
    committed = {p.name: p.read_text() for p in committed_dir.glob("*.yaml")}
    assert sorted(committed) == sorted(fresh), (
        f"re-run: pdserve render --config configs/{name}.yaml --out {committed_dir.relative_to(ROOT)}/"
    )
    for file_name, text in fresh.items():
        assert committed[file_name] == text, (
            f"deploy/kuberay/{name}/{file_name} drifted from configs/{name}.yaml: "
            f"re-run pdserve render --config configs/{name}.yaml --out deploy/kuberay/{name}/"
        )
