"""The alerts and the Grafana dashboard query only metrics that connquota exports.

A real gateway (against the mock exchange) and the operator's own registry (with a recorded
quota and pool status) are scraped; every `connquota_*` name in the chart's alert rules and
dashboard must be one of the sample names they expose. Renaming a metric without the rules and
the dashboard fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from conftest import base_plan, shrunk
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connquota.operator import metrics as operator_metrics
from connquota.operator import status_metrics

REPO = Path(__file__).resolve().parents[3]
RULES = REPO / "charts/connquota/files/prometheus/rules.yaml"
DASHBOARD = REPO / "charts/connquota/files/grafana/connquota.json"
NAME = re.compile(r"\bconnquota_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exposed_names(text: str) -> set[str]:
    """Sample names a scrape exposes, counting families that have no samples right now."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    def walk(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["expr"]] if isinstance(node.get("expr"), str) else []
            if isinstance(node.get("definition"), str):
                found.append(node["definition"])
            return found + [e for v in node.values() for e in walk(v)]
        if isinstance(node, list):
            return [e for v in node for e in walk(v)]
        return []

    return walk(json.loads(DASHBOARD.read_text()))


async def test_every_panel_and_alert_queries_an_exported_metric(harness: Any) -> None:
    await harness.start_mock("binance-spot", shrunk("binance-spot", connectionAttempts=(10, 40.0)))
    plan, names = base_plan(harness, "binance-spot", conns=1)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        gateway_text = await resp.text()

    # The operator's registry, with one quota and one pool status recorded.
    assert operator_metrics.RECONCILES is not None  # imported: registered in REGISTRY
    limit = {"limit": "concurrentConnections", "share": 5, "used": 1, "budget": 10, "slices": 5}
    quota_status = {
        "conditions": [{"type": "Ready", "status": "True"}],
        "streams": {"desired": 2, "planned": 2, "live": 2, "unserved": 0},
        "connections": {"planned": 1, "live": 1},
        "addresses": [{"key": "a0", "limits": [limit], "quarantinedUntil": "2026-01-01T00:00:00Z"}],
        "accounts": [{"key": "acct", "limits": [limit]}],
    }
    body = {
        "metadata": {"namespace": "names", "name": "q"},
        "spec": {"egressPoolRef": {"name": "p"}, "exchange": "binance-spot"},
    }
    status_metrics.record_quota(body, quota_status)
    status_metrics.record_pool(
        "names-p",
        {
            "conditions": [{"type": "Ready", "status": "True"}],
            "quotas": 1,
            "budgets": [
                {
                    "address": "a0",
                    "domain": "binance",
                    "limit": "concurrentConnections",
                    "budget": 10,
                    "holders": [{"quota": "names/q", "share": 5, "used": 1}],
                }
            ],
        },
    )
    try:
        operator_text = generate_latest(REGISTRY).decode()
    finally:
        status_metrics.forget_quota("names/q")
        status_metrics.forget_pool("names-p")

    exported = exposed_names(gateway_text) | exposed_names(operator_text)
    queried = {
        (where, name)
        for where, exprs in (("rules.yaml", rule_exprs()), ("dashboard", dashboard_exprs()))
        for expr in exprs
        for name in NAME.findall(expr)
    }
    assert len(queried) > 20
    missing = sorted((where, name) for where, name in queried if name not in exported)
    assert missing == [], f"queried but not exported: {missing}"
    # Every metric the dashboard and the alerts rely on most is among them.
    needed = {
        "connquota_quota_condition",
        "connquota_pool_budget_used",
        "connquota_quota_limit_used",
        "connquota_gateway_delivery_seconds_bucket",
        "connquota_gateway_lease_last_renewal_timestamp_seconds",
        "connquota_gateway_rate_limited_total",
    }
    assert needed <= {name for _, name in queried}
