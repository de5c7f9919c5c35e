"""The operator's bookkeeping around the planner's `QuotaLedger` (pure functions, no I/O).

The ledger of a quota says what every one of its pods may still enforce; the planner's
`next_publication` counts the ledgers of every quota of a pool, so the operator must keep each
one current and persisted:

- persisted as the ConfigMap `<quota>-ledger` (key `ledger.json`), owned by the quota. Not an
  annotation: a quota may already be near the 1.5 MiB object limit, and writing an annotation
  would bump the quota's resourceVersion and wake every watcher of quotas;
- written *before* the plan ConfigMaps of a new generation (write-ahead): a crash between the
  two leaves a generation in the ledger that no pod ever saw, which only makes transitions
  wait longer until the next generation replaces it;
- repaired on load: plan ConfigMaps newer than the ledger (an operator that crashed before
  this code existed, a deleted ledger) are recorded as published and unacknowledged;
- acknowledgements come from the gateways' Lease reports (`planGeneration`), recorded when the
  operator first sees them, on its monotonic clock;
- a pod whose plan content did not change keeps its old generation in its ConfigMap (no
  write), so its acknowledgement of that ConfigMap counts as acknowledging the newest ledger
  generation when that generation gives the pod exactly the slices of its ConfigMap;
- a pod that is gone (its ordinal at or above the StatefulSet's replicas and no Pod object)
  is recorded as acknowledging the newest generation once the profile's dead-connection
  timeout has passed since the operator saw it gone (the exchange still counts connections
  that ended uncleanly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import ValidationError

from connquota.api import timing
from connquota.api.plan import PodPlan, QuotaPlan, QuotaRef
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.report import GatewayReport
from connquota.operator.names import LEDGER_KEY
from connquota.operator.planning import (
    LedgerSlice,
    QuotaLedger,
    certifies,
    expire,
    ledger_slices,
    rate_holders,
    record_ack,
    record_publication,
)


def longest_memory_s(plan: QuotaPlan, margin_s: float) -> float:
    """The longest a use of any rate limit of the quota's profile keeps counting, plus the
    margin: how long a ledger must have watched before it may vouch for what it did not see."""
    out = 0.0
    for pod in plan.pods:
        profile = pod.profile
        for limit in profile.limits:
            if limit.windowSeconds is not None:
                memory = timing.rate_memory_s(
                    limit.name, limit.windowSeconds, profile.connectTimeoutSeconds
                )
                out = max(out, memory)
    return out + margin_s


def fresh_ordinals(
    ledger: QuotaLedger, plan: QuotaPlan, now: float, wall_now: float, margin_s: float
) -> set[int]:
    """The ordinals of `plan` a new Lease may certify fresh (`FreshCertificate`): the ledger
    (as it was before `plan` was recorded) vouches for the quota's past and shows no rate
    slice of theirs that may still be enforced or still count.

    Only an earlier pod of the same ordinal can have made attempts a new pod does not know of:
    every other pod's use is counted in its own hold, which the budgets already subtract."""
    if not certifies(ledger, wall_now, longest_memory_s(plan, margin_s)):
        return set()
    return {p.ordinal for p in plan.pods} - rate_holders(ledger, now)


def ledger_json(ledger: QuotaLedger) -> str:
    """The compact JSON the ledger ConfigMap holds."""
    return ledger.model_dump_json(exclude_none=True)


def parse_ledger(text: str | None, quota: str) -> QuotaLedger | None:
    """The ledger in a ConfigMap value, or None when absent, unreadable or someone else's."""
    if not text:
        return None
    try:
        ledger = QuotaLedger.model_validate_json(text)
    except ValidationError:
        return None
    return ledger if ledger.quota == quota else None


SliceKey = tuple[str, str, str, str, float, float | None]


def _slice_key(s: LedgerSlice) -> SliceKey:
    return (s.domain, s.scope.value, s.key, s.limit, s.value, s.windowSeconds)


def _pod_slices(pod: PodPlan, pool: ExchangeEgressPoolSpec) -> list[SliceKey]:
    plan = QuotaPlan(generation=pod.generation, quota=pod.quota, replicas=1, pods=[pod])
    return sorted(_slice_key(s) for s in ledger_slices(plan, pool).slices)


