"""Plan every quota of a pool at once: budgets, shares, then each quota's plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.budgets import Budget, BudgetKey
from connquota.planner.endpoints import split_by_endpoint, with_refused
from connquota.planner.incremental import PlanIndex, plan_quota_indexed
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.shares import PoolShares, divide_budgets


@dataclass(frozen=True)
class PoolPlan:
    """Every quota's plan on a pool, with the budgets and shares they were made from."""

    budgets: dict[BudgetKey, Budget]
    shares: PoolShares
    plans: dict[str, QuotaPlan]
    indexes: dict[str, PlanIndex] = field(default_factory=dict)
    """Per quota, the index for its next replan (only when `plan_pool` was given `indexes`)."""


def plan_pool(
    pool: ExchangeEgressPoolSpec,
    quotas: Sequence[QuotaInput],
    streams: Mapping[str, Sequence[DesiredStream]],
    generations: Mapping[str, int],
    previous: Mapping[str, QuotaPlan | None] | None = None,
    indexes: Mapping[str, PlanIndex] | None = None,
) -> PoolPlan:
    """Plan every quota (keyed by `namespace/name`) against the pool's shared budgets.

    `indexes`: per quota, the index returned with its previous plan (`PoolPlan.indexes`);
    when given (even empty), each quota is planned with `plan_quota_indexed` (the same plans,
    faster when only streams changed) and the result carries the new indexes."""
    previous = previous or {}
    shares = divide_budgets(pool, quotas)
    plans = {}
    new_indexes: dict[str, PlanIndex] = {}
    for q in sorted(quotas, key=lambda q: q.key):
        split = split_by_endpoint(q.profile, streams[q.key])
        req = PlanRequest(
            quota=q.ref,
            spec=q.spec,
            profile=q.profile,
            pool=pool,
            shares=shares.quotas[q.key],
            streams=split.served,
            generation=generations[q.key],
            previous=previous.get(q.key),
        )
        if indexes is None:
            plans[q.key] = with_refused(plan_quota(req), split.refused)
        else:
            result = plan_quota_indexed(req, indexes.get(q.key))
            plans[q.key] = with_refused(result.plan, split.refused)
            new_indexes[q.key] = result.index
    return PoolPlan(budgets=shares.budgets, shares=shares, plans=plans, indexes=new_indexes)


def plan_json(plan: QuotaPlan) -> bytes:
    """The canonical bytes of a plan (same plan, same bytes)."""
    return plan.model_dump_json(exclude_none=True).encode()
