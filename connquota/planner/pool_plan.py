"""Plan every quota of a pool at once: budgets, shares, then each quota's plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.budgets import Budget, BudgetKey
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.shares import PoolShares, divide_budgets


@dataclass(frozen=True)
class PoolPlan:
    """Every quota's plan on a pool, with the budgets and shares they were made from."""

    budgets: dict[BudgetKey, Budget]
    shares: PoolShares
    plans: dict[str, QuotaPlan]


def plan_pool(
    pool: ExchangeEgressPoolSpec,
    quotas: Sequence[QuotaInput],
    streams: Mapping[str, Sequence[DesiredStream]],
    generations: Mapping[str, int],
    previous: Mapping[str, QuotaPlan | None] | None = None,
) -> PoolPlan:
    """Plan every quota (keyed by `namespace/name`) against the pool's shared budgets."""
    previous = previous or {}
    shares = divide_budgets(pool, quotas)
    plans = {}
    for q in sorted(quotas, key=lambda q: q.key):
        plans[q.key] = plan_quota(
            PlanRequest(
                quota=q.ref,
                spec=q.spec,
                profile=q.profile,
                pool=pool,
                shares=shares.quotas[q.key],
                streams=streams[q.key],
                generation=generations[q.key],
                previous=previous.get(q.key),
            )
        )
    return PoolPlan(budgets=shares.budgets, shares=shares, plans=plans)


def plan_json(plan: QuotaPlan) -> bytes:
    """The canonical bytes of a plan (same plan, same bytes)."""
    return plan.model_dump_json(exclude_none=True).encode()
