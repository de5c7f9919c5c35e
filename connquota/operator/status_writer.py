"""Writing a quota's status (only when its meaning changed), its problems and its Events (deduplicated)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from connquota.operator import names
from connquota.operator.crash import crash_point
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    EVENT_REPEAT_S,
    QuotaState,
    quota_key,
)
from connquota.operator.status import (
    Problem,
    QuotaObservation,
    quota_status,
    status_differs,
    status_hash,
)

log = logging.getLogger(__name__)


class StatusWriter(ReconcilerBase):
    """Writing a quota's status (only when its meaning changed), its problems and its Events (deduplicated) (a part of `Reconciler`)."""

    async def _write_status(
        self, body: dict[str, Any], state: QuotaState, obs: QuotaObservation
    ) -> None:
        live = body.get("status")
        desired = quota_status(live, obs, dt.datetime.now(dt.UTC))
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
            names.QUOTA_KIND, ns, name, {"status": desired}, subresource="status"
        )
        state.reporting.status_digest = digest
        crash_point("status")

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
