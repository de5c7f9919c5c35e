"""Status and conditions of quotas and pools, computed purely from what the operator observed.

Conditions use the standard Kubernetes shape (metav1.Condition): `lastTransitionTime` changes
only when a condition's status changes, so an unchanged quota gets a byte-identical status and
no write (`status_differs`). `Ready` is what `kubectl wait --for=condition=Ready`, Argo CD and
Flux look at; `Stalled` means "a human must fix the spec", `Reconciling` means "converging".

They follow the kstatus convention (what Flux's health checks read): `Ready` is always
present, True or False; the abnormal-true conditions (`Reconciling`, `Stalled`, `Degraded`,
`CapacityExceeded`, `RateLimited`, `EgressUnverified`, `CredentialRefused`, `BudgetReduced`)
are present only while they hold and are removed, not set False, when they no longer apply;
and `Reconciling` and `Stalled` are never both True (a stalled quota is not converging: it
waits for a human).
Every status is validated by the pydantic status models before it is written, so a misspelled
field fails here instead of being pruned silently by the API server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connquota.api.base import ApiModel
from connquota.api.common import ConditionType
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolStatus
from connquota.api.quota import ExchangeConnectionQuotaStatus
from connquota.api.report import EgressCheckState, GatewayReport, Quarantine

MAX_UNSERVED_SAMPLES = 100


@dataclass(frozen=True)
class Problem:
    """Why a quota cannot be (re)planned: a bad edit, a missing object. Shown as Stalled."""

    reason: str
    """CamelCase, e.g. SecretMissing, UnknownProfile, PoolNotFound, NamespaceNotAdmitted."""
    message: str


@dataclass
class QuotaObservation:
    """Everything the status of one quota is computed from."""

    generation: int
    problem: Problem | None = None
    plan: QuotaPlan | None = None
    """The newest published plan (the last good one when `problem` is set)."""
    target_generation_reached: bool = True
    """False while the published plan is a step towards a target not yet reached."""
    waiting: str | None = None
    """What the next transition waits for (acknowledgements, a rate window)."""
    replicas: int = 0
    ready_replicas: int = 0
    desired_streams: int = 0
    reports: Mapping[int, GatewayReport] = field(default_factory=dict)
    quarantines: list[Quarantine] = field(default_factory=list)
    addresses: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    api_keys: list[dict[str, Any]] = field(default_factory=list)
    assumed_limits: list[str] = field(default_factory=list)
    rollout: dict[str, Any] | None = None
    """`status.rollout` (connquota.operator.rollout), None when the fleet was not looked at."""
    rolled_out: bool | None = None
    """No pod runs an older pod template and every pod the rollout replaced is Ready again
    (None: not looked at)."""
    unavailable: Mapping[str, str] = field(default_factory=dict)
    """Addresses of the pool planned without this pass (address -> why: its proxy is down,
    its node is lost)."""


def timestamp(now: dt.datetime) -> str:
    """RFC 3339 seconds, as Kubernetes writes Time."""
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Iterable[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """`conditions` with `type_` set; lastTransitionTime kept unless the status changed."""
    wanted = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        ltt = cond.get("lastTransitionTime") if cond.get("status") == wanted else None
        out.append(_condition(type_, wanted, reason, message, generation, ltt or timestamp(now)))
    if not found:
        out.append(_condition(type_, wanted, reason, message, generation, timestamp(now)))
    return out


def drop_condition(conditions: Iterable[Mapping[str, Any]], type_: str) -> list[dict[str, Any]]:
    """`conditions` without `type_` (an abnormal-true condition that no longer applies)."""
    return [dict(c) for c in conditions if c.get("type") != type_]


def _condition(
    type_: str, status: str, reason: str, message: str, generation: int, ltt: str
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": ltt,
        "observedGeneration": generation,
    }


def _acked(plan: QuotaPlan | None, reports: Mapping[int, GatewayReport], replicas: int) -> bool:
    """Every pod that runs or should run enforces its own newest plan (a pod whose plan did not
    change keeps its older generation; an empty pod above the replicas is gone)."""
    if plan is None:
        return False
    for pod in plan.pods:
        if pod.ordinal >= replicas and not pod.connections:
            continue
        report = reports.get(pod.ordinal)
        if report is None or report.planGeneration < pod.generation:
            return False
    return True


def unavailable_addresses(down: Mapping[str, str]) -> list[str]:
    """`address (why)` for each address a quota is planned without."""
    return [f"address {a} ({why})" for a, why in sorted(down.items())]


def quota_status(
    previous: Mapping[str, Any] | None, obs: QuotaObservation, now: dt.datetime
) -> dict[str, Any]:
    """The status of a quota from `obs`, carrying over unchanged lastTransitionTimes."""
    prev = dict(previous or {})
    conditions: list[dict[str, Any]] = [dict(c) for c in prev.get("conditions") or []]
    gen = obs.generation
    plan = obs.plan
    acked = _acked(plan, obs.reports, obs.replicas)
    unserved = len(plan.unserved) if plan else 0
    planned_streams = sum(
        len(c.streams) for p in (plan.pods if plan else []) for c in p.connections
    )
    planned_connections = sum(len(p.connections) for p in (plan.pods if plan else []))
    live_streams = sum(r.streams for r in obs.reports.values())
    live_connections = sum(r.connections for r in obs.reports.values())
    # Ready means serving: every pod enforces the newest plan, is ready, and every planned
    # stream is subscribed upstream (a new fleet waits out its attempt window first).
    streams_live = live_streams >= planned_streams
    rolling = obs.rolled_out is False
    converging = rolling or not (
        acked
        and obs.target_generation_reached
        and obs.ready_replicas >= obs.replicas
        and streams_live
    )

    def put(type_: ConditionType, status: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_.value, status, reason, message, gen, now)

    def drop(type_: ConditionType) -> None:
        nonlocal conditions
        conditions = drop_condition(conditions, type_.value)

    if obs.problem is not None:
        put(ConditionType.STALLED, True, obs.problem.reason, obs.problem.message)
    else:
        drop(ConditionType.STALLED)

    if obs.problem is not None:
        # Stalled: not converging until the spec is fixed (kstatus: never both True).
        drop(ConditionType.RECONCILING)
    elif converging:
        if obs.waiting:
            why = obs.waiting
        elif rolling:
            why = rollout_message(obs.rollout)
        elif not acked:
            why = "gateways have not acknowledged the plan yet"
        elif obs.ready_replicas < obs.replicas:
            why = f"{obs.ready_replicas}/{obs.replicas} gateway pods ready"
        elif credential_refusals(obs.reports):
            why = (
                f"{live_streams}/{planned_streams} planned streams live upstream: the private "
                "streams of a credential the exchange refuses wait for its Secret to change "
                "(see CredentialRefused)"
            )
        else:
            why = (
                f"{live_streams}/{planned_streams} planned streams live upstream "
                "(gateways open connections within their attempt slices)"
            )
        put(ConditionType.RECONCILING, True, "Progressing", why)
    else:
        drop(ConditionType.RECONCILING)

    blocked = egress_problems(obs.reports, {EgressCheckState.MISMATCH, EgressCheckState.FAILED})
    if plan is not None and obs.ready_replicas < obs.replicas and acked and not rolling:
        put(
            ConditionType.DEGRADED,
            True,
            "PodsNotReady",
            f"{obs.ready_replicas}/{obs.replicas} gateway pods ready",
        )
    elif blocked:
        put(
            ConditionType.DEGRADED,
            True,
            "EgressCheckFailed",
            "no attempt leaves from " + "; ".join(blocked),
        )
    elif obs.unavailable:
        put(
            ConditionType.DEGRADED,
            True,
            "AddressesUnavailable",
            "planned without " + "; ".join(unavailable_addresses(obs.unavailable)),
        )
    else:
        drop(ConditionType.DEGRADED)
    if unserved:
        put(
            ConditionType.CAPACITY_EXCEEDED,
            True,
            "StreamsUnserved",
            f"{unserved} of {obs.desired_streams} streams are not served: status.unserved "
            "gives each one's reason (a limit that ran out, or an endpoint that does not "
            "carry the stream)"
            + (
                "; planned without " + "; ".join(unavailable_addresses(obs.unavailable))
                if obs.unavailable
                else ""
            ),
        )
    else:
        drop(ConditionType.CAPACITY_EXCEEDED)
    if obs.quarantines:
        keys = ", ".join(
            sorted({f"{q.scope.value} {q.key} ({q.statusCode})" for q in obs.quarantines})
        )
        put(ConditionType.RATE_LIMITED, True, "Quarantined", f"the exchange rate-limited {keys}")
    else:
        drop(ConditionType.RATE_LIMITED)
    reduced = reduced_budgets(obs)
    if reduced:
        put(ConditionType.BUDGET_REDUCED, True, "UnexplainedThrottling", reduced)
    else:
        drop(ConditionType.BUDGET_REDUCED)
    unverified = egress_problems(obs.reports, {EgressCheckState.UNVERIFIED})
    if unverified:
        put(
            ConditionType.EGRESS_UNVERIFIED,
            True,
            "NoEgressCheck",
            "attempts leave unverified from " + "; ".join(unverified),
        )
    else:
        drop(ConditionType.EGRESS_UNVERIFIED)
    refused = credential_refusals(obs.reports)
    if refused:
        put(
            ConditionType.CREDENTIAL_REFUSED,
            True,
            "ExchangeRefusedKey",
            "the exchange refuses " + "; ".join(refused) + ": its private streams wait for "
            "the Secret to change (rotate the key in the Secret)",
        )
    else:
        drop(ConditionType.CREDENTIAL_REFUSED)

    if obs.rolled_out is None:
        drop(ConditionType.ROLLED_OUT)
    elif rolling:
        put(ConditionType.ROLLED_OUT, False, "RollingOut", rollout_message(obs.rollout))
    else:
        put(
            ConditionType.ROLLED_OUT,
            True,
            "RolledOut",
            "no gateway pod runs an older pod template; every replaced pod is Ready again",
        )

    ready = obs.problem is None and not converging and plan is not None
    if ready:
        put(
            ConditionType.READY,
            True,
            "FleetReady",
            "every pod enforces the newest plan and every planned stream is live",
        )
    else:
        reason = obs.problem.reason if obs.problem else "Progressing"
        message = obs.problem.message if obs.problem else (obs.waiting or "the fleet is converging")
        put(ConditionType.READY, False, reason, message)

    order = [t.value for t in ConditionType]
    conditions.sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conditions,
        "replicas": obs.replicas,
        "readyReplicas": obs.ready_replicas,
        "streams": {
            "desired": obs.desired_streams,
            "planned": planned_streams,
            "live": live_streams,
            "unserved": unserved,
        },
        "connections": {"planned": planned_connections, "live": live_connections},
        "planGeneration": plan.generation if plan else int(prev.get("planGeneration") or 0),
        "pods": [
            {
                "pod": r.pod,
                "generation": r.planGeneration,
                "connections": r.connections,
                "streams": r.streams,
            }
            for _, r in sorted(obs.reports.items())
        ],
        "addresses": obs.addresses,
        "accounts": obs.accounts,
        "apiKeys": obs.api_keys,
        "recoveryBounds": [
            {"address": b.address, "connections": b.connections, "seconds": b.seconds}
            for b in (plan.recoveryBounds if plan else [])
        ],
        "unserved": [
            {"stream": u.stream, "reason": u.reason[:256]}
            for u in (plan.unserved[:MAX_UNSERVED_SAMPLES] if plan else [])
        ],
        "assumedLimits": sorted(obs.assumed_limits),
    }
    if obs.rollout is not None:
        status["rollout"] = dict(obs.rollout)
    return validated(ExchangeConnectionQuotaStatus, status)


def credential_refusals(reports: Mapping[int, GatewayReport]) -> list[str]:
    """'credential main (code -2015: Invalid API-key ...)' per credential a pod reports refused."""
    refused: dict[str, str] = {}
    for _, report in sorted(reports.items()):
        for name, error in report.authRefused.items():
            refused.setdefault(name, error)
    return [f"credential {name} ({error})" for name, error in sorted(refused.items())]


def rollout_message(rollout: Mapping[str, Any] | None) -> str:
    """'rolling out the pod template: 1/3 pods updated, pod X (waiting for ...)'."""
    r = dict(rollout or {})
    text = f"rolling out the gateway pod template: {r.get('updated', 0)}/{r.get('total', 0)} pods"
    text += " updated"
    if r.get("currentPod"):
        text += f"; current pod {r['currentPod']}"
    if r.get("recoverySeconds") is not None:
        text += f" (its connections back within {r['recoverySeconds']}s)"
    if r.get("waitingFor"):
        text += f"; waiting for {r['waitingFor']}"
    return text


def status_patch(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that makes the live status `desired`: a merge patch replaces lists
    but merges objects, so a key an object of `desired` no longer has (`status.rollout`'s
    `currentPod` once the rollout is done) is sent as null. Top-level keys are left alone
    (only the operator writes status, and it writes every top-level field it owns)."""
    return {k: _nulled(dict(live or {}).get(k), v) for k, v in desired.items()}


