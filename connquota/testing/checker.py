"""An independent checker of invariant I1 (fleet limit safety) over a pool.

Deliberately separate from the planner, the transition code and `connquota.api.timing`: it
imports neither, recomputes everything from the raw published plans and acknowledgements, and
keeps its own copy of the limit formulas, written from docs/design.md (a unit test fails when
they and `connquota.api.timing` disagree). For every pod of every quota it takes the largest
slice the pod may be enforcing:

- every published generation at or after the newest one the pod acknowledged (a pod may
  pick up any published generation at any moment), and the acknowledged one itself;
- for rate limits, also every older generation whose slice was released less than its memory
  plus the margin ago (released = the first acknowledgement of a newer generation; memory =
  one window, and for connection attempts also the connect timeout and the SYN lead).

Then, for each budget, the sum over pods must not exceed it. A pod that a generation does not
list holds nothing in that generation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connquota.api.limits import (
    SHARED_SCOPES,
    Heartbeat,
    HeartbeatDirection,
    LimitScope,
    LimitShape,
)
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec

# --- the design's formulas, this checker's own copy ------------------------------------------

MARGIN_S = 1.0
"""design.md: a rate slice moves only after "one window plus margin"; one margin everywhere."""

SYN_LEAD_S = 0.25
"""How long before its SYN a gateway may record an attempt (its log counts from the record)."""


def attempt_hold_s(window_s: float, connect_timeout_s: float, margin_s: float = MARGIN_S) -> float:
    """design.md: an attempt "stays in the window until t_syn + connect_timeout + W + margin",
    measured from a record made up to SYN_LEAD_S before the SYN."""
    return window_s + connect_timeout_s + margin_s + SYN_LEAD_S


def memory_s(limit: str, window_s: float, connect_timeout_s: float) -> float:
    """How long a rate slice's use keeps counting, before the margin."""
    if limit == "connectionAttempts":
        return attempt_hold_s(window_s, connect_timeout_s, margin_s=0.0)
    return window_s


def heartbeat_reserve(heartbeat: Heartbeat, window_s: float | None, capacity: int | None) -> int:
    """design.md: "every message slice keeps a reserve for heartbeats" when the client's pings
    or pongs count: one per heartbeat interval in the window (at least one)."""
    if heartbeat.direction == HeartbeatDirection.SERVER_HEARTBEAT:
        return 0
    if not heartbeat.countsAsMessage:
        return 0
    per_window = 1 if window_s is None else math.ceil(window_s / heartbeat.intervalSeconds)
    per_window = max(per_window, 1)
    return per_window if capacity is None else max(0, min(per_window, capacity))


# --- the check -------------------------------------------------------------------------------

CheckKey = tuple[str, str, str, str]
"""(domain, scope, public address or account id, limit name)."""


@dataclass(frozen=True)
class Ack:
    """A pod acknowledged (reported it enforces) `generation` at operator-monotonic time `at`."""

    ordinal: int
    generation: int
    at: float


@dataclass
class QuotaHistory:
    """Everything published for one quota, and every acknowledgement seen (any order)."""

    quota: str
    published: list[QuotaPlan] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)


@dataclass(frozen=True)
class Holder:
    """One pod's part of a budget, and which generation gives it."""

    quota: str
    ordinal: int
    value: int
    generation: int
    released: bool


@dataclass(frozen=True)
class Violation:
    """A budget whose holders may together use more than it allows."""

    key: CheckKey
    budget: int
    total: int
    holders: tuple[Holder, ...]

    def __str__(self) -> str:
        parts = ", ".join(
            f"{h.quota}#{h.ordinal}={h.value}@g{h.generation}{' (released)' if h.released else ''}"
            for h in self.holders
        )
        return f"{' '.join(self.key)}: {self.total} > budget {self.budget} ({parts})"


def _key_of(k: Any) -> CheckKey:
    """A budget key as a (domain, scope, key, limit) tuple, from a tuple or a `BudgetKey`."""
    if isinstance(k, tuple):
        return tuple(str(x) for x in k)  # type: ignore[return-value]
    return (k.domain, str(k.scope.value), k.key, str(k.limit.value))


def _pod_holds(
    history: QuotaHistory,
    public: Mapping[str, str],
    now: float,
    margin_s: float,
) -> tuple[dict[CheckKey, list[Holder]], list[str]]:
    problems: list[str] = []
    ordinals = sorted({p.ordinal for plan in history.published for p in plan.pods})
    out: dict[CheckKey, list[Holder]] = {}
    for ordinal in ordinals:
        acks = [a for a in history.acks if a.ordinal == ordinal]
        acked = max((a.generation for a in acks), default=None)
        best: dict[CheckKey, Holder] = {}
        for plan in history.published:
            g = plan.generation
            released_at = None
            if acked is not None and g < acked:
                later = [a.at for a in acks if a.generation > g]
                released_at = min(later)
            pod = next((p for p in plan.pods if p.ordinal == ordinal), None)
            if pod is None:
                continue
            for s in pod.slices:
                if s.scope not in SHARED_SCOPES:
                    continue
                if released_at is not None:
                    if s.shape == LimitShape.CONCURRENT or s.windowSeconds is None:
                        continue
                    timeout_s = pod.profile.connectTimeoutSeconds
                    memory = memory_s(s.limit.value, s.windowSeconds, timeout_s)
                    if now >= released_at + memory + margin_s:
                        continue
                if s.scope == LimitScope.IP:
                    key_value = public.get(s.key)
                    if key_value is None:
                        problems.append(
                            f"{history.quota}#{ordinal} g{g}: slice on unknown address {s.key}"
                        )
                        continue
                else:
                    key_value = s.key
                key = (pod.profile.domain, s.scope.value, key_value, s.limit.value)
                h = Holder(history.quota, ordinal, s.value, g, released_at is not None)
                if key not in best or h.value > best[key].value:
                    best[key] = h
        for key, h in best.items():
            out.setdefault(key, []).append(h)
    return out, problems


