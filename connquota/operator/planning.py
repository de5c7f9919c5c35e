"""The operator's only door to the planner: turns Kubernetes bodies into planner inputs and calls
the planner's public functions. No planning logic lives here.

Planner functions used: `expand_streams`, `divide_budgets`, `plan_quota_indexed` (the target)
and `next_publication` (the next generation safe to publish now, from every quota's ledger);
`drain_steps` (a pod drained make-before-break before a rollout replaces it).
Quarantines are applied here as zero shares on the quarantined address or account.

Targets are planned incrementally: `PLAN_INDEXES` keeps, per quota object (its uid), the
planner's `PlanIndex` of the last target with a digest of every input but the streams. A replan
whose digest matches and whose published plan is the indexed one costs time in proportion to the
changed streams; anything else (another input changed, another plan published, a restarted
operator, a re-created quota) takes the full path. Both paths give the same plan byte for byte
(`plan_quota_indexed`'s contract, tested over edit sequences).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from connquota.api.limits import SHARED_SCOPES, LimitScope
from connquota.api.plan import PodPlan, QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport, Quarantine
from connquota.exchanges import ProfileError, effective_profile
from connquota.operator.status import Problem
from connquota.planner.adaptive import (
    AdaptiveRule,
    AdaptiveState,
    AdaptiveStep,
    Throttle,
    adaptive_step,
    effective_value,
    next_raise_at,
)
from connquota.planner.adaptive import next_change_s as adaptive_next_change_s
from connquota.planner.budgets import Budget, BudgetKey, pool_budgets
from connquota.planner.endpoints import split_by_endpoint, with_refused
from connquota.planner.errors import PlanningError
from connquota.planner.incremental import PlanIndex, plan_quota_indexed
from connquota.planner.inputs import DesiredStream, QuotaInput
from connquota.planner.ledger import HoldKey, QuotaLedger, pool_holds
from connquota.planner.plan import PlanRequest
from connquota.planner.shares import PoolShares, QuotaShares, divide_budgets
from connquota.planner.streams import expand_streams, source_key
from connquota.planner.transitions import Transition, Waiting, next_publication

log = logging.getLogger(__name__)


class QuotaProblem(Exception):
    """A quota cannot be planned as written; carries the Stalled condition to show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, message)


def quota_input(quota: ExchangeConnectionQuota) -> QuotaInput:
    """The planner's view of a quota; raises QuotaProblem for an unknown or broken profile."""
    try:
        profile = effective_profile(quota.spec)
    except ProfileError as exc:
        raise QuotaProblem("UnknownProfile", str(exc)) from None
    meta = quota.metadata
    assert meta.namespace and meta.name
    return QuotaInput(
        namespace=meta.namespace,
        name=meta.name,
        spec=quota.spec,
        profile=profile,
        uid=meta.uid or "",
    )


def stream_sources_needed(quota: ExchangeConnectionQuota) -> list[tuple[str, str, bool]]:
    """(ConfigMap name, key, optional) of every `streamsFrom` entry."""
    return [(s.configMapRef.name, s.key, s.optional) for s in quota.spec.streamsFrom]


def desired_streams(
    quota: ExchangeConnectionQuota,
    configmaps: Mapping[str, Mapping[str, str] | None],
    qin: QuotaInput | None = None,
) -> list[DesiredStream]:
    """Every declared stream, `streamSets` spelled by the effective profile's dialect (that of
    `qin`, else resolved here); `configmaps` maps ConfigMap name to its data (None: missing)."""
    dialect = (qin if qin is not None else quota_input(quota)).profile.dialect
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
        return expand_streams(quota.spec, dialect, sources)
    except PlanningError as exc:
        raise QuotaProblem("InvalidStreams", str(exc)) from None


def divide(
    pool: ExchangeEgressPoolSpec,
    inputs: list[QuotaInput],
    adaptive: Mapping[BudgetKey, AdaptiveState] | None = None,
) -> PoolShares:
    """Every budget of the pool divided among `inputs` (the planner's `divide_budgets`), from
    the effective budgets where `adaptive` lowered some."""
    try:
        return divide_budgets(pool, inputs, adaptive)
    except PlanningError as exc:
        raise QuotaProblem("ImpossibleQuota", str(exc)) from None


