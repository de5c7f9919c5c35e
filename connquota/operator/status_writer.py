"""Writing a quota's status (only when its meaning changed), its problems and its Events (deduplicated)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from connquota.operator import names, status_metrics
from connquota.operator.crash import crash_point
from connquota.operator.kube import KubeError
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    EVENT_REPEAT_S,
    QuotaState,
    quota_key,
)
from connquota.operator.status import (
    Problem,
    QuotaObservation,
    drop_condition,
    quota_status,
    set_condition,
    status_differs,
    status_hash,
    status_patch,
)

log = logging.getLogger(__name__)


class StatusWriter(ReconcilerBase):
    """Writing a quota's status (only when its meaning changed), its problems and its Events (deduplicated) (a part of `Reconciler`)."""

    async def _write_status(
        self, body: dict[str, Any], state: QuotaState, obs: QuotaObservation
    ) -> None:
        live = body.get("status")
        desired = quota_status(live, obs, dt.datetime.now(dt.UTC))
        status_metrics.record_quota(body, desired)
        digest = status_hash(desired)
        # After a restart the live status is the only reference: compare what it means (the
        # API server reads 6.0 back as 6), so an unchanged quota is not rewritten.
        if state.reporting.status_digest == digest or not status_differs(live, desired):
            state.reporting.status_digest = digest
            return
        ns, name = state.key.split("/", 1)
        if log.isEnabledFor(logging.DEBUG):
            changed = sorted(
                k for k in {*desired, *(live or {})} if desired.get(k) != (live or {}).get(k)
            )
            log.debug(
                "quota %s: status changed: %s", state.key, changed, extra={"quota": state.key}
            )
        await self.api.merge_patch(
            names.QUOTA_KIND,
            ns,
            name,
            {"status": status_patch(live, desired)},
            subresource="status",
        )
        state.reporting.status_digest = digest
        await self._condition_events(body, state, live, desired)
        crash_point("status")

    async def _condition_events(
        self,
        body: dict[str, Any],
        state: QuotaState,
        live: dict[str, Any] | None,
        desired: dict[str, Any],
    ) -> None:
        """An Event for each condition of `CONDITION_EVENTS` that turned True or cleared since
        the status on the API server (so `kubectl describe ecq` tells the story; a restarted
        operator compares with the live status and posts nothing twice)."""
        before = {c["type"]: c for c in (live or {}).get("conditions") or []}
        after = {c["type"]: c for c in desired.get("conditions") or []}
        for kind, (raised, cleared, cleared_message) in CONDITION_EVENTS.items():
            was = (before.get(kind) or {}).get("status") == "True"
            now = (after.get(kind) or {}).get("status") == "True"
            if now and not was:
                await self._event(
                    body, state, raised, str(after[kind].get("message")), warning=True
                )
            elif was and not now:
                await self._event(body, state, cleared, cleared_message)

    async def _report_problem(self, body: dict[str, Any], problem: Problem) -> None:
        key = quota_key(body)
        state = self.quotas.setdefault(key, QuotaState(key))
        await self._load_published(body, state)
        await self._event(body, state, problem.reason, problem.message, warning=True)
        obs = QuotaObservation(
            generation=int(body["metadata"].get("generation") or 0),
            problem=problem,
            plan=state.published_plan(),
        )
        await self._write_status(body, state, obs)

    async def _report_write_failure(
        self, body: dict[str, Any], state: QuotaState, exc: KubeError
    ) -> None:
        """Set Stalled (and Ready False) with the API server's reason when it refused a write
        of an object the quota owns, and post a Warning Event; transient errors (no answer,
        5xx, 409, 429) only retry. Best effort: a refused status write is only logged."""
        failure = write_failure(exc)
        if failure is None:
            return
        reason, message = failure
        gen = int(body["metadata"].get("generation") or 0)
        now = dt.datetime.now(dt.UTC)
        live = body.get("status") or {}
        conditions = drop_condition(live.get("conditions") or [], "Reconciling")
        conditions = set_condition(conditions, "Stalled", True, reason, message, gen, now)
        conditions = set_condition(conditions, "Ready", False, reason, message, gen, now)
        status_metrics.record_quota_conditions(state.key, conditions)
        ns, name = state.key.split("/", 1)
        try:
            await self.api.merge_patch(
                names.QUOTA_KIND,
                ns,
                name,
                {"status": {"conditions": conditions, "observedGeneration": gen}},
                subresource="status",
            )
            # The next full status is compared with the live one again, not with a digest.
            state.reporting.status_digest = None
            await self._event(body, state, reason, message, warning=True)
        except KubeError as again:
            log.warning(
                "quota %s: could not report the refused write either: %s",
                state.key,
                again,
                extra={"quota": state.key},
            )

    async def _event(
        self,
        body: dict[str, Any],
        state: QuotaState,
        reason: str,
        message: str,
        *,
        warning: bool = False,
    ) -> None:
        now = self.monotonic()
        last = state.reporting.events.get((reason, message))
        if last is not None and now - last < EVENT_REPEAT_S:
            return
        state.reporting.events[(reason, message)] = now
        await self.api.post_event(body, reason=reason, message=message, warning=warning)


CONDITION_EVENTS: dict[str, tuple[str, str, str]] = {
    "CapacityExceeded": (
        "CapacityExceeded",
        "CapacityRestored",
        "every declared stream fits within the limits again",
    ),
    "Degraded": ("Degraded", "Recovered", "the gateways serve the plan again"),
    "EgressUnverified": ("EgressUnverified", "EgressVerified", "every address is verified"),
    "CredentialRefused": (
        "CredentialRefused",
        "CredentialAccepted",
        "the exchange accepts every credential again",
    ),
}
"""Condition type -> (Warning reason when it turns True, Normal reason when it clears, message
when it clears). RateLimited has its own Event per quarantine (the quota pass)."""

TRANSIENT_STATUSES = frozenset({0, 404, 409, 429, 500, 502, 503, 504})
"""API errors that are retried without telling the user (the next try usually succeeds)."""


def write_failure(exc: KubeError) -> tuple[str, str] | None:
    """(condition reason, message) for a write the API server refused for good, else None.

    The reason names the API server's verdict: QuotaExceeded (a ResourceQuota), AdmissionDenied
    (a webhook or admission policy), Forbidden (RBAC), Invalid (422), else RequestRefused."""
    if exc.status in TRANSIENT_STATUSES:
        return None
    text = str(exc)
    detail = text
    start = text.find("{")
    if start >= 0:
        try:
            doc = json.loads(text[start:])
            detail = str(doc.get("message") or text)
        except ValueError:
            detail = text
    lowered = detail.lower()
    if "exceeded quota" in lowered:
        reason = "QuotaExceeded"
    elif "admission webhook" in lowered or "denied the request" in lowered or "policy" in lowered:
        reason = "AdmissionDenied"
    elif exc.status == 403:
        reason = "Forbidden"
    elif exc.status == 422:
        reason = "Invalid"
    else:
        reason = "RequestRefused"
    return reason, f"the API server refused a write ({exc.status}): {detail}"[:1024]
