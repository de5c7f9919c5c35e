"""Publishing a generation: the ledger first, then the owned objects and the plan ConfigMaps whose content changed."""

from __future__ import annotations

import logging
from typing import Any

from connquota.api.lease_record import FreshCertificate
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import accessors, builders, ledgers, metrics, names
from connquota.operator.crash import crash_point
from connquota.operator.kube import KubeError
from connquota.operator.planning import (
    QuotaInput,
    QuotaLedger,
    record_publication,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    same_content,
)

log = logging.getLogger(__name__)


class Publishing(ReconcilerBase):
    """Publishing a generation (a part of `Reconciler`)."""

    async def _publish_generation(
        self,
        quota: ExchangeConnectionQuota,
        qin: QuotaInput,
        state: QuotaState,
        pool: ExchangeEgressPool,
        plan: QuotaPlan,
        body: dict[str, Any],
    ) -> None:
        """Record `plan` in the ledger (written first), then write its plan ConfigMaps."""
        ledger = state.ledgers.ledger or QuotaLedger(quota=state.key)
        fresh = ledgers.fresh_ordinals(
            ledger,
            plan,
            round(self.monotonic(), 3),
            self.wall(),
            self.config.windowMarginSeconds,
        )
        certificate = FreshCertificate(issuedAt=round(self.wall(), 3), generation=plan.generation)
        state.ledgers.ledger = record_publication(ledger, plan, pool.spec)
        state.ledgers.ledger_dirty = True
        await self._persist_ledger(quota, state)
        sts = self.sources.statefulset_of_quota(state.key)
        current = accessors.sts_replicas(sts)
        await self._ensure_objects(quota, plan, current, fresh, certificate)
        if not state.peer_secret:
            # Created once, never rewritten: running pods keep a token their peers accept.
            await self.api.create(builders.build_peer_secret(quota))
            state.peer_secret = True
        changed = await self._publish(quota, state, plan)
        if changed:
            metrics.PLAN_GENERATIONS.inc()
            await self._event(
                body,
                state,
                "PlanPublished",
                f"plan generation {plan.generation}: "
                f"{sum(len(p.connections) for p in plan.pods)} connections on "
                f"{sum(1 for p in plan.pods if p.connections)} pods ({changed} pod plans changed)",
            )

    async def _ensure_objects(
        self,
        quota: ExchangeConnectionQuota,
        plan: QuotaPlan,
        current_replicas: int,
        fresh: set[int],
        certificate: FreshCertificate,
    ) -> None:
        """The quota's owned objects; a missing Lease is created, with `certificate` when its
        ordinal is in `fresh` (nothing an earlier pod of it did still counts)."""
        ordinals = max(quota.spec.gateway.maxReplicas, len(plan.pods), current_replicas)
        for obj in (
            builders.build_service_account(quota),
            builders.build_role(quota, ordinals),
            builders.build_role_binding(quota),
            builders.build_headless_service(quota),
            builders.build_client_service(quota),
            builders.build_pod_disruption_budget(quota),
        ):
            await self.api.apply(obj)
        known = set(self._lease_ordinals(f"{quota.metadata.namespace}/{quota.metadata.name}"))
        wanted = {p.ordinal for p in plan.pods if p.connections} | set(range(current_replicas))
        for ordinal in sorted(wanted):
            if ordinal not in known:
                cert = certificate if ordinal in fresh else None
                await self.api.create(builders.build_lease(quota, ordinal, cert))

    async def _restore_deleted(
        self, quota: ExchangeConnectionQuota, state: QuotaState, current_replicas: int
    ) -> None:
        """Objects deleted behind the operator's back, restored as they were: a plan
        ConfigMap with the plan it last published (the same generation: the pod sees no
        change), and a missing Lease, empty and never certified (a pod of that ordinal may
        still enforce its slice; the running gateway takes the Lease again, with its attempt
        log)."""
        for ordinal in sorted(state.plans.deleted):
            pod = state.plans.published.get(ordinal)
            if pod is not None:
                await self.api.apply(builders.build_plan_configmap(quota, pod))
                log.warning(
                    "quota %s: plan ConfigMap of pod %d written again (generation %d)",
                    state.key,
                    ordinal,
                    pod.generation,
                    extra={"quota": state.key},
                )
            state.plans.deleted.discard(ordinal)
        published = {o for o, pod in state.plans.published.items() if pod.connections}
        wanted = published | set(range(current_replicas))
        if not wanted:
            return
        key = f"{quota.metadata.namespace}/{quota.metadata.name}"
        known = set(self._lease_ordinals(key))
        for ordinal in sorted(wanted - known):
            if await self.api.create(builders.build_lease(quota, ordinal)):
                log.warning(
                    "quota %s: Lease of pod %d was missing: created again (not certified)",
                    key,
                    ordinal,
                    extra={"quota": key},
                )

    def _lease_ordinals(self, key: str) -> list[int]:
        out = []
        for lease in self.sources.leases_of_quota(key):
            label = accessors.labels(lease).get(names.LABEL_ORDINAL)
            if label is not None and label.isdigit():
                out.append(int(label))
        return out

    async def _publish(
        self, quota: ExchangeConnectionQuota, state: QuotaState, plan: QuotaPlan
    ) -> int:
        """Write the ConfigMaps of pods whose plan content changed; returns how many."""
        changed = 0
        todo = [
            pod
            for pod in plan.pods
            if state.plans.published.get(pod.ordinal) is None
            or not same_content(state.plans.published[pod.ordinal], pod)
        ]
        for pod in todo:
            body = builders.build_plan_configmap(quota, pod)
            try:
                wrote = await self.api.apply(
                    body, resource_version=state.plans.plan_rv.get(pod.ordinal)
                )
            except KubeError:
                state.plans.loaded = False  # re-read the published plans before trying again
                raise
            state.plans.published[pod.ordinal] = pod
            # The write returned the new resourceVersion: keep it, so the next publish is
            # guarded by it without listing the quota's ConfigMaps again.
            meta = body["metadata"]
            rv = self.api.resource_version("ConfigMap", meta["namespace"], meta["name"])
            if rv:
                state.plans.plan_rv[pod.ordinal] = rv
            else:
                state.plans.plan_rv.pop(pod.ordinal, None)
            if wrote:
                changed += 1
                if len(todo) > 1 and changed == 1:
                    crash_point("plan")
        if changed:
            crash_point("plans")
        return changed
