"""The operator's only door to the planner: turns Kubernetes bodies into planner inputs and calls
the planner's public functions. No planning logic lives here.

Planner functions used: `expand_streams`, `divide_budgets`, `plan_quota`, and the planner's
transition function once it ships one (`_planner_transition`). Until then the operator
publishes only what cannot break I1 (a first plan on an otherwise empty pool, or a plan in
which no slice grows) and otherwise keeps the published plan and says what it waits for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connquota.api.plan import PodPlan, QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.quota import ExchangeConnectionQuota
from connquota.exchanges import ProfileError, effective_profile
from connquota.operator.status import Problem
from connquota.planner.errors import PlanningError
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.shares import PoolShares, divide_budgets
from connquota.planner.streams import expand_streams, source_key


class QuotaProblem(Exception):
    """A quota cannot be planned as written; carries the Stalled condition to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, message)


@dataclass(frozen=True)
class Step:
    """The next plan generation safe to publish now, and what it waits for."""

    plan: QuotaPlan
    reached_target: bool
    waiting_for: str | None = None
    retry_after_s: float | None = None


def quota_input(quota: ExchangeConnectionQuota) -> QuotaInput:
    """The planner's view of a quota; raises QuotaProblem for an unknown or broken profile."""
    try:
        profile = effective_profile(quota.spec)
    except ProfileError as exc:
        raise QuotaProblem("UnknownProfile", str(exc)) from None
    meta = quota.metadata
    assert meta.namespace and meta.name
    return QuotaInput(namespace=meta.namespace, name=meta.name, spec=quota.spec, profile=profile)


def stream_sources_needed(quota: ExchangeConnectionQuota) -> list[tuple[str, str, bool]]:
    """(ConfigMap name, key, optional) of every `streamsFrom` entry."""
    return [(s.configMapRef.name, s.key, s.optional) for s in quota.spec.streamsFrom]


def desired_streams(
    quota: ExchangeConnectionQuota, configmaps: Mapping[str, Mapping[str, str] | None]
) -> list[DesiredStream]:
    """Every declared stream; `configmaps` maps ConfigMap name to its data (None: missing)."""
    sources: dict[str, str] = {}
    for name, key, optional in stream_sources_needed(quota):
        data = configmaps.get(name)
        if data is None or key not in data:
            if optional:
                continue
            raise QuotaProblem(
                "StreamsSourceMissing",
                f"streamsFrom: ConfigMap {name} with key {key} not found in "
                f"{quota.metadata.namespace}; create it or mark the entry optional",
            )
        sources[source_key(name, key)] = data[key]
    try:
        return expand_streams(quota.spec, sources)
    except PlanningError as exc:
        raise QuotaProblem("InvalidStreams", str(exc)) from None


def divide(pool: ExchangeEgressPoolSpec, inputs: list[QuotaInput]) -> PoolShares:
    """Every budget of the pool divided among `inputs` (the planner's `divide_budgets`)."""
    try:
        return divide_budgets(pool, inputs)
    except PlanningError as exc:
        raise QuotaProblem("ImpossibleQuota", str(exc)) from None


def _planner_transition() -> Callable[..., Any] | None:
    """The planner's transition function, or None while the planner does not ship one."""
    module = importlib.import_module("connquota.planner")
    for name in ("next_safe_plan", "next_generation", "transition"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def _slices_by_pod(plan: QuotaPlan | None) -> dict[int, dict[tuple[str, str, str], int]]:
    out: dict[int, dict[tuple[str, str, str], int]] = {}
    for pod in plan.pods if plan else []:
        out[pod.ordinal] = {(s.limit.value, s.scope.value, s.key): s.value for s in pod.slices}
    return out


def only_shrinks(published: QuotaPlan | None, target: QuotaPlan) -> bool:
    """True when no pod's slice in `target` is larger than what it holds in `published`.

    Publishing such a plan at once is always safe (nothing grows). Used only while the
    planner ships no transition function: anything that grows then waits.
    """
    old = _slices_by_pod(published)
    for ordinal, slices in _slices_by_pod(target).items():
        held = old.get(ordinal, {})
        for key, value in slices.items():
            if value > held.get(key, 0):
                return False
    return True


def target_and_step(
    quota: QuotaInput,
    streams: list[DesiredStream],
    pool: ExchangeEgressPoolSpec,
    shares: PoolShares,
    published: QuotaPlan | None,
    acks: Mapping[int, int],
    ack_ages_s: Mapping[int, float],
    pool_has_other_plans: bool,
) -> tuple[QuotaPlan, Step]:
    """The quota's target plan and the next generation safe to publish now.

    `acks`: ordinal -> plan generation its gateway enforces; `ack_ages_s`: ordinal -> seconds
    since the operator first saw that acknowledgement (its monotonic clock).
    """
    generation = (published.generation + 1) if published else 1
    shares_of_quota = shares.quotas.get(quota.key)
    if shares_of_quota is None:
        raise QuotaProblem("ImpossibleQuota", f"no share computed for {quota.key}")
    request = PlanRequest(
        quota=quota.ref,
        spec=quota.spec,
        profile=quota.profile,
        pool=pool,
        shares=shares_of_quota,
        streams=streams,
        generation=generation,
        previous=published,
    )
    try:
        target = plan_quota(request)
    except PlanningError as exc:
        raise QuotaProblem("ImpossibleQuota", str(exc)) from None
    transition = _planner_transition()
    if transition is not None:
        try:
            step = transition(published, target, acks, ack_ages_s)
        except PlanningError as exc:
            raise QuotaProblem("ImpossibleQuota", str(exc)) from None
        if isinstance(step, Step):
            return target, step
        return target, Step(
            plan=step.plan,
            reached_target=bool(getattr(step, "reached_target", step.plan == target)),
            waiting_for=getattr(step, "waiting_for", None),
            retry_after_s=getattr(step, "retry_after_s", None),
        )
    # No planner transition yet: publish only what cannot break I1 -- a first plan on a pool
    # where no other quota holds anything, or a plan in which nothing grows.
    if (published is None and not pool_has_other_plans) or only_shrinks(published, target):
        return target, Step(plan=target, reached_target=True)
    if published is None:
        raise QuotaProblem(
            "WaitingForPlanner",
            "another quota of the pool holds published plans and this build's planner has no "
            "transition function to move budget safely; nothing is published",
        )
    return target, Step(
        plan=published,
        reached_target=False,
        waiting_for="a slice must grow and this build's planner has no transition function",
        retry_after_s=30.0,
    )


def empty_pod_plan(quota: QuotaInput, ordinal: int, generation: int) -> PodPlan:
    """A plan with nothing in it: the pod closes everything and holds no slice."""
    return PodPlan(generation=generation, quota=quota.ref, ordinal=ordinal, profile=quota.profile)


def max_rate_window_s(quota: QuotaInput) -> float:
    """The longest rate window of the quota's profile (how long attempts stay counted)."""
    windows = [lim.windowSeconds or 0.0 for lim in quota.profile.limits if lim.is_rate]
    return max(windows, default=0.0) + quota.profile.connectTimeoutSeconds
