"""Draining a pod make-before-break (`planner.draining`) and the `draining` planner input.

The steps `make` (copies on other pods' spare room beside the draining pod's connections) and
`drained` (the pod's own connections gone) change no slice of any pod, and the independent
checker finds every step within every budget while all of them count at once.
"""

from __future__ import annotations

from planner_factories import (
    connections,
    credential,
    independent_budgets,
    plan_one,
    pool,
    profile,
    quota,
    streams,
)

from connquota.api.plan import QuotaPlan
from connquota.planner.draining import DrainSteps, NoRoom, drain_steps, same_connections
from connquota.planner.ledger import QuotaLedger, record_ack, record_publication
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.shares import divide_budgets
from connquota.planner.transitions import budget_table, next_publication
from connquota.testing.checker import Ack, QuotaHistory, check_budgets, check_plan_consistency

# 5 pods of 2 connections (one stream each: 2 x headroom 0.8) on one address, concurrent
# budget 40 x 0.8 = 32: every pod's concurrent slice leaves spare room.
PROF = profile(attempts=50, attempts_window_s=10, concurrent_ip=40, streams_per_connection=2)
POOL = pool(1)


def _fleet(n_streams: int = 10, prof=PROF, **kw) -> tuple[object, QuotaPlan]:
    q = quota(prof=prof, connections_per_pod=2, max_replicas=5, **kw)
    plan = plan_one(q, POOL, streams(n_streams))
    assert plan.unserved == []
    return q, plan


def _streams_of(plan: QuotaPlan, ordinal: int | None = None) -> list[str]:
    return sorted(
        s
        for p in plan.pods
        if ordinal is None or p.ordinal == ordinal
        for c in p.connections
        for s in c.streams
    )


def _slices(plan: QuotaPlan) -> dict[int, list]:
    return {p.ordinal: p.slices for p in plan.pods}


def test_drain_steps_copy_the_pods_connections_into_other_pods_spare_room_and_change_no_slice():
    _, base = _fleet()
    assert len(base.pods) == 5 and all(len(p.connections) == 2 for p in base.pods)
    steps = drain_steps(base, 4, connections_per_pod=4)
    assert isinstance(steps, DrainSteps), steps
    # make: the pod keeps its connections, and every stream of it is also on another pod.
    assert _streams_of(steps.make, 4) == _streams_of(base, 4)
    others = [
        s for p in steps.make.pods if p.ordinal != 4 for c in p.connections for s in c.streams
    ]
    assert sorted(others) == _streams_of(base)
    # drained: every stream once, none on pod 4; the copies carry the same streams.
    assert _streams_of(steps.drained, 4) == []
    assert _streams_of(steps.drained) == _streams_of(base)
    for original, (ordinal, copy_id) in steps.copies.items():
        pod = next(p for p in steps.drained.pods if p.ordinal == ordinal)
        copy = next(c for c in pod.connections if c.id == copy_id)
        old = next(c for p in base.pods for c in p.connections if c.id == original)
        assert (copy.address, copy.credential, copy.streams) == (
            old.address,
            old.credential,
            old.streams,
        )
        assert ordinal != 4
    # Copies go to the least loaded pods, one each here.
    assert len({o for o, _ in steps.copies.values()}) == 2
    # No slice of any pod changes, pod 4's included (its successor starts with them).
    assert _slices(steps.make) == _slices(base) == _slices(steps.drained)
    for plan in (steps.make, steps.drained):
        assert check_plan_consistency(plan) == []
    # Every existing connection keeps its id (nothing else reopens, I3).
    kept = set(connections(base))
    assert kept <= set(connections(steps.make))
    assert set(connections(steps.drained)) == (kept - {c.id for c in base.pods[4].connections}) | {
        c for _, c in steps.copies.values()
    }
    assert same_connections(steps.make, steps.make) and not same_connections(base, steps.make)


def test_no_spare_room_means_no_drain_and_says_why():
    # concurrent budget 10 x 0.8 = 8 for 10 connections over 5 pods: no pod has a spare slot.
    tight = profile(attempts=50, attempts_window_s=10, concurrent_ip=13, streams_per_connection=2)
    _, base = _fleet(prof=tight)
    assert sum(len(p.connections) for p in base.pods) == 10
    out = drain_steps(base, 4, connections_per_pod=4)
    assert isinstance(out, NoRoom), out
    assert "spare room" in out.reason and "address a0" in out.reason
    # connectionsPerPod full on every other pod: no room either.
    _, roomy = _fleet()
    assert isinstance(drain_steps(roomy, 4, connections_per_pod=2), NoRoom)
    # A pod with nothing to move is not drained.
    assert isinstance(drain_steps(roomy, 7, connections_per_pod=4), NoRoom)


