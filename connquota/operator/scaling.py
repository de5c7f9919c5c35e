"""Scaling the gateway StatefulSet: up after plans are published, down only after the top ordinals acknowledged an empty plan; pod egress labels."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport
from connquota.operator import accessors, builders, names, planning, rollout
from connquota.operator.crash import crash_point
from connquota.operator.kube import KubeError
from connquota.operator.planning import (
    QuotaInput,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    addresses_used,
    owned_by,
)

log = logging.getLogger(__name__)


def _why_replaced(pod: rollout.PodView, template: str) -> str:
    """Why a pod is replaced, for Events: its node is cordoned, or its template is older."""
    if pod.cordoned and pod.template == template:
        return "off its cordoned node"
    return "with the new pod template"


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
        pods that acknowledged their empty plan (highest ordinals first). A scale-down drain
        in progress is advanced first (`_advance_scale_drain`)."""
        await self._advance_scale_drain(quota, state, reports, body)
        used = [o for o, p in state.plans.published.items() if p.connections]
        if state.rollout.drain is not None:
            used.append(state.rollout.drain.ordinal)  # drained for its replacement, not gone
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

    async def _advance_scale_drain(
        self,
        quota: ExchangeConnectionQuota,
        state: QuotaState,
        reports: Mapping[int, GatewayReport],
        body: dict[str, Any],
    ) -> None:
        """One step of the scale-down drain in progress (`rollout.advance_scale_drain`): once
        the leaving pods acknowledged letting their connections go, the drain ends, the quota
        is replanned from the drained plan and `_scale` scales down past them."""
        scale = state.rollout.scale_drain
        if scale is None:
            return
        prefix = f"{names.statefulset_name(quota.metadata.name or '')}-"
        pods, _ = self._pod_views(state, body, reports)
        step = rollout.advance_scale_drain(scale, state.plans.published, pods, prefix)
        if step.done:
            leaving = ", ".join(f"{prefix}{o}" for o in sorted(scale.steps.leaving))
            log.info(
                "quota %s: scale-down: %s drained (their connections moved first)",
                state.key,
                leaving,
                extra={"quota": state.key},
            )
            await self._event(
                body,
                state,
                "Drained",
                f"{leaving} let their connections go after copies opened on the staying pods; "
                "scaling down past them (make-before-break)",
            )
            state.rollout.scale_drain = None
        elif step.waiting:
            log.info(
                "quota %s: scale-down: waiting for %s",
                state.key,
                step.waiting,
                extra={"quota": state.key},
            )

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

    async def _label_pods(
        self,
        key: str,
        state: QuotaState,
        reports: Mapping[int, GatewayReport],
        body: dict[str, Any],
    ) -> None:
        """The labels the operator keeps on each gateway pod: its egress address (podLabel
        addresses differing per ordinal) and `connquota.io/holds-connections` while it holds
        connections (`rollout.holds_connections`; the PodDisruptionBudget selects it)."""
        ns, _ = key.split("/", 1)
        views, uids = self._pod_views(state, body, reports)
        written = state.rollout.holds_labels
        for gone in set(written) - set(uids.values()):
            del written[gone]
        for pod in self.sources.pods_of_quota(key):
            name = pod["metadata"]["name"]
            ordinal = accessors.pod_ordinal(pod)
            if ordinal is None:
                continue
            view = views.get(ordinal)
            if view is not None and not accessors.deleting(pod):
                await self._set_holds_label(state, pod, rollout.holds_connections(view), view)
            plan = state.plans.published.get(ordinal)
            if plan is None:
                continue
            wanted = builders.pod_egress_label(plan)
            have = accessors.pod_egress_label(pod)
            if wanted and have != wanted:
                await self.api.merge_patch(
                    "Pod", ns, name, {"metadata": {"labels": {names.LABEL_EGRESS: wanted}}}
                )

    async def _set_holds_label(
        self,
        state: QuotaState,
        pod: Mapping[str, Any],
        holds: bool,
        view: rollout.PodView | None = None,
    ) -> None:
        """Set or remove `connquota.io/holds-connections` on `pod` (skipped when it already
        says so, or was just written so; with the pod's uid as precondition, so a successor of
        the same name is left to the next pass)."""
        key = state.key
        uid = accessors.uid(pod)
        written = state.rollout.holds_labels
        have = accessors.pod_holds_connections_label(pod)
        if written.get(uid) == have:
            del written[uid]  # the index shows what was written
        if written.get(uid, have) == holds:
            return
        ns = key.split("/", 1)[0]
        name = pod["metadata"]["name"]
        patch = {
            "metadata": {
                "uid": accessors.uid(pod),
                "labels": {names.LABEL_HOLDS_CONNECTIONS: "true" if holds else None},
            }
        }
        try:
            await self.api.merge_patch("Pod", ns, name, patch)
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise
            written.pop(uid, None)
            return  # gone, or another pod of that name now: the next pass sees it
        written[uid] = holds
        if holds:
            what = "holds connections: labelled, its evictions wait for them to move"
        elif view is None:
            what = "is evicted by the operator: label removed first"
        else:
            what = "holds no connection: label removed, it may be evicted"
        if view is not None:
            what += (
                f" (plan generation {view.generation_wanted} with "
                f"{view.connections_planned} connections, enforced "
                f"{view.generation_acked if view.generation_acked is not None else 'not yet'}"
                + ("; its node is cordoned" if view.cordoned else "")
                + ")"
            )
        log.info("quota %s: pod %s %s", key, name, what, extra={"quota": key, "pod": name})

    async def _roll(
        self,
        quota: ExchangeConnectionQuota,
        pool: ExchangeEgressPool,
        state: QuotaState,
        reports: Mapping[int, GatewayReport],
        replicas: int,
        body: dict[str, Any],
        *,
        settled: bool,
        hold: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Roll the gateway pod template out (see `connquota.operator.rollout`): evict the pods
        the decision names, unless `hold` says why nothing may change now (paused, a problem).
        Returns (`status.rollout`, whether it is rolled out: no pod on an older template, every
        pod it replaced Ready again)."""
        key = state.key
        ns, _ = key.split("/", 1)
        desired = builders.build_statefulset(
            quota, replicas, addresses_used(state, pool), pool.spec.addresses
        )
        template = desired["spec"]["template"]["metadata"]["annotations"][
            names.ANNOTATION_TEMPLATE_HASH
        ]
        sts = self.sources.statefulset_of_quota(key)
        pods, uids = self._pod_views(state, body, reports)
        evicted = state.rollout.evicted
        for ordinal, old_uid in list(evicted.items()):
            successor = pods.get(ordinal)
            if ordinal >= replicas or (
                successor is not None
                and uids[ordinal] != old_uid
                and successor.ready
                and not successor.terminating
                and not successor.outdated(template)
            ):
                del evicted[ordinal]  # replaced: its successor is Ready on the new template
        fleet = rollout.FleetView(
            template=template,
            replicas=replicas,
            statefulset_current=accessors.sts_observed(
                sts, desired["metadata"]["annotations"][names.ANNOTATION_HASH]
            ),
            max_unavailable=quota.spec.gateway.maxUnavailable,
            plan_settled=settled,
            pod_prefix=f"{names.statefulset_name(quota.metadata.name or '')}-",
            replacing=frozenset(evicted),
        )
        decision = rollout.decide(fleet, pods)
        memory = state.rollout
        for ordinal in list(memory.break_before_make):
            if ordinal not in evicted:
                del memory.break_before_make[ordinal]
        drain = memory.drain
        if drain is not None and hold is None:
            decision = await self._drain(
                quota, state, body, drain, decision, pods, uids, template, fleet.pod_prefix
            )
        elif decision.replace and hold is None:
            first = decision.replace[0]
            steps: planning.DrainSteps | planning.NoRoom | None = None
            published = state.published_plan()
            if pods[first].available and published is not None:
                steps = planning.drain_steps(
                    published, first, quota.spec.gateway.connectionsPerPod + 1
                )
            if isinstance(steps, planning.DrainSteps):
                # Make-before-break: the pod's connections move first, then it is evicted.
                memory.drain = rollout.Drain(first, uids[first], steps)
                await self._event(
                    body,
                    state,
                    "Draining",
                    f"moving the connections of {pods[first].name} to spare room on other "
                    f"pods before replacing it {_why_replaced(pods[first], template)} "
                    "(make-before-break)",
                )
                decision = rollout.RolloutDecision(
                    updated=decision.updated,
                    total=decision.total,
                    current=first,
                    waiting=f"the make step of {pods[first].name}'s drain to be published",
                    rolled_out=False,
                )
            else:
                if isinstance(steps, planning.NoRoom):
                    memory.break_before_make[first] = steps.reason
                decision = await self._evict(ns, state, body, decision, pods, uids, template)
        elif decision.replace:
            decision = rollout.RolloutDecision(
                updated=decision.updated,
                total=decision.total,
                current=decision.current,
                waiting=hold,
                rolled_out=False,
            )
        current = decision.current
        plan = state.plans.published.get(current) if current is not None else None
        if memory.drain is not None and memory.drain.ordinal == current:
            plan = None  # drained make-before-break: its streams are never down
        elif (
            plan is not None
            and (whole := state.published_plan()) is not None
            and current not in memory.break_before_make
            and current not in evicted
            and isinstance(
                planning.drain_steps(
                    whole,
                    plan.ordinal,
                    quota.spec.gateway.connectionsPerPod + 1,
                ),
                planning.DrainSteps,
            )
        ):
            plan = None  # the next pod has room to be drained first: no recovery to wait for
        elif current is not None and current in memory.break_before_make and decision.waiting:
            decision = replace(
                decision,
                waiting=f"{decision.waiting} (replaced break-before-make: "
                f"{memory.break_before_make[current]})",
            )
        recovery = rollout.pod_recovery_s(plan)
        out: dict[str, Any] = {
            "template": template,
            "updated": decision.updated,
            "total": decision.total,
        }
        if current is not None and not decision.rolled_out:
            out["currentPod"] = (
                pods[current].name if current in pods else f"{fleet.pod_prefix}{current}"
            )
            if recovery is not None and math.isfinite(recovery):
                out["recoverySeconds"] = round(recovery, 1)
        if decision.waiting and not decision.rolled_out:
            out["waitingFor"] = decision.waiting[:1024]
        return out, decision.rolled_out

    async def _evict(
        self,
        ns: str,
        state: QuotaState,
        body: dict[str, Any],
        decision: rollout.RolloutDecision,
        pods: Mapping[int, rollout.PodView],
        uids: Mapping[int, str],
        template: str,
    ) -> rollout.RolloutDecision:
        """Evict the pods `decision` names (break-before-make: nothing was moved first)."""
        key = state.key
        evicted = state.rollout.evicted
        names_evicted = []
        for ordinal in decision.replace:
            pod = pods[ordinal]
            await self._release_for_eviction(state, uids[ordinal])
            outcome = await self.api.evict(ns, pod.name, uids[ordinal])
            log.info(
                "quota %s: rollout: evict %s (template %s -> %s%s): %s",
                key,
                pod.name,
                pod.template,
                template,
                "; its node is cordoned" if pod.cordoned else "",
                outcome,
                extra={"quota": key, "pod": pod.name},
            )
            if outcome == "refused":
                decision = rollout.RolloutDecision(
                    updated=decision.updated,
                    total=decision.total,
                    current=ordinal,
                    waiting=f"the PodDisruptionBudget to allow evicting {pod.name}",
                    rolled_out=False,
                )
                break
            evicted[ordinal] = uids[ordinal]
            names_evicted.append(pod.name)
        if names_evicted:
            why = "; ".join(
                f"{pods[o].name}: {state.rollout.break_before_make[o]}"
                for o in decision.replace
                if o in state.rollout.break_before_make
            )
            await self._event(
                body,
                state,
                "RollingOut",
                f"replacing {', '.join(names_evicted)} "
                f"{_why_replaced(pods[decision.replace[0]], template)} "
                f"({decision.updated}/{decision.total} pods updated; break-before-make"
                + (f": {why}" if why else "")
                + ")",
            )
        return decision

    async def _drain(
        self,
        quota: ExchangeConnectionQuota,
        state: QuotaState,
        body: dict[str, Any],
        drain: rollout.Drain,
        decision: rollout.RolloutDecision,
        pods: Mapping[int, rollout.PodView],
        uids: Mapping[int, str],
        template: str,
        pod_prefix: str,
    ) -> rollout.RolloutDecision:
        """One step of the make-before-break drain in progress (see `rollout.advance_drain`):
        evict the pod once its connections are served by the copies, finish once the copies
        closed again."""
        key = state.key
        ns = key.split("/", 1)[0]
        name = f"{pod_prefix}{drain.ordinal}"
        step = rollout.advance_drain(drain, state.plans.published, pods, uids, template, pod_prefix)
        waiting = step.waiting
        if step.evict:
            await self._release_for_eviction(state, drain.uid)
            outcome = await self.api.evict(ns, name, drain.uid)
            log.info(
                "quota %s: rollout: evict %s after its drain (make-before-break): %s",
                key,
                name,
                outcome,
                extra={"quota": key},
            )
            if outcome == "refused":
                drain.phase = rollout.DrainPhase.DRAINED  # tried again on a later pass
                waiting = f"the PodDisruptionBudget to allow evicting {name}"
            else:
                state.rollout.evicted[drain.ordinal] = drain.uid
                waiting = f"pod {name} to be replaced"
                await self._event(
                    body,
                    state,
                    "RollingOut",
                    f"replacing {name} "
                    f"{_why_replaced(pods[drain.ordinal], template) if drain.ordinal in pods else ''}"
                    f" ({decision.updated}/"
                    f"{decision.total} pods updated; make-before-break: its connections were "
                    "moved to other pods first)",
                )
        if step.done:
            log.info(
                "quota %s: rollout: %s drained, replaced and restored",
                key,
                name,
                extra={"quota": key},
            )
            state.rollout.drain = None
            return replace(decision, replace=())
        return rollout.RolloutDecision(
            updated=decision.updated,
            total=decision.total,
            current=drain.ordinal,
            waiting=waiting,
            rolled_out=False,
        )

    async def _release_for_eviction(self, state: QuotaState, uid: str) -> None:
        """Remove `connquota.io/holds-connections` from the pod `uid` right before the
        operator evicts it, so the PodDisruptionBudget (`maxUnavailable: 0` over the labelled
        pods) lets the eviction through: after its drain (it let its connections go, the label
        is normally gone already) or when its break-before-make turn comes (no room to move
        them; `rollout.decide` keeps `gateway.maxUnavailable`)."""
        for pod in self.sources.pods_of_quota(state.key):
            if accessors.uid(pod) == uid:
                await self._set_holds_label(state, pod, False)

    def _pod_views(
        self, state: QuotaState, body: dict[str, Any], reports: Mapping[int, GatewayReport]
    ) -> tuple[dict[int, rollout.PodView], dict[int, str]]:
        """(ordinal -> PodView, ordinal -> pod uid) of the quota's pods, from the indexes.

        A pod's report counts only when the Lease names a holder other than the one seen while
        an older pod of that ordinal ran (a predecessor's last report is not the new pod's)."""
        key = state.key
        memory = state.rollout
        holders: dict[int, str] = {}
        quota_uid = body["metadata"].get("uid", "")
        for lease in self.sources.leases_of_quota(key):
            ordinal = accessors.lease_ordinal(lease)
            if ordinal is not None and owned_by(lease, quota_uid):
                holders[ordinal] = accessors.lease_holder(lease)
        views: dict[int, rollout.PodView] = {}
        uids: dict[int, str] = {}
        for pod in self.sources.pods_of_quota(key):
            ordinal = accessors.pod_ordinal(pod)
            if ordinal is None:
                continue
            uid = accessors.uid(pod)
            fresh, seen = rollout.own_report(
                memory.holders.get(ordinal), uid, holders.get(ordinal, "")
            )
            if seen is not None:
                memory.holders[ordinal] = seen
            report = reports.get(ordinal) if fresh else None
            plan = state.plans.published.get(ordinal)
            views[ordinal] = rollout.PodView(
                ordinal=ordinal,
                name=pod["metadata"]["name"],
                template=accessors.pod_template_hash(pod),
                ready=accessors.pod_ready(pod),
                terminating=accessors.deleting(pod) or memory.evicted.get(ordinal) == uid,
                generation_wanted=plan.generation if plan is not None else 0,
                generation_acked=report.planGeneration if report is not None else None,
                streams_planned=sum(len(c.streams) for c in plan.connections) if plan else 0,
                streams_live=report.streams if report is not None else 0,
                connections_planned=len(plan.connections) if plan else 0,
                connections_live=report.connections if report is not None else 0,
                cordoned=self.sources.node_cordoned(accessors.pod_node(pod)),
            )
            uids[ordinal] = uid
        return views, uids
