"""Quota and pool status as Prometheus metrics: what the operator last computed, read at scrape.

The operator's status of every quota and pool is the single source: each status the operator
computes (written or found unchanged) is recorded here, and a collector renders it when
Prometheus scrapes. So the metrics, `kubectl get ecq -o yaml` and the alerts never disagree.

Metric names (labels in braces; `namespace`, `quota` on every quota metric):

- `connquota_quota_condition{condition}`: 1 while the condition is True, 0 while False, absent
  when the quota does not carry it (the abnormal-true conditions are removed when they clear);
- `connquota_quota_streams{state}`: desired, planned, live, unserved;
- `connquota_quota_connections{state}`: planned, live; `connquota_quota_replicas{state}`:
  planned, ready; `connquota_quota_plan_generation`;
- per address (`scope="ip"`, `key` = address name) and per account (`scope="account"`, `key` =
  account id), per limit (`pool`, `exchange`, `scope`, `key`, `limit`):
  `connquota_quota_limit_used` (what the gateways report), `connquota_quota_limit_slices` (the
  sum of the newest plan's pod slices), `connquota_quota_limit_share` (this quota's part of
  the budget), `connquota_quota_limit_budget` (the whole budget: headroom x exchange limit) and
  `connquota_quota_limit_budget_effective` (what is divided: lower while adaptive budgets cut it);
  `connquota_quota_quarantined{scope,key}`: 1 while the exchange's 429/418 keeps it out of use;
- `connquota_pool_condition{pool,condition}`, `connquota_pool_quotas{pool}`;
- per address, limit domain and limit of a pool (`pool`, `address`, `domain`, `limit`):
  `connquota_pool_budget`, `connquota_pool_budget_effective` (what is divided: lower while
  adaptive budgets cut it after unexplained throttling), `connquota_pool_budget_shared` (the sum
  of the quotas' shares) and `connquota_pool_budget_used` (the sum of the use they report).

Scrapes run on prometheus-client's HTTP thread: the recorded statuses are replaced whole
(never mutated), and the collector copies the tables before it reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Q = "connquota_quota_"
PL = "connquota_pool_"
SCOPES = (("addresses", "ip"), ("accounts", "account"), ("apiKeys", "apiKey"))
"""Status list of a quota -> the `scope` label (the limits' own scope names)."""


@dataclass(frozen=True)
class QuotaRecord:
    """What the metrics of one quota are rendered from."""

    namespace: str
    name: str
    pool: str
    exchange: str
    status: Mapping[str, Any]


_quotas: dict[str, QuotaRecord] = {}
_pools: dict[str, Mapping[str, Any]] = {}


def record_quota(body: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Remember the status just computed for the quota `body` (replaces the previous one)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    _quotas[f"{ns}/{name}"] = QuotaRecord(
        namespace=ns,
        name=name,
        pool=str((spec.get("egressPoolRef") or {}).get("name") or ""),
        exchange=str(spec.get("exchange") or "custom"),
        status=status,
    )


def record_quota_conditions(key: str, conditions: list[dict[str, Any]]) -> None:
    """Replace only the conditions of a recorded quota (a refused write sets Stalled)."""
    record = _quotas.get(key)
    if record is not None:
        status = {**record.status, "conditions": conditions}
        _quotas[key] = QuotaRecord(
            record.namespace, record.name, record.pool, record.exchange, status
        )


def forget_quota(key: str) -> None:
    """The quota is gone: its series end."""
    _quotas.pop(key, None)


def record_pool(name: str, status: Mapping[str, Any]) -> None:
    """Remember the status just computed for the pool `name`."""
    _pools[name] = status


def forget_pool(name: str) -> None:
    """The pool is gone: its series end."""
    _pools.pop(name, None)


def _conditions(family: GaugeMetricFamily, head: list[str], status: Mapping[str, Any]) -> None:
    for c in status.get("conditions") or []:
        if c.get("status") in ("True", "False"):
            family.add_metric([*head, str(c.get("type"))], 1.0 if c["status"] == "True" else 0.0)


class StatusCollector(Collector):
    """Renders the recorded quota and pool statuses (the module docstring's metrics)."""

    def collect(self) -> Iterator[Metric]:
        """Every metric of the module docstring, from copies of the recorded tables."""
        yield from self._quota_metrics(list(_quotas.values()))
        yield from self._pool_metrics(list(_pools.items()))

    def _quota_metrics(self, records: list[QuotaRecord]) -> Iterator[Metric]:
        who = ["namespace", "quota"]
        condition = GaugeMetricFamily(
            Q + "condition",
            "1 while the condition is True, 0 while False",
            labels=[*who, "condition"],
        )
        streams = GaugeMetricFamily(Q + "streams", "Streams by state", labels=[*who, "state"])
        connections = GaugeMetricFamily(
            Q + "connections", "Upstream connections by state", labels=[*who, "state"]
        )
        replicas = GaugeMetricFamily(
            Q + "replicas", "Gateway pods by state", labels=[*who, "state"]
        )
        generation = GaugeMetricFamily(Q + "plan_generation", "Newest plan generation", labels=who)
        per_limit = [*who, "pool", "exchange", "scope", "key", "limit"]
        used = GaugeMetricFamily(Q + "limit_used", "Use the gateways report", labels=per_limit)
        slices = GaugeMetricFamily(
            Q + "limit_slices", "Sum of the newest plan's pod slices", labels=per_limit
        )
        share = GaugeMetricFamily(
            Q + "limit_share", "This quota's part of the budget", labels=per_limit
        )
        budget = GaugeMetricFamily(
            Q + "limit_budget", "The whole budget (headroom x exchange limit)", labels=per_limit
        )
        effective = GaugeMetricFamily(
            Q + "limit_budget_effective",
            "The budget divided (below limit_budget while adaptive budgets cut it)",
            labels=per_limit,
        )
        quarantined = GaugeMetricFamily(
            Q + "quarantined",
            "1 while the exchange keeps it out of use",
            labels=[*who, "scope", "key"],
        )
        for r in records:
            head = [r.namespace, r.name]
            st = r.status
            _conditions(condition, head, st)
            for state, n in (st.get("streams") or {}).items():
                streams.add_metric([*head, state], float(n))
            for state, n in (st.get("connections") or {}).items():
                connections.add_metric([*head, state], float(n))
            replicas.add_metric([*head, "planned"], float(st.get("replicas") or 0))
            replicas.add_metric([*head, "ready"], float(st.get("readyReplicas") or 0))
            generation.add_metric(head, float(st.get("planGeneration") or 0))
            for field, scope in SCOPES:
                for row in st.get(field) or []:
                    key = str(row.get("key"))
                    if row.get("quarantinedUntil"):
                        quarantined.add_metric([*head, scope, key], 1.0)
                    for lim in row.get("limits") or []:
                        labels = [*head, r.pool, r.exchange, scope, key, str(lim.get("limit"))]
                        used.add_metric(labels, float(lim.get("used") or 0))
                        slices.add_metric(labels, float(lim.get("slices") or 0))
                        share.add_metric(labels, float(lim.get("share") or 0))
                        budget.add_metric(labels, float(lim.get("budget") or 0))
                        effective.add_metric(
                            labels, float(lim.get("effectiveBudget", lim.get("budget")) or 0)
                        )
        yield from (condition, streams, connections, replicas, generation)
        yield from (used, slices, share, budget, effective, quarantined)

    def _pool_metrics(self, pools: list[tuple[str, Mapping[str, Any]]]) -> Iterator[Metric]:
        condition = GaugeMetricFamily(
            PL + "condition",
            "1 while the condition is True, 0 while False",
            labels=["pool", "condition"],
        )
        quotas = GaugeMetricFamily(PL + "quotas", "Quotas admitted to the pool", labels=["pool"])
        per_budget = ["pool", "address", "domain", "limit"]
        budget = GaugeMetricFamily(
            PL + "budget", "Headroom x exchange limit minus reserve", labels=per_budget
        )
        effective = GaugeMetricFamily(
            PL + "budget_effective",
            "The budget divided (below budget while adaptive budgets cut it)",
            labels=per_budget,
        )
        shared = GaugeMetricFamily(
            PL + "budget_shared", "Sum of the quotas' shares", labels=per_budget
        )
        used = GaugeMetricFamily(
            PL + "budget_used", "Sum of the use quotas report", labels=per_budget
        )
        for name, st in pools:
            _conditions(condition, [name], st)
            quotas.add_metric([name], float(st.get("quotas") or 0))
            for b in st.get("budgets") or []:
                labels = [name, str(b.get("address")), str(b.get("domain")), str(b.get("limit"))]
                holders = b.get("holders") or []
                budget.add_metric(labels, float(b.get("budget") or 0))
                effective.add_metric(labels, float(b.get("effectiveBudget", b.get("budget")) or 0))
                shared.add_metric(labels, float(sum(h.get("share") or 0 for h in holders)))
                used.add_metric(labels, float(sum(h.get("used") or 0 for h in holders)))
        yield from (condition, quotas, budget, effective, shared, used)


def register(registry: CollectorRegistry) -> StatusCollector:
    """Add a collector of the recorded statuses to `registry`."""
    collector = StatusCollector()
    registry.register(collector)
    return collector


register(REGISTRY)  # served with the operator's other metrics (`metricsPort`)
