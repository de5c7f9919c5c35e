"""Scaling the gateway StatefulSet: up after plans are published, down only after the top ordinals acknowledged an empty plan; pod egress labels."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport
from connquota.operator import accessors, builders, names
from connquota.operator.crash import crash_point
from connquota.operator.planning import (
    QuotaInput,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    addresses_used,
)

log = logging.getLogger(__name__)


class Scaling(ReconcilerBase):
    """Scaling the gateway StatefulSet (a part of `Reconciler`)."""

    async def _scale(
        self,
        quota: ExchangeConnectionQuota,
        qin: QuotaInput,
        pool: ExchangeEgressPool,
        state: QuotaState,
        reports: Mapping[int, GatewayReport],
        current: int,
        body: dict[str, Any],
    ) -> int:
        """Raise replicas to cover every published pod with connections; lower them only past
        pods that acknowledged their empty plan (highest ordinals first)."""
        used = [o for o, p in state.plans.published.items() if p.connections]
        needed = max(qin.spec.gateway.minReplicas, 1 + max(used, default=-1))
        replicas = needed
        if needed < current:
            replicas = current
            for ordinal in range(current - 1, needed - 1, -1):
                empty = state.plans.published.get(ordinal)
                report = reports.get(ordinal)
                acked = empty is None or (
                    not empty.connections
                    and report is not None
                    and report.planGeneration >= empty.generation
                )
                if not acked:
                    break
                replicas = ordinal
        addresses = addresses_used(state, pool)
        sts = builders.build_statefulset(quota, replicas, addresses, pool.spec.addresses)
        if await self.api.apply(sts) and replicas != current:
            crash_point("scale")
            verb = "ScaledUp" if replicas > current else "ScaledDown"
            await self._event(body, state, verb, f"gateway replicas {current} -> {replicas}")
        return replicas

    async def _scale_to_zero(
        self,
        quota: ExchangeConnectionQuota,
        pool: ExchangeEgressPool,
        state: QuotaState,
        current: int,
        body: dict[str, Any],
    ) -> None:
        sts = builders.build_statefulset(quota, 0, addresses_used(state, pool), pool.spec.addresses)
        if await self.api.apply(sts) and current:
            await self._event(body, state, "ScaledDown", "quota deleted: gateway replicas -> 0")

    async def _label_pods(self, key: str, state: QuotaState) -> None:
        ns, _ = key.split("/", 1)
        for pod in self.sources.pods_of_quota(key):
            name = pod["metadata"]["name"]
            ordinal_text = name.rsplit("-", 1)[-1]
            if not ordinal_text.isdigit():
                continue
            plan = state.plans.published.get(int(ordinal_text))
            if plan is None:
                continue
            wanted = builders.pod_egress_label(plan)
            have = accessors.pod_egress_label(pod)
            if wanted and have != wanted:
                await self.api.merge_patch(
                    "Pod", ns, name, {"metadata": {"labels": {names.LABEL_EGRESS: wanted}}}
                )