def _nulled(live: Any, desired: Any) -> Any:
    if not isinstance(live, Mapping) or not isinstance(desired, Mapping):
        return desired
    out: dict[str, Any] = {k: _nulled(live.get(k), v) for k, v in desired.items()}
    for key in live:
        if key not in desired:
            out[key] = None
    return out


def validated(model: type[ApiModel], status: dict[str, Any]) -> dict[str, Any]:
    """`status` checked against its pydantic model and written back as the model serializes it.

    A misspelled or unknown field raises here (the models forbid extra fields) instead of being
    pruned silently by the API server's structural schema."""
    return model.model_validate(status).model_dump(mode="json", exclude_none=True)


def egress_problems(
    reports: Mapping[int, GatewayReport], states: set[EgressCheckState]
) -> list[str]:
    """'address (why)' for every address whose last egress check (any pod) is in `states`, and
    (with `failed`) every proxy address whose proxy reports a fault."""
    seen: dict[str, str] = {}
    for _, report in sorted(reports.items()):
        for check in report.egressChecks:
            if check.state in states and check.address not in seen:
                why = check.reason or check.state.value
                seen[check.address] = f"{check.address} ({check.state.value}: {why})"
            elif check.proxyFault and EgressCheckState.FAILED in states:
                # A verified proxy address whose proxy failed since (down, credentials refused).
                why = check.proxyFaultReason or check.proxyFault
                seen.setdefault(check.address, f"{check.address} (proxy {check.proxyFault}: {why})")
    return [seen[a] for a in sorted(seen)]


