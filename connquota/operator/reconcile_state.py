"""What the reconciler remembers of each quota, where it reads the cluster from, and small
helpers over the objects it reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from connquota.api.plan import PodPlan, QuotaPlan, QuotaRef
from connquota.api.pool import ExchangeEgressPool
from connquota.api.report import GatewayReport
from connquota.operator import accessors, planning, rollout
from connquota.operator.node_loss import NodeLoss
from connquota.operator.planning import (
    DesiredStream,
    QuotaInput,
    QuotaLedger,
)

log = logging.getLogger(__name__)

EVENT_REPEAT_S = 600.0
"""The same Event on the same object is posted at most once per this many seconds."""
NO_SHARE = planning.QuotaShares(quota="", domain="", admitted=False)
"""The shares of a quota the pool's division did not list (not admitted)."""

Source = Callable[[], Iterable[dict[str, Any]]]


def quota_key(body: Mapping[str, Any]) -> str:
    """`namespace/name` of a quota body."""
    meta = body.get("metadata", {})
    return f"{meta.get('namespace')}/{meta.get('name')}"


def read_report(lease: Mapping[str, Any]) -> GatewayReport | None:
    """The gateway report on a Lease, or None when absent or unreadable."""
    text = accessors.lease_report_text(lease)
    if not text:
        return None
    try:
        return GatewayReport.model_validate_json(text)
    except ValidationError:
        return None


@dataclass
class PlanMemory:
    """What the quota's plan ConfigMaps hold, and the plans the operator aims at."""

    published: dict[int, PodPlan] = field(default_factory=dict)
    """ordinal -> the pod plan in its ConfigMap."""
    plan_rv: dict[int, str] = field(default_factory=dict)
    """ordinal -> the ConfigMap's resourceVersion (the precondition of the next write)."""
    loaded: bool = False
    """True once the ConfigMaps were read (again after a failed write)."""
    deleted: set[int] = field(default_factory=set)
    """Ordinals whose plan ConfigMap was deleted behind the operator's back: written again with
    the content it last published (the pod still runs that plan)."""
    target: QuotaPlan | None = None
    """The newest target plan (its unserved streams and recovery bounds go to status)."""
    last_good: tuple[QuotaInput, list[DesiredStream]] | None = None
    """The last planner input that validated: a bad edit keeps counting its share."""


@dataclass
class LedgerMemory:
    """What every pod of the quota may still enforce, and its persistence."""

    ledger: QuotaLedger | None = None
    """Persisted in the `<quota>-ledger` ConfigMap, written before plans."""
    ledger_loaded: bool = False
    ledger_rv: str | None = None
    ledger_dirty: bool = False
    gone_seen: dict[int, float] = field(default_factory=dict)
    """ordinal -> monotonic time the operator first saw the pod gone."""
    dead_connection_s: float = 0.0
    """The profile's dead-connection timeout: how long a vanished pod still counts."""


@dataclass
class ReportMemory:
    """What the operator last told about the quota (no repeated writes or Events)."""

    status_digest: str | None = None
    events: dict[tuple[str, str], float] = field(default_factory=dict)
    """(reason, message) -> monotonic time the Event was last posted."""


@dataclass
class RolloutMemory:
    """What the rollout of the gateway pod template remembers between passes."""

    evicted: dict[int, str] = field(default_factory=dict)
    """ordinal -> uid of the pod this operator evicted: that pod counts as terminating, and the
    rollout is not over, until another pod of the ordinal is Ready on the desired template."""
    holders: dict[int, tuple[str, str]] = field(default_factory=dict)
    """ordinal -> (pod uid, Lease holder seen while that pod ran): a new pod's report counts
    only once its Lease names a holder other than its predecessor's."""
    drain: rollout.Drain | None = None
    """The pod being drained make-before-break before its replacement (one at a time; in
    memory only: after an operator restart the published step is replanned as any plan)."""
    break_before_make: dict[int, str] = field(default_factory=dict)
    """ordinal -> why the pod being replaced could not be drained first (for status)."""
    scale_drain: rollout.ScaleDrain | None = None
    """The scale-down being drained make-before-break (in memory only, as `drain`)."""
    holds_labels: dict[str, bool] = field(default_factory=dict)
    """pod uid -> the `connquota.io/holds-connections` value last written, until the pod
    index shows it (so a pass reading the index before the watch event does not write it
    again)."""


