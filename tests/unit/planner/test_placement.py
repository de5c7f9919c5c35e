"""Placement decided against every constraint together: every stream that fits is served,
and what is left unserved is only ever the lowest priority (issue 16's figures)."""

from __future__ import annotations

from planner_factories import (
    N,
    S,
    address,
    connections,
    credential,
    independent_budgets,
    limit,
    plan_one,
    pool,
    quota,
    streams,
)

from connquota.api.limits import ExchangeProfile
from connquota.api.pool import EgressMode, ExchangeEgressPoolSpec
from connquota.exchanges import get_profile
from connquota.testing.checker import QuotaHistory, check_budgets, check_plan_consistency

OKX = get_profile("okx")


def served(plan) -> int:
    return sum(len(c.streams) for p in plan.pods for c in p.connections)


def assert_safe(q, p, plan) -> None:
    assert check_plan_consistency(plan) == []
    history = QuotaHistory(q.key, published=[plan])
    assert check_budgets(p, independent_budgets(p, [q]), [history], now=0.0) == []


def test_okx_on_8_proxies_serves_30000_streams_on_as_many_pods_as_it_needs():
    q = quota(prof=OKX, connections_per_pod=50, max_replicas=10)
    p = pool(8)
    plan = plan_one(q, p, streams(30_000))
    assert plan.unserved == []
    assert served(plan) == 30_000
    assert len(connections(plan)) == 188  # ceil(30,000 / 160 streams per connection)
    assert plan.replicas == 4
    assert_safe(q, p, plan)


def test_okx_bind_on_4_addresses_of_one_node_serves_12000_streams():
    p = ExchangeEgressPoolSpec(
        addresses=[address(i, EgressMode.BIND, node="node-0") for i in range(4)]
    )
    q = quota(prof=OKX, connections_per_pod=20, max_replicas=10)
    plan = plan_one(q, p, streams(12_000))
    assert plan.unserved == []
    assert len(connections(plan)) == 75
    assert_safe(q, p, plan)


def test_one_attempt_per_address_gives_each_pod_its_own_address():
    prof = ExchangeProfile(
        name="custom",
        domain="slow.example.com",
        endpoint="ws://127.0.0.1:9000",
        dialect=OKX.dialect,
        heartbeat=OKX.heartbeat,
        limits=[
            limit(N.CONNECTION_ATTEMPTS, S.IP, 1, 7.0),
            limit(N.CONCURRENT_CONNECTIONS, S.IP, 3),
            limit(N.STREAMS_PER_CONNECTION, S.CONNECTION, 7),
        ],
    )
    q = quota(prof=prof, headroom=1.0, connections_per_pod=3, max_replicas=10)
    p = pool(3)
    plan = plan_one(q, p, streams(40))
    assert plan.unserved == []
    assert served(plan) == 40
    # 6 connections: 2 pods of 3, each on its own address (each address has one attempt).
    assert [len({c.address for c in pod.connections}) for pod in plan.pods] == [1, 1]
    assert_safe(q, p, plan)


def test_private_streams_of_higher_priority_are_never_left_for_public_ones():
    """okx, 2 proxies, 2 connections per pod, 4 pods: 320 private streams at priority 5 and
    480 public at priority 0 all fit (5 connections, 3 pods, 2 addresses x 2 pod slots)."""
    q = quota(
        prof=OKX,
        connections_per_pod=2,
        max_replicas=4,
        credentials=[credential("k1")],
    )
    p = pool(2)
    desired = streams(320, "p", priority=5, credential="k1") + streams(480, "pub")
    plan = plan_one(q, p, desired)
    assert plan.unserved == []
    assert served(plan) == 800
    assert_safe(q, p, plan)


def test_when_pods_run_out_the_unserved_streams_are_the_lowest_priority():
    q = quota(
        prof=OKX,
        connections_per_pod=2,
        max_replicas=2,
        credentials=[credential("k1")],
    )
    p = pool(2)
    desired = streams(480, "pub") + streams(320, "p", priority=5, credential="k1")
    plan = plan_one(q, p, desired)
    assert plan.unserved
    lowest_served = min(
        s.priority
        for s in desired
        if s.name in {n for c in connections(plan).values() for n in c[3]}
    )
    assert all(u.priority <= lowest_served for u in plan.unserved)
    assert {u.priority for u in plan.unserved} == {0}
    assert_safe(q, p, plan)