def test_private_connections_move_only_within_the_account_slice():
    prof = profile(
        attempts=50,
        attempts_window_s=10,
        concurrent_ip=40,
        streams_per_connection=2,
        concurrent_account=40,
    )
    q = quota(prof=prof, connections_per_pod=2, max_replicas=5, credentials=[credential("k1")])
    plan = plan_one(q, POOL, streams(10, credential="k1"))
    steps = drain_steps(plan, 4, connections_per_pod=4)
    assert isinstance(steps, DrainSteps), steps
    assert all(c.credential == "k1" for p in steps.drained.pods for c in p.connections)
    assert check_plan_consistency(steps.make) == []
    # An account slice with no spare slot refuses the copies.
    tight = profile(
        attempts=50,
        attempts_window_s=10,
        concurrent_ip=40,
        streams_per_connection=2,
        concurrent_account=13,
    )
    q = quota(prof=tight, connections_per_pod=2, max_replicas=5, credentials=[credential("k1")])
    plan = plan_one(q, POOL, streams(10, credential="k1"))
    out = drain_steps(plan, 4, connections_per_pod=4)
    assert isinstance(out, NoRoom) and "credential k1" in out.reason, out


def test_every_drain_step_published_through_transitions_stays_within_every_budget():
    """base -> make -> drained -> (pod replaced) -> make -> base, each published by
    `next_publication` and acknowledged in turn, with every generation still counting: the
    independent checker finds no budget exceeded, and each step goes out at once (no slice
    grows, so nothing waits)."""
    q, base = _fleet()
    shares = divide_budgets(POOL, [q])
    budgets = budget_table(shares.budgets)
    steps = drain_steps(base, 4, connections_per_pod=4)
    assert isinstance(steps, DrainSteps)
    ledger = record_publication(QuotaLedger(quota=q.key), base, POOL)
    history = QuotaHistory(q.key, published=[base])
    published = base
    now = 0.0
    for target in (steps.make, steps.drained, steps.make, steps.base):
        t = next_publication(POOL, budgets, {q.key: ledger}, q.key, published, target, now)
        assert t.plan is not None and t.reached_target and not t.waiting, t.waiting
        assert same_connections(t.plan, target)
        ledger = record_publication(ledger, t.plan, POOL)
        history.published.append(t.plan)
        published = t.plan
        problems = check_budgets(POOL, independent_budgets(POOL, [q]), [history], now)
        assert problems == [], problems
        now += 0.5
        for pod in t.plan.pods:
            ledger = record_ack(ledger, pod.ordinal, t.plan.generation, now)
            history.acks.append(Ack(pod.ordinal, t.plan.generation, now))
    assert same_connections(published, base)


def test_the_draining_input_keeps_no_connection_on_the_pod_when_the_others_have_room():
    q, base = _fleet()
    shares = divide_budgets(POOL, [q])

    def replan(draining: frozenset[int], spec=q.spec) -> QuotaPlan:
        req = PlanRequest(
            q.ref,
            spec,
            q.profile,
            POOL,
            shares.quotas[q.key],
            streams(10),
            2,
            base,
            draining=draining,
        )
        return plan_quota(req)

    # connectionsPerPod 2 and 5 pods of 2: the other 4 pods have no room: the drain is ignored.
    full = replan(frozenset({4}))
    assert connections(full) == connections(base) and full.unserved == []
    # connectionsPerPod 3: pod 4's two connections move to pods 0 and 1, nothing unserved.
    roomy = q.spec.model_copy(
        update={"gateway": q.spec.gateway.model_copy(update={"connectionsPerPod": 3})}
    )
    moved = replan(frozenset({4}), roomy)
    assert _streams_of(moved, 4) == [] and moved.unserved == []
    assert _streams_of(moved) == _streams_of(base)
    # Every connection of the other pods is kept as it was (only pod 4's streams reopen).
    before = {c: v for c, v in connections(base).items() if v[0] != 4}
    after = connections(moved)
    assert all(after[c] == v for c, v in before.items())
    # Without draining, the same replan keeps everything (the input is what moves them).
    assert connections(replan(frozenset(), roomy)) == connections(base)