STREAM_FIELDS = frozenset({"streams", "streamSets", "streamsFrom"})
"""Spec fields that only declare streams (the index follows stream changes itself)."""


def input_digest(request: PlanRequest) -> str:
    """A digest of every input of `request` except its streams, previous plan and generation:
    the quota, its spec's other fields, its effective profile, the pool and its shares."""
    shares = request.shares
    h = hashlib.sha256()
    for part in (
        str(request.quota),
        request.spec.model_dump_json(exclude=set(STREAM_FIELDS)),
        request.profile.model_dump_json(),
        request.pool.model_dump_json(),
        repr((shares.quota, shares.domain, shares.admitted, sorted(shares.ip.items()))),
        repr((sorted(shares.account.items()), sorted(shares.bursts.items()))),
        repr(sorted(shares.limits.items())),
        repr(shares.reasons),
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class PlanIndexes:
    """Per quota object (uid), the index of its last target plan and the digest of the inputs
    it was made from; at most `capacity` quotas, the least recently planned forgotten first."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[str, tuple[str, PlanIndex]] = OrderedDict()
        self.incremental = 0
        """Plans made from a kept index (fast path) so far."""
        self.full = 0
        """Plans made in full so far."""

    def plan(self, uid: str, request: PlanRequest) -> tuple[QuotaPlan, bool]:
        """The target plan of `request` and whether it came from the kept index (fast path)."""
        if not uid:
            self.full += 1
            return plan_quota_indexed(request).plan, False
        digest = input_digest(request)
        kept = self._kept.pop(uid, None)
        index = kept[1] if kept is not None and kept[0] == digest else None
        result = plan_quota_indexed(request, index)
        self._kept[uid] = (digest, result.index)
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)
        if result.incremental:
            self.incremental += 1
        else:
            self.full += 1
        return result.plan, result.incremental

    def forget(self, uid: str) -> None:
        """Drop the quota's index (it was deleted; a later replan takes the full path)."""
        self._kept.pop(uid, None)

    def __len__(self) -> int:
        return len(self._kept)


PLAN_INDEXES = PlanIndexes()
"""The operator's indexes (one process plans each quota; kept in memory, never persisted)."""


def plan_target(
    quota: QuotaInput,
    streams: list[DesiredStream],
    pool: ExchangeEgressPoolSpec,
    shares: QuotaShares,
    published: QuotaPlan | None,
    indexes: PlanIndexes | None = None,
    draining: frozenset[int] = frozenset(),
) -> QuotaPlan:
    """The quota's target plan: its share of the pool, sticky to the published plan, with no
    connection on the `draining` ordinals when the other pods have room.

    Planned through `indexes` (default `PLAN_INDEXES`): the same plan `plan_quota` gives, in
    time proportional to the changed streams when only streams changed since the last call."""
    generation = (published.generation + 1) if published else 1
    # Streams the quota's endpoint does not serve (OKX candles on /ws/v5/public) are never
    # placed: the plan lists them unserved with the reason.
    split = split_by_endpoint(quota.profile, streams)
    request = PlanRequest(
        quota=quota.ref,
        spec=quota.spec,
        profile=quota.profile,
        pool=pool,
        shares=shares,
        streams=split.served,
        generation=generation,
        previous=published,
        draining=draining,
    )
    try:
        plan, incremental = (PLAN_INDEXES if indexes is None else indexes).plan(quota.uid, request)
    except PlanningError as exc:
        raise QuotaProblem("ImpossibleQuota", str(exc)) from None
    log.debug(
        "quota %s: target generation %d planned %s",
        quota.key,
        generation,
        "from its kept index (incremental)" if incremental else "in full",
        extra={"quota": quota.key},
    )
    return with_refused(plan, split.refused)


def forget_quota(uid: str) -> None:
    """Drop what planning keeps in memory for a deleted quota (its plan index)."""
    PLAN_INDEXES.forget(uid)


def cannot_read(reports: Mapping[int, GatewayReport], plan: QuotaPlan | None) -> list[int]:
    """The pods whose gateway reports it does not read `plan`'s formatVersion (the plan
    format rule: new fields are optional and ignored within a version; a new version goes
    out only when every running pod reads it, i.e. once the rollout replaced the others)."""
    if plan is None:
        return []
    return sorted(o for o, r in reports.items() if plan.formatVersion not in r.planFormats)


def _without(
    shares: QuotaShares, keys: Mapping[LimitScope, set[str]], reasons: Iterable[str]
) -> QuotaShares:
    """`shares` with nothing on `keys` (per shared scope: addresses, accounts, API keys)."""
    if not any(keys.values()):
        return shares
    empty: set[str] = set()
    ips, accounts, api_keys = (keys.get(s, empty) for s in SHARED_SCOPES)
    return dataclasses.replace(
        shares,
        ip={k: (0 if k[0] in ips else v) for k, v in shares.ip.items()},
        account={k: (0 if k[0] in accounts else v) for k, v in shares.account.items()},
        api_key={k: (0 if k[0] in api_keys else v) for k, v in shares.api_key.items()},
        bursts={k: (0 if k[1] in keys.get(k[0], empty) else v) for k, v in shares.bursts.items()},
        reasons=[*shares.reasons, *reasons],
    )


def without_addresses(shares: QuotaShares, down: Mapping[str, str]) -> QuotaShares:
    """`shares` with nothing on the addresses in `down` (address -> why: a proxy fault).

    The planner then places no connection there: those of the previous plan move to other
    addresses with room (the usual ordered transitions) or their streams are reported
    unserved; the other addresses' shares are unchanged."""
    return _without(
        shares,
        {LimitScope.IP: set(down)},
        (f"address {a}: its proxy is down ({why})" for a, why in sorted(down.items())),
    )


def without_lost_nodes(shares: QuotaShares, down: Mapping[str, str]) -> QuotaShares:
    """`shares` with nothing on the bind addresses in `down` (address -> why: its node is lost,
    `node_loss.NodeOutages`), as `without_addresses` does for proxy outages."""
    return _without(
        shares,
        {LimitScope.IP: set(down)},
        (f"address {a}: {why}" for a, why in sorted(down.items())),
    )


REPLAN_QUARANTINE_S = 20.0
"""A quarantine that the quota's own gateways reported and that ends within this many seconds
is waited out by those gateways, not planned around (see `planned_quarantines`)."""


def planned_quarantines(
    domain_quarantines: Iterable[Quarantine],
    own_reports: Iterable[GatewayReport],
    wall_now: float,
) -> list[Quarantine]:
    """The quarantines a quota's plan goes around: every one of its limit domain, except those
    its own gateways reported that end within `REPLAN_QUARANTINE_S`.

    The gateway that got the 429 or 418 makes no attempt on the key until it ends; another pod
    of the quota is not told directly (not built): it gets at most one refused handshake of
    its own per Retry-After and quarantines itself. Slices never grow from a throttle, so I1
    holds without a plan change; planning around a
    few seconds of Retry-After would only move connections away and back, each move gated on
    acknowledgements and rate windows, and keep the streams down far longer than the
    quarantine. Other quotas of the domain get a zero share on the key as before: their
    gateways know of the quarantine only through their plans.
    """
    own = {
        (q.scope, q.key, q.until)
        for report in own_reports
        for q in report.quarantines
        if q.until - wall_now < REPLAN_QUARANTINE_S
    }
    return [q for q in domain_quarantines if (q.scope, q.key, q.until) not in own]


def quarantined(shares: QuotaShares, quarantines: Iterable[Quarantine]) -> QuotaShares:
    """`shares` with nothing on a quarantined address, account or API key.

    The planner then uses neither (its room is 0, with a reason), so the plan gives no pod a
    slice there and the gateways make no attempt on it until the quarantine ends.
    """
    out: dict[LimitScope, set[str]] = {scope: set() for scope in SHARED_SCOPES}
    for q in quarantines:
        if q.scope in out:
            out[q.scope].add(q.key)
    what = {LimitScope.IP: "address", LimitScope.ACCOUNT: "account", LimitScope.API_KEY: "API key"}
    return _without(
        shares,
        out,
        (
            f"{what[scope]} {k} is quarantined by the exchange"
            for scope in SHARED_SCOPES
            for k in sorted(out[scope])
        ),
    )


def transition(
    pool: ExchangeEgressPoolSpec,
    budgets: Mapping[HoldKey, int],
    ledgers: Mapping[str, QuotaLedger],
    quota: str,
    published: QuotaPlan | None,
    target: QuotaPlan,
    now: float,
) -> Transition:
    """The next generation safe to publish now (the planner's `next_publication`)."""
    try:
        return next_publication(pool, budgets, ledgers, quota, published, target, now)
    except PlanningError as exc:
        raise QuotaProblem("ImpossibleQuota", str(exc)) from None


def complete(plan: QuotaPlan, published: Mapping[int, PodPlan], quota: QuotaInput) -> QuotaPlan:
    """`plan` with an empty pod plan for every published ordinal it no longer lists."""
    listed = {p.ordinal for p in plan.pods}
    extra = [
        empty_pod_plan(quota, ordinal, plan.generation)
        for ordinal in sorted(published)
        if ordinal not in listed
    ]
    if not extra:
        return plan
    pods = sorted([*plan.pods, *extra], key=lambda p: p.ordinal)
    return plan.model_copy(update={"pods": pods})


def _hold(key: HoldKey) -> str:
    domain, scope, what, limit = key
    return f"{limit} on {scope} {what} ({domain})"


def waiting_message(waiting: list[Waiting], mono_now: float, wall_now: float) -> str:
    """What the held-back grows wait for, for whom, until when (for status and Events)."""
    parts = []
    for w in waiting[:3]:
        if w.until is not None:
            at = dt.datetime.fromtimestamp(wall_now + (w.until - mono_now), dt.UTC)
            when = f"until {at.strftime('%H:%M:%SZ')} (rate window)"
        else:
            when = "until they acknowledge their smaller slice"
        holders = ", ".join(w.holders[:4]) or "pods of this pool"
        parts.append(
            f"pod {w.ordinal}: {_hold(w.budget)} {w.granted}/{w.wanted}, waiting on {holders} "
            f"{when}"
        )
    more = f"; and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    return "transition held back: " + "; ".join(parts) + more


def empty_pod_plan(quota: QuotaInput, ordinal: int, generation: int) -> PodPlan:
    """A plan with nothing in it: the pod closes everything and holds no slice."""
    return PodPlan(generation=generation, quota=quota.ref, ordinal=ordinal, profile=quota.profile)


# --- The rest of the planner the operator uses, through this one door --------------------------
# (an import-linter contract keeps every other operator module away from connquota.planner)
from connquota.planner.draining import (  # noqa: E402
    DrainSteps,
    NoRoom,
    drain_leaving,
    drain_steps,
    same_connections,
    same_plan,
)
from connquota.planner.ledger import (  # noqa: E402
    LedgerSlice,
    certifies,
    expire,
    forgettable,
    ledger_slices,
    rate_holders,
    rebase_clock,
    record_ack,
    record_publication,
)
from connquota.planner.transitions import budget_table  # noqa: E402

__all__ = [
    "AdaptiveRule",
    "AdaptiveState",
    "AdaptiveStep",
    "Budget",
    "BudgetKey",
    "DesiredStream",
    "DrainSteps",
    "HoldKey",
    "LedgerSlice",
    "NoRoom",
    "PlanningError",
    "PoolShares",
    "QuotaInput",
    "QuotaLedger",
    "QuotaProblem",
    "QuotaShares",
    "Throttle",
    "adaptive_next_change_s",
    "adaptive_step",
    "budget_table",
    "certifies",
    "drain_leaving",
    "drain_steps",
    "effective_value",
    "expire",
    "forgettable",
    "ledger_slices",
    "next_raise_at",
    "pool_budgets",
    "pool_holds",
    "rate_holders",
    "rebase_clock",
    "record_ack",
    "record_publication",
    "same_connections",
    "same_plan",
]
