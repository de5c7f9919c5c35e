"""Operator-driven rollouts of the gateway pod template: pure decisions, no I/O.

The gateway StatefulSet uses `updateStrategy: OnDelete`, so a new pod template (image,
resources, podOverrides, a pool edit that changes the mounted proxy Secrets) reaches a pod only
when that pod is replaced. `decide` says which pods to replace now, or what the rollout waits
for; the reconciler (`Scaling._roll`) evicts the pods it names (through the
PodDisruptionBudget) and shows the decision in `status.rollout` and the `RolledOut` condition.

Which template a pod runs: every pod template carries `connquota.io/template-hash`
(`builders.template_hash`), a digest of the template without what the operator changes for
placement only (the per-address egress label and the node affinity of `bind` addresses): a
rebalance that moves connections between addresses changes those, and must not replace pods
(I3). A pod is *outdated* when its annotation differs from the desired template's, or when
its node is cordoned (`spec.unschedulable`, as `kubectl drain` sets it): it is then moved off
that node by the same steps. The quota's PodDisruptionBudget (`maxUnavailable: 0`) selects only
the pods `holds_connections` labels, so a node drain's evictions wait until the operator has
moved a pod's connections (docs/operator.md, "Evictions and node drains").

The rules (docs/operator.md, "Rollouts"):

- Nothing is replaced until the StatefulSet carries the desired template and its controller
  observed it (a replaced pod must come back at the new template, not the old one).
- A pod is *available* when it exists, is not terminating, is Ready, enforces the plan
  generation published for its ordinal (its own report, not its predecessor's) and has every
  stream of that plan live upstream.
- Outdated pods are replaced highest ordinal first, as long as the pods unavailable (counting
  the ones being replaced) stay within `maxUnavailable`: with the default 1, a pod is replaced
  only when every other pod is available.
- An outdated pod that is not Ready serves nothing: it is replaced at once, whatever the budget.
- Otherwise a pod is replaced only while the plan is settled (no transition in progress), so a
  rollout never races a slice moving between pods.
- Make-before-break when the plan has room (`Drain`, `advance_drain`): before an available
  pod is evicted, copies of its connections open in the other pods' spare room, the pod lets
  its own go, is evicted, its successor reopens them beside the copies, and the copies close
  (`planner.draining`; no slice changes in any step). One pod at a time.
- Otherwise break-before-make: the replaced pod closes its connections on SIGTERM; its
  successor (same ordinal) makes no attempt before the predecessor's Lease is released or
  expired, and then spends only its own slices, starting as if its whole attempt slice had
  just been used. The successor's connections are back within the recovery bound
  `pod_recovery_s` reports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from connquota.api import timing
from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import PodPlan, QuotaPlan
from connquota.operator.planning import DrainSteps, same_connections


@dataclass(frozen=True)
class PodView:
    """What the rollout needs to know of one gateway pod."""

    ordinal: int
    name: str
    template: str | None
    """Its `connquota.io/template-hash` annotation (None: unknown, treated as outdated)."""
    ready: bool = False
    """Its Ready condition is True."""
    terminating: bool = False
    """Deletion requested (deletionTimestamp set, or evicted by this operator)."""
    generation_wanted: int = 0
    """The plan generation published for its ordinal."""
    generation_acked: int | None = None
    """The plan generation its own gateway process reports enforcing (None: no report of this
    pod's process yet; a predecessor's report does not count)."""
    streams_planned: int = 0
    streams_live: int = 0
    connections_planned: int = 0
    connections_live: int = 0
    """Upstream connections with an open session (its report): a relayed stream counts as
    live in `streams_live`, so a connection still waiting for its attempt slice shows only
    here."""
    cordoned: bool = False
    """Its node is cordoned (`spec.unschedulable`, e.g. by `kubectl drain`): the pod is
    outdated whatever its template, so it is drained (when room allows) and evicted; its
    successor lands on another node."""

    def outdated(self, template: str) -> bool:
        """Whether the pod must be replaced: an older template, or a cordoned node."""
        return self.template != template or self.cordoned

    @property
    def acked(self) -> bool:
        return self.generation_acked is not None and self.generation_acked >= self.generation_wanted

    @property
    def available(self) -> bool:
        return (
            not self.terminating
            and self.ready
            and self.acked
            and self.streams_live >= self.streams_planned
            and self.connections_live >= self.connections_planned
        )

    def waits_for(self) -> str:
        """Why the pod is not available (empty when it is)."""
        if self.terminating:
            return f"pod {self.name} to terminate"
        if not self.ready:
            return f"pod {self.name} to become Ready"
        if not self.acked:
            return f"pod {self.name} to enforce plan generation {self.generation_wanted}"
        if self.streams_live < self.streams_planned:
            return (
                f"pod {self.name} to serve its streams "
                f"({self.streams_live}/{self.streams_planned} live)"
            )
        if self.connections_live < self.connections_planned:
            return (
                f"pod {self.name} to open its connections "
                f"({self.connections_live}/{self.connections_planned} open)"
            )
        return ""


@dataclass(frozen=True)
class FleetView:
    """The StatefulSet side of a rollout."""

    template: str
    """The desired template hash (what the operator builds now)."""
    replicas: int
    """Pods 0..replicas-1 are rolled; pods above are being scaled away."""
    statefulset_current: bool
    """The StatefulSet carries the desired template and its controller observed it."""
    max_unavailable: int = 1
    plan_settled: bool = True
    """No plan transition in progress (every step towards the target published)."""
    pod_prefix: str = ""
    """Pod names are `<pod_prefix><ordinal>` (names the missing ones in messages)."""
    replacing: frozenset[int] = frozenset()
    """Ordinals this rollout replaced (the operator remembers its evictions) whose successor
    may not be Ready on the desired template yet: the rollout is not over before they are.
    Other pods that are missing or not Ready (a new fleet, a scale-up, a crash) are not the
    rollout's business."""


