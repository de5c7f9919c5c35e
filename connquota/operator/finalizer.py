"""Deleting a quota: an empty generation, scale to zero, and the finalizer released only when nothing of the quota counts any more."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from connquota.api.plan import QuotaRef
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import accessors, builders, ledgers, status_metrics
from connquota.operator.kube import KubeError
from connquota.operator.planning import (
    forgettable,
    record_publication,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    addresses_used,
    quota_key,
    state_empty_plan,
    strip_status,
)

log = logging.getLogger(__name__)


class Finalizer(ReconcilerBase):
    """Deleting a quota (a part of `Reconciler`)."""

    async def finalize(self, body: dict[str, Any]) -> float | None:
        """Seconds to wait before the quota's share may be released; None: release now.

        The quota's ledger gets an empty generation (written, then published to the pods that
        still run), the StatefulSet is scaled to zero, and the finalizer goes only when the
        planner's `forgettable` says nothing of the quota counts any more: every pod
        acknowledged holding nothing (a pod that is gone counts once the dead-connection
        timeout passed since it went) and every released rate slice's window has passed.
        """
        key = quota_key(body)
        pool_name = accessors.quota_pool(body)
        state = self.quotas.setdefault(key, QuotaState(key))
        state.pool = pool_name or state.pool
        async with self.lock(pool_name):
            try:
                quota = ExchangeConnectionQuota.model_validate(strip_status(body))
            except ValidationError:
                quota = None
            pool_body = self.sources.pools(pool_name)
            pool = ExchangeEgressPool.model_validate(strip_status(pool_body)) if pool_body else None
            await self._load_published(body, state)
            if quota is not None:
                if state.plans.published:
                    state.ledgers.dead_connection_s = next(
                        iter(state.plans.published.values())
                    ).profile.deadConnectionTimeoutSeconds
                if pool is not None:
                    self._sync_ledger(state, pool, self._reports(key, body), deleting=True)
                    ledger = state.ledgers.ledger
                    if ledger is not None and ledgers.holds_anything(ledger):
                        empty = ledgers.empty_plan(
                            QuotaRef(
                                namespace=body["metadata"]["namespace"],
                                name=quota.metadata.name or "",
                            ),
                            ledger,
                            state.plans.published,
                            ledger.last_generation + 1,
                        )
                        state.ledgers.ledger = record_publication(ledger, empty, pool.spec)
                        state.ledgers.ledger_dirty = True
                    try:
                        await self._persist_ledger(quota, state)
                        if ledger is not state.ledgers.ledger:
                            await self._publish(quota, state, state_empty_plan(state))
                    except KubeError as exc:
                        # A terminating namespace refuses new content: the ledger in memory
                        # still counts, and the pods are being deleted anyway.
                        log.warning(
                            "quota %s: could not write while deleting: %s",
                            key,
                            exc,
                            extra={"quota": key},
                        )
                sts = self.sources.statefulset_of_quota(key)
                current = accessors.sts_replicas(sts)
                if sts is not None:
                    addresses = addresses_used(state, pool) if pool is not None else []
                    sts_body = builders.build_statefulset(
                        quota, 0, addresses, pool.spec.addresses if pool is not None else ()
                    )
                    if await self.api.apply(sts_body) and current:
                        await self._event(body, state, "ScaledDown", "quota deleted: replicas -> 0")
            if self.sources.pods_of_quota(key):
                return 2.0
            now = self.monotonic()
            ledger = state.ledgers.ledger
            if ledger is not None and not forgettable(ledger, now):
                untils = [r.until for r in ledger.releases if r.until > now]
                pending = [
                    now + state.ledgers.dead_connection_s - s
                    for s in state.ledgers.gone_seen.values()
                ]
                left = max([*(u - now for u in untils), *pending, 0.0])
                return max(0.5, min(left + 0.1, 30.0))
            self.quotas.pop(key, None)
            status_metrics.forget_quota(key)
            return None
