"""Transitions: the next generation that is safe to publish now, and what it waits for.

Rule: a slice may grow only within what the budget has left once everything every pod of
every quota on the pool may still enforce is counted - its published generations from its
acknowledged one on, and rate slices it gave up less than one window + margin ago (the
ledger). Shrinks are published at once; a grow that does not fit yet is held back (granted
partly, lowest ordinals first) and reported in `waiting` with who holds the budget and, for
rate limits, when the memory expires. A budget moving between quotas (a second quota joining,
a quota deleted) follows the same rule because the ledgers of all quotas are counted.

In the intermediate plan, a pod whose concurrent slice on an address or account is held back
keeps the connections it already had there first, and defers new ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from connquota.api.limits import CREDENTIAL_SCOPES, SHARED_SCOPES, LimitScope
from connquota.api.plan import PodPlan, QuotaPlan, Slice
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.budgets import Budget, BudgetKey
from connquota.planner.ledger import HoldKey, QuotaLedger, holds, pool_holds


@dataclass(frozen=True)
class Waiting:
    """A grow held back: which slice, of which pod, for whom, until when (if known)."""

    ordinal: int
    budget: HoldKey
    wanted: int
    granted: int
    holders: tuple[str, ...]
    """`namespace/name#ordinal` of pods whose holds exceed what they are moving to."""
    until: float | None
    """Monotonic time a rate memory expires; None when waiting for acknowledgements."""

    def __str__(self) -> str:
        when = f"until {self.until:.1f}" if self.until is not None else "until acknowledged"
        return (
            f"pod {self.ordinal}: {' '.join(self.budget)} {self.granted}/{self.wanted}, "
            f"waiting on {', '.join(self.holders) or 'nobody'} {when}"
        )


@dataclass
class Transition:
    """The next generation to publish (None: nothing new) and what is still held back."""

    plan: QuotaPlan | None
    reached_target: bool
    waiting: list[Waiting] = field(default_factory=list)

    @property
    def retry_at(self) -> float | None:
        """The earliest monotonic time a held-back grow may become possible by time alone."""
        times = [w.until for w in self.waiting if w.until is not None]
        return min(times) if times else None


def _key(s: Slice, domain: str, public: Mapping[str, str]) -> HoldKey:
    key = public.get(s.key, s.key) if s.scope == LimitScope.IP else s.key
    return (domain, s.scope.value, key, s.limit.value)


def _blockers(
    key: HoldKey, ledgers: Mapping[str, QuotaLedger], now: float
) -> tuple[tuple[str, ...], float | None]:
    names: list[str] = []
    untils: list[float] = []
    for name in sorted(ledgers):
        ledger = ledgers[name]
        newest = max(ledger.published, key=lambda g: g.generation, default=None)
        latest = {
            s.ordinal: s.value for s in (newest.slices if newest else []) if s.hold_key() == key
        }
        for ordinal, value in sorted(holds(ledger, now).get(key, {}).items()):
            if value > latest.get(ordinal, 0):
                names.append(f"{name}#{ordinal}")
        untils.extend(
            r.until for r in ledger.releases if r.slice.hold_key() == key and r.until > now
        )
    return tuple(names), (max(untils) if untils else None)


def next_publication(
    pool: ExchangeEgressPoolSpec,
    budgets: Mapping[HoldKey, int],
    ledgers: Mapping[str, QuotaLedger],
    quota: str,
    published: QuotaPlan | None,
    target: QuotaPlan,
    now: float,
) -> Transition:
    """The next plan of `quota` that is safe to publish at `now` (monotonic seconds).

    `budgets`: (domain, scope, public address or account id, limit) -> budget (see
    `budgets.pool_budgets`; `budget_table` converts). `ledgers`: every quota of the pool,
    including this one (missing: nothing published yet). The returned plan's generation is
    newer than anything published; publish it, then `record_publication` it.
    """
    public = {a.name: a.publicAddress for a in pool.addresses}
    own_ledger = ledgers.get(quota) or QuotaLedger(quota=quota)
    others = pool_holds(ledgers.values(), now, exclude=quota)
    own = holds(own_ledger, now)
    last = max(own_ledger.last_generation, published.generation if published else 0)
    generation = max(target.generation, last + 1)

    wanted: dict[HoldKey, dict[int, int]] = {}
    for pod in target.pods:
        for s in pod.slices:
            if s.scope in SHARED_SCOPES:
                wanted.setdefault(_key(s, pod.profile.domain, public), {})[pod.ordinal] = s.value
    granted: dict[HoldKey, dict[int, int]] = {}
    waiting: list[Waiting] = []
    for key in sorted(wanted):
        pods = wanted[key]
        old = own.get(key, {})
        values = dict(pods)
        total = others.get(key, 0)
        total += sum(max(values.get(o, 0), old.get(o, 0)) for o in set(values) | set(old))
        excess = total - budgets.get(key, 0)
        if excess > 0:
            for ordinal in sorted(values, reverse=True):
                floor = old.get(ordinal, 0)
                cut = min(excess, max(0, values[ordinal] - floor))
                if cut:
                    values[ordinal] -= cut
                    excess -= cut
                if excess <= 0:
                    break
            holders, until = _blockers(key, ledgers, now)
            for ordinal in sorted(values):
                if values[ordinal] < pods[ordinal]:
                    waiting.append(
                        Waiting(ordinal, key, pods[ordinal], values[ordinal], holders, until)
                    )
        granted[key] = values

    if not waiting:
        plan = _renumber(target, generation)
        return Transition(plan=plan, reached_target=True)
    pods_out = [_hold_back(pod, published, granted, public, generation) for pod in target.pods]
    plan = target.model_copy(update={"generation": generation, "pods": pods_out})
    if published is not None and _same(plan, published):
        return Transition(plan=None, reached_target=False, waiting=waiting)
    return Transition(plan=plan, reached_target=False, waiting=waiting)


def _renumber(plan: QuotaPlan, generation: int) -> QuotaPlan:
    if plan.generation == generation:
        return plan
    pods = [p.model_copy(update={"generation": generation}) for p in plan.pods]
    return plan.model_copy(update={"generation": generation, "pods": pods})


def _hold_back(
    pod: PodPlan,
    published: QuotaPlan | None,
    granted: Mapping[HoldKey, Mapping[int, int]],
    public: Mapping[str, str],
    generation: int,
) -> PodPlan:
    slices = []
    for s in pod.slices:
        if s.scope in SHARED_SCOPES:
            value = granted[_key(s, pod.profile.domain, public)][pod.ordinal]
            if value != s.value:
                s = s.model_copy(update={"value": value})
        slices.append(s)
    before = next(
        (p for p in (published.pods if published else []) if p.ordinal == pod.ordinal), None
    )
    had = {c.id for c in before.connections} if before else set()
    concurrent = {
        (s.scope, s.key): s.value for s in slices if s.limit.value == "concurrentConnections"
    }
    no_attempts = {s.key for s in slices if s.limit.value == "connectionAttempts" and s.value == 0}
    credentials = {c.name: c for c in pod.credentials}
    counts: dict[tuple[LimitScope, str], int] = {}
    keep = []
    ordered = sorted(pod.connections, key=lambda c: c.id not in had)
    for c in ordered:
        keys = [(LimitScope.IP, c.address)]
        cred = credentials.get(c.credential) if c.credential is not None else None
        if cred is not None:
            keys += [(scope, cred.identity(scope)) for scope in CREDENTIAL_SCOPES]
        if c.id not in had and c.address in no_attempts:
            continue
        if all(counts.get(k, 0) < concurrent.get(k, 1 << 62) for k in keys):
            for k in keys:
                counts[k] = counts.get(k, 0) + 1
            keep.append(c)
    kept_ids = {c.id for c in keep}
    connections = [c for c in pod.connections if c.id in kept_ids]
    return pod.model_copy(
        update={"generation": generation, "slices": slices, "connections": connections}
    )


def _same(a: QuotaPlan, b: QuotaPlan) -> bool:
    def body(p: QuotaPlan) -> str:
        pods = [x.model_copy(update={"generation": 0}) for x in p.pods]
        return p.model_copy(update={"generation": 0, "pods": pods}).model_dump_json()

    return body(a) == body(b)


def budget_table(budgets: Mapping[BudgetKey, Budget]) -> dict[HoldKey, int]:
    """`budgets.pool_budgets` output as the (domain, scope, key, limit) -> value table."""
    return {(k.domain, k.scope.value, k.key, k.limit.value): b.value for k, b in budgets.items()}
