"""The operator's status metrics render exactly the recorded statuses, and end with them."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connquota.operator import status_metrics

BODY = {
    "metadata": {"namespace": "team-a", "name": "md"},
    "spec": {"egressPoolRef": {"name": "pool"}, "exchange": "okx"},
}
LIMIT = {"limit": "concurrentConnections", "share": 10, "used": 7, "budget": 24, "slices": 9}
STATUS: dict[str, Any] = {
    "conditions": [
        {"type": "Ready", "status": "False", "reason": "Reconciling", "message": "m"},
        {"type": "CapacityExceeded", "status": "True", "reason": "StreamsUnserved", "message": "m"},
    ],
    "replicas": 2,
    "readyReplicas": 1,
    "planGeneration": 4,
    "streams": {"desired": 10, "planned": 8, "live": 6, "unserved": 2},
    "connections": {"planned": 3, "live": 2},
    "addresses": [{"key": "a0", "limits": [LIMIT], "quarantinedUntil": "2026-12-03T00:00:00Z"}],
    "accounts": [{"key": "acct", "limits": [LIMIT]}],
    "apiKeys": [{"key": "client-1", "limits": [LIMIT]}],
}


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    status_metrics.register(registry)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_recorded_quota_and_pool_render_as_their_status_says_and_end_when_forgotten() -> None:
    status_metrics.record_quota(BODY, STATUS)
    status_metrics.record_pool(
        "pool",
        {
            "conditions": [{"type": "Ready", "status": "True"}],
            "quotas": 3,
            "budgets": [
                {
                    "address": "a0",
                    "domain": "okx",
                    "limit": "concurrentConnections",
                    "budget": 24,
                    "effectiveBudget": 18,
                    "holders": [{"quota": "team-a/md", "share": 10, "used": 7}, {"share": 4}],
                }
            ],
        },
    )
    try:
        got = scrape()
    finally:
        status_metrics.forget_quota("team-a/md")
        status_metrics.forget_pool("pool")
    who = {("namespace", "team-a"), ("quota", "md")}

    def q(name: str, **labels: str) -> float:
        return got[(name, frozenset(who | set(labels.items())))]

    assert q("connquota_quota_condition", condition="Ready") == 0.0
    assert q("connquota_quota_condition", condition="CapacityExceeded") == 1.0
    # Conditions the quota does not carry have no series (the alerts test `== 1`/`== 0`).
    assert not any(
        name == "connquota_quota_condition" and ("condition", "Stalled") in labels
        for name, labels in got
    )
    assert q("connquota_quota_streams", state="unserved") == 2.0
    assert q("connquota_quota_connections", state="live") == 2.0
    assert q("connquota_quota_replicas", state="ready") == 1.0
    assert q("connquota_quota_plan_generation") == 4.0
    per_limit = {"pool": "pool", "exchange": "okx", "limit": "concurrentConnections"}
    for scope, key in (("ip", "a0"), ("account", "acct"), ("apiKey", "client-1")):
        labels = {**per_limit, "scope": scope, "key": key}
        assert q("connquota_quota_limit_used", **labels) == 7.0
        assert q("connquota_quota_limit_slices", **labels) == 9.0
        assert q("connquota_quota_limit_share", **labels) == 10.0
        assert q("connquota_quota_limit_budget", **labels) == 24.0
        # Not lowered by adaptive budgets: the effective budget is the budget.
        assert q("connquota_quota_limit_budget_effective", **labels) == 24.0
    assert q("connquota_quota_quarantined", scope="ip", key="a0") == 1.0
    budget = frozenset(
        {("pool", "pool"), ("address", "a0"), ("domain", "okx"), ("limit", "concurrentConnections")}
    )
    assert got[("connquota_pool_budget", budget)] == 24.0
    assert got[("connquota_pool_budget_effective", budget)] == 18.0
    assert got[("connquota_pool_budget_shared", budget)] == 14.0
    assert got[("connquota_pool_budget_used", budget)] == 7.0
    assert got[("connquota_pool_quotas", frozenset({("pool", "pool")}))] == 3.0

    # Forgotten: no series left.
    assert not any("team-a" in dict(labels).values() for _, labels in scrape())


def test_a_refused_write_replaces_only_the_conditions() -> None:
    status_metrics.record_quota(BODY, STATUS)
    try:
        stalled = [{"type": "Stalled", "status": "True"}, {"type": "Ready", "status": "False"}]
        status_metrics.record_quota_conditions("team-a/md", stalled)
        got = scrape()
    finally:
        status_metrics.forget_quota("team-a/md")
    conditions = {
        dict(labels)["condition"]: v
        for (name, labels), v in got.items()
        if name == "connquota_quota_condition" and ("quota", "md") in labels
    }
    assert conditions == {"Stalled": 1.0, "Ready": 0.0}
    streams = (
        "connquota_quota_streams",
        frozenset({("namespace", "team-a"), ("quota", "md"), ("state", "live")}),
    )
    assert got[streams] == 6.0
