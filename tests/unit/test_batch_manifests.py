"""deploy/kuberay/batch/: the Indexed Job, the merge Job and the KEDA ScaledJob are valid and agree with the CLI.

The ScaledJob is checked against the openAPIV3Schema of ../shared/crds/keda.sh_scaledjobs.yaml, made strict
(an object without x-kubernetes-preserve-unknown-fields accepts no unknown field); built-in kinds against the
Kubernetes schema (kubernetes-validate). The batch arguments embedded in the manifests are parsed by
`pdserve`'s own parser.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from serving.batch.cli import EXIT_USAGE, SHARD_COUNT_ENV
from serving.cli import parser
from tests.unit import kube_schema
from tests.unit.manifests import KUBERAY, documents

BATCH = KUBERAY / "batch"
SCALEDJOB_CRD = kube_schema.CRD_DIR / "keda.sh_scaledjobs.yaml"
needs_crds = pytest.mark.skipif(not SCALEDJOB_CRD.is_file(),
                                reason=f"{SCALEDJOB_CRD} is absent: the CRD schemas live in ../shared/crds")
SAMPLE_TASK = "--input /data/input/a.jsonl --output /data/results/a --shard-index 3 --shard-count 8"


def _one(path: Path, kind: str) -> dict:
    (doc,) = [d for d in documents(path) if d["kind"] == kind]
    return doc


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


JOB = _one(BATCH / "job.yaml", "Job")
MERGE_JOB = _one(BATCH / "merge" / "job.yaml", "Job")
SCALEDJOB = _one(BATCH / "keda" / "scaledjob.yaml", "ScaledJob")
BATCH_CONTAINER = JOB["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("folder", [BATCH, BATCH / "keda", BATCH / "merge"], ids=lambda p: str(p.relative_to(KUBERAY)))
def test_kustomization_lists_every_file(folder):
    (kustomization,) = documents(folder / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def test_job_is_indexed_and_retries_per_index():
    spec = JOB["spec"]
    assert spec["completionMode"] == "Indexed"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    assert spec["backoffLimitPerIndex"] >= 1 and 0 <= spec["maxFailedIndexes"] < spec["completions"]
    assert spec["podReplacementPolicy"] == "Failed"  # two live pods of one index would append to the same files
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy


def test_pod_failure_policy_matches_the_cli_exit_codes():
    rules = JOB["spec"]["podFailurePolicy"]["rules"]
    fail_job = [r for r in rules if r["action"] == "FailJob"]
    assert [r["onExitCodes"] for r in fail_job] == [{"containerName": BATCH_CONTAINER["name"], "operator": "In",
                                                     "values": [EXIT_USAGE]}]
    ignored = [c for r in rules if r["action"] == "Ignore" for c in r.get("onPodConditions", [])]
    assert {"type": "DisruptionTarget", "status": "True"} in ignored


def test_shard_count_env_equals_completions():
    assert _env(BATCH_CONTAINER)[SHARD_COUNT_ENV]["value"] == str(JOB["spec"]["completions"])


@pytest.mark.parametrize(("container", "subcommand"), [
    (BATCH_CONTAINER, "_run"),
    (MERGE_JOB["spec"]["template"]["spec"]["containers"][0], "_merge"),
])
def test_embedded_arguments_parse_with_pdserve(container, subcommand):
    assert container["command"][0] == "pdserve"
    args = parser().parse_args(container["command"][1:] + container["args"])
    assert args.func.__name__ == subcommand
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert all(any(str(p).startswith(m + "/") for m in mounts) for p in (args.input, args.output))


def test_scaledjob_task_parses_with_pdserve():
    script = SCALEDJOB["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["args"][0]
    (exec_line,) = [line.strip() for line in script.splitlines() if line.strip().startswith("exec pdserve batch")]
    argv = shlex.split(exec_line.replace("$task", SAMPLE_TASK))[2:]
    args = parser().parse_args(argv)
    assert (args.func.__name__, args.shard_index, args.shard_count) == ("_run", 3, 8)


def _rayservices() -> dict[tuple[str, str], int]:
    """(namespace, name) -> Serve HTTP port, for every RayService of the rendered profiles."""
    out = {}
    for path in KUBERAY.glob("*/rayservice.yaml"):
        for doc in documents(path):
            if doc["kind"] == "RayService":
                port = yaml.safe_load(doc["spec"]["serveConfigV2"])["http_options"]["port"]
                out[(doc["metadata"]["namespace"], doc["metadata"]["name"])] = port
    return out


@pytest.mark.parametrize("pod_spec", [JOB["spec"]["template"]["spec"],
                                      SCALEDJOB["spec"]["jobTargetRef"]["template"]["spec"]], ids=["job", "scaledjob"])
def test_endpoint_is_the_serve_service_of_a_shipped_rayservice(pod_spec):
    container = next(c for c in pod_spec["containers"] if c["name"] == "batch")
    url = _env(container)["PDSERVE_ENDPOINT"]["value"]
    host, port = url.removeprefix("http://").split(":")
    service, namespace, suffix = host.split(".")
    assert suffix == "svc" and service.endswith("-serve-svc")  # KubeRay names it <rayservice>-serve-svc
    rayservices = _rayservices()
    assert rayservices, "no RayService under deploy/kuberay/*/rayservice.yaml"
    assert rayservices.get((namespace, service.removesuffix("-serve-svc"))) == int(port)


@pytest.mark.parametrize("doc", [JOB, MERGE_JOB, SCALEDJOB], ids=["job", "merge", "scaledjob"])
def test_everything_uses_the_batch_volume(doc):
    pvc = _one(BATCH / "pvc.yaml", "PersistentVolumeClaim")
    spec = doc["spec"].get("jobTargetRef", doc["spec"])["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]] and "ReadWriteMany" in pvc["spec"]["accessModes"]
    assert doc["metadata"]["namespace"] == pvc["metadata"]["namespace"]


@needs_crds
def test_scaledjob_validates_against_the_keda_crd():
    assert kube_schema.validate_custom(SCALEDJOB) == []


@needs_crds
@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda sj: sj["spec"].update(bogus=1), "Additional properties are not allowed ('bogus'"),
    (lambda sj: sj["spec"]["scalingStrategy"].update(strategy="fastest"), "'fastest' is not one of"),
    (lambda sj: sj["spec"]["triggers"][0].pop("type"), "'type' is a required property"),
    (lambda sj: sj["spec"]["jobTargetRef"].update(completionMode=3), "3 is not of type 'string'"),
    (lambda sj: sj["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0].update(port=80),
     "Additional properties are not allowed ('port'"),
    (lambda sj: sj["spec"]["triggers"][0]["metadata"].update(listLength=1), "1 is not of type 'string'"),
])
def test_scaledjob_validation_is_strict(mutate, expected):
    scaledjob = copy.deepcopy(SCALEDJOB)
    mutate(scaledjob)
    errors = kube_schema.validate_custom(scaledjob)
    assert any(expected in e for e in errors), errors


@pytest.mark.parametrize("doc", [
    JOB, MERGE_JOB, _one(BATCH / "pvc.yaml", "PersistentVolumeClaim"),
    {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "scaledjob-target"},
     "spec": SCALEDJOB["spec"]["jobTargetRef"]},
], ids=["job", "merge", "pvc", "scaledjob-jobTargetRef"])
def test_builtin_kinds_validate_against_kubernetes(doc):
    pytest.importorskip("kubernetes_validate", reason="built-in kinds need kubernetes-validate")
    assert kube_schema.validate_builtin(doc) == []


@needs_crds
@pytest.mark.parametrize("crd", ["ray.io_rayservices.yaml", "ray.io_rayclusters.yaml"])
def test_ray_crds_have_no_scale_subresource(crd):
    """Why a KEDA ScaledObject cannot drive a RayService (deploy/kuberay/batch/README.md): nothing to scale."""
    for doc in yaml.safe_load_all((kube_schema.CRD_DIR / crd).read_text()):
        for version in doc["spec"]["versions"]:
            assert "scale" not in (version.get("subresources") or {})
