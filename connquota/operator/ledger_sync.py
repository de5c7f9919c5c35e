"""The quotas' ledgers and published plans: read once per operator start, acknowledgements folded in, persisted before new plans."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from connquota.api.plan import PodPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport
from connquota.operator import accessors, builders, ledgers, names
from connquota.operator.crash import crash_point
from connquota.operator.kube import KubeError
from connquota.operator.planning import (
    QuotaLedger,
    rebase_clock,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    owned_by,
)

log = logging.getLogger(__name__)


class LedgerSync(ReconcilerBase):
    """The quotas' ledgers and published plans (a part of `Reconciler`)."""

    def _pool_ledgers(self, pool: str) -> dict[str, QuotaLedger]:
        """The ledgers of every quota of `pool` the operator knows of."""
        return {
            k: s.ledgers.ledger
            for k, s in self.quotas.items()
            if s.pool == pool and s.ledgers.ledger is not None
        }

    def _sync_ledger(
        self,
        state: QuotaState,
        pool: ExchangeEgressPool,
        reports: Mapping[int, GatewayReport],
        *,
        deleting: bool = False,
    ) -> None:
        """Bring the in-memory ledger up to date: published plans, acks, pods gone."""
        now = round(self.monotonic(), 3)
        margin = self.config.windowMarginSeconds
        before = state.ledgers.ledger
        ledger = before or QuotaLedger(quota=state.key, since=self._ledger_since(state))
        if ledger.since is None:  # written before ledgers said since when they know
            ledger = ledger.model_copy(update={"since": round(self.wall(), 3)})
        ledger = ledgers.reconcile_with_published(ledger, state.published_plan(), pool.spec)
        ledger = ledgers.record_reports(
            ledger, reports, state.plans.published, pool.spec, now, margin
        )
        sts = self.sources.statefulset_of_quota(state.key)
        replicas = 0 if deleting else accessors.sts_replicas(sts)
        live = set()
        for pod in self.sources.pods_of_quota(state.key):
            ordinal_text = pod["metadata"]["name"].rsplit("-", 1)[-1]
            if ordinal_text.isdigit():
                live.add(int(ordinal_text))
        gone_now = ledgers.gone_ordinals(ledger, live, replicas)
        for ordinal in list(state.ledgers.gone_seen):
            if ordinal not in gone_now:
                del state.ledgers.gone_seen[ordinal]
        settled = []
        for ordinal in gone_now:
            seen = state.ledgers.gone_seen.setdefault(ordinal, now)
            if now - seen >= state.ledgers.dead_connection_s:
                settled.append(ordinal)
        ledger = ledgers.record_gone(ledger, settled, now, margin)
        if ledger is not before:
            state.ledgers.ledger = ledger
            if before is None or ledgers.ledger_json(ledger) != ledgers.ledger_json(before):
                state.ledgers.ledger_dirty = True

    def _ledger_since(self, state: QuotaState) -> float:
        """Since when a new ledger knows everything of the quota: from its beginning (0) when
        nothing of the quota exists yet (no plan, StatefulSet, Pod or Lease: no pod can have
        made an attempt), else from now (a lost ledger rebuilt while pods may run)."""
        key = state.key
        if (
            state.plans.published
            or self.sources.statefulset_of_quota(key) is not None
            or any(True for _ in self.sources.pods_of_quota(key))
            or any(True for _ in self.sources.leases_of_quota(key))
        ):
            return round(self.wall(), 3)
        return 0.0

    async def _persist_ledger(self, quota: ExchangeConnectionQuota, state: QuotaState) -> None:
        """Write the ledger ConfigMap when the ledger changed (resourceVersion precondition)."""
        if not state.ledgers.ledger_dirty or state.ledgers.ledger is None:
            return
        ledger = ledgers.prune(state.ledgers.ledger, self.monotonic())
        body = builders.build_ledger_configmap(quota, ledgers.ledger_json(ledger))
        ns, name = state.key.split("/", 1)
        cm_name = names.ledger_configmap_name(name)
        try:
            wrote = await self.api.apply(body, resource_version=state.ledgers.ledger_rv)
        except KubeError:
            state.ledgers.ledger_rv = None
            self.api.forget("ConfigMap", ns, cm_name)
            raise
        state.ledgers.ledger_rv = self.api.resource_version("ConfigMap", ns, cm_name)
        state.ledgers.ledger_dirty = False
        if wrote:
            crash_point("ledger")

    async def _has_published(self, body: dict[str, Any], state: QuotaState) -> bool:
        await self._load_published(body, state)
        return any(p.connections for p in state.plans.published.values())

    async def _load_published(self, body: dict[str, Any], state: QuotaState) -> None:
        """Read the quota's plan ConfigMaps (and, once per operator start, its ledger)."""
        uid = body["metadata"].get("uid", "")
        if state.plans.loaded and state.uid == uid:
            return
        if state.uid != uid:
            state.ledgers.ledger = None
            state.ledgers.ledger_loaded = False
            state.ledgers.ledger_rv = None
            state.ledgers.gone_seen.clear()
        ns, name = state.key.split("/", 1)
        state.plans.published.clear()
        state.plans.plan_rv.clear()
        selector = f"{names.LABEL_QUOTA}={name},{names.LABEL_COMPONENT} in (plan,ledger)"
        ledger_cm: dict[str, Any] | None = None
        for cm in await self.api.list("ConfigMap", ns, selector):
            if not owned_by(cm, uid):
                continue
            data = cm.get("data") or {}
            if names.LEDGER_KEY in data:
                ledger_cm = cm
                continue
            try:
                pod = PodPlan.model_validate_json(data.get(names.PLAN_KEY, ""))
            except ValidationError:
                continue
            state.plans.published[pod.ordinal] = pod
            state.plans.plan_rv[pod.ordinal] = cm["metadata"]["resourceVersion"]
        if ledger_cm is not None:
            state.ledgers.ledger_rv = ledger_cm["metadata"]["resourceVersion"]
        if not state.ledgers.ledger_loaded:
            text = (ledger_cm.get("data") or {}).get(names.LEDGER_KEY) if ledger_cm else None
            ledger = ledgers.parse_ledger(text, state.key)
            if ledger is not None:
                # Monotonic times of a previous operator process mean nothing now: every
                # acknowledgement counts as just seen, every release a full window from now.
                ledger = rebase_clock(
                    ledger, round(self.monotonic(), 3), self.config.windowMarginSeconds
                )
            state.ledgers.ledger = ledger
            state.ledgers.ledger_loaded = True
        state.plans.loaded = True
        state.uid = uid
