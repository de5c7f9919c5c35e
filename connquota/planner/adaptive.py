"""Adaptive budgets: a budget the exchange throttles although the fleet kept inside it is
lowered, then raised slowly back (pure functions; the operator keeps the state).

Notation: B is the configured budget (after the pool's `reserved`), E the effective budget the
shares are divided from. Always 1 <= E <= B.

- **Cut**, per unexplained throttle (a 429/418 the plan did not predict) of a limit at risk:
  ``E <- max(1, min(floor(decrease x E), E - 1))``: at least one unit, never below 1 (stopping
  altogether is the quarantine's job). With decrease = 0.75: 4 -> 3, 6 -> 4 -> 3 -> 2 -> 1.
- A throttle that comes before the previous cut took effect (every pod acknowledged the
  shrink: the pool's holds on the budget are at most E) was caused by the old budget: it is
  coalesced, not cut again.
- **Raise**, once the last step is in force and `clean_s` passed since then and since the
  last unexplained throttle: ``E <- min(B, E + max(1, ceil(increase_fraction x B)))``, one
  step per `clean_s`. At E = B the state is forgotten.

I1 holds because E <= B: a cut shrinks the shares (published at once, like every shrink; until
they are acknowledged the pool's holds exceed E and block every grow on it), and a raise is an
ordinary grow, granted only when the holds plus the grow fit E.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from connquota.api.limits import LimitName, LimitScope
from connquota.planner.budgets import Budget, BudgetKey

CONNECTION_LIMITS = (LimitName.CONCURRENT_CONNECTIONS, LimitName.CONNECTION_ATTEMPTS)
"""What a refused handshake may have hit (the exchange does not say which)."""

SESSION_LIMITS = {
    LimitScope.IP: LimitName.MESSAGES_PER_IP,
    LimitScope.ACCOUNT: LimitName.MESSAGES_PER_ACCOUNT,
}
"""What a throttle inside a session may have hit, besides the connection limits."""


@dataclass(frozen=True)
class AdaptiveRule:
    """The constants of the rule (operator settings `adaptive*`)."""

    decrease: float = 0.75
    increase_fraction: float = 0.05
    clean_s: float = 600.0
    settle_s: float = 3.0
    """A throttle is judged this long after it came, once the other pods' reports show what
    they held then (a report is at most a report interval old): a stale report from before a
    mass disconnect would make a limit look at risk that was not."""

    def __post_init__(self) -> None:
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        if not 0 < self.increase_fraction <= 1:
            raise ValueError("increase_fraction must be in (0, 1]")
        if self.clean_s <= 0:
            raise ValueError("clean_s must be > 0")


@dataclass(frozen=True)
class AdaptiveState:
    """One lowered budget."""

    key: BudgetKey
    effective: int
    """E (at most the configured budget when applied)."""
    cuts: int
    """Cuts since the budget was last at its configured value."""
    last_throttle_at: float
    """Wall clock of the newest unexplained throttle."""
    last_throttle: str
    """What it was: status and pod."""
    changed_at: float
    """Wall clock of the last cut or raise."""
    in_force_at: float | None = None
    """Wall clock of the first pass at which the last cut had taken effect (None: not yet)."""


@dataclass(frozen=True)
class Throttle:
    """One 429/418 a gateway reported."""

    pod: str
    scope: LimitScope
    key: str
    """The budget's key: public address (ip) or account id."""
    status: int
    at: float
    on_session: bool
    cause: LimitName | None = None
    use: Mapping[LimitName, int] = field(default_factory=dict)
    """The fleet's use of each limit on the key at the throttle (the pod's own count then,
    the other pods' latest reports)."""

    @property
    def ident(self) -> tuple[str, str, str, float]:
        """Deduplication key."""
        return (self.pod, self.scope.value, self.key, self.at)


@dataclass(frozen=True)
class AdaptiveStep:
    """What one pass decided."""

    states: dict[BudgetKey, AdaptiveState]
    cuts: list[tuple[BudgetKey, int, int, Throttle]] = field(default_factory=list)
    """(budget, E before, E after, the throttle)."""
    raises: list[tuple[BudgetKey, int, int]] = field(default_factory=list)
    """(budget, E before, E after; E after = B: restored)."""
    verdicts: list[tuple[Throttle, str]] = field(default_factory=list)
    """unexplained | coalesced | stale | unknown-limit | pending (judged later)."""


def effective_value(configured: int, state: AdaptiveState | None) -> int:
    """E for a budget B: min(B, the state's E), never below 1 unless B is 0."""
    if state is None or configured <= 0:
        return configured
    return max(1, min(configured, state.effective))


def cut_value(effective: int, rule: AdaptiveRule) -> int:
    """E after one cut: at least one unit less, never below 1."""
    return max(1, min(math.floor(rule.decrease * effective), effective - 1))


def raise_value(effective: int, configured: int, rule: AdaptiveRule) -> int:
    """E after one raise: one step of max(1, ceil(increase_fraction x B)), at most B."""
    step = max(1, math.ceil(rule.increase_fraction * configured))
    return min(configured, effective + step)


def cut(
    state: AdaptiveState | None, budget: Budget, throttle: Throttle, rule: AdaptiveRule
) -> AdaptiveState:
    """The state after one unexplained throttle of `budget`."""
    before = effective_value(budget.value, state)
    return AdaptiveState(
        key=budget.key,
        effective=cut_value(before, rule),
        cuts=(state.cuts if state else 0) + 1,
        last_throttle_at=throttle.at,
        last_throttle=f"{throttle.status} (pod {throttle.pod})",
        changed_at=throttle.at,
        in_force_at=None,
    )


