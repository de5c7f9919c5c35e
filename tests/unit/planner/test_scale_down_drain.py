"""Scaling down make-before-break (`planner.draining.drain_leaving`, `rollout.ScaleDrain`).

The leaving pods' connections are copied into the staying pods' spare room (never onto another
leaving pod) without any slice change; every step goes through `next_publication` at once and
stays within every budget; the replan of the drained plan keeps the copies where they are, so
nothing moves again; the operator's phases wait for the copies to be live and the leaving pods
to acknowledge before the StatefulSet may shrink.
"""

from __future__ import annotations

from planner_factories import independent_budgets, plan_one, pool, profile, quota, streams

from connquota.api.plan import QuotaPlan
from connquota.operator.rollout import DrainPhase, PodView, ScaleDrain, advance_scale_drain
from connquota.planner.draining import DrainSteps, NoRoom, drain_leaving, same_connections
from connquota.planner.ledger import QuotaLedger, record_ack, record_publication
from connquota.planner.shares import divide_budgets
from connquota.planner.transitions import budget_table, next_publication
from connquota.testing.checker import Ack, QuotaHistory, check_budgets

PROF = profile(attempts=50, attempts_window_s=10, concurrent_ip=40, streams_per_connection=2)
POOL = pool(1)


def _fleet(**kw) -> tuple[object, QuotaPlan]:
    q = quota(prof=PROF, connections_per_pod=2, max_replicas=5, **kw)
    plan = plan_one(q, POOL, streams(10))
    assert plan.unserved == [] and len(plan.pods) == 5
    return q, plan


def _streams(plan: QuotaPlan, ordinals: set[int] | None = None) -> list[str]:
    return sorted(
        s
        for p in plan.pods
        if ordinals is None or p.ordinal in ordinals
        for c in p.connections
        for s in c.streams
    )


def test_leaving_pods_connections_are_copied_only_onto_staying_pods_and_no_slice_changes():
    _, base = _fleet()
    steps = drain_leaving(base, frozenset({3, 4}), connections_per_pod=4)
    assert isinstance(steps, DrainSteps), steps
    assert steps.leaving == frozenset({3, 4}) and steps.ordinal == 4
    # make: every stream of pods 3 and 4 also on pods 0..2; drained: every stream once, on 0..2.
    assert _streams(steps.make, {3, 4}) == _streams(base, {3, 4})
    assert _streams(steps.make, {0, 1, 2}) == _streams(base)
    assert _streams(steps.drained, {3, 4}) == [] and _streams(steps.drained) == _streams(base)
    assert all(o in (0, 1, 2) for o, _ in steps.copies.values())
    for plan in (steps.make, steps.drained):
        assert {p.ordinal: p.slices for p in plan.pods} == {p.ordinal: p.slices for p in base.pods}
    # connectionsPerPod + 1 leaves one free slot on each of 0..2: four connections do not fit.
    out = drain_leaving(base, frozenset({3, 4}), connections_per_pod=3)
    assert isinstance(out, NoRoom) and "spare room" in out.reason
    assert isinstance(drain_leaving(base, frozenset({7}), connections_per_pod=4), NoRoom)


def test_scale_down_steps_publish_at_once_within_every_budget_and_the_replan_keeps_the_copies():
    q, base = _fleet()
    shares = divide_budgets(POOL, [q])
    budgets = budget_table(shares.budgets)
    steps = drain_leaving(base, frozenset({3, 4}), connections_per_pod=4)
    assert isinstance(steps, DrainSteps)
    ledger = record_publication(QuotaLedger(quota=q.key), base, POOL)
    history = QuotaHistory(q.key, published=[base])
    published = base
    now = 0.0
    for target in (steps.make, steps.drained):
        t = next_publication(POOL, budgets, {q.key: ledger}, q.key, published, target, now)
        assert t.plan is not None and t.reached_target and not t.waiting, t.waiting
        assert same_connections(t.plan, target)
        ledger = record_publication(ledger, t.plan, POOL)
        history.published.append(t.plan)
        published = t.plan
        assert check_budgets(POOL, independent_budgets(POOL, [q]), [history], now) == []
        now += 0.5
        for pod in t.plan.pods:
            ledger = record_ack(ledger, pod.ordinal, t.plan.generation, now)
            history.acks.append(Ack(pod.ordinal, t.plan.generation, now))
    # The scale-down's own replan (3 pods of up to 4 connections) from the drained plan:
    # every connection stays where the drain left it (ids and pods), pods 3 and 4 stay empty.
    smaller = quota(prof=PROF, connections_per_pod=4, max_replicas=3)
    replan = plan_one(smaller, POOL, streams(10), previous=published, generation=20)
    kept = {c.id: p.ordinal for p in published.pods for c in p.connections}
    after = {c.id: p.ordinal for p in replan.pods for c in p.connections}
    assert after == kept, (kept, after)


def _views(plan: QuotaPlan, generation: int, acked: int) -> dict[int, PodView]:
    out = {}
    for p in plan.pods:
        planned = sum(len(c.streams) for c in p.connections)
        out[p.ordinal] = PodView(
            ordinal=p.ordinal,
            name=f"md-gw-{p.ordinal}",
            template="t",
            ready=True,
            generation_wanted=generation,
            generation_acked=acked,
            streams_planned=planned,
            streams_live=planned,
        )
    return out


def _published(plan: QuotaPlan, generation: int) -> dict:
    return {p.ordinal: p.model_copy(update={"generation": generation}) for p in plan.pods}


def test_a_scale_down_drain_waits_for_live_copies_then_for_the_leaving_pods_to_let_go():
    _, base = _fleet()
    steps = drain_leaving(base, frozenset({3, 4}), connections_per_pod=4)
    assert isinstance(steps, DrainSteps)
    drain = ScaleDrain(steps, base)
    s = advance_scale_drain(drain, _published(base, 5), _views(base, 5, 5), "md-gw-")
    assert drain.phase == DrainPhase.MAKE and "make step" in (s.waiting or "") and not s.done
    s = advance_scale_drain(drain, _published(steps.make, 6), _views(steps.make, 6, 5), "md-gw-")
    assert drain.phase == DrainPhase.MAKE and "copies" in (s.waiting or "") and not s.done
    s = advance_scale_drain(drain, _published(steps.make, 6), _views(steps.make, 6, 6), "md-gw-")
    assert drain.phase == DrainPhase.DRAINED and not s.done
    views = _views(steps.drained, 7, 7)
    views[3] = PodView(3, "md-gw-3", "t", True, generation_wanted=7, generation_acked=6)
    s = advance_scale_drain(drain, _published(steps.drained, 7), views, "md-gw-")
    assert not s.done and "md-gw-3 to let its connections go" in (s.waiting or "")
    s = advance_scale_drain(
        drain, _published(steps.drained, 7), _views(steps.drained, 7, 7), "md-gw-"
    )
    assert s.done
