"""An indexed replan (`plan_quota_indexed`) gives the bytes a full replan (`plan_quota`) gives,
over sequences of stream, pool, share and capacity changes; and it takes the fast path when
only streams were added or removed and every stream is served."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from planner_factories import connections, credential, opened, pool, profile, quota, streams

from connquota.api.plan import QuotaPlan
from connquota.api.pool import EgressMode
from connquota.planner import IndexedPlan, PlanIndex, plan_quota_indexed
from connquota.planner.inputs import DesiredStream
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.pool_plan import plan_json, plan_pool
from connquota.planner.shares import divide_budgets
from connquota.planner.stream_changes import stream_changes

SETTINGS = settings(
    max_examples=int(os.environ.get("PLANNER_INCREMENTAL_EXAMPLES", "200")),
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def request(q, p, desired, previous, generation, others=()) -> PlanRequest:
    shares = divide_budgets(p, [q, *others]).quotas[q.key]
    return PlanRequest(q.ref, q.spec, q.profile, p, shares, desired, generation, previous)


def both(req: PlanRequest, index: PlanIndex | None) -> tuple[IndexedPlan, bytes]:
    """The indexed replan, and the bytes of the full one."""
    return plan_quota_indexed(req, index), plan_json(plan_quota(req))


def with_gateway(q, **update):
    spec = q.spec.model_copy(update={"gateway": q.spec.gateway.model_copy(update=update)})
    return type(q)(q.namespace, q.name, spec, q.profile)


# -- generated fleets and changes -----------------------------------------------------------

STREAM_OPS = ("add", "remove", "add_remove")
"""Changes that only add or remove streams: the fast path must take them when all is served."""


@st.composite
def fleets(draw):
    creds = draw(st.integers(0, 2))
    # Mostly roomy fleets (everything served: where the fast path applies), some tight ones.
    prof = profile(
        attempts=draw(st.sampled_from([50, 50, 5, 2, 1])),
        concurrent_ip=draw(st.sampled_from([30, 30, None, 5, 2])),
        streams_per_connection=draw(st.sampled_from([10, 50, 3, 1])),
        concurrent_account=draw(st.sampled_from([None, None, 10, 2])),
    )
    q = quota(
        prof=prof,
        headroom=draw(st.sampled_from([0.8, 1.0, 0.5])),
        connections_per_pod=draw(st.sampled_from([6, 3, 2, 1])),
        max_replicas=draw(st.sampled_from([8, 4, 2, 1])),
        credentials=[credential(f"k{c}", f"acct-{c % 2}") for c in range(creds)],
    )
    addresses = draw(st.integers(1, 4))
    mode = draw(st.sampled_from(list(EgressMode)))
    n = draw(st.integers(0, 100))
    desired = [
        DesiredStream(
            f"s{i:04d}",
            draw(st.integers(0, 2)),
            draw(st.sampled_from([None, *[f"k{c}" for c in range(creds)]])),
        )
        for i in range(n)
    ]
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(
                    [
                        *STREAM_OPS,
                        *STREAM_OPS,
                        "none",
                        "priority",
                        "credential",
                        "move",
                        "duplicate",
                        "connections_per_pod",
                        "max_replicas",
                        "addresses",
                        "second_quota",
                        "not_published",
                        "from_json",
                    ]
                ),
                st.integers(0, 10**6),
                st.integers(1, 12),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return q, addresses, mode, creds, desired, ops


def _apply(op, seed, k, desired, creds, step):
    """The streams after a stream change (names stay unique unless `duplicate`)."""
    out = list(desired)
    if op in ("add", "add_remove"):
        cred_names = [None, *[f"k{c}" for c in range(creds)]]
        for i in range(k):
            at = (seed + 7 * i) % (len(out) + 1)
            out.insert(
                at,
                DesiredStream(f"n{step}-{i:03d}", (seed + i) % 3, cred_names[i % len(cred_names)]),
            )
    if op in ("remove", "add_remove") and out:
        for i in range(min(k, len(out))):
            del out[(seed + 13 * i) % len(out)]
    if op == "priority" and out:
        s = out[seed % len(out)]
        out[seed % len(out)] = s._replace(priority=s.priority + 1)
    if op == "credential" and out and creds:
        s = out[seed % len(out)]
        out[seed % len(out)] = s._replace(credential=None if s.credential else "k0")
    if op == "move" and len(out) > 1:
        s = out.pop(seed % len(out))
        out.insert((seed // 7) % (len(out) + 1), s)
    if op == "duplicate" and out:
        out.append(out[seed % len(out)])
    return out


@SETTINGS
@given(fleets())
def test_indexed_replans_give_the_bytes_of_full_replans_over_any_sequence_of_changes(fleet):
    q, n_addresses, mode, creds, desired, ops = fleet
    p = pool(n_addresses, mode)
    others: tuple = ()
    result, full = both(request(q, p, desired, None, 1), None)
    assert plan_json(result.plan) == full
    assert not result.incremental
    for step, (op, seed, k) in enumerate(ops, start=2):
        complete = not result.plan.unserved and len({d.name for d in desired}) == len(desired)
        before = desired
        desired = _apply(op, seed, k, desired, creds, step)
        previous: QuotaPlan = result.plan
        if op == "connections_per_pod":
            q = with_gateway(q, connectionsPerPod=1 + seed % 8)
        elif op == "max_replicas":
            q = with_gateway(q, maxReplicas=1 + seed % 8)
        elif op == "addresses":
            p = pool(1 + seed % 5, mode)
        elif op == "second_quota":
            others = () if others else (quota(name="other", prof=q.profile),)
        elif op == "not_published" and previous.pods:
            first = previous.pods[0].model_copy(update={"connections": []})
            previous = previous.model_copy(update={"pods": [first, *previous.pods[1:]]})
        elif op == "from_json":
            previous = QuotaPlan.model_validate_json(plan_json(previous))
        req = request(q, p, desired, previous, step, others)
        got, full = both(req, result.index)
        assert plan_json(got.plan) == full, f"step {step} ({op}) differs from the full path"
        event(f"{op}: {'fast' if got.incremental else 'full'} path")
        if op in STREAM_OPS and (before or desired):  # (no streams at all: nothing to index)
            served_all = not got.plan.unserved
            assert got.incremental == (complete and served_all), f"step {step} ({op})"
        if op in ("priority", "credential", "move", "duplicate") and desired != before:
            assert not got.incremental, f"step {step} ({op}) changed a stream in place"
        if plan_json(previous) != plan_json(result.plan):
            assert not got.incremental, f"step {step}: previous is not the indexed plan"
        result = got


# -- readable examples ----------------------------------------------------------------------


def _fleet(n: int = 1000):
    q = quota(connections_per_pod=4, max_replicas=20, credentials=[credential("k1")])
    p = pool(4)
    desired = streams(n) + streams(100, "p", credential="k1")
    return q, p, desired


def test_one_added_stream_takes_the_fast_path_and_reopens_nothing():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    more = [*streams(1000), DesiredStream("zz-new"), *streams(100, "p", credential="k1")]
    got, full = both(request(q, p, more, first.plan, 2), first.index)
    assert got.incremental
    assert plan_json(got.plan) == full
    assert opened(first.plan, got.plan) == set()
    assert "zz-new" in {s for c in connections(got.plan).values() for s in c[3]}


def test_removed_streams_take_the_fast_path_and_move_no_other_stream():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    fewer = [d for d in desired if d.name not in ("s0003", "s0500", "p0042")]
    got, full = both(request(q, p, fewer, first.plan, 2), first.index)
    assert got.incremental
    assert plan_json(got.plan) == full
    before = {c: v for c, v in connections(first.plan).items()}
    for cid, (ordinal, address, cred, names) in connections(got.plan).items():
        assert before[cid][:3] == (ordinal, address, cred)
        assert set(names) <= set(before[cid][3])


def test_a_stream_that_changed_priority_takes_the_full_path():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    changed = [d._replace(priority=5) if d.name == "s0007" else d for d in desired]
    got, full = both(request(q, p, changed, first.plan, 2), first.index)
    assert not got.incremental
    assert plan_json(got.plan) == full


def test_a_removed_address_takes_the_full_path_and_moves_its_connections():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    smaller = p.model_copy(update={"addresses": p.addresses[1:]})
    got, full = both(request(q, smaller, desired, first.plan, 2), first.index)
    assert not got.incremental
    assert plan_json(got.plan) == full
    assert all(c[1] != "a0" for c in connections(got.plan).values())


def test_doubled_pod_capacity_takes_the_fast_path():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    bigger = with_gateway(q, connectionsPerPod=8)
    got, full = both(request(bigger, p, desired, first.plan, 2), first.index)
    assert got.incremental
    assert plan_json(got.plan) == full
    assert connections(got.plan) == connections(first.plan)


def test_a_previous_plan_other_than_the_indexed_one_takes_the_full_path():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    cut = first.plan.model_copy(
        update={"pods": [first.plan.pods[0].model_copy(update={"connections": []})]}
    )
    got, full = both(request(q, p, desired, cut, 2), first.index)
    assert not got.incremental
    assert plan_json(got.plan) == full


def test_an_index_is_not_changed_by_use_and_gives_the_same_plan_twice():
    q, p, desired = _fleet()
    first = plan_quota_indexed(request(q, p, desired, None, 1))
    more = [*desired, DesiredStream("zz-new")]
    a = plan_quota_indexed(request(q, p, more, first.plan, 2), first.index)
    b = plan_quota_indexed(request(q, p, more, first.plan, 2), first.index)
    assert a.incremental and b.incremental
    assert plan_json(a.plan) == plan_json(b.plan)
    assert first.index.streams == tuple(desired)


def test_plan_pool_passes_indexes_through_and_gives_the_plans_of_a_full_replan():
    q, p, desired = _fleet()
    first = plan_pool(p, [q], {q.key: desired}, {q.key: 1}, indexes={})
    more = [*desired, DesiredStream("zz-new")]
    again = plan_pool(
        p, [q], {q.key: more}, {q.key: 2}, {q.key: first.plans[q.key]}, indexes=first.indexes
    )
    full = plan_pool(p, [q], {q.key: more}, {q.key: 2}, {q.key: first.plans[q.key]})
    assert plan_json(again.plans[q.key]) == plan_json(full.plans[q.key])
    assert full.indexes == {}
    assert set(again.indexes) == {q.key}


def test_incremental_replan_gives_the_same_bytes_under_a_different_hash_seed():
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from planner_factories import *\n"
        "from test_incremental_replan import _fleet, request\n"
        "from connquota.planner import plan_quota_indexed\n"
        "from connquota.planner.inputs import DesiredStream\n"
        "from connquota.planner.pool_plan import plan_json\n"
        "q, p, d = _fleet(600)\n"
        "first = plan_quota_indexed(request(q, p, d, None, 1))\n"
        "d2 = [x for x in d if x.name != 's0100'] + [DesiredStream('zz', 1, 'k1')] * 1\n"
        "got = plan_quota_indexed(request(q, p, d2, first.plan, 2), first.index)\n"
        "assert got.incremental\n"
        "sys.stdout.buffer.write(plan_json(got.plan))\n"
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


# -- the stream diff ------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.integers(0, 300), unique=True, max_size=200),
    st.lists(st.tuples(st.sampled_from(["ins", "del", "pri", "swap"]), st.integers(0, 10**6))),
)
def test_stream_changes_are_an_edit_script_from_the_old_list_to_the_new(ids, edits):
    old = [DesiredStream(f"s{i}", i % 3) for i in ids]
    new = list(old)
    for n, (what, at) in enumerate(edits):
        if what == "ins":
            new.insert(at % (len(new) + 1), DesiredStream(f"new{n}", at % 3))
        elif new and what == "del":
            del new[at % len(new)]
        elif new and what == "pri":
            new[at % len(new)] = new[at % len(new)]._replace(priority=9)
        elif len(new) > 1:
            i, j = at % len(new), (at // 7) % len(new)
            new[i], new[j] = new[j], new[i]
    changes = stream_changes(tuple(old), tuple(new), max_work=10**9)
    assert changes is not None
    kept = list(old)
    for s in changes.removed:
        kept.remove(s)
    assert sorted(kept + changes.added) == sorted(new)
    names_old, names_new = {s.name for s in old}, {s.name for s in new}
    assert {s.name for s in changes.added} >= names_new - names_old
    assert {s.name for s in changes.removed} >= names_old - names_new


def test_stream_changes_of_one_appended_stream_name_only_it():
    old = tuple(streams(5000))
    new = (*streams(5000), DesiredStream("zz"))
    changes = stream_changes(old, new)
    assert changes is not None
    assert (changes.added, changes.removed) == ([DesiredStream("zz")], [])


def test_stream_changes_give_up_when_lists_differ_everywhere():
    old = tuple(streams(5000))
    new = tuple(streams(5000, "x"))
    assert stream_changes(old, new, max_work=20_000) is None


@SETTINGS
@given(
    st.sets(st.integers(0, 60)),
    st.lists(st.tuples(st.sets(st.integers(0, 90)), st.sets(st.integers(0, 90))), max_size=12),
)
def test_an_index_name_set_holds_exactly_the_names_after_every_change(base, changes):
    from connquota.planner.incremental import NameSet

    names = NameSet(frozenset(f"s{i}" for i in base))
    reference = {f"s{i}" for i in base}
    for add, remove in changes:
        added = {f"s{i}" for i in add} - reference
        removed = {f"s{i}" for i in remove} & reference - added
        names = names.changed(added, removed)
        reference = (reference - removed) | added
        assert all((f"s{i}" in names) == (f"s{i}" in reference) for i in range(100))


def test_an_index_name_set_is_rebuilt_once_its_changes_outgrow_the_shared_set():
    from connquota.planner.incremental import NameSet

    names = NameSet(frozenset({"a"}))
    names = names.changed({f"n{i}" for i in range(5000)}, {"a"})
    assert names.added == frozenset() and names.removed == frozenset()
    assert "n4999" in names and "a" not in names
