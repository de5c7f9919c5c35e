"""Shares: each budget of a pool divided among the quotas that use it, deterministically.

For one budget (a limit of a domain on one address, one account or one API key), quotas are taken in
`namespace/name` order:

1. A quota whose namespace the pool does not admit gets nothing (reason given).
2. Explicit requests (`spec.shares`: the address's own entry, else `*`; accounts and keys use `*`) are
   honoured as fractions of the budget. When the requests of one namespace exceed its
   `maxShare`, they are scaled down to fit; when all requests exceed 100%, all are scaled
   down in proportion. Each scaled quota gets a reason.
3. What the requests leave is split evenly among the admitted quotas without a request; the
   units that do not divide evenly go one each to the first quotas in order. A namespace cap
   then trims its even-split quotas (from the last). Units freed that way stay unassigned.
4. Integer shares: floor(fraction x budget) for requests; the sum never exceeds the budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from connquota.api.limits import LimitName, LimitScope
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.adaptive import AdaptiveState, effective_budgets
from connquota.planner.arithmetic import exact
from connquota.planner.budgets import Budget, BudgetKey, PooledLimit, pool_budgets
from connquota.planner.errors import ShareRequestError
from connquota.planner.inputs import QuotaInput

ALL_ADDRESSES = "*"


@dataclass
class QuotaShares:
    """One quota's shares of every budget it draws from (raw: before its own headroom)."""

    quota: str
    domain: str
    admitted: bool = True
    ip: dict[tuple[str, LimitName], int] = field(default_factory=dict)
    """(address name, limit) -> units of the pool budget on that address."""
    account: dict[tuple[str, LimitName], int] = field(default_factory=dict)
    """(account id, limit) -> units of the pool budget on that account."""
    api_key: dict[tuple[str, LimitName], int] = field(default_factory=dict)
    """(key id, limit) -> units of the pool budget on that API key."""
    bursts: dict[tuple[LimitScope, str, LimitName], int] = field(default_factory=dict)
    """Token-bucket burst units, by (scope, address name, account id or key id, limit)."""
    limits: dict[tuple[LimitName, LimitScope], PooledLimit] = field(default_factory=dict)
    """The pooled limit (shape, window) of every shared limit of the domain."""
    reasons: list[str] = field(default_factory=list)
    """Why this quota holds less than it asked for, one sentence each."""

    def table(self, scope: LimitScope) -> dict[tuple[str, LimitName], int]:
        """The shares of `scope` (ip, account or apiKey)."""
        if scope == LimitScope.IP:
            return self.ip
        return self.api_key if scope == LimitScope.API_KEY else self.account

    def get(self, scope: LimitScope, key: str, limit: LimitName) -> int | None:
        """The share of `limit` on `key` (address name, account id or key id); None: no such
        limit."""
        return self.table(scope).get((key, limit))


@dataclass(frozen=True)
class PoolShares:
    """All budgets of a pool and every quota's shares of them."""

    budgets: dict[BudgetKey, Budget]
    """The budgets divided: effective ones where adaptive budgets lowered them."""
    quotas: dict[str, QuotaShares]
    configured: dict[BudgetKey, Budget] = field(default_factory=dict)
    """The configured budgets (only when some differ from `budgets`)."""

    def configured_budget(self, key: BudgetKey) -> Budget | None:
        """The configured budget (before any adaptive cut)."""
        return self.configured.get(key) or self.budgets.get(key)


def _allowance(pool: ExchangeEgressPoolSpec, namespace: str) -> tuple[bool, Fraction | None]:
    exact_match = next((a for a in pool.allowedNamespaces if a.namespace == namespace), None)
    match = exact_match or next((a for a in pool.allowedNamespaces if a.namespace == "*"), None)
    if match is None:
        return False, None
    return True, None if match.maxShare is None else exact(match.maxShare)


def _requested(q: QuotaInput, address: str | None) -> Fraction | None:
    star = None
    for r in q.spec.shares:
        if address is not None and r.address == address:
            return exact(r.fraction)
        if r.address == ALL_ADDRESSES:
            star = exact(r.fraction)
    return star


@dataclass
class _Fractions:
    requested: dict[str, Fraction]
    even: list[str]
    caps: dict[str, Fraction | None]
    namespace: dict[str, str]


def _fractions(
    pool: ExchangeEgressPoolSpec,
    quotas: Sequence[QuotaInput],
    address: str | None,
    where: str,
    reasons: dict[str, list[str]],
) -> _Fractions:
    requested: dict[str, Fraction] = {}
    even: list[str] = []
    caps: dict[str, Fraction | None] = {}
    namespace: dict[str, str] = {}
    for q in quotas:
        admitted, cap = _allowance(pool, q.namespace)
        namespace[q.key] = q.namespace
        caps[q.namespace] = cap
        if not admitted:
            continue
        r = _requested(q, address)
        if r is None:
            even.append(q.key)
        else:
            requested[q.key] = r
    by_ns: dict[str, list[str]] = {}
    for key in requested:
        by_ns.setdefault(namespace[key], []).append(key)
    for ns, keys in sorted(by_ns.items()):
        cap = caps[ns]
        total = sum(requested[k] for k in keys)
        if cap is not None and total > cap:
            for k in keys:
                asked = requested[k]
                requested[k] = asked * cap / total
                reasons[k].append(
                    f"{where}: asked {float(asked):.0%}, the pool caps namespace {ns} at "
                    f"{float(cap):.0%} in total, scaled to {float(requested[k]):.1%}"
                )
    total = sum(requested.values(), Fraction(0))
    if total > 1:
        for k in requested:
            asked = requested[k]
            requested[k] = asked / total
            reasons[k].append(
                f"{where}: asked {float(asked):.0%}, but requests total {float(total):.0%}, "
                f"scaled to {float(requested[k]):.1%}"
            )
    return _Fractions(requested, even, caps, namespace)


