"""The plan of one quota, by example: what a user declares and what the fleet will hold."""

from __future__ import annotations

import pytest
from planner_factories import (
    N,
    S,
    address,
    connections,
    credential,
    independent_budgets,
    opened,
    placement,
    plan_one,
    pool,
    profile,
    quota,
    streams,
)

from connquota.api.pool import EgressMode, ExchangeEgressPoolSpec
from connquota.planner.errors import PoolError
from connquota.planner.inputs import DesiredStream
from connquota.planner.pool_plan import plan_json
from connquota.testing.checker import QuotaHistory, check_budgets, check_plan_consistency


def slice_value(plan, ordinal, limit, scope, key):
    s = plan.pods[ordinal].slice(limit, scope, key)
    return None if s is None else s.value


def test_streams_that_fit_are_each_in_exactly_one_connection_filled_to_the_cap():
    q = quota(connections_per_pod=50)
    plan = plan_one(q, pool(1), streams(250))
    all_streams = [s for c in connections(plan).values() for s in c[3]]
    assert sorted(all_streams) == [f"s{i:04d}" for i in range(250)]
    assert sorted(len(c[3]) for c in connections(plan).values()) == [10, 80, 80, 80]
    assert plan.unserved == []


def test_over_capacity_serves_highest_priority_first_with_ties_by_name_and_says_why():
    q = quota(prof=profile(concurrent_ip=2))  # usable floor(0.8 x 2) = 1 connection of 80
    desired = [DesiredStream(f"low{i:03d}", 0) for i in range(100)] + [
        DesiredStream(f"vip{i:03d}", 9) for i in range(10)
    ]
    plan = plan_one(q, pool(1), desired)
    served = sorted(placement(plan))
    assert served == sorted([f"vip{i:03d}" for i in range(10)] + [f"low{i:03d}" for i in range(70)])
    assert [u.stream for u in plan.unserved][:2] == ["low070", "low071"]
    assert "concurrentConnections" in plan.unserved[0].reason


def test_private_streams_ride_only_connections_with_their_credential():
    q = quota(credentials=[credential("k1"), credential("k2")])
    desired = streams(30) + streams(30, "p1-", credential="k1") + streams(5, "p2-", credential="k2")
    plan = plan_one(q, pool(2), desired)
    for pod in plan.pods:
        for c in pod.connections:
            creds = {d.credential for d in desired if d.name in c.streams}
            assert creds <= {None, c.credential}
    assert {c.name for c in plan.pods[0].credentials} == {"k1", "k2"}
    assert all(c.mountPath.startswith("/var/run/") for c in plan.pods[0].credentials)


def test_account_concurrency_caps_private_connections_per_account():
    prof = profile(concurrent_account=2)  # usable floor(0.8 x 2) = 1 per account
    q = quota(prof=prof, credentials=[credential("k1")])
    plan = plan_one(q, pool(2), streams(200, "p", credential="k1"))
    assert len(connections(plan)) == 1
    assert len(plan.unserved) == 120
    assert "account acct-k1" in plan.unserved[0].reason


def test_slices_of_all_pods_on_an_address_add_up_to_at_most_the_quotas_usable_share():
    q = quota(connections_per_pod=2)
    p = pool(2)
    plan = plan_one(q, p, streams(700))
    for a in ("a0", "a1"):
        total = sum(
            slice_value(plan, pod.ordinal, N.CONNECTION_ATTEMPTS, S.IP, a) or 0 for pod in plan.pods
        )
        assert total <= 240  # floor(0.8 x 300)
    history = QuotaHistory("team/q", [plan])
    assert check_budgets(p, independent_budgets(p, [q]), [history], now=0.0) == []
    assert check_plan_consistency(plan) == []


def test_message_slice_keeps_a_heartbeat_reserve():
    plan = plan_one(quota(), pool(1), streams(3))
    msg = plan.pods[0].slice(N.MESSAGES_PER_CONNECTION, S.CONNECTION, "*")
    assert (msg.value, msg.reserve) == (8, 1)


def test_recovery_bound_counts_batches_of_attempts_each_held_for_window_timeout_and_margin():
    prof = profile(attempts=5, attempts_window_s=10)  # usable 4 attempts per 10 s
    plan = plan_one(quota(prof=prof, connections_per_pod=20), pool(1), streams(800))
    bound = plan.recoveryBounds[0]
    # 10 connections in ceil(10 / 4) = 3 batches; an attempt holds its place in a gateway's
    # log for SYN grace 0.25 s + window 10 s + connect timeout + margin 1 s.
    held_s = 0.25 + 10 + prof.connectTimeoutSeconds + 1.0
    assert (bound.address, bound.connections, bound.seconds) == ("a0", 10, 3 * held_s)


def test_same_input_gives_byte_identical_plans_and_an_unchanged_replan_reopens_nothing():
    q = quota(connections_per_pod=3)
    first = plan_one(q, pool(3), streams(900))
    assert plan_json(first) == plan_json(plan_one(q, pool(3), streams(900)))
    again = plan_one(q, pool(3), streams(900), previous=first, generation=2)
    assert connections(again) == connections(first)
    assert opened(first, again) == set()