@dataclass(frozen=True)
class RolloutDecision:
    """What to do now, and what the status shows."""

    replace: tuple[int, ...] = ()
    """Ordinals to evict now (highest first)."""
    updated: int = 0
    """Pods (of 0..replicas-1) not outdated and not being replaced: they run the desired
    template, or will when created (the StatefulSet creates missing pods at it)."""
    total: int = 0
    current: int | None = None
    """The pod being replaced (or the next one to be), None when nothing is rolling."""
    waiting: str | None = None
    """What the rollout waits for (None when it replaces pods now or is done)."""
    rolled_out: bool = True
    """No pod runs an older template, and every pod this rollout replaced is Ready again."""
    outdated: tuple[int, ...] = field(default=())


def decide(fleet: FleetView, pods: Mapping[int, PodView]) -> RolloutDecision:
    """The next step of the rollout of `fleet` given its `pods` (by ordinal)."""
    total = fleet.replicas
    if total <= 0:
        return RolloutDecision()
    ordinals = range(total)

    def name(o: int) -> str:
        pod = pods.get(o)
        return pod.name if pod is not None else f"{fleet.pod_prefix}{o}"

    missing = [o for o in ordinals if o not in pods]
    present = [pods[o] for o in ordinals if o in pods]
    outdated = sorted(
        (p.ordinal for p in present if not p.terminating and p.outdated(fleet.template)),
        reverse=True,
    )

    def done(o: int) -> bool:
        pod = pods.get(o)
        return _ready(pod) and pod is not None and not pod.outdated(fleet.template)

    # Replaced by this rollout, successor not yet Ready on the desired template.
    pending = sorted((o for o in fleet.replacing if o < total and not done(o)), reverse=True)
    updated = sum(1 for o in ordinals if o not in outdated and o not in pending)
    # Pods not available: the ones being replaced, missing, starting, not yet serving.
    unavailable = set(missing) | {p.ordinal for p in present if not p.available}
    if not outdated:
        if not pending:
            return RolloutDecision(updated=updated, total=total)
        first = pending[0]
        return RolloutDecision(
            updated=updated,
            total=total,
            current=first,
            waiting=_why(pods, first, name(first)),
            rolled_out=False,
        )
    base = RolloutDecision(updated=updated, total=total, rolled_out=False, outdated=tuple(outdated))
    if not fleet.statefulset_current:
        return replace(
            base,
            current=outdated[0],
            waiting="the StatefulSet controller to take the new pod template",
        )
    # Outdated pods that are not Ready serve nothing: replacing them costs no availability.
    broken = [o for o in outdated if not pods[o].ready]
    chosen = list(broken)
    budget_used = unavailable - set(broken)
    blocked: str | None = None
    for o in outdated:
        if o in broken:
            continue
        if not fleet.plan_settled:
            blocked = "the plan transition to finish"
            break
        if len(budget_used | {o}) > fleet.max_unavailable:
            # Highest first, but a lower pod that is already unavailable still fits.
            if blocked is None:
                others = sorted(budget_used - {o}, reverse=True)
                blocked = _why(pods, others[0], name(others[0]))
            continue
        chosen.append(o)
        budget_used.add(o)
    if chosen:
        ordered = tuple(sorted(chosen, reverse=True))
        return replace(base, replace=ordered, current=ordered[0])
    # Nothing to replace now: the pod in flight (being replaced, or starting) is the current one.
    in_flight = sorted(unavailable - set(outdated), reverse=True)
    current = in_flight[0] if in_flight else outdated[0]
    return replace(base, current=current, waiting=blocked)


