"""Budgets: what every (limit domain, public address) and (domain, account) may use in total.

Rule (documented in docs/planner.md):

    budget = floor(limit x (1 - reserved fraction of the domain in the pool))

Headroom is NOT applied to the pooled budget: each quota applies its own headroom to its own
share (`usable = floor(headroom x share)`), so quotas with different headrooms on one address
never affect each other, and the sum of what all quotas use is at most the budget, which is at
most the exchange's limit minus what the pool keeps back. With one quota the result is the
familiar floor(headroom x limit x (1 - reserved)) (up to one unit of rounding).

When quotas of one domain disagree on a limit (a limit override), the strictest view wins: the
smallest value and the longest window (at most N events per longest window implies at most N
per every shorter window), the smallest burst; when the shapes differ the budget is a sliding
window. Quotas of different domains on one address have separate budgets.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

from connquota.api.limits import SHARED_SCOPES, Limit, LimitName, LimitScope, LimitShape
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.arithmetic import exact
from connquota.planner.errors import PoolError
from connquota.planner.inputs import QuotaInput

BUDGET_SCOPES = SHARED_SCOPES
BUDGET_SHAPES = frozenset(
    {
        LimitShape.CONCURRENT,
        LimitShape.SLIDING_WINDOW,
        LimitShape.TOKEN_BUCKET,
        LimitShape.MIN_SPACING,
    }
)


@dataclass(frozen=True, order=True, slots=True)
class BudgetKey:
    """One budget: a limit of a domain on one public address (ip), one account id (account)
    or one API key id (apiKey)."""

    domain: str
    scope: LimitScope
    key: str
    """The public address (ip scope), the account id (account) or the key id (apiKey)."""
    limit: LimitName

    def __str__(self) -> str:
        return f"{self.domain} {self.scope.value} {self.key} {self.limit.value}"


@dataclass(frozen=True, slots=True)
class PooledLimit:
    """The strictest view of one limit among the quotas of a domain on a pool."""

    name: LimitName
    scope: LimitScope
    shape: LimitShape
    value: float
    window_s: float | None
    burst: int | None

    @property
    def is_rate(self) -> bool:
        """True when the limit counts events over a window."""
        return self.shape != LimitShape.CONCURRENT


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget's integer value and the limit it comes from."""

    key: BudgetKey
    value: int
    limit: PooledLimit
    burst: int | None = None


def pooled_limits(
    quotas: Sequence[QuotaInput], domain: str
) -> dict[tuple[LimitName, LimitScope], PooledLimit]:
    """Every ip/account/apiKey-scoped limit of `domain`, combined over the quotas (strictest view)."""
    by_key: dict[tuple[LimitName, LimitScope], list[Limit]] = {}
    for q in sorted(quotas, key=lambda q: q.key):
        if q.domain != domain:
            continue
        for limit in q.profile.limits:
            if limit.scope in BUDGET_SCOPES and limit.shape in BUDGET_SHAPES:
                by_key.setdefault((limit.name, limit.scope), []).append(limit)
    out: dict[tuple[LimitName, LimitScope], PooledLimit] = {}
    for key in sorted(by_key):
        limits = by_key[key]
        shapes = {lim.shape for lim in limits}
        shape = limits[0].shape if len(shapes) == 1 else LimitShape.SLIDING_WINDOW
        windows = [lim.windowSeconds for lim in limits if lim.windowSeconds is not None]
        bursts = [lim.burst for lim in limits if lim.burst is not None]
        value = min(lim.value for lim in limits)
        if shape == LimitShape.SLIDING_WINDOW and len(shapes) > 1 and bursts:
            value = min(value, *bursts)
        out[key] = PooledLimit(
            name=key[0],
            scope=key[1],
            shape=shape,
            value=value,
            window_s=max(windows) if windows else None,
            burst=min(bursts) if bursts and shape == LimitShape.TOKEN_BUCKET else None,
        )
    return out


def _network(public: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(public, strict=False)
    except ValueError:
        return None


def _overlap(pool: ExchangeEgressPoolSpec) -> str | None:
    """A message naming two entries of which one's public address or prefix holds the other.

    Only a prefix can hold another entry (two equal single addresses are caught as duplicates),
    so each prefix is compared with every entry: O(prefixes x entries)."""
    nets = [(a, _network(a.publicAddress)) for a in pool.addresses]
    prefixes = [(a, n) for a, n in nets if n is not None and n.num_addresses > 1]
    for wide, wide_net in prefixes:
        for other, net in nets:
            if other is wide or net is None or net.version != wide_net.version:
                continue
            if net == wide_net or not wide_net.overlaps(net):
                continue
            if net.prefixlen < wide_net.prefixlen:
                wide, wide_net, other, net = other, net, wide, wide_net
            return (
                f"the egress pool lists {other.publicAddress} (address {other.name!r}) "
                f"inside {wide.publicAddress} (address {wide.name!r}); an exchange that "
                "counts per prefix sees both as one budget, so list only one of them"
            )
    return None


def check_pool(pool: ExchangeEgressPoolSpec) -> None:
    """Raise PoolError when the pool cannot be planned on (no addresses, duplicates, an
    address or prefix inside another entry's prefix)."""
    if not pool.addresses:
        raise PoolError("the egress pool has no addresses; add at least one to spec.addresses")
    names: set[str] = set()
    publics: set[str] = set()
    for a in pool.addresses:
        if a.name in names:
            raise PoolError(f"the egress pool names address {a.name!r} twice; names are unique")
        if a.publicAddress in publics:
            raise PoolError(
                f"the egress pool lists public address {a.publicAddress} twice; the exchange "
                "counts one budget per public address, so list it once"
            )
        names.add(a.name)
        publics.add(a.publicAddress)
    overlap = _overlap(pool)
    if overlap is not None:
        raise PoolError(overlap)


def pool_budgets(
    pool: ExchangeEgressPoolSpec, quotas: Sequence[QuotaInput]
) -> dict[BudgetKey, Budget]:
    """Every budget of the pool for the domains its quotas use (sorted by key)."""
    check_pool(pool)
    out: dict[BudgetKey, Budget] = {}
    domains = sorted({q.domain for q in quotas})
    for domain in domains:
        keep = 1 - exact(pool.reserved_fraction(domain))
        for (name, scope), limit in pooled_limits(quotas, domain).items():
            value = math.floor(exact(limit.value) * keep)
            burst = math.floor(limit.burst * keep) if limit.burst is not None else None
            if scope == LimitScope.IP:
                keys = [a.publicAddress for a in pool.addresses]
            else:
                keys = sorted(
                    {k for q in quotas if q.domain == domain for k in q.identities(scope)}
                )
            for key in keys:
                bk = BudgetKey(domain, scope, key, name)
                out[bk] = Budget(bk, value, limit, burst)
    return dict(sorted(out.items(), key=_budget_order))


def _budget_order(item: tuple[BudgetKey, Budget]) -> tuple[str, LimitScope, str, LimitName]:
    """BudgetKey's own order (its fields in turn), compared at C speed."""
    k = item[0]
    return (k.domain, k.scope, k.key, k.limit)