def test_one_added_stream_joins_a_connection_with_room_before_any_new_one_opens():
    q = quota()
    first = plan_one(q, pool(2), streams(100))
    second = plan_one(q, pool(2), streams(101), previous=first, generation=2)
    assert opened(first, second) == set()
    third = plan_one(q, pool(2), streams(161), previous=second, generation=3)
    assert len(opened(second, third)) == 1


def test_removed_streams_move_no_other_stream():
    q = quota()
    first = plan_one(q, pool(2), streams(300))
    fewer = [s for s in streams(300) if s.name not in {"s0005", "s0150", "s0299"}]
    second = plan_one(q, pool(2), fewer, previous=first, generation=2)
    before, after = placement(first), placement(second)
    assert all(after[s] == before[s] for s in after)


def test_added_addresses_and_pod_capacity_reopen_nothing():
    first = plan_one(quota(connections_per_pod=2), pool(1), streams(300))
    more = plan_one(
        quota(connections_per_pod=5, max_replicas=20), pool(4), streams(300), previous=first
    )
    assert opened(first, more) == set()


def test_removed_address_moves_only_its_connections():
    first = plan_one(quota(), pool(3), streams(500))
    p2 = ExchangeEgressPoolSpec(addresses=[pool(3).addresses[0], pool(3).addresses[2]])
    second = plan_one(quota(), p2, streams(500), previous=first, generation=2)
    before, after = connections(first), connections(second)
    for cid, c in before.items():
        if c[1] != "a1":  # kept with its streams; it may take in streams from a1
            assert after[cid][:3] == c[:3]
            assert after[cid][3][: len(c[3])] == c[3]
    assert all(c[1] != "a1" for c in after.values())
    assert sorted(placement(second)) == sorted(placement(first))


def test_pod_label_mode_gives_every_pod_exactly_one_address():
    plan = plan_one(quota(connections_per_pod=2), pool(3, EgressMode.POD_LABEL), streams(800))
    for pod in plan.pods:
        assert len({c.address for c in pod.connections}) <= 1
        assert len(pod.addresses) <= 1


def test_bind_mode_keeps_each_pod_on_the_node_of_its_addresses():
    p = pool(4, EgressMode.BIND)
    p = ExchangeEgressPoolSpec(
        addresses=[
            a.model_copy(update={"node": f"node-{i // 2}"}) for i, a in enumerate(p.addresses)
        ]
    )
    plan = plan_one(quota(connections_per_pod=3), p, streams(1000))
    nodes = {a.name: a.node for a in p.addresses}
    for pod in plan.pods:
        assert len({nodes[c.address] for c in pod.connections}) <= 1


def test_lower_max_replicas_empties_the_highest_ordinals_and_keeps_the_rest():
    first = plan_one(quota(connections_per_pod=2, max_replicas=10), pool(2), streams(600))
    assert first.replicas == 4
    second = plan_one(
        quota(connections_per_pod=3, max_replicas=3), pool(2), streams(600), previous=first
    )
    assert second.replicas == 3
    before, after = connections(first), connections(second)
    for cid, c in before.items():
        if c[0] < 3:
            assert after[cid] == c


def test_headroom_so_small_no_stream_fits_gives_an_explained_unserved_list():
    plan = plan_one(quota(headroom=0.001), pool(1), streams(3))
    assert len(plan.unserved) == 3
    assert plan.unserved[0].reason.startswith("no stream fits a connection: messagesPerConnection")


def test_pool_with_no_addresses_is_a_clear_error():
    empty = ExchangeEgressPoolSpec.model_construct(addresses=[], reserved=[], allowedNamespaces=[])
    with pytest.raises(PoolError, match="add at least one"):
        plan_one(quota(), empty, streams(1))


def test_namespace_not_admitted_serves_nothing_and_says_why():
    p = pool(1, allowed=[{"namespace": "other"}])
    plan = plan_one(quota(), p, streams(2))
    assert len(plan.unserved) == 2
    assert "does not admit" in plan.unserved[0].reason


def test_when_an_address_is_lost_the_streams_running_elsewhere_keep_running():
    """Less than everything fits after an address is lost: among equal priorities the streams
    the previous plan serves on a still-usable address are kept (I3), not the first by name."""
    prof = profile(concurrent_ip=2, streams_per_connection=2)
    q = quota(prof=prof, connections_per_pod=4, max_replicas=2, headroom=1.0)
    both = pool(2)
    desired = streams(8)
    first = plan_one(q, both, desired)
    on_a1 = {cid: c for cid, c in connections(first).items() if c[1] == "a1"}
    assert len(on_a1) == 2 and not first.unserved
    only_a1 = both.model_copy(update={"addresses": [address(1)]})
    second = plan_one(q, only_a1, desired, previous=first, generation=2)
    assert connections(second) == on_a1  # the same connections, same streams, nothing reopened
    served = {s for c in on_a1.values() for s in c[3]}
    assert {u.stream for u in second.unserved} == {s.name for s in desired} - served
