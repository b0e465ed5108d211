"""A real Prometheus server scraping a live stack, with the shipped recording and alert rules loaded, for the tests
that evaluate the dashboard's and the rules' queries as an operator's Prometheus would.

Prometheus comes with the test install (`scripts/install.sh ...,test`: Debian's `prometheus` package).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from serving.kv import free_port

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
RULES = MONITORING / "pdserve-alerts.yaml"
SLICE_RULES = ROOT / "deploy" / "kuberay" / "h100-mig" / "monitoring.yaml"
"""A rendered profile's monitoring objects: its PrometheusRule records per-MIG-slice and Serve queue series
(every profile renders the same rules, `serving.render.monitoring`)."""
SCRAPE_INTERVAL_S = 1
GRAFANA_VARIABLES = {"$model": ".+", "$__rate_interval": "2m"}
"""What Grafana puts in for the dashboard's variables: every model, a window that holds the test's traffic."""


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target of the shipped dashboard, with Grafana's variables filled."""
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def rule_groups() -> list[dict]:
    """The shipped alert and recording rules, then a rendered profile's, as a plain Prometheus rule file holds
    them."""
    groups = list(yaml.safe_load(RULES.read_text())["spec"]["groups"])
    for doc in yaml.safe_load_all(SLICE_RULES.read_text()):
        if doc and doc["kind"] == "PrometheusRule":
            groups += doc["spec"]["groups"]
    return groups


def needs_gpu(expr: str) -> bool:
    """Queries of NVIDIA's DCGM exporter: no series without a GPU (tests/unit/test_dashboard_queries.py feeds them
    synthetic MIG series)."""
    return re.search(r"\bDCGM_", expr) is not None


def installed() -> bool:
    return shutil.which("prometheus") is not None


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen

    def query(self, expr: str) -> list[dict]:
        reply = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=30).json()
        assert reply["status"] == "success", (expr, reply)
        return reply["data"]["result"]

    def finite_values(self, expr: str) -> list[float]:
        return [float(s["value"][1]) for s in self.query(expr) if math.isfinite(float(s["value"][1]))]

    def rules(self) -> list[dict]:
        reply = httpx.get(f"{self.url}/api/v1/rules", timeout=30).json()
        return [rule for group in reply["data"]["groups"] for rule in group["rules"]]

    def scrapes(self) -> int:
        """Successful scrapes of the stack so far."""
        return int(sum(self.finite_values('count_over_time(up{job="pdserve"}[1h])')))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


def start(metrics_port: int, work_dir: Path, timeout_s: float = 60) -> Prometheus:
    """Prometheus scraping `127.0.0.1:metrics_port` every second and evaluating the shipped rules every second."""
    assert installed(), "prometheus not installed: `scripts/install.sh cpu,test` installs Debian's prometheus package"
    (work_dir / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}))
    (work_dir / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [{"job_name": "pdserve", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}],
    }))
    port = free_port()
    with open(work_dir / "prometheus.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(["prometheus", f"--config.file={work_dir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work_dir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=work_dir)
    server = Prometheus(f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, (work_dir / "prometheus.log").read_text()[-2000:]
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"prometheus not ready within {timeout_s:.0f} s")
