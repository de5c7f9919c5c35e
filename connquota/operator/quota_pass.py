"""One quota within a pool pass: target, next safe step, publish, scale, status."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from connquota.api.limits import LimitScope
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport, Quarantine
from connquota.operator import accessors, metrics, planning, rollout, usage
from connquota.operator.planning import (
    DesiredStream,
    PoolShares,
    QuotaInput,
    QuotaShares,
    budget_table,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    QuotaState,
    is_deleting,
    owned_by,
    plan_changes,
    read_report,
)
from connquota.operator.status import (
    Problem,
    QuotaObservation,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuotaRound:
    """Everything one quota's reconcile needs from its pool's pass."""

    body: dict[str, Any]
    """The quota object as kopf's index holds it."""
    quota: ExchangeConnectionQuota | None
    """The validated quota (None when its spec does not validate)."""
    pool: ExchangeEgressPool
    state: QuotaState
    prepared: tuple[QuotaInput, list[DesiredStream]] | None
    """Its planner input and streams (the last good ones when the spec has a problem)."""
    shares: PoolShares | None
    """The pool's division of its budgets (None when frozen)."""
    problem: Problem | None
    frozen: bool
    """True when nothing of the pool may be published this pass."""
    reports: dict[int, GatewayReport]
    quarantines: list[Quarantine]
    """Quarantines reported by any gateway of the quota's limit domain on the pool."""
    proxy_down: dict[str, str] = field(default_factory=dict)
    """Proxy addresses of the pool planned without now (address -> the proxy's fault)."""
    node_down: dict[str, str] = field(default_factory=dict)
    """Bind addresses of the pool planned without now (address -> why: its node is lost)."""