def status_hash(status: Mapping[str, Any] | None) -> str:
    """A stable digest of a status (equal digests: no write)."""
    canonical = json.dumps(status or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def status_differs(live: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    """Whether writing `desired` would change the live status (compares digests)."""
    return status_hash(_normalized(live)) != status_hash(_normalized(desired))


def _normalized(status: Mapping[str, Any] | None) -> dict[str, Any]:
    # What both sides mean: the API server may drop empty values, and it stores JSON numbers,
    # so a float written as 6.0 is read back as the integer 6.
    out: dict[str, Any] = _canonical(dict(status or {}))
    return out


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items() if v not in ([], {}, None)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def reduced_budgets(obs: QuotaObservation) -> str | None:
    """The BudgetReduced message of a quota: the budgets it draws from that adaptive budgets
    lowered (None: none)."""
    parts = [
        f"{scope} {entry['key']} {use['limit']} {use['effectiveBudget']:g} of {use['budget']:g}"
        for scope, entries in (
            ("address", obs.addresses),
            ("account", obs.accounts),
            ("API key", obs.api_keys),
        )
        for entry in entries
        for use in entry.get("limits") or []
        if use.get("effectiveBudget") is not None
    ]
    if not parts:
        return None
    return (
        "the exchange throttled budgets the fleet kept inside, lowered: "
        + ", ".join(parts)
        + " (raised back after clean periods; the pool's status.adaptiveBudgets says when)"
    )


def pool_status(
    previous: Mapping[str, Any] | None,
    *,
    generation: int,
    quotas: int,
    budgets: list[dict[str, Any]],
    problem: Problem | None,
    reports: Mapping[int, GatewayReport] | None = None,
    adaptive: tuple[list[dict[str, Any]], str | None] = ([], None),
    now: dt.datetime,
) -> dict[str, Any]:
    """The status of a pool: its budgets, who holds which share, and its egress checks.

    `Ready` True once its budgets are divided; `Stalled` (and Ready False) when they cannot be
    (a bad pool); `EgressVerified` True when every address a gateway uses passed its check,
    False naming the addresses that failed or are unverified (absent before any report)."""
    conditions = [dict(c) for c in (previous or {}).get("conditions") or []]
    if problem:
        conditions = set_condition(
            conditions, "Stalled", True, problem.reason, problem.message, generation, now
        )
        conditions = set_condition(
            conditions, "Ready", False, problem.reason, problem.message, generation, now
        )
    else:
        conditions = drop_condition(conditions, "Stalled")
        conditions = set_condition(
            conditions,
            "Ready",
            True,
            "BudgetsDivided",
            f"budgets divided among {quotas} quotas",
            generation,
            now,
        )
    reports = reports or {}
    checked = [c for r in reports.values() for c in r.egressChecks]
    if checked:
        bad = egress_problems(
            reports,
            {EgressCheckState.MISMATCH, EgressCheckState.FAILED, EgressCheckState.UNVERIFIED},
        )
        verified = sorted({c.address for c in checked if c.state == EgressCheckState.VERIFIED})
        if bad:
            conditions = set_condition(
                conditions,
                "EgressVerified",
                False,
                "EgressNotVerified",
                "; ".join(bad),
                generation,
                now,
            )
        else:
            conditions = set_condition(
                conditions,
                "EgressVerified",
                True,
                "AllChecksPassed",
                "verified: " + ", ".join(verified),
                generation,
                now,
            )
    else:
        conditions = drop_condition(conditions, "EgressVerified")
    if adaptive[1] is not None:
        conditions = set_condition(
            conditions, "BudgetReduced", True, "UnexplainedThrottling", adaptive[1], generation, now
        )
    else:
        conditions = drop_condition(conditions, "BudgetReduced")
    order = ["Ready", "Stalled", "EgressVerified", "BudgetReduced"]
    conditions.sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))
    return validated(
        ExchangeEgressPoolStatus,
        {
            "observedGeneration": generation,
            "conditions": conditions,
            "quotas": quotas,
            "budgets": budgets,
            **({"adaptiveBudgets": adaptive[0]} if adaptive[0] else {}),
        },
    )