def next_raise_at(state: AdaptiveState, rule: AdaptiveRule) -> float | None:
    """Wall clock at which the next raise is due (None: the last cut is not in force yet)."""
    if state.in_force_at is None:
        return None
    return max(state.in_force_at, state.last_throttle_at) + rule.clean_s


def raise_due(
    state: AdaptiveState, budget: Budget, wall_now: float, rule: AdaptiveRule
) -> AdaptiveState | None:
    """The state after a raise when one is due (itself when not; None: back at B)."""
    due = next_raise_at(state, rule)
    if due is None or wall_now < due:
        return state
    after = raise_value(effective_value(budget.value, state), budget.value, rule)
    if after >= budget.value:
        return None
    return replace(state, effective=after, changed_at=wall_now, in_force_at=wall_now)


def effective_budgets(
    budgets: Mapping[BudgetKey, Budget], states: Mapping[BudgetKey, AdaptiveState]
) -> dict[BudgetKey, Budget]:
    """The budgets the shares are divided from: E instead of B where a state lowers it (a
    token bucket's burst lowered in proportion)."""
    out: dict[BudgetKey, Budget] = {}
    for key, b in budgets.items():
        state = states.get(key)
        value = effective_value(b.value, state)
        if value == b.value:
            out[key] = b
            continue
        burst = b.burst
        if burst is not None and b.value > 0:
            burst = min(burst, max(1, math.floor(burst * value / b.value)))
        out[key] = Budget(key, value, b.limit, burst)
    return out


def throttle_targets(
    budgets: Mapping[BudgetKey, Budget],
    states: Mapping[BudgetKey, AdaptiveState],
    throttle: Throttle,
    domain: str,
    rule: AdaptiveRule,
) -> list[BudgetKey]:
    """The budgets one throttle cuts.

    A known cause cuts that limit only. Otherwise the candidates are the key's connection
    limits (plus its message limit inside a session); a candidate is at risk when the fleet's
    use at the throttle reaches floor(decrease x E) (the cut would constrain it). Every
    candidate at risk is cut; when none is, something outside the fleet uses the key and
    every candidate is cut (a needless cut heals)."""
    if throttle.cause is not None:
        names: tuple[LimitName, ...] = (throttle.cause,)
    else:
        extra = SESSION_LIMITS.get(throttle.scope) if throttle.on_session else None
        names = (*CONNECTION_LIMITS, *((extra,) if extra else ()))
    candidates = [
        BudgetKey(domain, throttle.scope, throttle.key, n)
        for n in names
        if BudgetKey(domain, throttle.scope, throttle.key, n) in budgets
    ]
    if throttle.cause is not None:
        return candidates
    at_risk = [
        k
        for k in candidates
        if throttle.use.get(k.limit, 0)
        >= math.floor(rule.decrease * effective_value(budgets[k].value, states.get(k)))
    ]
    return at_risk or candidates


def adaptive_step(
    states: Mapping[BudgetKey, AdaptiveState],
    budgets: Mapping[BudgetKey, Budget],
    throttles: list[tuple[Throttle, str]],
    holds: Mapping[BudgetKey, int],
    wall_now: float,
    rule: AdaptiveRule,
) -> AdaptiveStep:
    """One pass: mark cuts in force, apply the new throttles ((throttle, domain), oldest
    first), then the raises that are due.

    `holds`: per budget, what the pods of the pool may enforce now (a cut is in force once
    this is at most E)."""
    out = {k: s for k, s in states.items() if k in budgets}
    step = AdaptiveStep(out)
    for key, cur in list(out.items()):
        if cur.in_force_at is None and holds.get(key, 0) <= effective_value(
            budgets[key].value, cur
        ):
            out[key] = replace(cur, in_force_at=wall_now)
    for throttle, domain in sorted(throttles, key=lambda td: td[0].at):
        if throttle.at > wall_now - rule.settle_s:
            step.verdicts.append((throttle, "pending"))
            continue
        if throttle.at < wall_now - rule.clean_s:
            step.verdicts.append((throttle, "stale"))
            continue
        targets = throttle_targets(budgets, out, throttle, domain, rule)
        if not targets:
            step.verdicts.append((throttle, "unknown-limit"))
            continue
        verdict = "coalesced"
        for key in targets:
            state = out.get(key)
            if state is not None and (
                state.in_force_at is None or throttle.at <= state.in_force_at
            ):
                continue
            before = effective_value(budgets[key].value, state)
            new = cut(state, budgets[key], throttle, rule)
            out[key] = new
            step.cuts.append((key, before, new.effective, throttle))
            verdict = "unexplained"
        step.verdicts.append((throttle, verdict))
    for key, current in list(out.items()):
        before = effective_value(budgets[key].value, current)
        after = raise_due(current, budgets[key], wall_now, rule)
        if after is None:
            del out[key]
            step.raises.append((key, before, budgets[key].value))
        elif after is not current:
            out[key] = after
            step.raises.append((key, before, after.effective))
    return step


def next_change_s(
    states: Mapping[BudgetKey, AdaptiveState],
    wall_now: float,
    rule: AdaptiveRule,
    pending: Iterable[Throttle] = (),
) -> float | None:
    """Seconds until the pool should be looked at again for its adaptive budgets (a raise
    due, a cut to see in force, a pending throttle to judge)."""
    waits = [max(0.0, t.at + rule.settle_s - wall_now) + 0.2 for t in pending]
    for state in states.values():
        due = next_raise_at(state, rule)
        waits.append(1.0 if due is None else max(0.0, due - wall_now) + 0.5)
    return min(waits) if waits else None