class QuotaPass(ReconcilerBase):
    """One quota within a pool pass (a part of `Reconciler`)."""

    async def _reconcile_quota(self, round_: QuotaRound) -> float | None:
        body, quota, pool, state = round_.body, round_.quota, round_.pool, round_.state
        prepared, shares, problem = round_.prepared, round_.shares, round_.problem
        frozen, reports, quarantines = round_.frozen, round_.reports, round_.quarantines
        key = state.key
        deleting = is_deleting(body)
        sts = self.sources.statefulset_of_quota(key)
        current_replicas = accessors.sts_replicas(sts)
        ready = accessors.sts_ready_replicas(sts)
        waiting: str | None = None
        reached = True
        retry: float | None = None
        # (status.rollout, rolled out) once the fleet's pod template was looked at.
        rolling: tuple[dict[str, Any], bool] | None = None
        draining = state.rollout.drain is not None or state.rollout.scale_drain is not None

        # spec.paused: nothing is planned, published or scaled; the gateways keep enforcing
        # their last plan (so every limit still holds) and the status keeps being reported.
        paused = quota is not None and quota.spec.paused and not deleting
        if paused:
            await self._event(
                body, state, "Paused", "spec.paused: the operator keeps the fleet as it is"
            )
        if (
            quota is not None
            and prepared is not None
            and not frozen
            and not deleting
            and not paused
        ):
            qin, streams = prepared
            state.ledgers.dead_connection_s = qin.profile.deadConnectionTimeoutSeconds
            published = state.published_plan()
            plan: QuotaPlan | None = None
            try:
                own = shares.quotas.get(key) if shares is not None else None
                if own is None:
                    raise planning.QuotaProblem("ImpossibleQuota", f"no share computed for {key}")
                own = planning.quarantined(
                    own, planning.planned_quarantines(quarantines, reports.values(), self.wall())
                )
                own = planning.without_addresses(own, round_.proxy_down)
                own = planning.without_lost_nodes(own, round_.node_down)
                notes: list[tuple[str, str]] = []
                target = self._target(state, qin, streams, pool, own, published, notes)
                for reason, message in notes:
                    await self._event(body, state, reason, message)
                state.plans.target = target
                now = round(self.monotonic(), 3)
                assert shares is not None  # `own` came from it
                step = planning.transition(
                    pool.spec,
                    budget_table(shares.budgets),
                    self._pool_ledgers(pool.metadata.name or ""),
                    key,
                    published,
                    target,
                    now,
                )
                reached = step.reached_target
                if step.plan is not None:
                    plan = planning.complete(step.plan, state.plans.published, qin)
                    if not plan_changes(state.plans.published, plan):
                        plan = None
                    unreadable = planning.cannot_read(reports, plan)
                    if plan is not None and unreadable:
                        # The plan format rule: never a formatVersion a running pod does not
                        # read; the rollout replaces those pods (the plan settles meanwhile).
                        log.warning(
                            "quota %s: plan formatVersion %s held back: pods %s do not read it",
                            key,
                            plan.formatVersion,
                            unreadable,
                            extra={"quota": key},
                        )
                        plan = None
                if step.waiting:
                    metrics.TRANSITION_WAITS.inc()
                    waiting = planning.waiting_message(step.waiting, now, self.wall())
                    log.info(
                        "quota %s: %s",
                        key,
                        waiting,
                        extra={"quota": key, "pool": pool.metadata.name},
                    )
                    retry = (step.retry_at - now) if step.retry_at is not None else 5.0
                elif not reached:
                    retry = 1.0
            except planning.QuotaProblem as exc:
                problem = problem or exc.problem
            if problem is None:
                if plan is not None:
                    await self._publish_generation(quota, qin, state, pool, plan, body)
                current_replicas = await self._scale(
                    quota, qin, pool, state, reports, current_replicas, body
                )
                await self._label_pods(key, state, reports, body)
                await self._restore_deleted(quota, state, current_replicas)
                rolling = await self._roll(
                    quota,
                    pool,
                    state,
                    reports,
                    current_replicas,
                    body,
                    settled=reached
                    and waiting is None
                    and plan is None
                    and state.rollout.scale_drain is None,
                )
        if draining or state.rollout.drain is not None or state.rollout.scale_drain is not None:
            # The next step of a drain (or the next pod's, once one ended): nothing in the
            # cluster may change to trigger the pass that publishes it.
            retry = min(retry, 1.0) if retry is not None else 1.0
        if rolling is None and quota is not None and not deleting and state.plans.published:
            # Nothing may change now: show the rollout, replace nothing.
            hold = (
                "spec.paused"
                if paused
                else (problem.message if problem else "the pool's budgets to be divided")
            )
            rolling = await self._roll(
                quota, pool, state, reports, current_replicas, body, settled=False, hold=hold
            )
        if deleting and quota is not None:
            await self._scale_to_zero(quota, pool, state, current_replicas, body)
            current_replicas = 0
        if problem is not None:
            await self._event(body, state, problem.reason, problem.message, warning=True)

        for q in quarantines:
            await self._event(
                body,
                state,
                "RateLimited",
                f"{q.scope.value} {q.key} quarantined after {q.statusCode} until "
                f"{dt.datetime.fromtimestamp(q.until, dt.UTC).isoformat()} for every quota of "
                "the limit domain on this pool",
                warning=True,
            )
        plan_for_status = state.published_plan()
        if plan_for_status is not None and state.plans.target is not None:
            plan_for_status = plan_for_status.model_copy(
                update={
                    "unserved": state.plans.target.unserved,
                    "recoveryBounds": state.plans.target.recoveryBounds,
                }
            )
        scope_use = usage.quota_scope_use(
            shares, key, pool.spec, plan_for_status, reports, quarantines
        )
        obs = QuotaObservation(
            generation=int(body["metadata"].get("generation") or 0),
            problem=problem,
            plan=plan_for_status,
            addresses=scope_use[LimitScope.IP],
            accounts=scope_use[LimitScope.ACCOUNT],
            api_keys=scope_use[LimitScope.API_KEY],
            target_generation_reached=reached,
            waiting=waiting,
            replicas=current_replicas,
            ready_replicas=ready,
            desired_streams=len(prepared[1]) if prepared else 0,
            reports=reports,
            quarantines=quarantines,
            rollout=rolling[0] if rolling else None,
            rolled_out=rolling[1] if rolling else None,
            unavailable={
                **{a: f"its proxy is down: {why}" for a, why in round_.proxy_down.items()},
                **round_.node_down,
            },
            assumed_limits=[
                f"{lim.name.value}/{lim.scope.value}"
                for lim in (prepared[0].profile.limits if prepared else [])
                if lim.confidence.value == "assumed"
            ],
        )
        await self._write_status(body, state, obs)
        if quarantines:
            until = min(q.until for q in quarantines) - self.wall() + 0.5
            retry = min(retry or until, until)
        lapse = self.proxy_outages.next_change_s(pool.metadata.name or "", self.wall())
        if round_.proxy_down and lapse is not None:
            retry = min(retry or lapse, lapse)
        lapse = self.node_outages.next_change_s(pool.metadata.name or "", self.wall())
        if round_.node_down and lapse is not None:
            retry = min(retry or lapse, lapse)
        lost_wait = await self._lost_pods(body, state)
        if lost_wait is not None:
            retry = min(retry or lost_wait, lost_wait)
        return retry

    def _target(
        self,
        state: QuotaState,
        qin: QuotaInput,
        streams: list[DesiredStream],
        pool: ExchangeEgressPool,
        own: QuotaShares,
        published: QuotaPlan | None,
        notes: list[tuple[str, str]],
    ) -> QuotaPlan:
        """The plan to move towards: during a make-before-break drain, the drain's step, as
        long as a replan of the plan the drain started from changes nothing; else (an edit, a
        share or a quarantine changed it) the drain is given up and the quota replanned from
        what is published, keeping the drained pod empty while it is being replaced.

        A replan that removes ordinals (a scale-down) starts a scale-down drain
        (`planning.drain_leaving`) when the staying pods have room for the leaving pods'
        connections; else it is published as it is (the leaving pods close theirs as the
        staying ones open them) and `notes` gets an Event saying why."""
        drain = state.rollout.drain
        if drain is None:
            return self._scale_down_target(state, qin, streams, pool, own, published, notes)
        base = drain.steps.base
        if planning.same_plan(planning.plan_target(qin, streams, pool.spec, own, base), base):
            return drain.target()
        log.info(
            "quota %s: rollout: the drain of pod %d given up in its %s step: the plan changed",
            state.key,
            drain.ordinal,
            drain.phase.value,
            extra={"quota": state.key},
        )
        state.rollout.drain = None
        keep_empty = drain.phase in (rollout.DrainPhase.DRAINED, rollout.DrainPhase.REPLACING)
        return planning.plan_target(
            qin,
            streams,
            pool.spec,
            own,
            published,
            draining=frozenset({drain.ordinal}) if keep_empty else frozenset(),
        )

    def _scale_down_target(
        self,
        state: QuotaState,
        qin: QuotaInput,
        streams: list[DesiredStream],
        pool: ExchangeEgressPool,
        own: QuotaShares,
        published: QuotaPlan | None,
        notes: list[tuple[str, str]],
    ) -> QuotaPlan:
        """The target outside a rollout drain: a scale-down drain's step while one runs (and
        the replan it started for still stands), else the replan, or the first step of the
        scale-down drain it needs."""
        key = state.key
        memory = state.rollout
        scale = memory.scale_drain
        if scale is not None:
            fresh = planning.plan_target(qin, streams, pool.spec, own, scale.steps.base)
            if planning.same_plan(fresh, scale.target):
                return scale.plan()
            log.info(
                "quota %s: scale-down drain of pods %s given up in its %s step: the plan changed",
                key,
                sorted(scale.steps.leaving),
                scale.phase.value,
                extra={"quota": key},
            )
            memory.scale_drain = None
        target = planning.plan_target(qin, streams, pool.spec, own, published)
        if published is None:
            return target
        staying = [p.ordinal for p in target.pods if p.connections]
        if not staying:
            return target
        leaving = frozenset(
            p.ordinal for p in published.pods if p.connections and p.ordinal > max(staying)
        )
        if not leaving:
            return target
        steps = planning.drain_leaving(published, leaving, qin.spec.gateway.connectionsPerPod + 1)
        pods = ", ".join(str(o) for o in sorted(leaving))
        if isinstance(steps, planning.NoRoom):
            log.info(
                "quota %s: scale-down of pods %s break-before-make: %s",
                key,
                pods,
                steps.reason,
                extra={"quota": key},
            )
            notes.append(
                (
                    "ScalingDown",
                    f"scaling down past pods {pods} break-before-make (their connections "
                    f"close as the staying pods open them): {steps.reason}",
                )
            )
            return target
        memory.scale_drain = rollout.ScaleDrain(steps, target)
        notes.append(
            (
                "Draining",
                f"moving the connections of pods {pods} to spare room on the staying pods "
                "before scaling down (make-before-break)",
            )
        )
        return steps.make

    def _reports(self, key: str, body: dict[str, Any]) -> dict[int, GatewayReport]:
        uid = body["metadata"].get("uid", "")
        out: dict[int, GatewayReport] = {}
        for lease in self.sources.leases_of_quota(key):
            if not owned_by(lease, uid):
                continue
            report = read_report(lease)
            if report is not None:
                out[report.ordinal] = report
        return out