def holds_connections(pod: PodView, *, evicting: bool = False) -> bool:
    """Whether `pod` gets `connquota.io/holds-connections=true`, the label the quota's
    PodDisruptionBudget (`maxUnavailable: 0`) selects: while its published plan gives it
    connections, and after a plan without any until its own gateway acknowledged it (it closes
    a connection that left its plan before reporting the generation enforced: the drained
    step), as long as its own gateway reports an older generation. A pod whose own gateway has
    enforced no plan yet (no report, or generation 0) and whose plan gives it nothing (a successor started on the drained
    step) holds nothing: it opens connections only from the plans it reads. Never on a pod
    being evicted or terminating (`evicting`: its break-before-make turn came, there was no
    room to move its connections first), nor on a pod no plan was published for."""
    if evicting or pod.terminating or pod.generation_wanted <= 0:
        return False
    if pod.connections_planned > 0:
        return True
    # An own report of an older generation than the published one (0: none enforced yet, so
    # none of its connections opened).
    return bool(pod.generation_acked) and not pod.acked


def _ready(pod: PodView | None) -> bool:
    return pod is not None and pod.ready and not pod.terminating


def _why(pods: Mapping[int, PodView], ordinal: int, name: str) -> str:
    pod = pods.get(ordinal)
    return pod.waits_for() if pod is not None else f"pod {name} to be created"


Holder = tuple[str, str]
"""(pod uid, Lease holder identity) seen together."""


def own_report(seen: Holder | None, uid: str, holder: str) -> tuple[bool, Holder | None]:
    """Whether the report on an ordinal's Lease is the pod `uid`'s own, given the Lease's
    `holder` now and what was `seen` before; returns it with what to remember.

    The predecessor's last report stays on the Lease until its successor (a new pod, a new
    uid) takes the Lease and writes its own, so a new pod's report counts only once the Lease
    names a holder other than the one seen while an older pod of the ordinal ran. A free Lease
    (no holder) carries nobody's current report. With nothing seen (a restarted operator),
    the holder is trusted."""
    if not holder:
        return False, seen
    if seen is None or seen[0] == uid or seen[1] != holder:
        return True, (uid, holder)
    return False, seen


