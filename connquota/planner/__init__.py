"""The planner: pure functions from specs, shares, previous plans and time to safe plans.

No I/O, no clock reads, no Kubernetes: the operator (through `connquota.operator.planning`,
its only door here) and the `connquota plan` command read the inputs and persist the outputs.
Modules, one job each:

- `streams`: a quota's declared streams, expanded (spelled by the exchange's dialect),
  ordered and de-duplicated.
- `budgets`: every budget per (domain, public address) and (domain, account).
- `shares`: budgets divided among the quotas of a pool, with reasons.
- `capacity`, `packing`, `plan`: streams -> connections -> (address, credential) -> pods,
  with each pod's slices, spare room and the recovery bounds; sticky to the previous plan.
- `incremental`, `stream_changes`: the same plan from the previous one's `PlanIndex`, in time
  proportional to the changed streams (the operator keeps the index in memory per quota).
- `transitions`, `ledger`: which generation is safe to publish now, and what it waits for.
- `pool_plan`: budgets, shares and every quota's plan of a pool in one call.

The limit formulas shared with the gateway and the operator live in `connquota.api.timing`;
the independent check of invariant I1 is `connquota.testing.checker` (beside the tests).
This package exports only what callers import from it; everything else is imported from its
module.
"""

from connquota.planner.errors import PlanningError
from connquota.planner.incremental import IndexedPlan, PlanIndex, plan_quota_indexed
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.pool_plan import plan_pool
from connquota.planner.streams import expand_streams

__all__ = [
    "DesiredStream",
    "IndexedPlan",
    "PlanIndex",
    "PlanRequest",
    "PlanningError",
    "QuotaInput",
    "expand_streams",
    "plan_pool",
    "plan_quota",
    "plan_quota_indexed",
]