def test_a_rollout_drains_a_pod_in_order_make_drained_evict_return_restore():
    """`rollout.advance_drain`: each phase waits for its plan to be published, acknowledged
    and served; the pod is evicted only once it let its connections go, and the drain ends
    when the fleet is back on the plan it started from."""
    from connquota.operator.rollout import Drain, DrainPhase, PodView, advance_drain

    _, base = _fleet()
    steps = drain_steps(base, 4, connections_per_pod=3)
    assert isinstance(steps, DrainSteps)
    drain = Drain(4, "uid-4", steps)
    uids = {o: f"uid-{o}" for o in range(5)}

    def published(plan: QuotaPlan, generation: int) -> dict:
        return {p.ordinal: p.model_copy(update={"generation": generation}) for p in plan.pods}

    def views(plan: QuotaPlan, generation: int, acked: int, new: tuple[int, ...] = ()) -> dict:
        out = {}
        for p in plan.pods:
            planned = sum(len(c.streams) for c in p.connections)
            out[p.ordinal] = PodView(
                ordinal=p.ordinal,
                name=f"md-gw-{p.ordinal}",
                template="new" if p.ordinal in new else "old",
                ready=True,
                generation_wanted=generation,
                generation_acked=acked,
                streams_planned=planned,
                streams_live=planned,
            )
        return out

    def step(pub, pods, ids=uids):
        return advance_drain(drain, pub, pods, ids, "new", "md-gw-")

    # make: not published yet, then published but the copies not live: waits.
    s = step(published(base, 5), views(base, 5, 5))
    assert drain.phase == DrainPhase.MAKE and "make step" in (s.waiting or "")
    s = step(published(steps.make, 6), views(steps.make, 6, 5))
    assert drain.phase == DrainPhase.MAKE and not s.evict, s
    s = step(published(steps.make, 6), views(steps.make, 6, 6))
    assert drain.phase == DrainPhase.DRAINED and not s.evict
    # drained: evicted only once the pod acknowledged letting its connections go.
    s = step(published(steps.drained, 7), views(steps.drained, 7, 6))
    assert (
        drain.phase == DrainPhase.DRAINED
        and not s.evict
        and "let its connections go" in (s.waiting or "")
    )
    s = step(published(steps.drained, 7), views(steps.drained, 7, 7))
    assert s.evict and drain.phase == DrainPhase.REPLACING
    # replacing: the old pod (same uid) still there, then its successor on the new template.
    s = step(published(steps.drained, 7), views(steps.drained, 7, 7))
    assert drain.phase == DrainPhase.REPLACING and not s.evict
    successor = {**uids, 4: "uid-4b"}
    s = step(published(steps.drained, 7), views(steps.drained, 7, 7, new=(4,)), successor)
    assert drain.phase == DrainPhase.RETURN
    # return: the successor reopens beside the copies; restore: the copies close.
    s = step(published(steps.make, 8), views(steps.make, 8, 8, new=(4,)), successor)
    assert drain.phase == DrainPhase.RESTORE
    s = step(published(base, 9), views(base, 9, 8, new=(4,)), successor)
    assert not s.done
    s = step(published(base, 9), views(base, 9, 9, new=(4,)), successor)
    assert s.done


def test_a_drained_pod_deleted_by_someone_else_is_not_evicted_again_and_the_drain_goes_on():
    from connquota.operator.rollout import Drain, DrainPhase, PodView, advance_drain

    _, base = _fleet()
    steps = drain_steps(base, 4, connections_per_pod=3)
    assert isinstance(steps, DrainSteps)
    drain = Drain(4, "uid-4", steps, DrainPhase.DRAINED)
    published = {p.ordinal: p.model_copy(update={"generation": 7}) for p in steps.drained.pods}
    views = {
        o: PodView(o, f"md-gw-{o}", "old", True, False, 7, 7, 1, 1) for o in range(4)
    }  # pod 4 is gone: deleted (a kubectl delete, a crash) before the operator evicted it
    s = advance_drain(drain, published, views, {o: f"uid-{o}" for o in range(4)}, "new")
    assert not s.evict and drain.phase == DrainPhase.REPLACING and "created" in (s.waiting or "")
    # Its successor, not yet Ready: the drain waits and the copies keep serving.
    views[4] = PodView(4, "md-gw-4", "new", False, False, 7, None, 0, 0)
    s = advance_drain(drain, published, views, {o: f"uid-{o}b" for o in range(5)}, "new")
    assert drain.phase == DrainPhase.REPLACING and "Ready" in (s.waiting or ""), s