@dataclass
class QuotaState:
    """What the operator remembers of one quota between reconciles, one memory per concern."""

    key: str
    uid: str = ""
    pool: str = ""
    plans: PlanMemory = field(default_factory=PlanMemory)
    ledgers: LedgerMemory = field(default_factory=LedgerMemory)
    reporting: ReportMemory = field(default_factory=ReportMemory)
    rollout: RolloutMemory = field(default_factory=RolloutMemory)
    peer_secret: bool = False
    """The gateways' peer-token Secret exists (created, or found, by this process)."""

    def published_plan(self) -> QuotaPlan | None:
        """The published pod plans as one QuotaPlan (generation = newest pod generation)."""
        published = self.plans.published
        if not published:
            return None
        pods = [published[o] for o in sorted(published)]
        replicas = 1 + max((p.ordinal for p in pods if p.connections), default=-1)
        return QuotaPlan(
            generation=max(p.generation for p in pods),
            quota=pods[0].quota,
            replicas=replicas,
            pods=pods,
        )


@dataclass
class Sources:
    """Where the reconciler reads the cluster from: kopf indexes (no API reads)."""

    pools: Callable[[str], dict[str, Any] | None]
    quotas_of_pool: Callable[[str], list[dict[str, Any]]]
    leases_of_quota: Callable[[str], list[dict[str, Any]]]
    pods_of_quota: Callable[[str], list[dict[str, Any]]]
    statefulset_of_quota: Callable[[str], dict[str, Any] | None]
    node_cordoned: Callable[[str], bool] = field(default=lambda _node: False)
    """Whether the named Node is cordoned (`spec.unschedulable`): its gateway pods are moved
    off it (docs/operator.md, "Evictions and node drains")."""
    lost_nodes: Callable[[], dict[str, NodeLoss]] = field(default=lambda: {})
    """The lost Nodes by name (NotReady/Unknown and tainted by the node lifecycle controller):
    their bind addresses are planned without, their gateway pods force-deleted once safe
    (`connquota.operator.node_loss`)."""


def strip_status(body: Mapping[str, Any]) -> dict[str, Any]:
    """A custom-resource body as the API models read it (status and unknown metadata kept out)."""
    out = {k: v for k, v in dict(body).items() if k in ("apiVersion", "kind", "metadata", "spec")}
    plain: dict[str, Any] = json.loads(json.dumps(out, default=str))
    return plain


def state_empty_plan(state: QuotaState) -> QuotaPlan:
    """The empty generation just recorded in the state's ledger, as pod plans to publish."""
    assert state.ledgers.ledger is not None
    generation = state.ledgers.ledger.last_generation
    pods = [
        p.model_copy(
            update={"generation": generation, "connections": [], "slices": [], "spare": []}
        )
        for p in state.plans.published.values()
    ]
    quota = pods[0].quota if pods else QuotaRef(namespace="-", name="-")
    return QuotaPlan(generation=generation, quota=quota, replicas=0, pods=pods)


def is_deleting(body: Mapping[str, Any]) -> bool:
    return accessors.deleting(body)


def plan_changes(published: Mapping[int, PodPlan], plan: QuotaPlan) -> bool:
    """Whether publishing `plan` would change any pod's plan content."""
    for pod in plan.pods:
        old = published.get(pod.ordinal)
        if old is None or not same_content(old, pod):
            return True
    return False


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def admits(pool: ExchangeEgressPool, namespace: str) -> bool:
    return any(a.namespace in ("*", namespace) for a in pool.spec.allowedNamespaces)


def same_content(a: PodPlan, b: PodPlan) -> bool:
    wa = a.to_wire()
    wb = b.to_wire()
    wa.pop("generation", None)
    wb.pop("generation", None)
    return wa == wb


def addresses_used(state: QuotaState, pool: ExchangeEgressPool) -> list[Any]:
    used = {c.address for p in state.plans.published.values() for c in p.connections}
    return [a for a in pool.spec.addresses if a.name in used]
