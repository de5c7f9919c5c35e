"""Publishing safely: shrinks at once, grows only once what they take from is released."""

from __future__ import annotations

from planner_factories import N, S, plan_one, pool, profile, quota, streams

from connquota.planner.ledger import (
    QuotaLedger,
    forgettable,
    rebase_clock,
    record_ack,
    record_publication,
)
from connquota.planner.shares import divide_budgets
from connquota.planner.transitions import budget_table, next_publication
from connquota.testing.checker import Ack, QuotaHistory, check_budgets

PROF = profile(attempts=10, attempts_window_s=60, concurrent_ip=10)
ATTEMPT_MEMORY_S = 0.25 + PROF.connectTimeoutSeconds + 60 + 1.0
"""An attempt slice counts SYN grace + connect timeout + window + margin after it is released."""
POOL = pool(1)
ATTEMPTS = ("stream.example.com", "ip", "198.51.100.1", "connectionAttempts")


class Fleet:
    """A pool with quotas whose plans are published through next_publication."""

    def __init__(self) -> None:
        self.ledgers: dict[str, QuotaLedger] = {}
        self.histories: dict[str, QuotaHistory] = {}
        self.published: dict = {}
        self.specs: dict = {}

    def step(self, now: float, live: list[str] | None = None):
        live = sorted(self.specs) if live is None else live
        quotas = [self.specs[k] for k in live]
        shares = divide_budgets(POOL, quotas)
        budgets = budget_table(shares.budgets)
        results = {}
        for q in quotas:
            prev = self.published.get(q.key)
            target = plan_one(
                q,
                POOL,
                streams(40),
                previous=prev,
                generation=(prev.generation + 1) if prev else 1,
                others=[o for o in quotas if o.key != q.key],
            )
            t = next_publication(POOL, budgets, self.ledgers, q.key, prev, target, now)
            if t.plan is not None:
                self.publish(q.key, t.plan)
            results[q.key] = t
        return results

    def publish(self, key, plan):
        ledger = self.ledgers.get(key) or QuotaLedger(quota=key)
        self.ledgers[key] = record_publication(ledger, plan, POOL)
        self.histories.setdefault(key, QuotaHistory(key)).published.append(plan)
        self.published[key] = plan

    def ack_all(self, key, now):
        plan = self.published[key]
        for pod in plan.pods:
            self.ack(key, pod.ordinal, plan.generation, now)

    def ack(self, key, ordinal, generation, now):
        self.ledgers[key] = record_ack(self.ledgers[key], ordinal, generation, now)
        self.histories[key].acks.append(Ack(ordinal, generation, now))

    def violations(self, now):
        budgets = budget_table(divide_budgets(POOL, list(self.specs.values())).budgets)
        return check_budgets(POOL, budgets, self.histories.values(), now)


def attempts_of(plan):
    return [p.slice(N.CONNECTION_ATTEMPTS, S.IP, "a0").value for p in plan.pods if p.connections]


def test_first_plan_on_an_empty_pool_is_published_whole():
    fleet = Fleet()
    fleet.specs["team/a"] = quota("a", prof=PROF)
    t = fleet.step(0.0)["team/a"]
    assert t.reached_target and t.waiting == []
    assert attempts_of(t.plan) == [8]


def test_second_quota_joining_grows_only_after_the_first_acked_its_shrink_and_a_window_passed():
    fleet = Fleet()
    fleet.specs["team/a"] = quota("a", prof=PROF)
    fleet.step(0.0)
    fleet.ack_all("team/a", 1.0)
    fleet.specs["team/b"] = quota("b", prof=PROF)
    results = fleet.step(10.0)
    a, b = results["team/a"], results["team/b"]
    assert a.reached_target and attempts_of(a.plan) == [4]  # the shrink is published at once
    assert not b.reached_target
    assert b.waiting[0].holders == ("team/a#0",) and b.waiting[0].until is None
    assert fleet.violations(10.0) == []
    fleet.ack_all("team/a", 20.0)  # a's pod now enforces the smaller slice ...
    b2 = fleet.step(30.0)["team/b"]
    assert not b2.reached_target  # ... but its attempts stay in the exchange's window
    assert b2.waiting[0].until == 20.0 + ATTEMPT_MEMORY_S
    assert fleet.violations(30.0) == []
    at = 20.0 + ATTEMPT_MEMORY_S + 0.5
    b3 = fleet.step(at)["team/b"]
    assert b3.reached_target and attempts_of(b3.plan) == [4]
    assert fleet.violations(at) == []


def test_stale_and_repeated_acknowledgements_change_nothing():
    ledger = QuotaLedger(quota="team/a")
    q = quota("a", prof=PROF)
    p1 = plan_one(q, POOL, streams(10), generation=1)
    p2 = plan_one(q, POOL, streams(10), generation=2, previous=p1)
    ledger = record_publication(record_publication(ledger, p1, POOL), p2, POOL)
    acked = record_ack(ledger, 0, 2, at=5.0)
    assert record_ack(acked, 0, 1, at=6.0) == acked
    assert record_ack(acked, 0, 2, at=7.0) == acked


def test_deleted_quotas_share_is_released_only_after_its_pods_are_gone_and_a_window_passed():
    fleet = Fleet()
    fleet.specs["team/a"] = quota("a", prof=PROF)
    fleet.step(0.0)
    fleet.ack_all("team/a", 1.0)
    empty = fleet.published["team/a"].model_copy(
        update={"generation": 2, "pods": [], "replicas": 0}
    )
    fleet.publish("team/a", empty)
    assert not forgettable(fleet.ledgers["team/a"], 2.0)
    fleet.ack("team/a", 0, 2, 3.0)  # the pod is gone: the operator records it at 3.0
    assert not forgettable(fleet.ledgers["team/a"], 10.0)
    assert not forgettable(fleet.ledgers["team/a"], 3.0 + ATTEMPT_MEMORY_S - 0.1)
    assert forgettable(fleet.ledgers["team/a"], 3.0 + ATTEMPT_MEMORY_S + 0.1)


def test_operator_restart_rebases_memory_to_a_full_window_from_restart():
    fleet = Fleet()
    fleet.specs["team/a"] = quota("a", prof=PROF)
    fleet.step(0.0)
    fleet.ack_all("team/a", 1.0)
    ledger = fleet.ledgers["team/a"]
    empty = fleet.published["team/a"].model_copy(update={"generation": 2, "pods": []})
    ledger = record_ack(record_publication(ledger, empty, POOL), 0, 2, at=3.0)
    restarted = rebase_clock(ledger, now=0.5)  # a new process: monotonic clock near zero
    assert all(r.until == 0.5 + ATTEMPT_MEMORY_S for r in restarted.releases)
    assert restarted.model_validate_json(restarted.model_dump_json()) == restarted