def check_budgets(
    pool: ExchangeEgressPoolSpec,
    budgets: Mapping[Any, float],
    histories: Iterable[QuotaHistory],
    now: float,
    margin_s: float = MARGIN_S,
) -> list[Violation | str]:
    """Every way the pool may exceed a budget now; empty when I1 holds.

    `budgets` maps (domain, scope, public address or account id, limit) - tuples or
    `BudgetKey`s - to integer budgets. A slice on a key without a budget counts against 0.
    """
    public = {a.name: a.publicAddress for a in pool.addresses}
    totals: dict[CheckKey, list[Holder]] = {}
    problems: list[Violation | str] = []
    for history in histories:
        holds, issues = _pod_holds(history, public, now, margin_s)
        problems.extend(issues)
        for key, hs in holds.items():
            totals.setdefault(key, []).extend(hs)
    limits = {_key_of(k): int(v) for k, v in budgets.items()}
    for key in sorted(totals):
        holders = totals[key]
        total = sum(h.value for h in holders)
        budget = limits.get(key, 0)
        if total > budget:
            problems.append(Violation(key, budget, total, tuple(holders)))
    return problems


@dataclass(frozen=True)
class Certificate:
    """The operator's word (on a new Lease) that nothing pod `ordinal` of `quota` did before
    `at` still counts, issued while publishing `generation`."""

    quota: str
    ordinal: int
    generation: int
    at: float


def check_certificates(
    pool: ExchangeEgressPoolSpec,
    histories: Mapping[str, QuotaHistory],
    certificates: Iterable[Certificate],
    margin_s: float = MARGIN_S,
) -> list[str]:
    """Every certificate issued while its ordinal may still be enforcing a rate slice, or
    while a rate slice it gave up may still count: from the generations published before the
    certificate and the acknowledgements seen by then, by this checker's own formulas."""
    public = {a.name: a.publicAddress for a in pool.addresses}
    problems = []
    for c in certificates:
        history = histories.get(c.quota)
        if history is None:
            continue
        past = QuotaHistory(
            c.quota,
            [p for p in history.published if p.generation < c.generation],
            [a for a in history.acks if a.at <= c.at],
        )
        rates = {
            s.limit.value
            for plan in past.published
            for pod in plan.pods
            for s in pod.slices
            if s.windowSeconds is not None and s.shape != LimitShape.CONCURRENT
        }
        holds, _ = _pod_holds(past, public, c.at, margin_s)
        for key, holders in sorted(holds.items()):
            for h in holders:
                if h.ordinal == c.ordinal and key[3] in rates and h.value > 0:
                    problems.append(
                        f"{c.quota}#{c.ordinal} certified fresh at t={c.at} (g{c.generation}) "
                        f"while it may still use {' '.join(key)}={h.value} from g{h.generation}"
                        f"{' (released)' if h.released else ''}"
                    )
    return problems


def check_plan_consistency(plan: QuotaPlan) -> list[str]:
    """Each pod's connections fit its own slices (per address, account and API key: a gateway
    never goes beyond them), and each
    per-connection message slice keeps the design's heartbeat reserve."""
    problems = []
    for pod in plan.pods:
        for s in pod.slices:
            if s.limit.value == "messagesPerConnection" and s.windowSeconds is not None:
                want = heartbeat_reserve(pod.profile.heartbeat, s.windowSeconds, s.value)
                if s.reserve != want:
                    problems.append(
                        f"pod {pod.ordinal}: messagesPerConnection reserve {s.reserve}, "
                        f"the heartbeats need {want}"
                    )
        per_address: dict[str, int] = {}
        per_identity: dict[tuple[LimitScope, str], int] = {}
        credentials = {c.name: c for c in pod.credentials}
        for c in pod.connections:
            per_address[c.address] = per_address.get(c.address, 0) + 1
            if c.credential is not None:
                cred = credentials.get(c.credential)
                if cred is None:
                    problems.append(f"pod {pod.ordinal} connection {c.id}: unknown credential")
                    continue
                # Written out here, not taken from the planner: an account id, and a key id
                # that defaults to it.
                for ident in (
                    (LimitScope.ACCOUNT, cred.accountId),
                    (LimitScope.API_KEY, cred.keyId or cred.accountId),
                ):
                    per_identity[ident] = per_identity.get(ident, 0) + 1
            cap = next(
                (s.value for s in pod.slices if s.limit.value == "streamsPerConnection"), None
            )
            if cap is not None and len(c.streams) > cap:
                problems.append(f"pod {pod.ordinal} connection {c.id}: {len(c.streams)} > {cap}")
        for address, n in per_address.items():
            concurrent = next(
                (
                    s.value
                    for s in pod.slices
                    if s.scope == LimitScope.IP
                    and s.key == address
                    and s.limit.value == "concurrentConnections"
                ),
                None,
            )
            if concurrent is not None and n > concurrent:
                problems.append(
                    f"pod {pod.ordinal}: {n} connections on {address} > slice {concurrent}"
                )
        for (scope, key), n in per_identity.items():
            concurrent = next(
                (
                    s.value
                    for s in pod.slices
                    if (s.scope, s.key) == (scope, key) and s.limit.value == "concurrentConnections"
                ),
                None,
            )
            if concurrent is not None and n > concurrent:
                problems.append(
                    f"pod {pod.ordinal}: {n} connections on {scope.value} {key} > slice "
                    f"{concurrent}"
                )
    return problems
