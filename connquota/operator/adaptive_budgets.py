"""Adaptive budgets in the operator: the throttles the gateways report, the pool's lowered
budgets (kept in memory and in the pool's `status.adaptiveBudgets`), Events and metrics.

The rule is the planner's (`connquota.planner.adaptive`, documented in docs/operator.md); this
module only gathers its inputs: every gateway report of the pool (`throttles`), the pool's
holds from the ledgers (a cut is in force once they are at most the effective budget), and
the state read back from the pool's status on the first pass after a start.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from connquota.api.limits import LimitName, LimitScope
from connquota.api.pool import AdaptiveBudgetStatus, ExchangeEgressPool
from connquota.api.report import GatewayReport
from connquota.operator import metrics, planning, usage
from connquota.operator.planning import (
    AdaptiveRule,
    AdaptiveState,
    AdaptiveStep,
    Budget,
    BudgetKey,
    PoolShares,
    QuotaInput,
    Throttle,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import quota_key

log = logging.getLogger(__name__)

SEEN_KEEP_S = 2.0
"""Throttles already counted are remembered this many clean periods."""


def _ts(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wall(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


@dataclass
class AdaptiveBudgets:
    """Per pool: its lowered budgets and the throttles already counted."""

    states: dict[str, dict[BudgetKey, AdaptiveState]] = field(default_factory=dict)
    seen: dict[str, dict[tuple[str, str, str, float], float]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)

    def load(self, pool: str, status: Mapping[str, Any] | None) -> None:
        """Read the pool's lowered budgets back from its status (once per start)."""
        if pool in self.loaded:
            return
        self.loaded.add(pool)
        states: dict[BudgetKey, AdaptiveState] = {}
        for raw in (status or {}).get("adaptiveBudgets") or []:
            try:
                s = AdaptiveBudgetStatus.model_validate(raw)
                key = BudgetKey(s.domain, LimitScope(s.scope), s.key, LimitName(s.limit))
            except (ValidationError, ValueError) as exc:
                log.warning("pool %s: ignoring an adaptive budget entry: %s", pool, exc)
                continue
            states[key] = AdaptiveState(
                key=key,
                effective=s.effectiveBudget,
                cuts=s.cuts,
                last_throttle_at=s.lastThrottleAt.timestamp(),
                last_throttle=s.lastThrottle,
                changed_at=s.changedAt.timestamp(),
                in_force_at=_wall(s.inForceSince),
            )
        self.states[pool] = states

    def forget(self, pool: str) -> None:
        """The pool is gone."""
        self.states.pop(pool, None)
        self.seen.pop(pool, None)
        self.loaded.discard(pool)


def throttles_of(
    reports_of: Mapping[str, Mapping[int, GatewayReport]],
    domains: Mapping[str, str | None],
    public: Mapping[str, str],
) -> list[tuple[Throttle, str]]:
    """Every throttle the pool's gateways report, as (Throttle, limit domain), with the
    fleet's use of the key's connection limits at the time (the pod's own counts then, the
    other pods' latest reports)."""
    out: list[tuple[Throttle, str]] = []
    for quota, reports in sorted(reports_of.items()):
        domain = domains.get(quota)
        if domain is None:
            continue
        peers = [r for q, rs in reports_of.items() if domains.get(q) == domain for r in rs.values()]
        for report in reports.values():
            for t in report.throttles or []:
                others = [r for r in peers if r is not report]
                use = {
                    LimitName.CONCURRENT_CONNECTIONS: t.liveOnKey
                    + (0 if t.onSession else 1)
                    + usage.reported_use(others, t.scope, t.key, LimitName.CONCURRENT_CONNECTIONS),
                    LimitName.CONNECTION_ATTEMPTS: t.attemptsOnKey
                    + usage.reported_use(others, t.scope, t.key, LimitName.CONNECTION_ATTEMPTS),
                }
                try:
                    cause = LimitName(t.cause) if t.cause else None
                except ValueError:
                    cause = None
                key = public.get(t.key, t.key) if t.scope == LimitScope.IP else t.key
                out.append(
                    (
                        Throttle(
                            pod=report.pod,
                            scope=t.scope,
                            key=key,
                            status=t.statusCode,
                            at=t.at,
                            on_session=t.onSession,
                            cause=cause,
                            use=use,
                        ),
                        domain,
                    )
                )
    return out