def _units(
    budget: int, fr: _Fractions, where: str, reasons: dict[str, list[str]]
) -> dict[str, int]:
    units = {k: math.floor(f * budget) for k, f in fr.requested.items()}
    rest = budget - sum(units.values())
    if fr.even:
        base, extra = divmod(max(rest, 0), len(fr.even))
        for i, k in enumerate(fr.even):
            units[k] = base + (1 if i < extra else 0)
            if units[k] == 0 and budget > 0:
                reasons[k].append(
                    f"{where}: other quotas' requests and the even split leave nothing "
                    f"of a budget of {budget}"
                )
    by_ns: dict[str, list[str]] = {}
    for k in units:
        by_ns.setdefault(fr.namespace[k], []).append(k)
    for ns, keys in sorted(by_ns.items()):
        cap = fr.caps[ns]
        if cap is None:
            continue
        cap_units = math.floor(cap * budget)
        over = sum(units[k] for k in keys) - cap_units
        for k in reversed([k for k in keys if k not in fr.requested]):
            if over <= 0:
                break
            cut = min(over, units[k])
            if cut:
                units[k] -= cut
                over -= cut
                reasons[k].append(
                    f"{where}: namespace {ns} may hold at most {float(cap):.0%} of the pool"
                )
    return units


def divide_budgets(
    pool: ExchangeEgressPoolSpec,
    quotas: Sequence[QuotaInput],
    adaptive: Mapping[BudgetKey, AdaptiveState] | None = None,
) -> PoolShares:
    """Compute every budget of the pool and divide each among the quotas using it (the
    effective budgets where `adaptive` lowered some)."""
    quotas = sorted(quotas, key=lambda q: q.key)
    names = {a.name for a in pool.addresses}
    for q in quotas:
        for r in q.spec.shares:
            if r.address != ALL_ADDRESSES and r.address not in names:
                raise ShareRequestError(
                    f"quota {q.key} asks for a share of address {r.address!r}, which pool "
                    f"has not (addresses: {', '.join(sorted(names))}); fix spec.shares"
                )
    configured = pool_budgets(pool, quotas)
    budgets = effective_budgets(configured, adaptive) if adaptive else configured
    result: dict[str, QuotaShares] = {}
    reasons: dict[str, list[str]] = {q.key: [] for q in quotas}
    for q in quotas:
        admitted, _ = _allowance(pool, q.namespace)
        result[q.key] = QuotaShares(quota=q.key, domain=q.domain, admitted=admitted)
        if not admitted:
            reasons[q.key].append(
                f"the pool does not admit namespace {q.namespace} (allowedNamespaces); "
                "the quota gets no share"
            )
    by_domain: dict[str, dict[tuple[LimitScope, str], list[Budget]]] = {}
    for b in budgets.values():
        by_domain.setdefault(b.key.domain, {}).setdefault((b.key.scope, b.key.key), []).append(b)
    public_to_name = {a.publicAddress: a.name for a in pool.addresses}
    # Budgets whose holders, requests and values are those of one already divided divide the
    # same way: reuse that division unless it gave reasons (they name the address).
    divided: dict[tuple[object, ...], list[tuple[dict[str, int], dict[str, int]]]] = {}
    for domain, groups in sorted(by_domain.items()):
        members = [q for q in quotas if q.domain == domain]
        identities = {
            (q.key, scope): set(q.identities(scope))
            for q in members
            for scope in (LimitScope.ACCOUNT, LimitScope.API_KEY)
        }
        for (scope, key), group in sorted(groups.items()):
            if scope == LimitScope.IP:
                holders = members
                name = public_to_name[key]
                where = f"address {name}"
                address: str | None = name
            else:
                holders = [q for q in members if key in identities[(q.key, scope)]]
                name = key
                where = f"{'API key' if scope == LimitScope.API_KEY else 'account'} {key}"
                address = None
            same = (
                scope,
                tuple((q.key, _requested(q, address)) for q in holders),
                tuple((b.key.limit, b.value, b.burst) for b in group),
            )
            parts = divided.get(same)
            if parts is None:
                reasons_before = sum(map(len, reasons.values()))
                fr = _fractions(pool, holders, address, where, reasons)
                parts = []
                for b in group:
                    units = _units(b.value, fr, f"{where} {b.key.limit.value}", reasons)
                    bursts = _units(b.burst, fr, where, {k: [] for k in reasons}) if b.burst else {}
                    parts.append((units, bursts))
                if sum(map(len, reasons.values())) == reasons_before:
                    divided[same] = parts
            for b, (units, bursts) in zip(group, parts, strict=True):
                for q in holders:
                    shares = result[q.key]
                    table = shares.table(scope)
                    table[(name, b.key.limit)] = units.get(q.key, 0)
                    shares.limits[(b.key.limit, scope)] = b.limit
                    if b.burst is not None:
                        shares.bursts[(scope, name, b.key.limit)] = bursts.get(q.key, 0)
    for key, qs in result.items():
        qs.reasons = sorted(set(reasons[key]))
    lowered = {k: b for k, b in configured.items() if budgets[k] is not b}
    return PoolShares(budgets=budgets, quotas=result, configured=lowered)
