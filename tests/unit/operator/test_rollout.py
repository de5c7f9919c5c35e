"""Rollouts of the gateway pod template: which pod is replaced when, and what the status says."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from operator_factories import make_pod_plan, make_quota

from connquota.api.limits import LimitName, LimitScope, LimitShape
from connquota.api.plan import Slice
from connquota.api.timing import attempt_hold_s
from connquota.operator import builders, names
from connquota.operator.rollout import (
    FleetView,
    PodView,
    RolloutDecision,
    decide,
    holds_connections,
    own_report,
    pod_recovery_s,
)
from connquota.operator.status import QuotaObservation, quota_status, status_patch

NEW, OLD = "new", "old"


def pod(ordinal: int, template: str = OLD, **changes: object) -> PodView:
    """A pod that is Ready, enforces generation 3 and serves its two streams."""
    fields: dict[str, object] = {
        "ordinal": ordinal,
        "name": f"md-gw-{ordinal}",
        "template": template,
        "ready": True,
        "generation_wanted": 3,
        "generation_acked": 3,
        "streams_planned": 2,
        "streams_live": 2,
    }
    fields.update(changes)
    return PodView(**fields)  # type: ignore[arg-type]


def fleet(replicas: int = 3, **changes: object) -> FleetView:
    fields: dict[str, object] = {
        "template": NEW,
        "replicas": replicas,
        "statefulset_current": True,
        "pod_prefix": "md-gw-",
    }
    fields.update(changes)
    return FleetView(**fields)  # type: ignore[arg-type]


def pods(*views: PodView) -> dict[int, PodView]:
    return {p.ordinal: p for p in views}


def test_a_fleet_on_the_desired_template_is_rolled_out_and_replaces_nothing() -> None:
    decision = decide(fleet(), pods(pod(0, NEW), pod(1, NEW), pod(2, NEW)))
    assert decision == RolloutDecision(updated=3, total=3)
    assert decision.rolled_out and not decision.replace and decision.waiting is None


def test_a_template_change_replaces_the_highest_ordinal_first_one_at_a_time() -> None:
    decision = decide(fleet(), pods(pod(0), pod(1), pod(2)))
    assert decision.replace == (2,)
    assert decision.current == 2
    assert (decision.updated, decision.total, decision.rolled_out) == (0, 3, False)


def test_nothing_is_replaced_before_the_statefulset_controller_has_the_new_template() -> None:
    decision = decide(fleet(statefulset_current=False), pods(pod(0), pod(1)))
    assert decision.replace == ()
    assert decision.waiting == "the StatefulSet controller to take the new pod template"
    assert not decision.rolled_out


def test_the_replaced_pod_is_waited_for_until_it_terminates() -> None:
    decision = decide(fleet(), pods(pod(0), pod(1), pod(2, terminating=True)))
    assert decision.replace == ()
    assert decision.current == 2
    assert decision.waiting == "pod md-gw-2 to terminate"


def test_its_successor_is_waited_for_until_created_ready_acknowledged_and_serving() -> None:
    base = pods(pod(0), pod(1))
    steps = [
        ({}, "pod md-gw-2 to be created", 0),
        ({2: pod(2, NEW, ready=False)}, "pod md-gw-2 to become Ready", 0),
        ({2: pod(2, NEW, generation_acked=None)}, "pod md-gw-2 to enforce plan generation 3", 1),
        ({2: pod(2, NEW, generation_acked=2)}, "pod md-gw-2 to enforce plan generation 3", 1),
        ({2: pod(2, NEW, streams_live=1)}, "pod md-gw-2 to serve its streams (1/2 live)", 1),
    ]
    replacing = fleet(replacing=frozenset({2}))
    for extra, waiting, updated in steps:
        decision = decide(replacing, {**base, **extra})
        assert decision.replace == (), waiting
        assert decision.waiting == waiting
        assert decision.current == 2
        # Updated once Ready on the new template.
        assert decision.updated == updated, waiting
    decision = decide(replacing, {**base, 2: pod(2, NEW)})
    assert decision.replace == (1,)
    assert decision.updated == 1


def test_a_lower_pod_that_is_not_serving_blocks_the_rollout() -> None:
    decision = decide(fleet(), pods(pod(0, NEW, streams_live=0), pod(1), pod(2)))
    assert decision.replace == ()
    assert decision.waiting == "pod md-gw-0 to serve its streams (0/2 live)"


def test_an_outdated_pod_that_is_already_unavailable_is_replaced_before_a_higher_one() -> None:
    # Pod 1 has not acknowledged its plan: replacing it costs no further availability, while
    # replacing pod 2 would make two pods unavailable at once.
    decision = decide(fleet(), pods(pod(0), pod(1, generation_acked=2), pod(2)))
    assert decision.replace == (1,)


def test_outdated_pods_that_are_not_ready_are_replaced_at_once_whatever_the_budget() -> None:
    # Pod 0 is still starting (new template); pods 1 and 2 run a broken old template.
    decision = decide(
        fleet(), pods(pod(0, NEW, ready=False), pod(1, ready=False), pod(2, ready=False))
    )
    assert decision.replace == (2, 1)


def test_max_unavailable_replaces_that_many_pods_at_once() -> None:
    views = pods(pod(0), pod(1), pod(2), pod(3))
    assert decide(fleet(4, max_unavailable=2), views).replace == (3, 2)
    assert decide(fleet(4, max_unavailable=10), views).replace == (3, 2, 1, 0)
    # One already in flight leaves room for one more.
    views[3] = pod(3, terminating=True)
    assert decide(fleet(4, max_unavailable=2), views).replace == (2,)


def test_no_pod_is_replaced_while_the_plan_is_in_transition_unless_it_is_broken() -> None:
    decision = decide(fleet(plan_settled=False), pods(pod(0), pod(1)))
    assert decision.replace == ()
    assert decision.waiting == "the plan transition to finish"
    decision = decide(fleet(plan_settled=False), pods(pod(0), pod(1, ready=False)))
    assert decision.replace == (1,)


def test_pods_above_the_replicas_are_left_to_the_scale_down() -> None:
    decision = decide(fleet(2), pods(pod(0, NEW), pod(1, NEW), pod(2), pod(3, terminating=True)))
    assert decision.rolled_out and decision.replace == () and decision.total == 2


def test_a_pod_without_a_template_hash_is_outdated() -> None:
    assert decide(fleet(1), pods(pod(0, None))).replace == (0,)


def test_rolled_out_needs_every_replaced_pod_ready_on_the_new_template() -> None:
    replacing = fleet(2, replacing=frozenset({1}))
    for successor, waiting in (
        (None, "pod md-gw-1 to be created"),
        (pod(1, NEW, ready=False), "pod md-gw-1 to become Ready"),
        (pod(1, OLD, terminating=True), "pod md-gw-1 to terminate"),
    ):
        views = pods(pod(0, NEW), *([successor] if successor else []))
        decision = decide(replacing, views)
        assert not decision.rolled_out and decision.waiting == waiting
        assert (decision.updated, decision.current) == (1, 1)
    # Ready is enough: acknowledgements and live streams are the Ready condition's business.
    decision = decide(replacing, pods(pod(0, NEW), pod(1, NEW, streams_live=0)))
    assert decision.rolled_out and decision.updated == 2
    assert decide(fleet(0), {}).rolled_out


def test_pods_missing_or_not_ready_outside_a_rollout_are_not_the_rollouts_business() -> None:
    # A new fleet, a scale-up, a crash: the StatefulSet creates pods at the desired template,
    # and the status does not change with every pod the controller creates.
    for views in ({}, pods(pod(0, NEW, ready=False)), pods(pod(0, NEW), pod(1, NEW, ready=False))):
        assert decide(fleet(3), views) == RolloutDecision(updated=3, total=3)


def test_recovery_bound_of_a_replaced_pod_is_a_blind_hold_plus_its_batches() -> None:
    plan = make_pod_plan(0)
    assert pod_recovery_s(None) is None
    assert pod_recovery_s(plan.model_copy(update={"connections": []})) is None
    assert pod_recovery_s(plan) == 0.0  # no attempt slice on a1: the exchange counts none
    conns = [c.model_copy(update={"id": f"c{i}"}) for i in range(5) for c in plan.connections]
    attempts = Slice(
        limit=LimitName.CONNECTION_ATTEMPTS,
        scope=LimitScope.IP,
        key="a1",
        value=2,
        shape=LimitShape.SLIDING_WINDOW,
        windowSeconds=300,
    )
    plan = plan.model_copy(update={"connections": conns, "slices": [attempts]})
    hold = attempt_hold_s(300, plan.profile.connectTimeoutSeconds, plan.windowMarginSeconds)
    assert pod_recovery_s(plan) == pytest.approx(hold + 3 * hold)
    starved = plan.model_copy(update={"slices": [attempts.model_copy(update={"value": 0})]})
    assert pod_recovery_s(starved) == math.inf


def test_the_template_hash_ignores_placement_only_parts_and_follows_everything_else() -> None:
    quota = make_quota()
    pool = builders.build_statefulset(quota, 2, [])

    def hash_of(sts: dict) -> str:
        return sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH]

    from operator_factories import POOL

    from connquota.api.pool import ExchangeEgressPool

    addresses = ExchangeEgressPool.model_validate(POOL).spec.addresses
    bind = [a for a in addresses if a.name == "a1"]
    label = [a for a in addresses if a.name == "l1"]
    placed = builders.build_statefulset(quota, 3, bind)
    labelled = builders.build_statefulset(quota, 3, label)
    assert "affinity" in placed["spec"]["template"]["spec"]
    assert names.LABEL_EGRESS in labelled["spec"]["template"]["metadata"]["labels"]
    assert hash_of(pool) == hash_of(placed) == hash_of(labelled)
    for change in (
        {"image": "connquota/gateway:0.2.0"},
        {"resources": {"requests": {"cpu": "200m"}}},
        {"podOverrides": {"annotations": {"rollout": "2"}}},
        {"lastValueCache": True},
    ):
        changed = make_quota(gateway=change)
        assert hash_of(builders.build_statefulset(changed, 2, [])) != hash_of(pool), change
    # Proxy Secrets mounted from the pool are part of the template.
    assert hash_of(builders.build_statefulset(quota, 2, [], addresses)) == hash_of(pool)


def test_pdb_is_zero_whatever_max_unavailable_the_rollout_keeps_it_itself() -> None:
    assert builders.build_pod_disruption_budget(make_quota())["spec"]["maxUnavailable"] == 0
    quota = make_quota(gateway={"maxUnavailable": 2})
    assert builders.build_pod_disruption_budget(quota)["spec"]["maxUnavailable"] == 0
    # The operator's own rollout still replaces up to maxUnavailable pods at once.
    assert decide(fleet(4, max_unavailable=2), pods(*(pod(o) for o in range(4)))).replace == (3, 2)


# --- evictions and node drains: a pod on a cordoned node is outdated ----------------------------


def test_a_pod_on_a_cordoned_node_is_outdated_even_on_the_desired_template() -> None:
    views = pods(pod(0, NEW), pod(1, NEW, cordoned=True), pod(2, NEW))
    decision = decide(fleet(), views)
    assert decision.outdated == (1,)
    assert decision.replace == (1,)
    assert decision.updated == 2 and not decision.rolled_out
    # Uncordoned (or its successor on another node): nothing to replace.
    assert decide(fleet(), pods(pod(0, NEW), pod(1, NEW), pod(2, NEW))) == RolloutDecision(
        updated=3, total=3
    )


def test_a_cordoned_pod_waits_for_the_plan_to_settle_and_for_the_budget() -> None:
    views = pods(pod(0, NEW), pod(1, NEW, cordoned=True), pod(2, NEW, ready=False))
    # Pod 2 is down (not outdated): with maxUnavailable 1 the cordoned pod waits.
    decision = decide(fleet(), views)
    assert decision.replace == () and decision.waiting == "pod md-gw-2 to become Ready"
    settled = pods(pod(0, NEW), pod(1, NEW, cordoned=True), pod(2, NEW))
    assert decide(fleet(plan_settled=False), settled).waiting == "the plan transition to finish"
    # Not Ready on a cordoned node: it serves nothing, replaced at once.
    broken = pods(pod(0, NEW), pod(1, NEW, cordoned=True, ready=False), pod(2, NEW))
    assert decide(fleet(plan_settled=False), broken).replace == (1,)


def test_a_successor_on_a_cordoned_node_is_not_done() -> None:
    # Replaced by the rollout, its successor came back on a cordoned node: still outdated.
    views = pods(pod(0, NEW), pod(1, NEW, cordoned=True), pod(2, NEW))
    decision = decide(fleet(replacing=frozenset({1})), views)
    assert decision.replace == (1,) and not decision.rolled_out


@pytest.mark.parametrize(
    ("changes", "evicting", "holds"),
    [
        # Its published plan gives it connections: labelled (the PDB refuses its eviction).
        ({"connections_planned": 1}, False, True),
        # Not Ready, not acknowledged yet: it is given connections, it holds them soon.
        ({"connections_planned": 1, "ready": False, "generation_acked": None}, False, True),
        # The drained step: no connection in its plan, not acknowledged yet: still holds.
        ({"connections_planned": 0, "generation_wanted": 4}, False, True),
        # A successor started on the drained step, no report of its own yet: it holds nothing.
        (
            {"connections_planned": 0, "generation_wanted": 4, "generation_acked": None},
            False,
            False,
        ),
        # The same with its first report (generation 0: no plan enforced yet).
        ({"connections_planned": 0, "generation_wanted": 4, "generation_acked": 0}, False, False),
        # The drained step acknowledged (it closed them): label removed, it may be evicted.
        ({"connections_planned": 0, "generation_wanted": 4, "generation_acked": 4}, False, False),
        # An empty plan acknowledged from the start (a pod above what the plan uses).
        ({"connections_planned": 0}, False, False),
        # No plan published for its ordinal: it holds nothing.
        (
            {"connections_planned": 0, "generation_wanted": 0, "generation_acked": None},
            False,
            False,
        ),
        # Its break-before-make turn (no room to move them first): removed before eviction.
        ({"connections_planned": 1}, True, False),
        # Terminating (evicted, or deleted by someone): never labelled again.
        ({"connections_planned": 1, "terminating": True}, False, False),
    ],
)
def test_holds_connections_label_decision(
    changes: dict[str, object], evicting: bool, holds: bool
) -> None:
    assert holds_connections(pod(0, NEW, **changes), evicting=evicting) is holds


def test_status_shows_rollout_progress_and_the_rolled_out_condition() -> None:
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rolling = {
        "template": NEW,
        "updated": 1,
        "total": 3,
        "currentPod": "md-gw-1",
        "waitingFor": "pod md-gw-2 to become Ready",
        "recoverySeconds": 12.5,
    }
    obs = QuotaObservation(generation=2, rollout=rolling, rolled_out=False)
    status = quota_status(None, obs, now)
    assert status["rollout"] == rolling
    cond = {c["type"]: c for c in status["conditions"]}
    assert cond["RolledOut"]["status"] == "False"
    assert cond["RolledOut"]["reason"] == "RollingOut"
    assert "1/3 pods updated" in cond["RolledOut"]["message"]
    assert "md-gw-1" in cond["RolledOut"]["message"]
    assert "12.5s" in cond["RolledOut"]["message"]
    assert cond["Reconciling"]["status"] == "True"
    assert cond["Ready"]["status"] == "False"
    assert "Degraded" not in cond  # a planned replacement is not a degradation
    done = QuotaObservation(
        generation=2, rollout={"template": NEW, "updated": 3, "total": 3}, rolled_out=True
    )
    status = quota_status(status, done, now)
    cond = {c["type"]: c for c in status["conditions"]}
    assert cond["RolledOut"]["status"] == "True"
    assert cond["RolledOut"]["reason"] == "RolledOut"
    # Not looked at (e.g. deleting): no condition.
    status = quota_status(status, QuotaObservation(generation=2), now)
    assert "RolledOut" not in {c["type"] for c in status["conditions"]}


def test_a_new_pods_report_counts_only_once_the_lease_names_a_new_holder() -> None:
    # The operator restarted: whoever holds the Lease now is trusted.
    assert own_report(None, "uid-a", "md-gw-0/1111") == (True, ("uid-a", "md-gw-0/1111"))
    assert own_report(None, "uid-a", "") == (False, None)
    seen = ("uid-a", "md-gw-0/1111")
    # The same pod, a restarted container: a new holder, still its own.
    assert own_report(seen, "uid-a", "md-gw-0/2222") == (True, ("uid-a", "md-gw-0/2222"))
    # A new pod while the Lease still names the predecessor (SIGKILLed, fence not expired),
    # or is free (released on a graceful stop): the report there is not the new pod's.
    assert own_report(seen, "uid-b", "md-gw-0/1111") == (False, seen)
    assert own_report(seen, "uid-b", "") == (False, seen)
    # The new pod took the Lease: from now on its holder is the one remembered.
    fresh, seen = own_report(seen, "uid-b", "md-gw-0/3333")
    assert fresh and seen == ("uid-b", "md-gw-0/3333")
    assert own_report(seen, "uid-b", "md-gw-0/3333") == (True, seen)


def test_a_finished_rollout_clears_the_current_pod_from_the_live_status() -> None:
    # A JSON merge patch merges objects: keys the new status lacks must be sent as null.
    live = {
        "replicas": 3,
        "rollout": {"template": NEW, "updated": 2, "total": 3, "currentPod": "md-gw-0"},
        "streams": {"desired": 2},
    }
    desired = {"replicas": 3, "rollout": {"template": NEW, "updated": 3, "total": 3}}
    assert status_patch(live, desired) == {
        "replicas": 3,
        "rollout": {"template": NEW, "updated": 3, "total": 3, "currentPod": None},
    }
    assert status_patch(None, desired) == desired


LIFECYCLE = ("terminating", "missing", "starting", "unacked", "serving")
"""An evicted pod's way back: terminating, gone, recreated (new template), Ready but not yet
enforcing its plan, serving."""


def _view(ordinal: int, stage: str, template: str) -> PodView | None:
    if stage == "missing":
        return None
    return pod(
        ordinal,
        template,
        terminating=stage == "terminating",
        ready=stage in ("unacked", "serving", "terminating"),
        generation_acked=3 if stage == "serving" else None,
    )


@given(
    replicas=st.integers(1, 6),
    max_unavailable=st.integers(1, 3),
    steps=st.lists(st.integers(0, 6), min_size=1, max_size=80),
)
@settings(max_examples=200, deadline=None)
def test_a_simulated_rollout_never_exceeds_max_unavailable_and_finishes(
    replicas: int, max_unavailable: int, steps: list[int]
) -> None:
    """Pods advance through their lifecycle in any order while the operator acts on its
    decisions: never more than maxUnavailable pods are down, and the rollout ends."""
    stage = dict.fromkeys(range(replicas), "serving")
    template = dict.fromkeys(range(replicas), OLD)
    replacing: set[int] = set()

    def operator_step() -> RolloutDecision:
        views = {o: v for o in stage if (v := _view(o, stage[o], template[o])) is not None}
        replacing.difference_update(
            o for o in list(replacing) if template[o] == NEW and stage[o] in ("unacked", "serving")
        )
        decision = decide(
            fleet(replicas, max_unavailable=max_unavailable, replacing=frozenset(replacing)),
            views,
        )
        for o in decision.replace:
            assert stage[o] != "terminating" and template[o] == OLD
            stage[o] = "terminating"
            replacing.add(o)
        down = sum(1 for s in stage.values() if s != "serving")
        assert down <= max_unavailable, (stage, decision)
        return decision

    def advance(o: int) -> None:
        if stage[o] != "serving":
            stage[o] = LIFECYCLE[LIFECYCLE.index(stage[o]) + 1]
            if stage[o] == "starting":
                template[o] = NEW

    for step in steps:
        if step == 0:
            operator_step()
        else:
            advance(step % replicas)
    # Then fairly: every pod advances, the operator acts, until done.
    for _ in range(10 * replicas * len(LIFECYCLE)):
        decision = operator_step()
        if decision.rolled_out and all(t == NEW for t in template.values()):
            break
        for o in range(replicas):
            advance(o)
    else:
        pytest.fail(f"the rollout did not finish: {stage} {template}")
    assert decision.updated == replicas