def _newest_slices(ledger: QuotaLedger, ordinal: int) -> list[SliceKey] | None:
    newest = max(ledger.published, key=lambda g: g.generation, default=None)
    if newest is None:
        return None
    return sorted(_slice_key(s) for s in newest.slices if s.ordinal == ordinal)


def effective_ack(
    ledger: QuotaLedger, reported: int, pod: PodPlan | None, pool: ExchangeEgressPoolSpec
) -> int:
    """The generation a report of `reported` acknowledges, given the pod's published plan.

    A pod enforcing its ConfigMap's generation enforces exactly that ConfigMap's slices; when
    the newest ledger generation gives the pod the same slices (its content did not change,
    so its ConfigMap was not rewritten), it acknowledges that newest generation too.
    """
    if pod is None or reported < pod.generation:
        return reported
    newest = ledger.last_generation
    if newest <= reported:
        return reported
    if _newest_slices(ledger, pod.ordinal) == _pod_slices(pod, pool):
        return newest
    return reported


def reconcile_with_published(
    ledger: QuotaLedger, published: QuotaPlan | None, pool: ExchangeEgressPoolSpec
) -> QuotaLedger:
    """The ledger with the published plans recorded when they are newer than it knows."""
    if published is None or published.generation <= ledger.last_generation:
        return ledger
    pods = [p.model_copy(update={"generation": published.generation}) for p in published.pods]
    return record_publication(ledger, published.model_copy(update={"pods": pods}), pool)


def record_reports(
    ledger: QuotaLedger,
    reports: Mapping[int, GatewayReport],
    published: Mapping[int, PodPlan],
    pool: ExchangeEgressPoolSpec,
    now: float,
    margin_s: float,
) -> QuotaLedger:
    """The ledger after the acknowledgements on the gateways' reports (first seen at `now`)."""
    for ordinal in sorted(reports):
        generation = effective_ack(
            ledger, reports[ordinal].planGeneration, published.get(ordinal), pool
        )
        ledger = record_ack(ledger, ordinal, generation, now, margin_s)
    return ledger


def ledger_ordinals(ledger: QuotaLedger) -> list[int]:
    """Every pod ordinal any kept generation lists."""
    return sorted({o for g in ledger.published for o in g.ordinals})


def gone_ordinals(ledger: QuotaLedger, live_ordinals: Iterable[int], replicas: int) -> list[int]:
    """Ordinals the ledger knows of that have no Pod and are at or above `replicas`."""
    live = set(live_ordinals)
    return [o for o in ledger_ordinals(ledger) if o >= replicas and o not in live]


def record_gone(
    ledger: QuotaLedger, ordinals: Iterable[int], now: float, margin_s: float
) -> QuotaLedger:
    """Record pods that are gone as acknowledging the newest generation at `now`."""
    newest = ledger.last_generation
    for ordinal in ordinals:
        ledger = record_ack(ledger, ordinal, newest, now, margin_s)
    return ledger


def holds_anything(ledger: QuotaLedger) -> bool:
    """Whether the newest generation gives any pod a non-zero shared slice."""
    newest = max(ledger.published, key=lambda g: g.generation, default=None)
    return newest is not None and any(s.value > 0 for s in newest.slices)


def empty_plan(
    quota: QuotaRef, ledger: QuotaLedger, pods: Mapping[int, PodPlan], generation: int
) -> QuotaPlan:
    """A generation in which every known pod holds nothing (a deleted quota lets go)."""
    ordinals = sorted(set(ledger_ordinals(ledger)) | set(pods))
    out = []
    for ordinal in ordinals:
        base = pods.get(ordinal)
        if base is None:
            continue
        out.append(
            base.model_copy(
                update={
                    "generation": generation,
                    "connections": [],
                    "slices": [],
                    "spare": [],
                    "routes": [],
                }
            )
        )
    return QuotaPlan(generation=generation, quota=quota, replicas=0, pods=out)


def prune(ledger: QuotaLedger, now: float) -> QuotaLedger:
    """The ledger without releases that no longer count (smaller to persist)."""
    return expire(ledger, now)


__all__ = [
    "LEDGER_KEY",
    "effective_ack",
    "empty_plan",
    "gone_ordinals",
    "holds_anything",
    "ledger_json",
    "ledger_ordinals",
    "parse_ledger",
    "prune",
    "reconcile_with_published",
    "record_gone",
    "record_reports",
]