def status_entries(
    states: Mapping[BudgetKey, AdaptiveState],
    budgets: Mapping[BudgetKey, Budget],
    names: Mapping[str, str],
    rule: AdaptiveRule,
) -> list[dict[str, Any]]:
    """The pool's `status.adaptiveBudgets`."""
    out = []
    for key, s in sorted(states.items()):
        b = budgets.get(key)
        if b is None:
            continue
        due = planning.next_raise_at(s, rule)
        entry: dict[str, Any] = {
            "domain": key.domain,
            "scope": key.scope.value,
            "key": key.key,
            "limit": key.limit.value,
            "budget": b.value,
            "effectiveBudget": planning.effective_value(b.value, s),
            "cuts": s.cuts,
            "lastThrottle": s.last_throttle[:256],
            "lastThrottleAt": _ts(s.last_throttle_at),
            "changedAt": _ts(s.changed_at),
        }
        if key.scope == LimitScope.IP and key.key in names:
            entry["address"] = names[key.key]
        if s.in_force_at is not None:
            entry["inForceSince"] = _ts(s.in_force_at)
        if due is not None:
            entry["nextRaiseAt"] = _ts(due)
        out.append(entry)
    return out[:4096]


def reduced_message(
    states: Mapping[BudgetKey, AdaptiveState],
    budgets: Mapping[BudgetKey, Budget],
    names: Mapping[str, str],
    rule: AdaptiveRule,
    domain: str | None = None,
) -> str | None:
    """The BudgetReduced condition's message (None: no budget is lowered)."""
    parts = []
    for key, s in sorted(states.items()):
        b = budgets.get(key)
        if b is None or (domain is not None and key.domain != domain):
            continue
        where = (
            f"address {names[key.key]} ({key.key})"
            if key.scope == LimitScope.IP and key.key in names
            else f"{key.scope.value} {key.key}"
        )
        due = planning.next_raise_at(s, rule)
        parts.append(
            f"{where} {key.limit.value} {planning.effective_value(b.value, s)} of {b.value} "
            f"since {_ts(s.changed_at)} after {s.last_throttle}; "
            + (f"next raise {_ts(due)}" if due is not None else "waiting for the cut to apply")
        )
    return "; ".join(parts)[:4000] if parts else None