def pod_recovery_s(plan: PodPlan | None) -> float | None:
    """Upper bound, in seconds, on how long a replaced pod's successor takes to reopen every
    connection of `plan` (break-before-make): it starts as if its whole attempt slice had just
    been used (one attempt hold), then reopens ceil(N / R) batches per address, each held for
    the attempt hold (the planner's per-address recovery bound, for this pod alone). None when
    the pod holds no connection; inf when it has no attempt slice on an address it uses."""
    if plan is None or not plan.connections:
        return None
    per_address: dict[str, int] = {}
    for conn in plan.connections:
        per_address[conn.address] = per_address.get(conn.address, 0) + 1
    worst = 0.0
    for address, count in per_address.items():
        slice_ = plan.slice(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, address)
        if slice_ is None or slice_.windowSeconds is None:
            continue  # the exchange counts no attempts on this address: nothing to wait for
        hold_s = timing.attempt_hold_s(
            slice_.windowSeconds, plan.profile.connectTimeoutSeconds, plan.windowMarginSeconds
        )
        worst = max(worst, hold_s + timing.recovery_s(count, slice_.value, hold_s))
    return worst


def summary(decision: RolloutDecision, names: Sequence[str] = ()) -> str:
    """One line for Events and logs."""
    head = f"{decision.updated}/{decision.total} pods updated"
    if decision.replace:
        return f"{head}; replacing {', '.join(names) or decision.replace}"
    if decision.waiting:
        return f"{head}; waiting for {decision.waiting}"
    return head


# --- Make-before-break: the pod's connections moved to other pods before it is replaced -------


class DrainPhase(enum.StrEnum):
    """Where a drain is (docs/operator.md, "Rollouts"); each phase publishes one plan."""

    MAKE = "make"
    """Copies of the pod's connections open on other pods (`steps.make` published)."""
    DRAINED = "drained"
    """The pod lets its connections go (`steps.drained`); then it is evicted."""
    REPLACING = "replacing"
    """The pod was evicted; its successor comes up with the drained plan (its slices only)."""
    RETURN = "return"
    """The successor reopens the pod's connections beside the copies (`steps.make` again)."""
    RESTORE = "restore"
    """The copies close (`steps.base`): the fleet is back to the plan the drain started from."""


@dataclass
class Drain:
    """A pod being drained make-before-break, remembered between passes."""

    ordinal: int
    uid: str
    """The pod being drained (its successor has another uid)."""
    steps: DrainSteps
    phase: DrainPhase = DrainPhase.MAKE

    def target(self) -> QuotaPlan:
        """The plan this phase publishes."""
        if self.phase in (DrainPhase.MAKE, DrainPhase.RETURN):
            return self.steps.make
        if self.phase == DrainPhase.RESTORE:
            return self.steps.base
        return self.steps.drained


@dataclass(frozen=True)
class DrainStep:
    """What the drain does now: evict the pod (once), wait (saying for what), or finish."""

    evict: bool = False
    waiting: str | None = None
    done: bool = False


def _published(published: Mapping[int, PodPlan], plan: QuotaPlan) -> bool:
    return same_connections(published, plan)


def _unavailable(pods: Mapping[int, PodView], plan: QuotaPlan, pod_prefix: str) -> str | None:
    """Why a pod of `plan` does not serve it yet (None: every pod acknowledged its part and
    serves every stream of it)."""
    for pod_plan in plan.pods:
        if not pod_plan.connections:
            continue
        view = pods.get(pod_plan.ordinal)
        if view is None:
            return f"pod {pod_prefix}{pod_plan.ordinal} to be created"
        if not view.available:
            return view.waits_for()
    return None


