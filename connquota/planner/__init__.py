"""The planner: pure functions from specs, shares, previous plans and time to safe plans.

No I/O, no clock reads, no Kubernetes: the operator (and the `connquota plan` command) read
the inputs and persist the outputs. Modules, one job each:

- `streams`: a quota's declared streams, expanded, ordered and de-duplicated.
- `budgets`: every budget per (domain, public address) and (domain, account).
- `shares`: budgets divided among the quotas of a pool, with reasons.
- `capacity`, `packing`, `plan`: streams -> connections -> (address, credential) -> pods,
  with each pod's slices, spare room and the recovery bounds; sticky to the previous plan.
- `incremental`, `stream_changes`: the same plan from the previous one's `PlanIndex`, in time
  proportional to the changed streams (the operator keeps the index in memory per quota).
- `transitions`, `ledger`: which generation is safe to publish now, and what it waits for.
- `checker`: an independent check of invariant I1 over every generation pods may enforce.
"""

from connquota.planner.checker import Ack, QuotaHistory, check_budgets, check_plan_consistency
from connquota.planner.errors import PlanningError
from connquota.planner.incremental import IndexedPlan, PlanIndex, plan_quota_indexed
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.ledger import (
    QuotaLedger,
    forgettable,
    rebase_clock,
    record_ack,
    record_publication,
)
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.pool_plan import PoolPlan, plan_json, plan_pool
from connquota.planner.shares import divide_budgets
from connquota.planner.streams import expand_streams
from connquota.planner.transitions import Transition, Waiting, budget_table, next_publication

__all__ = [
    "Ack",
    "DesiredStream",
    "IndexedPlan",
    "PlanIndex",
    "PlanRequest",
    "PlanningError",
    "PoolPlan",
    "QuotaHistory",
    "QuotaInput",
    "QuotaLedger",
    "Transition",
    "Waiting",
    "budget_table",
    "check_budgets",
    "check_plan_consistency",
    "divide_budgets",
    "expand_streams",
    "forgettable",
    "next_publication",
    "plan_json",
    "plan_pool",
    "plan_quota",
    "plan_quota_indexed",
    "rebase_clock",
    "record_ack",
    "record_publication",
]
