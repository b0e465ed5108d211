"""docs/metrics.md's tables say, for every exported pdserve metric, which dashboard panel or alert uses it: the
panel (alert) must exist and its query must read that metric."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.prometheus import dashboard_queries, rule_groups

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def documented_uses() -> dict[str, str]:
    """metric -> its "panel / alert" cell."""
    uses = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| `(ray_pdserve_[a-z0-9_]+)` \|", line)
        if match:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            uses[match[1]] = cells[3] if len(cells) >= 4 else ""
    return uses


def panel_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for title, expr in dashboard_queries():
        queries[title] = f"{queries.get(title, '')} {expr}"
    return queries


def alert_queries() -> dict[str, str]:
    """alert -> its expression with every recorded series it reads spelled out."""
    rules = [r for g in rule_groups() for r in g["rules"]]
    recorded = {r["record"]: r["expr"] for r in rules if "record" in r}
    out = {}
    for rule in rules:
        if "alert" in rule:
            expr = rule["expr"]
            for name, body in recorded.items():
                expr = expr.replace(name, f"({body})")
            out[rule["alert"]] = expr
    return out


def test_every_metric_names_a_panel_or_alert_that_reads_it():
    uses, panels, alerts = documented_uses(), panel_queries(), alert_queries()
    assert len(uses) >= 19, sorted(uses)
    wrong = []
    for metric, cell in uses.items():
        named = [("panel", t, panels.get(t)) for t in re.findall(r'panel "([^"]+)"', cell)]
        named += [("alert", a, alerts.get(a)) for a in re.findall(r"alert (\w+)", cell)]
        if not named:
            wrong.append(f"{metric}: no panel or alert named")
        for kind, name, query in named:
            if query is None:
                wrong.append(f"{metric}: no {kind} {name!r}")
            elif not re.search(rf"\b{metric}(_bucket|_sum|_count)?\b", query):
                wrong.append(f"{metric}: {kind} {name!r} does not read it")
    assert wrong == []


def test_every_pdserve_metric_a_panel_reads_is_documented():
    read = {re.sub(r"_(bucket|sum|count)$", "", m)
            for q in panel_queries().values() for m in re.findall(r"\bray_pdserve_[a-z0-9_]+", q)}
    assert read <= set(documented_uses()), read - set(documented_uses())