def advance_drain(
    drain: Drain,
    published: Mapping[int, PodPlan],
    pods: Mapping[int, PodView],
    uids: Mapping[int, str],
    template: str,
    pod_prefix: str = "",
) -> DrainStep:
    """The next step of `drain` (its phase is advanced in place) given the published pod
    plans and the pods (their views and uids): every phase waits until its plan is published,
    acknowledged by the pods it concerns and, for the pods that open connections, served."""
    name = f"{pod_prefix}{drain.ordinal}"
    target = drain.target()
    if not _published(published, target):
        return DrainStep(waiting=f"the {drain.phase.value} step of {name}'s drain to be published")
    if drain.phase == DrainPhase.MAKE:
        why = _unavailable(pods, target, pod_prefix)
        if why is not None:
            return DrainStep(waiting=f"{why} (copies of {name}'s connections opening first)")
        drain.phase = DrainPhase.DRAINED
        return DrainStep(waiting=f"pod {name} to let its connections go (copies serve them)")
    if drain.phase == DrainPhase.DRAINED:
        view = pods.get(drain.ordinal)
        if view is None or uids.get(drain.ordinal) != drain.uid:
            drain.phase = DrainPhase.REPLACING  # gone already (deleted by someone else)
            return DrainStep(waiting=f"pod {name} to be created")
        if not view.acked:
            return DrainStep(
                waiting=f"pod {name} to let its connections go (plan generation "
                f"{view.generation_wanted}; copies serve them)"
            )
        drain.phase = DrainPhase.REPLACING
        return DrainStep(evict=True)
    if drain.phase == DrainPhase.REPLACING:
        view = pods.get(drain.ordinal)
        if view is None or uids.get(drain.ordinal) == drain.uid:
            return DrainStep(waiting=f"pod {name} to be replaced")
        if view.outdated(template) or not view.available:
            why = view.waits_for() or f"pod {name} to run the new pod template off a cordoned node"
            return DrainStep(waiting=why)
        drain.phase = DrainPhase.RETURN
        return DrainStep(waiting=f"pod {name} to reopen its connections (copies serve them)")
    if drain.phase == DrainPhase.RETURN:
        why = _unavailable(pods, target, pod_prefix)
        if why is not None:
            return DrainStep(waiting=f"{why} (reopening beside the copies)")
        drain.phase = DrainPhase.RESTORE
        return DrainStep(waiting=f"the copies of {name}'s connections to close")
    why = _unavailable(pods, target, pod_prefix)
    if why is not None:
        return DrainStep(waiting=why)
    return DrainStep(done=True)


# --- Make-before-break scale-down: the leaving pods' connections moved before they go --------


@dataclass
class ScaleDrain:
    """A scale-down drained make-before-break, remembered between passes (docs/operator.md,
    "Scaling down make-before-break"): `steps.make` (copies of the leaving pods' connections
    open on the staying pods), then `steps.drained` (the leaving pods let theirs go); then the
    quota is replanned from the drained plan and the StatefulSet scaled down past the leaving
    pods once they acknowledged their empty plans (`Scaling._scale`)."""

    steps: DrainSteps
    target: QuotaPlan
    """The replan that removes the leaving ordinals: the drain goes on while a replan of
    `steps.base` still gives exactly this plan (an edit meanwhile gives it up)."""
    phase: DrainPhase = DrainPhase.MAKE
    """MAKE or DRAINED."""

    def plan(self) -> QuotaPlan:
        """The plan this phase publishes."""
        return self.steps.make if self.phase == DrainPhase.MAKE else self.steps.drained


def advance_scale_drain(
    drain: ScaleDrain,
    published: Mapping[int, PodPlan],
    pods: Mapping[int, PodView],
    pod_prefix: str = "",
) -> DrainStep:
    """The next step of the scale-down `drain` (its phase is advanced in place): the make
    step waits until published, acknowledged by every pod and served (the copies live); the
    drained step until published and acknowledged by every leaving pod still there; then done."""
    leaving = ", ".join(f"{pod_prefix}{o}" for o in sorted(drain.steps.leaving))
    if not _published(published, drain.plan()):
        return DrainStep(
            waiting=f"the {drain.phase.value} step of the scale-down of {leaving} to be published"
        )
    if drain.phase == DrainPhase.MAKE:
        why = _unavailable(pods, drain.plan(), pod_prefix)
        if why is not None:
            return DrainStep(waiting=f"{why} (copies of {leaving}'s connections opening first)")
        drain.phase = DrainPhase.DRAINED
        return DrainStep(waiting=f"{leaving} to let their connections go (copies serve them)")
    for o in sorted(drain.steps.leaving):
        view = pods.get(o)
        if view is not None and not view.terminating and not view.acked:
            return DrainStep(
                waiting=f"pod {view.name} to let its connections go (plan generation "
                f"{view.generation_wanted}; copies serve them)"
            )
    return DrainStep(done=True)
