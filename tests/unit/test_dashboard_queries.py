"""The dashboard's GPU panels and the rendered per-slice recording rules, evaluated by Prometheus itself
(`promtool test rules`, `promql_expr_test`) on synthetic series shaped like NVIDIA's DCGM exporter's on MIG: one
line per MIG slice, wherever it runs. The pdserve panels and rules are evaluated against a live stack by
tests/e2e/test_autoscaling.py; no GPU exists here."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.e2e.prometheus import dashboard_queries, needs_gpu, rule_groups

promtool = shutil.which("promtool")
SLICES = [  # node, GPU, MIG profile, GPU instance id, and per metric its value
    ("node-a", "0", "3g.40gb", "1", {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.75, "DCGM_FI_DEV_FB_USED": 30000,
                                     "DCGM_FI_DEV_FB_FREE": 10000}),
    ("node-a", "0", "1g.10gb", "9", {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.25, "DCGM_FI_DEV_FB_USED": 2500,
                                     "DCGM_FI_DEV_FB_FREE": 7500}),
    ("node-b", "0", "3g.40gb", "1", {"DCGM_FI_PROF_GR_ENGINE_ACTIVE": 0.5, "DCGM_FI_DEV_FB_USED": 12000,
                                     "DCGM_FI_DEV_FB_FREE": 28000}),
]
EXPECTED = {  # what each query or recorded series shows for a slice
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": lambda v: v["DCGM_FI_PROF_GR_ENGINE_ACTIVE"],
    "DCGM_FI_DEV_FB_USED": lambda v: v["DCGM_FI_DEV_FB_USED"],
    "pdserve:slice_gr_engine_active:avg": lambda v: v["DCGM_FI_PROF_GR_ENGINE_ACTIVE"],
    "pdserve:slice_fb_used:ratio": lambda v: v["DCGM_FI_DEV_FB_USED"] / (v["DCGM_FI_DEV_FB_USED"]
                                                                         + v["DCGM_FI_DEV_FB_FREE"]),
}


def gpu_queries() -> list[str]:
    return [expr for _, expr in dashboard_queries() if needs_gpu(expr)]


def gpu_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if needs_gpu(rule["expr"])]


def test_the_dashboard_and_the_rules_have_per_slice_gpu_series():
    assert sorted(next(m for m in EXPECTED if m in expr) for expr in gpu_queries()) == [
        "DCGM_FI_DEV_FB_USED", "DCGM_FI_PROF_GR_ENGINE_ACTIVE"]
    assert sorted(rule["record"] for rule in gpu_rules()) == [
        "pdserve:slice_fb_used:ratio", "pdserve:slice_gr_engine_active:avg"]


@pytest.mark.skipif(promtool is None, reason="promtool not installed: `scripts/install.sh cpu,test` installs "
                    "Debian's prometheus package when it runs as root with apt")
def test_gpu_panels_and_rules_show_each_mig_slice_on_its_own_line(tmp_path):
    series = []
    for node, gpu, profile, instance, values in SLICES:
        # what dcgm-exporter adds besides the slice: the device, the pod it is mapped to
        labels = (f'gpu="{gpu}",device="nvidia{gpu}",GPU_I_PROFILE="{profile}",GPU_I_ID="{instance}",'
                  f'Hostname="{node}",pod="pdserve-{node}",container="ray-worker"')
        series += [{"series": f"{metric}{{{labels}}}", "values": f"{value}x10"} for metric, value in values.items()]

    def case(expr: str, name: str, with_gpu: bool) -> dict:
        return {"expr": expr, "eval_time": "1m", "exp_samples": [
            {"labels": ("{" + (f'__name__="{name}",' if ":" in name else "") + (f'gpu="{gpu}",' if with_gpu else "")
                        + f'GPU_I_ID="{instance}",GPU_I_PROFILE="{profile}",Hostname="{node}"}}'),
             "value": EXPECTED[name](values)} for node, gpu, profile, instance, values in SLICES]}

    cases = [case(expr, next(m for m in EXPECTED if m in expr), False) for expr in gpu_queries()]
    cases += [case(rule["record"], rule["record"], True) for rule in gpu_rules()]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "slices", "rules": gpu_rules()}]}))
    (tmp_path / "panels.test.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": series, "promql_expr_test": cases}]}))
    run = subprocess.run([promtool, "test", "rules", "panels.test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
