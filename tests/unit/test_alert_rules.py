"""The shipped alert and recording rules, tested the way the Prometheus community does: `promtool test rules`
feeds synthetic series in and compares the alerts (and recorded values) that come out."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "pdserve-alerts.yaml"
RULE_TESTS = Path(__file__).with_name("alert_rules.test.yaml")

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    promtool is None, reason="promtool not installed: `scripts/install.sh cpu,test` installs Debian's prometheus "
    "package when it runs as root with apt; elsewhere install Prometheus 2.x")


def alert_names() -> set[str]:
    spec = yaml.safe_load(RULES.read_text())["spec"]
    return {rule["alert"] for group in spec["groups"] for rule in group["rules"] if "alert" in rule}


def rule_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as the plain rule file promtool reads, next to the tests that load it."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": spec["groups"]}))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    return tmp_path


def test_every_alert_has_a_firing_and_a_quiet_case():
    cases: dict[str, set[bool]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    assert {name: {True, False} for name in alert_names()} == cases


@needs_promtool
def test_rules_load_in_prometheus(tmp_path):
    run = subprocess.run([promtool, "check", "rules", str(rule_dir(tmp_path) / "rules.yaml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_alerts_fire_and_stay_quiet_as_their_tests_say(tmp_path):
    run = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=rule_dir(tmp_path),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
