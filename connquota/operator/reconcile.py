"""Reconcile one egress pool: shares, targets, the next safe generation, then publish and scale.

One worker task per pool serializes every budget computation of that pool (the per-pool lock).
Handlers only call `Reconciler.request(pool)`; events arriving while a reconcile runs are
coalesced into one more run. A failed reconcile is retried with the configured backoffs.

Order of writes for a quota (each skipped when nothing changed):

1. ServiceAccount, Role, RoleBinding, Services, PodDisruptionBudget, the ordinals' Leases;
2. plan ConfigMaps of the next safe generation (resourceVersion preconditions);
3. StatefulSet replicas: raised after the plans are published; lowered only after the pods
   above the new count acknowledged an empty plan;
4. pod egress labels (podLabel addresses differing per ordinal);
5. status (only when its content changes) and Events (deduplicated).

What the operator keeps only in memory: when it first saw each acknowledgement (monotonic
clock). After a restart every acknowledgement counts as just seen, which can only make a
transition wait longer, never shorter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from connquota.api.plan import PodPlan, QuotaPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import REPORT_ANNOTATION, GatewayReport, Quarantine
from connquota.operator import builders, metrics, names, planning
from connquota.operator.kube import KubeApi, KubeError
from connquota.operator.settings import OperatorConfig
from connquota.operator.status import Problem, QuotaObservation, quota_status, status_hash
from connquota.planner.inputs import DesiredStream, QuotaInput

log = logging.getLogger(__name__)

EVENT_REPEAT_S = 600.0
"""The same Event on the same object is posted at most once per this many seconds."""

Source = Callable[[], Iterable[dict[str, Any]]]


def quota_key(body: Mapping[str, Any]) -> str:
    """`namespace/name` of a quota body."""
    meta = body.get("metadata", {})
    return f"{meta.get('namespace')}/{meta.get('name')}"


def read_report(lease: Mapping[str, Any]) -> GatewayReport | None:
    """The gateway report on a Lease, or None when absent or unreadable."""
    text = (lease.get("metadata", {}).get("annotations") or {}).get(REPORT_ANNOTATION)
    if not text:
        return None
    try:
        return GatewayReport.model_validate_json(text)
    except ValidationError:
        return None


@dataclass
class QuotaState:
    """What the operator remembers of one quota between reconciles."""

    key: str
    uid: str = ""
    pool: str = ""
    published: dict[int, PodPlan] = field(default_factory=dict)
    """ordinal -> the pod plan in its ConfigMap."""
    plan_rv: dict[int, str] = field(default_factory=dict)
    loaded: bool = False
    ack_first_seen: dict[tuple[int, int], float] = field(default_factory=dict)
    last_good: tuple[QuotaInput, list[DesiredStream]] | None = None
    target: QuotaPlan | None = None
    gone_since: float | None = None
    status_digest: str | None = None
    events: dict[tuple[str, str], float] = field(default_factory=dict)

    def published_plan(self) -> QuotaPlan | None:
        """The published pod plans as one QuotaPlan (generation = newest pod generation)."""
        if not self.published:
            return None
        pods = [self.published[o] for o in sorted(self.published)]
        replicas = 1 + max((p.ordinal for p in pods if p.connections), default=-1)
        return QuotaPlan(
            generation=max(p.generation for p in pods),
            quota=pods[0].quota,
            replicas=replicas,
            pods=pods,
        )


@dataclass
class Sources:
    """Where the reconciler reads the cluster from: kopf indexes (no API reads)."""

    pools: Callable[[str], dict[str, Any] | None]
    quotas_of_pool: Callable[[str], list[dict[str, Any]]]
    leases_of_quota: Callable[[str], list[dict[str, Any]]]
    pods_of_quota: Callable[[str], list[dict[str, Any]]]
    statefulset_of_quota: Callable[[str], dict[str, Any] | None]


class Reconciler:
    """Runs one worker per pool; the only code that decides what to write."""

    def __init__(
        self,
        api: KubeApi,
        config: OperatorConfig,
        sources: Sources,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.config = config
        self.sources = sources
        self.monotonic = monotonic
        self.wall = wall
        self.quotas: dict[str, QuotaState] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.last_progress = monotonic()

    # --- scheduling --------------------------------------------------------------------------

    def request(self, pool: str) -> None:
        """Ask for a reconcile of `pool` soon (coalesced with requests already pending)."""
        event = self._dirty.setdefault(pool, asyncio.Event())
        event.set()
        worker = self._workers.get(pool)
        if worker is None or worker.done():
            self._workers[pool] = asyncio.create_task(self._worker(pool), name=f"pool:{pool}")

    def note_progress(self) -> None:
        """Record that a watch event arrived or a reconcile succeeded (liveness)."""
        self.last_progress = self.monotonic()
        metrics.LAST_PROGRESS.set(self.wall())

    async def stop(self) -> None:
        """Cancel every worker (operator shutdown)."""
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)

    def lock(self, pool: str) -> asyncio.Lock:
        """The lock serializing every budget computation of `pool`."""
        return self._locks.setdefault(pool, asyncio.Lock())

    async def _worker(self, pool: str) -> None:
        event = self._dirty[pool]
        backoffs = self.config.errorBackoffsSeconds
        failures = 0
        while True:
            await event.wait()
            await asyncio.sleep(self.config.reconcileDebounceSeconds)
            event.clear()
            started = self.monotonic()
            try:
                async with self.lock(pool):
                    retry_after = await self.reconcile_pool(pool)
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.RECONCILES.labels(result="error").inc()
                delay = backoffs[min(failures, len(backoffs) - 1)]
                failures += 1
                log.exception(
                    "reconcile of pool %s failed; retrying in %ss",
                    pool,
                    delay,
                    extra={"pool": pool},
                )
                self.api.forget_all()
                self._later(pool, delay)
                continue
            failures = 0
            metrics.RECONCILES.labels(result="ok").inc()
            metrics.RECONCILE_SECONDS.observe(self.monotonic() - started)
            self.note_progress()
            if retry_after is not None:
                self._later(pool, retry_after)

    def _later(self, pool: str, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.05, delay_s), self.request, pool)

    # --- the reconcile -----------------------------------------------------------------------

    async def reconcile_pool(self, pool_name: str) -> float | None:
        """Reconcile every quota of one pool; returns seconds until a re-run is needed, if any."""
        pool_body = self.sources.pools(pool_name)
        bodies = sorted(self.sources.quotas_of_pool(pool_name), key=quota_key)
        quotas: list[tuple[dict[str, Any], ExchangeConnectionQuota | None]] = []
        for body in bodies:
            try:
                quotas.append((body, ExchangeConnectionQuota.model_validate(_strip(body))))
            except ValidationError as exc:
                quotas.append((body, None))
                log.warning("quota %s does not validate: %s", quota_key(body), exc)
        if pool_body is None:
            for body, _ in quotas:
                await self._report_problem(
                    body,
                    Problem("PoolNotFound", f"ExchangeEgressPool {pool_name} does not exist"),
                )
            return None
        pool = ExchangeEgressPool.model_validate(_strip(pool_body))

        # 1. Planner inputs. A quota with a problem keeps its last good input so its share
        # stays counted; without one the whole pool is frozen this round (safe for I1).
        inputs: dict[str, tuple[QuotaInput, list[DesiredStream]]] = {}
        problems: dict[str, Problem] = {}
        frozen = False
        for body, _ in quotas:
            state = self.quotas.setdefault(quota_key(body), QuotaState(quota_key(body)))
            state.pool = pool_name
            await self._load_published(body, state)
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas.setdefault(key, QuotaState(key))
            state.pool = pool_name
            try:
                if quota is None:
                    raise planning.QuotaProblem("InvalidSpec", "the spec does not validate")
                prepared = await self._prepare(quota, pool)
                state.last_good = prepared
                inputs[key] = prepared
            except planning.QuotaProblem as exc:
                problems[key] = exc.problem
                if state.last_good is not None:
                    inputs[key] = state.last_good
                elif not await self._has_published(body, state):
                    pass  # never planned: it holds nothing, and gets nothing
                else:
                    frozen = True

        retry: list[float] = []
        shares = None
        if not frozen and inputs:
            try:
                shares = planning.divide(pool.spec, [i for i, _ in inputs.values()])
            except planning.QuotaProblem as exc:
                frozen = True
                for key in inputs:
                    problems.setdefault(key, exc.problem)

        # 2. Per quota: target, next safe step, publish, scale, status.
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas[key]
            try:
                wait = await self._reconcile_quota(
                    body, quota, pool, state, inputs.get(key), shares, problems.get(key), frozen
                )
            except KubeError as exc:
                log.warning("quota %s: API error: %s", key, exc, extra={"quota": key})
                self.api.forget_all()
                raise
            if wait is not None:
                retry.append(wait)
        return min(retry) if retry else None

    async def _prepare(
        self, quota: ExchangeConnectionQuota, pool: ExchangeEgressPool
    ) -> tuple[QuotaInput, list[DesiredStream]]:
        meta = quota.metadata
        assert meta.name and meta.namespace
        if len(meta.name) > names.MAX_QUOTA_NAME_LENGTH:
            raise planning.QuotaProblem(
                "NameTooLong",
                f"quota names are limited to {names.MAX_QUOTA_NAME_LENGTH} characters "
                "(pod and Lease names derive from it)",
            )
        if not _admits(pool, meta.namespace):
            raise planning.QuotaProblem(
                "NamespaceNotAdmitted",
                f"pool {pool.metadata.name} does not admit namespace {meta.namespace} "
                "(spec.allowedNamespaces)",
            )
        qin = planning.quota_input(quota)
        missing = []
        for secret in sorted({c.secretRef.name for c in quota.spec.credentials}):
            if not await self.api.exists("Secret", meta.namespace, secret):
                missing.append(secret)
        auth = quota.spec.gateway.consumerAuthSecretRef
        if auth and not await self.api.exists("Secret", meta.namespace, auth.name):
            missing.append(auth.name)
        if missing:
            raise planning.QuotaProblem(
                "SecretMissing",
                f"Secret(s) {', '.join(missing)} not found in namespace {meta.namespace}",
            )
        configmaps: dict[str, dict[str, str] | None] = {}
        for name, _, _ in planning.stream_sources_needed(quota):
            if name not in configmaps:
                cm = await self.api.get("ConfigMap", meta.namespace, name)
                configmaps[name] = None if cm is None else dict(cm.get("data") or {})
        return qin, planning.desired_streams(quota, configmaps)

    async def _has_published(self, body: dict[str, Any], state: QuotaState) -> bool:
        await self._load_published(body, state)
        return any(p.connections for p in state.published.values())

    async def _load_published(self, body: dict[str, Any], state: QuotaState) -> None:
        uid = body["metadata"].get("uid", "")
        if state.loaded and state.uid == uid:
            return
        ns, name = state.key.split("/", 1)
        state.published.clear()
        state.plan_rv.clear()
        selector = f"{names.LABEL_QUOTA}={name},{names.LABEL_COMPONENT}=plan"
        for cm in await self.api.list("ConfigMap", ns, selector):
            if not _owned_by(cm, uid):
                continue
            try:
                pod = PodPlan.model_validate_json((cm.get("data") or {}).get(names.PLAN_KEY, ""))
            except ValidationError:
                continue
            state.published[pod.ordinal] = pod
            state.plan_rv[pod.ordinal] = cm["metadata"]["resourceVersion"]
        state.loaded = True
        state.uid = uid

    async def _reconcile_quota(
        self,
        body: dict[str, Any],
        quota: ExchangeConnectionQuota | None,
        pool: ExchangeEgressPool,
        state: QuotaState,
        prepared: tuple[QuotaInput, list[DesiredStream]] | None,
        shares: Any,
        problem: Problem | None,
        frozen: bool,
    ) -> float | None:
        key = state.key
        await self._load_published(body, state)
        reports = self._reports(key, body)
        self._note_acks(state, reports)
        deleting = bool(body["metadata"].get("deletionTimestamp"))
        sts = self.sources.statefulset_of_quota(key)
        current_replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
        ready = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
        step: planning.Step | None = None
        waiting: str | None = None
        retry: float | None = None

        if quota is not None and prepared is not None and not frozen and not deleting:
            qin, streams = prepared
            published = state.published_plan()
            acks = {o: r.planGeneration for o, r in reports.items()}
            ages = {
                o: self.monotonic() - state.ack_first_seen.get((o, g), self.monotonic())
                for o, g in acks.items()
            }
            try:
                target, step = planning.target_and_step(
                    qin,
                    streams,
                    pool.spec,
                    shares,
                    published,
                    acks,
                    ages,
                    pool_has_other_plans=any(
                        o.key != key and o.published
                        for o in self.quotas.values()
                        if o.pool == pool.metadata.name
                    ),
                )
                state.target = target
            except planning.QuotaProblem as exc:
                problem = problem or exc.problem
            if step is not None and problem is None:
                await self._ensure_objects(quota, step.plan, pool, current_replicas)
                changed = await self._publish(quota, qin, state, step.plan)
                if changed:
                    metrics.PLAN_GENERATIONS.inc()
                    await self._event(
                        body,
                        state,
                        "PlanPublished",
                        f"plan generation {step.plan.generation}: "
                        f"{sum(len(p.connections) for p in step.plan.pods)} connections on "
                        f"{step.plan.replicas} pods ({changed} pod plans changed)",
                    )
                current_replicas = await self._scale(
                    quota, step.plan, pool, state, reports, current_replicas, body
                )
                await self._label_pods(key, state)
                if not step.reached_target:
                    metrics.TRANSITION_WAITS.inc()
                    waiting = step.waiting_for or "waiting for acknowledgements"
                    retry = step.retry_after_s or 1.0
        if deleting and quota is not None:
            await self._scale_to_zero(quota, pool, state, current_replicas, body)
            current_replicas = 0
        if problem is not None:
            await self._event(body, state, problem.reason, problem.message, warning=True)

        quarantines = [q for r in reports.values() for q in r.quarantines if q.until > self.wall()]
        for q in quarantines:
            await self._event(
                body,
                state,
                "RateLimited",
                f"{q.scope.value} {q.key} quarantined after {q.statusCode} until "
                f"{dt.datetime.fromtimestamp(q.until, dt.UTC).isoformat()}",
                warning=True,
            )
        plan_for_status = state.published_plan()
        if plan_for_status is not None and state.target is not None:
            plan_for_status = plan_for_status.model_copy(
                update={
                    "unserved": state.target.unserved,
                    "recoveryBounds": state.target.recoveryBounds,
                }
            )
        obs = QuotaObservation(
            generation=int(body["metadata"].get("generation") or 0),
            problem=problem,
            plan=plan_for_status,
            target_generation_reached=step.reached_target if step else True,
            waiting=waiting,
            replicas=current_replicas,
            ready_replicas=ready,
            desired_streams=len(prepared[1]) if prepared else 0,
            reports=reports,
            quarantines=quarantines,
            assumed_limits=[
                f"{lim.name.value}/{lim.scope.value}"
                for lim in (prepared[0].profile.limits if prepared else [])
                if lim.confidence.value == "assumed"
            ],
        )
        await self._write_status(body, state, obs)
        if quarantines:
            until = min(q.until for q in quarantines) - self.wall()
            retry = min(retry or until, until)
        return retry

    # --- pieces ------------------------------------------------------------------------------

    def _reports(self, key: str, body: dict[str, Any]) -> dict[int, GatewayReport]:
        uid = body["metadata"].get("uid", "")
        out: dict[int, GatewayReport] = {}
        for lease in self.sources.leases_of_quota(key):
            if not _owned_by(lease, uid):
                continue
            report = read_report(lease)
            if report is not None:
                out[report.ordinal] = report
        return out

    def _note_acks(self, state: QuotaState, reports: Mapping[int, GatewayReport]) -> None:
        now = self.monotonic()
        for ordinal, report in reports.items():
            state.ack_first_seen.setdefault((ordinal, report.planGeneration), now)

    async def _ensure_objects(
        self,
        quota: ExchangeConnectionQuota,
        plan: QuotaPlan,
        pool: ExchangeEgressPool,
        current_replicas: int,
    ) -> None:
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
        for ordinal in range(max(len(plan.pods), current_replicas)):
            if ordinal not in known:
                await self.api.create(builders.build_lease(quota, ordinal))

    def _lease_ordinals(self, key: str) -> list[int]:
        out = []
        for lease in self.sources.leases_of_quota(key):
            label = (lease["metadata"].get("labels") or {}).get(names.LABEL_ORDINAL)
            if label is not None and label.isdigit():
                out.append(int(label))
        return out

    async def _publish(
        self, quota: ExchangeConnectionQuota, qin: QuotaInput, state: QuotaState, plan: QuotaPlan
    ) -> int:
        """Write the ConfigMaps of pods whose plan content changed; returns how many."""
        changed = 0
        wanted = {p.ordinal: p for p in plan.pods}
        # Ordinals published before but absent from the step get an empty plan (scale-down).
        for ordinal in state.published:
            if ordinal not in wanted:
                wanted[ordinal] = planning.empty_pod_plan(qin, ordinal, plan.generation)
        for ordinal, pod in sorted(wanted.items()):
            old = state.published.get(ordinal)
            if old is not None and _same_content(old, pod):
                continue
            body = builders.build_plan_configmap(quota, pod)
            try:
                wrote = await self.api.apply(body, resource_version=state.plan_rv.get(ordinal))
            except KubeError:
                state.loaded = False  # re-read the published plans before trying again
                raise
            state.published[ordinal] = pod
            state.plan_rv.pop(ordinal, None)
            if wrote:
                changed += 1
        if changed:
            state.loaded = False  # pick up the new resourceVersions on the next reconcile
        return changed

    async def _scale(
        self,
        quota: ExchangeConnectionQuota,
        plan: QuotaPlan,
        pool: ExchangeEgressPool,
        state: QuotaState,
        reports: Mapping[int, GatewayReport],
        current: int,
        body: dict[str, Any],
    ) -> int:
        needed = max(
            plan.replicas, 1 + max((p.ordinal for p in plan.pods if p.connections), default=-1)
        )
        replicas = needed
        if needed < current:
            # Lower only past pods that acknowledged their empty plan (or run no gateway).
            replicas = current
            for ordinal in range(current - 1, needed - 1, -1):
                empty = state.published.get(ordinal)
                report = reports.get(ordinal)
                acked = (
                    empty is not None
                    and not empty.connections
                    and (report is not None and report.planGeneration >= empty.generation)
                )
                if not acked:
                    break
                replicas = ordinal
        addresses = _addresses_used(state, pool)
        sts = builders.build_statefulset(quota, replicas, addresses)
        if await self.api.apply(sts) and replicas != current:
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
        sts = builders.build_statefulset(quota, 0, _addresses_used(state, pool))
        if await self.api.apply(sts) and current:
            await self._event(body, state, "ScaledDown", "quota deleted: gateway replicas -> 0")

    async def _label_pods(self, key: str, state: QuotaState) -> None:
        ns, _ = key.split("/", 1)
        for pod in self.sources.pods_of_quota(key):
            name = pod["metadata"]["name"]
            ordinal_text = name.rsplit("-", 1)[-1]
            if not ordinal_text.isdigit():
                continue
            plan = state.published.get(int(ordinal_text))
            if plan is None:
                continue
            wanted = builders.pod_egress_label(plan)
            have = (pod["metadata"].get("labels") or {}).get(names.LABEL_EGRESS)
            if wanted and have != wanted:
                await self.api.merge_patch(
                    "Pod", ns, name, {"metadata": {"labels": {names.LABEL_EGRESS: wanted}}}
                )

    async def _write_status(
        self, body: dict[str, Any], state: QuotaState, obs: QuotaObservation
    ) -> None:
        live = body.get("status")
        desired = quota_status(live, obs, dt.datetime.now(dt.UTC))
        digest = status_hash(desired)
        if state.status_digest == digest or status_hash(live) == digest:
            state.status_digest = digest
            return
        ns, name = state.key.split("/", 1)
        await self.api.merge_patch(
            names.QUOTA_KIND, ns, name, {"status": desired}, subresource="status"
        )
        state.status_digest = digest

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
        last = state.events.get((reason, message))
        if last is not None and now - last < EVENT_REPEAT_S:
            return
        state.events[(reason, message)] = now
        await self.api.post_event(body, reason=reason, message=message, warning=warning)

    # --- deletion ----------------------------------------------------------------------------

    async def finalize(self, body: dict[str, Any]) -> float | None:
        """Seconds to wait before the quota's share may be released; None: release now.

        The StatefulSet is scaled to zero; the share is released only after no gateway pod of
        the quota exists and one rate window (plus the dead-connection timeout) has passed
        since the operator saw the last one go.
        """
        key = quota_key(body)
        pool = ((body.get("spec") or {}).get("egressPoolRef") or {}).get("name", "")
        state = self.quotas.setdefault(key, QuotaState(key))
        async with self.lock(pool):
            try:
                quota = ExchangeConnectionQuota.model_validate(_strip(body))
            except ValidationError:
                quota = None
            if quota is not None:
                sts = self.sources.statefulset_of_quota(key)
                current = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
                pool_body = self.sources.pools(pool)
                addresses: list[Any] = []
                if pool_body is not None:
                    pool_model = ExchangeEgressPool.model_validate(_strip(pool_body))
                    addresses = _addresses_used(state, pool_model)
                if sts is not None:
                    sts_body = builders.build_statefulset(quota, 0, addresses)
                    if await self.api.apply(sts_body) and current:
                        await self._event(body, state, "ScaledDown", "quota deleted: replicas -> 0")
            if self.sources.pods_of_quota(key):
                state.gone_since = None
                return 2.0
            now = self.monotonic()
            if state.gone_since is None:
                state.gone_since = now
            hold_s = self.config.windowMarginSeconds
            if quota is not None:
                try:
                    qin = planning.quota_input(quota)
                    hold_s += max(
                        planning.max_rate_window_s(qin), qin.profile.deadConnectionTimeoutSeconds
                    )
                except planning.QuotaProblem:
                    hold_s += 300.0
            left = state.gone_since + hold_s - now
            if left > 0:
                return left
            self.quotas.pop(key, None)
            return None


def _strip(body: Mapping[str, Any]) -> dict[str, Any]:
    """A custom-resource body as the API models read it (status and unknown metadata kept out)."""
    out = {k: v for k, v in dict(body).items() if k in ("apiVersion", "kind", "metadata", "spec")}
    return json.loads(json.dumps(out, default=str))


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == uid for r in refs)


def _admits(pool: ExchangeEgressPool, namespace: str) -> bool:
    return any(a.namespace in ("*", namespace) for a in pool.spec.allowedNamespaces)


def _same_content(a: PodPlan, b: PodPlan) -> bool:
    wa = a.to_wire()
    wb = b.to_wire()
    wa.pop("generation", None)
    wb.pop("generation", None)
    return wa == wb


def _addresses_used(state: QuotaState, pool: ExchangeEgressPool) -> list[Any]:
    used = {c.address for p in state.published.values() for c in p.connections}
    return [a for a in pool.spec.addresses if a.name in used]


__all__ = ["Quarantine", "QuotaState", "Reconciler", "Sources", "read_report"]
