"""One definition of every limit formula (`connquota.api.timing`), used by the planner, and
the independent checker's own copy written from the design: they agree, or this fails."""

from __future__ import annotations

import itertools

import pytest
from planner_factories import plan_one, pool, profile, quota, streams

from connquota.api import timing
from connquota.api.limits import Heartbeat, HeartbeatDirection, LimitName, LimitScope
from connquota.exchanges import PROFILES
from connquota.planner.ledger import QuotaLedger, record_ack, record_publication
from connquota.testing import checker

WINDOWS = [0.05, 0.25, 1.0, 10.0, 60.0, 300.0]
TIMEOUTS = [0.0, 2.5, 10.0]


def test_the_margin_and_the_syn_grace_are_the_designs():
    assert timing.WINDOW_MARGIN_S == checker.MARGIN_S
    assert timing.SYN_GRACE_S == checker.SYN_LEAD_S


@pytest.mark.parametrize(("window_s", "timeout_s"), list(itertools.product(WINDOWS, TIMEOUTS)))
def test_attempt_hold_and_rate_memory_agree_with_the_checkers_copy(window_s, timeout_s):
    for margin in (0.0, 1.0, 2.0):
        assert timing.attempt_hold_s(window_s, timeout_s, margin) == checker.attempt_hold_s(
            window_s, timeout_s, margin
        )
    for name in LimitName:
        assert timing.rate_memory_s(name, window_s, timeout_s) == checker.memory_s(
            name.value, window_s, timeout_s
        ), name


def test_heartbeat_reserve_agrees_with_the_checkers_copy():
    for direction, counts, interval, window, capacity in itertools.product(
        list(HeartbeatDirection), [True, False], [0.5, 3.0, 20.0], [None, *WINDOWS], [None, 0, 1, 7]
    ):
        hb = Heartbeat(
            direction=direction, intervalSeconds=interval, timeoutSeconds=60, countsAsMessage=counts
        )
        assert timing.heartbeat_reserve(hb, window, capacity) == checker.heartbeat_reserve(
            hb, window, capacity
        ), (direction, counts, interval, window, capacity)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_builtin_profiles_plan_keeps_the_designs_heartbeat_reserve(name):

    q = quota(prof=PROFILES[name])
    plan = plan_one(q, pool(1), streams(20))
    assert checker.check_plan_consistency(plan) == []


def test_recovery_bound_is_batches_of_the_designs_attempt_hold():
    prof = profile(attempts=2)
    q = quota(prof=prof, connections_per_pod=50)

    plan = plan_one(q, pool(1), streams(400))
    bound = plan.recoveryBounds[0]
    attempts = prof.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    assert attempts is not None and attempts.windowSeconds is not None
    usable = int(0.8 * 2)
    batches = -(-bound.connections // usable)
    hold = checker.attempt_hold_s(attempts.windowSeconds, prof.connectTimeoutSeconds)
    assert bound.seconds == pytest.approx(batches * hold)


def test_a_released_attempt_slice_counts_for_the_designs_attempt_hold():

    prof = profile(attempts=10)
    q = quota(prof=prof)
    p = pool(1)
    first = plan_one(q, p, streams(100))
    second = plan_one(q, p, streams(10), previous=first, generation=2)
    ledger = record_publication(QuotaLedger(quota=q.key), first, p)
    ledger = record_publication(ledger, second, p)
    ledger = record_ack(ledger, 0, 1, at=0.0)
    ledger = record_ack(ledger, 0, 2, at=100.0)
    attempts = prof.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    assert attempts is not None and attempts.windowSeconds is not None
    released = [r for r in ledger.releases if r.slice.limit == "connectionAttempts"]
    assert released
    want = 100.0 + checker.attempt_hold_s(attempts.windowSeconds, prof.connectTimeoutSeconds)
    assert all(r.until == pytest.approx(want) for r in released)
