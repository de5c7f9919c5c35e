"""Properties of a single quota's plan over generated inputs (I1, I2, I3, packing bound)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_factories import (
    connections,
    credential,
    independent_budgets,
    opened,
    placement,
    plan_one,
    pool,
    profile,
    quota,
)

from connquota.api.pool import EgressMode
from connquota.planner.inputs import DesiredStream
from connquota.testing.checker import QuotaHistory, check_budgets, check_plan_consistency

SETTINGS = settings(
    max_examples=int(os.environ.get("PLANNER_PLAN_EXAMPLES", "60")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def cases(draw):
    creds = draw(st.integers(0, 2))
    n_public = draw(st.integers(0, 250))
    desired = [DesiredStream(f"pub{i:03d}", draw(st.integers(0, 2)), None) for i in range(n_public)]
    for c in range(creds):
        n = draw(st.integers(0, 40))
        desired += [
            DesiredStream(f"k{c}-{i:02d}", draw(st.integers(0, 2)), f"k{c}") for i in range(n)
        ]
    prof = profile(
        attempts=draw(st.sampled_from([1, 2, 5, 50])),
        concurrent_ip=draw(st.sampled_from([None, 2, 5, 30])),
        streams_per_connection=draw(st.sampled_from([1, 5, 20, 100])),
        concurrent_account=draw(st.sampled_from([None, 2, 10])),
    )
    q = quota(
        prof=prof,
        headroom=draw(st.sampled_from([0.5, 0.8, 1.0])),
        connections_per_pod=draw(st.integers(1, 6)),
        max_replicas=draw(st.integers(1, 6)),
        credentials=[credential(f"k{c}", f"acct-{c % 2}") for c in range(creds)],
    )
    p = pool(draw(st.integers(1, 4)), draw(st.sampled_from(list(EgressMode))))
    return q, p, desired


def _order(s):
    return (-s.priority, s.name)


@SETTINGS
@given(cases())
def test_every_stream_is_served_once_or_listed_unserved_with_a_reason_in_priority_order(case):
    q, p, desired = case
    plan = plan_one(q, p, desired)
    placed = [s for c in connections(plan).values() for s in c[3]]
    assert len(placed) == len(set(placed)), "a stream in two connections"
    unserved = {u.stream for u in plan.unserved}
    assert set(placed) | unserved == {d.name for d in desired}
    assert not set(placed) & unserved
    assert all(u.reason for u in plan.unserved)
    by_name = {d.name: d for d in desired}
    assert [u.stream for u in plan.unserved] == sorted(unserved, key=lambda n: _order(by_name[n]))
    for cred in {d.credential for d in desired}:
        served = [by_name[n] for n in placed if by_name[n].credential == cred]
        missed = [by_name[n] for n in unserved if by_name[n].credential == cred]
        if served and missed:  # within a credential group, served streams come first
            assert max(_order(s) for s in served) < min(_order(s) for s in missed)


@SETTINGS
@given(cases())
def test_connections_stay_within_the_packing_bound_and_private_streams_on_their_credential(case):
    q, p, desired = case
    plan = plan_one(q, p, desired)
    cap = next(s.value for s in plan.pods[0].slices if s.limit.value == "streamsPerConnection")
    by_name = {d.name: d for d in desired}
    groups: dict[tuple, int] = {}
    for _, address, cred, names in connections(plan).values():
        groups[(address, cred)] = groups.get((address, cred), 0) + len(names)
        assert all(by_name[n].credential in (None, cred) for n in names)
        assert 0 < len(names) <= cap
    bound = sum(math.ceil(n / cap) for n in groups.values()) + len(groups)
    assert len(connections(plan)) <= bound


@SETTINGS
@given(cases())
def test_single_plan_is_within_every_budget_and_every_pods_own_slices(case):
    q, p, desired = case
    plan = plan_one(q, p, desired)
    assert check_plan_consistency(plan) == []
    problems = check_budgets(p, independent_budgets(p, [q]), [QuotaHistory(q.key, [plan])], 0.0)
    assert problems == []
    for pod in plan.pods:
        groups = {p.address(c.address).node if c.address else None for c in pod.connections}
        if pod.connections and p.addresses[0].mode == EgressMode.POD_LABEL:
            assert len({c.address for c in pod.connections}) == 1
        if p.addresses[0].mode == EgressMode.BIND:
            assert len(groups) <= 1


@SETTINGS
@given(cases(), st.data())
def test_replans_reopen_only_what_they_must(case, data):
    q, p, desired = case
    first = plan_one(q, p, desired)
    same = plan_one(q, p, desired, previous=first, generation=2)
    assert connections(same) == connections(first)
    extra = DesiredStream("zz-new", data.draw(st.integers(0, 2)), None)
    more = plan_one(q, p, [*desired, extra], previous=first, generation=2)
    if not any(u.stream != "zz-new" for u in more.unserved) and not first.unserved:
        assert len(opened(first, more)) <= 1
    if desired:
        drop = set(data.draw(st.lists(st.sampled_from([d.name for d in desired]), max_size=10)))
        fewer = plan_one(
            q, p, [d for d in desired if d.name not in drop], previous=first, generation=2
        )
        before, after = placement(first), placement(fewer)
        assert all(after[s] == before[s] for s in after if s in before)


def test_same_input_gives_the_same_bytes_under_a_different_hash_seed():
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from planner_factories import *\n"
        "from connquota.planner.pool_plan import plan_json\n"
        "q = quota(connections_per_pod=3, credentials=[credential('k1'), credential('k2', 'acct-k1')])\n"
        "d = streams(500) + streams(60, 'p', credential='k1') + streams(30, 'r', credential='k2')\n"
        "sys.stdout.buffer.write(plan_json(plan_one(q, pool(5), d)))\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, timeout=60, check=True
        )
        outputs.add(out.stdout)
    assert len(outputs) == 1
    assert len(next(iter(outputs))) > 1000