class AdaptivePass(ReconcilerBase):
    """The pool pass's adaptive budgets (a part of `Reconciler`)."""

    @property
    def adaptive(self) -> AdaptiveBudgets:
        """The pools' adaptive budgets (created on first use)."""
        book = self.__dict__.get("_adaptive_book")
        if book is None:
            book = self.__dict__["_adaptive_book"] = AdaptiveBudgets()
        return book

    def _adaptive_rule(self) -> AdaptiveRule:
        c = self.config
        return AdaptiveRule(
            decrease=c.adaptiveDecreaseFactor,
            increase_fraction=c.adaptiveIncreaseFraction,
            clean_s=c.adaptiveCleanSeconds,
        )

    def _adaptive_status(
        self,
        pool: ExchangeEgressPool,
        shares: PoolShares | None,
        adaptive: Mapping[BudgetKey, AdaptiveState],
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The pool's `status.adaptiveBudgets` and its BudgetReduced message."""
        if not adaptive or shares is None:
            return [], None
        budgets = {**shares.budgets, **shares.configured}
        names = {a.publicAddress: a.name for a in pool.spec.addresses}
        rule = self._adaptive_rule()
        return (
            status_entries(adaptive, budgets, names, rule),
            reduced_message(adaptive, budgets, names, rule),
        )

    async def _adaptive_budgets(
        self,
        pool: ExchangeEgressPool,
        pool_body: dict[str, Any],
        inputs: Iterable[QuotaInput],
        reports_of: Mapping[str, Mapping[int, GatewayReport]],
        domains: Mapping[str, str | None],
    ) -> tuple[dict[BudgetKey, AdaptiveState], float | None]:
        """One pass of the pool's adaptive budgets: the states to divide the budgets with, and
        seconds until the pool should be looked at again for them (None: no need)."""
        name = pool.metadata.name or ""
        book = self.adaptive
        if not self.config.adaptiveBudgets:
            if book.states.get(name):
                book.states[name] = {}
            return {}, None
        book.load(name, pool_body.get("status"))
        try:
            budgets = planning.pool_budgets(pool.spec, list(inputs))
        except planning.PlanningError:
            return book.states.get(name, {}), None
        rule = self._adaptive_rule()
        wall = self.wall()
        seen = book.seen.setdefault(name, {})
        public = {a.name: a.publicAddress for a in pool.spec.addresses}
        fresh = [
            (t, d) for t, d in throttles_of(reports_of, domains, public) if t.ident not in seen
        ]
        for ident in [i for i, at in seen.items() if at < wall - SEEN_KEEP_S * rule.clean_s]:
            del seen[ident]
        ledgers = [
            s.ledgers.ledger
            for s in self.quotas.values()
            if s.pool == name and s.ledgers.ledger is not None
        ]
        raw_holds = planning.pool_holds(ledgers, round(self.monotonic(), 3))
        holds = {k: raw_holds.get((k.domain, k.scope.value, k.key, k.limit), 0) for k in budgets}
        step = planning.adaptive_step(book.states.get(name, {}), budgets, fresh, holds, wall, rule)
        pending = [t for t, verdict in step.verdicts if verdict == "pending"]
        for t, verdict in step.verdicts:
            if verdict != "pending":
                seen[t.ident] = wall
        book.states[name] = step.states
        await self._adaptive_report(pool, pool_body, step, budgets, domains)
        return step.states, planning.adaptive_next_change_s(step.states, wall, rule, pending)

    async def _adaptive_report(
        self,
        pool: ExchangeEgressPool,
        pool_body: dict[str, Any],
        step: AdaptiveStep,
        budgets: Mapping[BudgetKey, Budget],
        domains: Mapping[str, str | None],
    ) -> None:
        """Log, count and tell (Events on the pool and the quotas of the budget's domain)."""
        names = {a.publicAddress: a.name for a in pool.spec.addresses}
        for _, verdict in step.verdicts:
            if verdict != "pending":
                metrics.ADAPTIVE_THROTTLES.labels(verdict=verdict).inc()
        changes: list[tuple[BudgetKey, str, str, bool]] = []
        for key, before, after, t in step.cuts:
            metrics.ADAPTIVE_CHANGES.labels(direction="down").inc()
            changes.append(
                (
                    key,
                    "BudgetReduced",
                    f"{self._where(key, names)} {key.limit.value} lowered from {before} to "
                    f"{after} of {budgets[key].value} after an unexplained {t.status} "
                    f"(pod {t.pod})",
                    True,
                )
            )
        for key, before, after in step.raises:
            metrics.ADAPTIVE_CHANGES.labels(direction="up").inc()
            restored = after >= budgets[key].value
            changes.append(
                (
                    key,
                    "BudgetRestored" if restored else "BudgetRaised",
                    f"{self._where(key, names)} {key.limit.value} raised from {before} to "
                    f"{after} of {budgets[key].value}"
                    + (" (restored)" if restored else " after a clean period"),
                    False,
                )
            )
        for key, reason, message, warning in changes:
            log.warning(
                "pool %s: %s",
                pool.metadata.name,
                message,
                extra={"pool": pool.metadata.name, "reason": reason},
            )
            await self.api.post_event(pool_body, reason=reason, message=message, warning=warning)
            bodies = {
                quota_key(b): b for b in self.sources.quotas_of_pool(pool.metadata.name or "")
            }
            for quota in sorted(q for q, d in domains.items() if d == key.domain):
                state = self.quotas.get(quota)
                if quota in bodies and state is not None:
                    await self._event(bodies[quota], state, reason, message, warning=warning)

    @staticmethod
    def _where(key: BudgetKey, names: Mapping[str, str]) -> str:
        if key.scope == LimitScope.IP and key.key in names:
            return f"address {names[key.key]} ({key.key})"
        return f"{key.scope.value} {key.key}"
