"""The Grafana dashboard and the alerting rules in docs/ name only metrics the exporter serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from csjd_core.prometheus import JOB_METRICS, PROCESS_METRICS, QUEUE_METRICS

DOCS = Path(__file__).resolve().parents[2] / "docs"
NAME = re.compile(r"\bcsjd_[a-z_]+")


def served() -> set[str]:
    names: set[str] = set()
    for table in (JOB_METRICS, QUEUE_METRICS, PROCESS_METRICS):
        for name, (kind, _, _) in table.items():
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


def test_the_dashboard_uses_only_served_metrics() -> None:
    dashboard = json.loads((DOCS / "grafana" / "csjd.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert len(exprs) >= 10 and used
    assert used <= served(), used - served()
    assert {"csjd_attempts_total", "csjd_queue_oldest_waiting_age_seconds"} <= used


def test_the_alert_rules_use_only_served_metrics() -> None:
    rules = yaml.safe_load((DOCS / "prometheus" / "csjd-alerts.yml").read_text())
    [group] = rules["groups"]
    alerts = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    assert {"CSJDDeadLettersGrowing", "CSJDOldestWaitingJobTooOld", "CSJDNoConsumers"} <= set(
        alerts
    )
    assert "CSJDWorkerDown" in alerts
    used = {name for expr in alerts.values() for name in NAME.findall(expr)}
    assert used and used <= served(), used - served()
