"""Reconcile one egress pool: shares, targets, the next safe generation, then publish and scale.

One worker task per pool serializes every budget computation of that pool (the per-pool lock).
Handlers only call `Reconciler.request(pool)`; events arriving while a reconcile runs are
coalesced into one more run. A failed reconcile is retried with the configured backoffs.

Order of writes for a quota (each skipped when nothing changed):

1. ServiceAccount, Role, RoleBinding, Services, PodDisruptionBudget, the ordinals' Leases;
2. plan ConfigMaps of the next safe generation (resourceVersion preconditions);
3. StatefulSet replicas: raised after the plans are published; lowered only after the pods
   above the new count acknowledged an empty plan;
4. pod egress labels (podLabel addresses differing per ordinal);
5. status (only when its content changes) and Events (deduplicated).

Transitions use the planner's `next_publication` with every quota's ledger (what every pod
may still enforce), persisted in a ConfigMap per quota and written before the plans of a new
generation (see `connquota.operator.ledgers`). After a restart the ledgers' clocks are rebased
(every acknowledgement counts as just seen), which only makes transitions wait longer.


The reconciler is split by concern, one module each (read them in this order):

| module | concern |
| --- | --- |
| `work_queue` | one worker per pool, coalesced requests, retries, the drift resync |
| `pool_pass` | one pass over a pool: ledgers, inputs, the division of its budgets, each quota, the pool's status |
| `ledger_sync` | ledgers and published plans: loaded, acknowledged, persisted before new plans |
| `quota_inputs` | a quota's planner input: profile, streams, referenced Secrets (metadata only) |
| `quota_pass` | one quota: target, next safe step, publish, scale, status |
| `publishing` | the ledger first, then owned objects and the plan ConfigMaps that changed |
| `scaling` | StatefulSet replicas up after publishing, down after acknowledgements; pod labels |
| `status_writer` | status only when its meaning changed, problems, deduplicated Events |
| `finalizer` | deleting a quota: empty generation, scale to zero, release when nothing counts |
| `reconcile_state` | `QuotaState`, `Sources` and helpers over the objects read |
"""

from __future__ import annotations

from connquota.api.report import Quarantine
from connquota.operator.finalizer import Finalizer
from connquota.operator.ledger_sync import LedgerSync
from connquota.operator.lost_pods import LostPods
from connquota.operator.pool_pass import PoolPass
from connquota.operator.publishing import Publishing
from connquota.operator.quota_inputs import QuotaInputs
from connquota.operator.quota_pass import QuotaPass
from connquota.operator.reconcile_state import (
    QuotaState,
    Sources,
    quota_key,
    read_report,
    state_empty_plan,
)
from connquota.operator.scaling import Scaling
from connquota.operator.status_writer import StatusWriter
from connquota.operator.work_queue import WorkQueue


class Reconciler(
    WorkQueue,
    PoolPass,
    LedgerSync,
    QuotaInputs,
    QuotaPass,
    Publishing,
    Scaling,
    LostPods,
    StatusWriter,
    Finalizer,
):
    """Runs one worker per pool; the only code that decides what to write."""


__all__ = [
    "Quarantine",
    "QuotaState",
    "Reconciler",
    "Sources",
    "quota_key",
    "read_report",
    "state_empty_plan",
]
