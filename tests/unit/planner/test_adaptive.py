"""Adaptive budgets: cuts, raises and the division of lowered budgets (connquota.planner.adaptive)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_factories import pool, profile, quota

from connquota.api.limits import LimitName, LimitScope
from connquota.planner.adaptive import (
    AdaptiveRule,
    AdaptiveState,
    Throttle,
    adaptive_step,
    cut,
    cut_value,
    effective_budgets,
    effective_value,
    next_change_s,
    next_raise_at,
    raise_due,
    throttle_targets,
)
from connquota.planner.budgets import Budget, BudgetKey, PooledLimit
from connquota.planner.shares import divide_budgets
from connquota.planner.transitions import budget_table

DOMAIN = "stream.example.com"
IP = "198.51.100.1"
CONC = BudgetKey(DOMAIN, LimitScope.IP, IP, LimitName.CONCURRENT_CONNECTIONS)
ATTEMPTS = BudgetKey(DOMAIN, LimitScope.IP, IP, LimitName.CONNECTION_ATTEMPTS)

rules = st.builds(
    AdaptiveRule,
    decrease=st.floats(0.05, 0.95),
    increase_fraction=st.floats(0.01, 1.0),
    clean_s=st.floats(1.0, 1000.0),
)


def budget(key: BudgetKey, value: int) -> Budget:
    from connquota.api.limits import LimitShape

    shape = (
        LimitShape.CONCURRENT
        if key.limit == LimitName.CONCURRENT_CONNECTIONS
        else LimitShape.SLIDING_WINDOW
    )
    window = None if shape == LimitShape.CONCURRENT else 2.0
    return Budget(key, value, PooledLimit(key.limit, key.scope, shape, value, window, None))


def throttle(at: float, status: int = 429, **use: int) -> Throttle:
    return Throttle(
        pod="ns/gw-0",
        scope=LimitScope.IP,
        key=IP,
        status=status,
        at=at,
        on_session=False,
        use={LimitName(k): v for k, v in use.items()},
    )


@given(st.integers(1, 10_000), rules, st.integers(1, 30))
def test_every_cut_removes_a_unit_never_goes_below_one_and_keeps_e_within_b(
    b: int, rule: AdaptiveRule, n: int
) -> None:
    state: AdaptiveState | None = None
    bud = budget(CONC, b)
    for i in range(n):
        before = effective_value(b, state)
        state = cut(state, bud, throttle(float(i)), rule)
        after = effective_value(b, state)
        assert 1 <= after <= b
        assert after <= max(1, before - 1)
        assert after == cut_value(before, rule)


def test_the_documented_sequence() -> None:
    rule = AdaptiveRule()
    assert [cut_value(e, rule) for e in (4, 6, 4, 3, 2, 1)] == [3, 4, 3, 2, 1, 1]


@given(st.integers(2, 1000), rules, st.floats(0, 10_000))
def test_raises_come_only_after_the_clean_period_and_never_pass_b(
    b: int, rule: AdaptiveRule, wait: float
) -> None:
    bud = budget(CONC, b)
    state = cut(None, bud, throttle(100.0), rule)
    assert raise_due(state, bud, 1e9, rule) is state  # not in force yet: no raise
    from dataclasses import replace

    state = replace(state, in_force_at=150.0)
    due = next_raise_at(state, rule)
    assert due == 150.0 + rule.clean_s
    after = raise_due(state, bud, 150.0 + wait, rule)
    if 150.0 + wait < due:
        assert after is state
    else:
        assert after is None or state.effective < after.effective <= b - 1


@given(st.integers(1, 200), st.integers(1, 200), st.integers(1, 6), st.lists(st.integers(0, 3)))
@settings(max_examples=60, deadline=None)
def test_divided_lowered_budgets_never_sum_above_e(
    limit: int, effective: int, n_quotas: int, requests: list[int]
) -> None:
    prof = profile(concurrent_ip=limit, attempts=limit, attempts_window_s=10)
    quotas = [
        quota(
            name=f"q{i}",
            prof=prof,
            streams=1,
            shares=[{"address": "*", "fraction": requests[i] / 10}]
            if i < len(requests) and requests[i]
            else None,
        )
        for i in range(n_quotas)
    ]
    spec = pool(2)
    plain = divide_budgets(spec, quotas)
    states = {
        k: AdaptiveState(k, effective, 1, 0.0, "429", 0.0)
        for k in plain.budgets
        if k.limit == LimitName.CONCURRENT_CONNECTIONS
    }
    shares = divide_budgets(spec, quotas, states)
    for key, b in shares.budgets.items():
        configured = shares.configured_budget(key)
        assert configured is not None
        assert b.value <= configured.value
        if key in states:
            assert b.value == effective_value(configured.value, states[key])
            assert configured.value == plain.budgets[key].value
        total = sum(
            q.table(key.scope).get((name, key.limit), 0)
            for q in shares.quotas.values()
            for name in {a.name for a in spec.addresses if a.publicAddress == key.key}
        )
        assert total <= b.value
    table = budget_table(shares.budgets)
    assert all(v <= plain.budgets[k].value for k, v in _by_budget(shares, table))


def _by_budget(shares, table):
    for key in shares.budgets:
        hold_key = (key.domain, key.scope.value, key.key, key.limit)
        if hold_key in table:
            yield key, table[hold_key]


def test_a_refused_handshake_at_full_concurrency_cuts_only_what_is_at_risk() -> None:
    rule = AdaptiveRule()
    budgets = {CONC: budget(CONC, 4), ATTEMPTS: budget(ATTEMPTS, 6)}
    # 4 connections (3 open + the refused one), 2 attempts in the window.
    at_full = throttle(1.0, concurrentConnections=4, connectionAttempts=2)
    assert throttle_targets(budgets, {}, at_full, DOMAIN, rule) == [CONC]
    # Nothing at risk: something outside the fleet uses the address; both are cut.
    idle = throttle(1.0, concurrentConnections=1, connectionAttempts=1)
    assert throttle_targets(budgets, {}, idle, DOMAIN, rule) == [CONC, ATTEMPTS]


def test_a_step_cuts_once_coalesces_until_in_force_then_raises_back() -> None:
    rule = AdaptiveRule(clean_s=15.0, settle_s=0.0)
    budgets = {CONC: budget(CONC, 4), ATTEMPTS: budget(ATTEMPTS, 6)}
    t1, t2 = throttle(10.0, concurrentConnections=4), throttle(11.0, concurrentConnections=4)
    step = adaptive_step({}, budgets, [(t1, DOMAIN), (t2, DOMAIN)], {CONC: 4}, 12.0, rule)
    assert [(k, b, a) for k, b, a, _ in step.cuts] == [(CONC, 4, 3)]
    assert [v for _, v in step.verdicts] == ["unexplained", "coalesced"]
    assert step.states[CONC].in_force_at is None  # holds 4 > 3
    step = adaptive_step(step.states, budgets, [], {CONC: 3}, 13.0, rule)
    assert step.states[CONC].in_force_at == 13.0
    assert effective_budgets(budgets, step.states)[CONC].value == 3
    # A throttle after the cut took effect cuts again (the limit is lower still).
    t3 = throttle(14.0, concurrentConnections=3)
    step = adaptive_step(step.states, budgets, [(t3, DOMAIN)], {CONC: 3}, 14.5, rule)
    assert step.states[CONC].effective == 2
    step = adaptive_step(step.states, budgets, [], {CONC: 2}, 15.0, rule)
    # Clean: one unit per clean period, then forgotten at B.
    step = adaptive_step(step.states, budgets, [], {CONC: 2}, 15.0 + 15.0, rule)
    assert step.raises == [(CONC, 2, 3)]
    step = adaptive_step(step.states, budgets, [], {CONC: 3}, 30.0 + 14.0, rule)
    assert step.raises == []
    step = adaptive_step(step.states, budgets, [], {CONC: 3}, 30.0 + 15.0, rule)
    assert step.raises == [(CONC, 3, 4)]
    assert step.states == {}


def test_stale_throttles_cut_nothing() -> None:
    rule = AdaptiveRule(clean_s=15.0)
    budgets = {CONC: budget(CONC, 4)}
    step = adaptive_step({}, budgets, [(throttle(1.0), DOMAIN)], {}, 100.0, rule)
    assert step.states == {} and step.verdicts[0][1] == "stale"


def test_a_throttle_is_judged_once_the_other_pods_reports_caught_up() -> None:
    rule = AdaptiveRule(clean_s=15.0, settle_s=3.0)
    budgets = {CONC: budget(CONC, 4)}
    t = throttle(10.0, concurrentConnections=4)
    step = adaptive_step({}, budgets, [(t, DOMAIN)], {}, 12.0, rule)
    assert step.states == {} and step.verdicts == [(t, "pending")]
    assert next_change_s(step.states, 12.0, rule, [t]) == pytest.approx(1.2)
    step = adaptive_step({}, budgets, [(t, DOMAIN)], {}, 13.0, rule)
    assert step.states[CONC].effective == 3
