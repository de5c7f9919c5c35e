"""Share, slice and use of every budget, per quota (its status) and per pool (the pool's).

Pure functions of what the operator already holds: the pool's division of its budgets
(`PoolShares`), each quota's newest plan, and the reports its gateways write on their Leases.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from connquota.api.limits import SHARED_SCOPES, LimitName, LimitScope
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.report import GatewayReport, Quarantine
from connquota.operator.planning import Budget, BudgetKey, PoolShares, QuotaShares


def reported_use(
    reports: Iterable[GatewayReport], scope: LimitScope, key: str, limit: LimitName
) -> int:
    """What a quota's gateways report using of `limit` on `key` (address name or account)."""
    total = 0
    for report in reports:
        if limit == LimitName.CONNECTION_ATTEMPTS:
            total += sum(w.count for w in report.attempts if w.scope == scope and w.key == key)
        elif limit == LimitName.CONCURRENT_CONNECTIONS:
            total += report.liveConnections.get(f"{scope.value}/{key}", 0)
    return total


def _slices(plan: QuotaPlan | None, scope: LimitScope, key: str, limit: LimitName) -> float:
    if plan is None:
        return 0.0
    total = 0.0
    for pod in plan.pods:
        s = pod.slice(limit, scope, key)
        if s is not None:
            total += s.value
    return total


def _until(quarantines: Iterable[Quarantine], scope: LimitScope, key: str) -> str | None:
    untils = [q.until for q in quarantines if q.scope == scope and q.key == key]
    if not untils:
        return None
    return dt.datetime.fromtimestamp(max(untils), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _egress(reports: Iterable[GatewayReport], address: str) -> str | None:
    for report in reports:
        for check in report.egressChecks:
            if check.address == address:
                return check.state.value + (f": {check.reason}" if check.reason else "")
    return None


def _effective(configured: Budget | None, effective: Budget | None) -> dict[str, Any]:
    """`effectiveBudget` when adaptive budgets lowered the budget (else nothing)."""
    if configured is None or effective is None or effective.value == configured.value:
        return {}
    return {"effectiveBudget": effective.value}


def quota_scope_use(
    shares: PoolShares | None,
    key: str,
    pool: ExchangeEgressPoolSpec,
    plan: QuotaPlan | None,
    reports: Mapping[int, GatewayReport],
    quarantines: Iterable[Quarantine],
) -> dict[LimitScope, list[dict[str, Any]]]:
    """The quota's `status.addresses`, `status.accounts` and `status.apiKeys` (by scope): per
    key, every limit's share, slice sum, reported use and the whole budget, with quarantine
    and (addresses) egress check."""
    own: QuotaShares | None = shares.quotas.get(key) if shares is not None else None
    if shares is None or own is None:
        return {scope: [] for scope in SHARED_SCOPES}
    quarantines = list(quarantines)
    pods = [reports[o] for o in sorted(reports)]
    public = {a.name: a.publicAddress for a in pool.addresses}
    out: dict[LimitScope, dict[str, list[dict[str, Any]]]] = {s: {} for s in SHARED_SCOPES}
    for scope in SHARED_SCOPES:
        for (name, limit), units in sorted(own.table(scope).items()):
            budget_key = public.get(name, name) if scope == LimitScope.IP else name
            bkey = BudgetKey(own.domain, scope, budget_key, limit)
            budget = shares.configured_budget(bkey)
            effective = shares.budgets.get(bkey)
            out[scope].setdefault(name, []).append(
                {
                    "limit": limit.value,
                    "share": units,
                    "used": reported_use(pods, scope, name, limit),
                    "budget": budget.value if budget is not None else units,
                    **_effective(budget, effective),
                    "slices": _slices(plan, scope, name, limit),
                }
            )
    return {
        scope: [
            {
                "key": name,
                "limits": limits,
                "quarantinedUntil": _until(quarantines, scope, name),
                **({"egress": _egress(pods, name)} if scope == LimitScope.IP else {}),
            }
            for name, limits in sorted(by_key.items())
        ]
        for scope, by_key in out.items()
    }


def pool_budgets(
    shares: PoolShares | None,
    pool: ExchangeEgressPoolSpec,
    reports_of: Mapping[str, Mapping[int, GatewayReport]],
) -> list[dict[str, Any]]:
    """The pool's `status.budgets`: per address, domain and limit, the budget and its holders
    (quota, share, reported use)."""
    if shares is None:
        return []
    names = {a.publicAddress: a.name for a in pool.addresses}
    out: list[dict[str, Any]] = []
    for bkey, budget in sorted(shares.budgets.items(), key=lambda kv: str(kv[0])):
        if bkey.scope != LimitScope.IP or bkey.key not in names:
            continue
        name = names[bkey.key]
        holders = []
        for qkey, q in sorted(shares.quotas.items()):
            units = q.ip.get((name, bkey.limit), 0) if q.domain == bkey.domain else 0
            if units <= 0:
                continue
            pods = list((reports_of.get(qkey) or {}).values())
            holders.append(
                {
                    "quota": qkey,
                    "share": units,
                    "used": reported_use(pods, LimitScope.IP, name, bkey.limit),
                }
            )
        out.append(
            {
                "address": name,
                "publicAddress": bkey.key,
                "domain": bkey.domain,
                "limit": bkey.limit.value,
                "budget": (shares.configured_budget(bkey) or budget).value,
                **_effective(shares.configured_budget(bkey), budget),
                "holders": holders[:1000],
            }
        )
    return out[:4096]
