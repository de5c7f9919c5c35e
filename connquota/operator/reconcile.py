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

Transitions use the planner's `next_publication` with every quota's ledger (what every pod
may still enforce), persisted in a ConfigMap per quota and written before the plans of a new
generation (see `connquota.operator.ledgers`). After a restart the ledgers' clocks are rebased
(every acknowledgement counts as just seen), which only makes transitions wait longer.
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

from connquota.api.plan import PodPlan, QuotaPlan, QuotaRef
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import REPORT_ANNOTATION, GatewayReport, Quarantine
from connquota.operator import builders, ledgers, metrics, names, planning, usage
from connquota.operator.crash import crash_point
from connquota.operator.kube import KubeApi, KubeError
from connquota.operator.planning import (
    DesiredStream,
    QuotaInput,
    QuotaLedger,
    budget_table,
    forgettable,
    rebase_clock,
    record_publication,
)
from connquota.operator.settings import OperatorConfig
from connquota.operator.status import (
    Problem,
    QuotaObservation,
    pool_status,
    quota_status,
    status_differs,
    status_hash,
)

log = logging.getLogger(__name__)

EVENT_REPEAT_S = 600.0
_NO_SHARE = planning.QuotaShares(quota="", domain="", admitted=False)
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
    ledger: QuotaLedger | None = None
    """What every pod may still enforce (persisted in the `<quota>-ledger` ConfigMap)."""
    ledger_loaded: bool = False
    ledger_rv: str | None = None
    ledger_dirty: bool = False
    gone_seen: dict[int, float] = field(default_factory=dict)
    """ordinal -> monotonic time the operator first saw the pod gone."""
    dead_connection_s: float = 0.0
    last_good: tuple[QuotaInput, list[DesiredStream]] | None = None
    target: QuotaPlan | None = None
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
        self._pool_status_digests: dict[str, str] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._secrets_seen: dict[tuple[str, str], float] = {}
        """(namespace, name) -> monotonic time a Secret was last seen to exist."""
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
        for timer in self._timers.values():
            timer.cancel()
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
                # Re-read what this pool's quotas own before writing it again; what is known
                # of every other pool's objects stays (no thundering re-read).
                self.api.forget_namespaces(
                    s.key.split("/", 1)[0] for s in self.quotas.values() if s.pool == pool
                )
                self._later(pool, delay)
                continue
            failures = 0
            metrics.RECONCILES.labels(result="ok").inc()
            metrics.RECONCILE_SECONDS.observe(self.monotonic() - started)
            self.note_progress()
            # Drift repair: every pool is looked at again within resyncIntervalSeconds even
            # when no event arrives (sooner when the reconcile asked for it).
            resync = self.config.resyncIntervalSeconds
            self._later(pool, resync if retry_after is None else min(retry_after, resync))

    def _later(self, pool: str, delay_s: float) -> None:
        """One pending timer per pool: a later request never delays an earlier one."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.05, delay_s)
        timer = self._timers.get(pool)
        if timer is not None and not timer.cancelled() and timer.when() <= due:
            return
        if timer is not None:
            timer.cancel()
        self._timers[pool] = loop.call_at(due, self._fire, pool)

    def _fire(self, pool: str) -> None:
        self._timers.pop(pool, None)
        self.request(pool)

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

        # 0. Every quota's published plans and ledger, with the acknowledgements seen now:
        # all ledgers of the pool must be current before any transition is computed.
        reports_of: dict[str, dict[int, GatewayReport]] = {}
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas.setdefault(key, QuotaState(key))
            state.pool = pool_name
            await self._load_published(body, state)
            reports_of[key] = self._reports(key, body)
            self._sync_ledger(state, pool, reports_of[key], deleting=_deleting(body))
            if quota is not None:
                await self._persist_ledger(quota, state)

        # 1. Planner inputs. A quota with a problem keeps its last good input so its share
        # stays counted; without one the whole pool is frozen this round (nothing published,
        # so nobody grows into a share its owner may want back). Deleted quotas get no share:
        # their ledgers keep counting what their pods may still enforce.
        inputs: dict[str, tuple[QuotaInput, list[DesiredStream]]] = {}
        problems: dict[str, Problem] = {}
        frozen = False
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas[key]
            if _deleting(body):
                continue
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
                elif any(p.connections for p in state.published.values()):
                    frozen = True

        retry: list[float] = []
        shares = None
        pool_problem: Problem | None = None
        if not frozen and inputs:
            try:
                shares = planning.divide(pool.spec, [i for i, _ in inputs.values()])
            except planning.QuotaProblem as exc:
                frozen = True
                pool_problem = exc.problem
                for key in inputs:
                    problems.setdefault(key, exc.problem)

        # Quarantines reported by any gateway of the pool, per limit domain.
        wall = self.wall()
        quarantines: dict[str, list[Quarantine]] = {}
        for key, reports in reports_of.items():
            domain = self._domain(key, inputs)
            for report in reports.values():
                for q in report.quarantines:
                    if q.until > wall and domain is not None:
                        quarantines.setdefault(domain, []).append(q)

        # 2. Per quota: target, next safe step, publish, scale, status.
        generations = {
            k: s.ledger.last_generation if s.ledger else 0 for k, s in self.quotas.items()
        }
        published_any = False
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas[key]
            domain = self._domain(key, inputs)
            try:
                wait = await self._reconcile_quota(
                    body,
                    quota,
                    pool,
                    state,
                    inputs.get(key),
                    shares,
                    problems.get(key),
                    frozen,
                    reports_of[key],
                    quarantines.get(domain or "", []),
                )
            except KubeError as exc:
                log.warning("quota %s: API error: %s", key, exc, extra={"quota": key})
                self.api.forget_namespaces([key.split("/", 1)[0]])
                raise
            if wait is not None:
                retry.append(wait)
            if state.ledger is not None and state.ledger.last_generation != generations.get(key, 0):
                published_any = True
        if published_any and retry:
            # A quota planned before another published its shrink in this same pass waits
            # on stale holds: look again at once rather than at its retry time.
            retry.append(self.config.reconcileDebounceSeconds)
        admitted = sum(
            1
            for body, _ in quotas
            if not _deleting(body)
            and (shares is None or (shares.quotas.get(quota_key(body)) or _NO_SHARE).admitted)
        )
        await self._write_pool_status(
            pool_body,
            pool_status(
                pool_body.get("status"),
                generation=int(pool_body["metadata"].get("generation") or 0),
                quotas=admitted,
                budgets=usage.pool_budgets(shares, pool.spec, reports_of),
                problem=pool_problem,
                reports={
                    i: r for i, r in enumerate(r for rs in reports_of.values() for r in rs.values())
                },
                now=dt.datetime.now(dt.UTC),
            ),
        )
        return min(retry) if retry else None

    async def _write_pool_status(self, pool_body: dict[str, Any], desired: dict[str, Any]) -> None:
        """Write the pool's status when its meaning changed (a digest per pool otherwise)."""
        name = pool_body["metadata"]["name"]
        digest = status_hash(desired)
        if self._pool_status_digests.get(name) == digest or not status_differs(
            pool_body.get("status"), desired
        ):
            self._pool_status_digests[name] = digest
            return
        await self.api.merge_patch(
            names.POOL_KIND, None, name, {"status": desired}, subresource="status"
        )
        self._pool_status_digests[name] = digest

    def _domain(
        self, key: str, inputs: Mapping[str, tuple[QuotaInput, list[DesiredStream]]]
    ) -> str | None:
        """The limit domain of a quota (from its input, else from its published plans)."""
        if key in inputs:
            return inputs[key][0].profile.domain
        state = self.quotas.get(key)
        for pod in state.published.values() if state else []:
            return pod.profile.domain
        return None

    def _pool_ledgers(self, pool: str) -> dict[str, QuotaLedger]:
        """The ledgers of every quota of `pool` the operator knows of."""
        return {
            k: s.ledger for k, s in self.quotas.items() if s.pool == pool and s.ledger is not None
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
        before = state.ledger
        ledger = before or QuotaLedger(quota=state.key)
        ledger = ledgers.reconcile_with_published(ledger, state.published_plan(), pool.spec)
        ledger = ledgers.record_reports(ledger, reports, state.published, pool.spec, now, margin)
        sts = self.sources.statefulset_of_quota(state.key)
        replicas = 0 if deleting else int(((sts or {}).get("spec") or {}).get("replicas") or 0)
        live = set()
        for pod in self.sources.pods_of_quota(state.key):
            ordinal_text = pod["metadata"]["name"].rsplit("-", 1)[-1]
            if ordinal_text.isdigit():
                live.add(int(ordinal_text))
        gone_now = ledgers.gone_ordinals(ledger, live, replicas)
        for ordinal in list(state.gone_seen):
            if ordinal not in gone_now:
                del state.gone_seen[ordinal]
        settled = []
        for ordinal in gone_now:
            seen = state.gone_seen.setdefault(ordinal, now)
            if now - seen >= state.dead_connection_s:
                settled.append(ordinal)
        ledger = ledgers.record_gone(ledger, settled, now, margin)
        if ledger is not before:
            state.ledger = ledger
            if before is None or ledgers.ledger_json(ledger) != ledgers.ledger_json(before):
                state.ledger_dirty = True

    async def _persist_ledger(self, quota: ExchangeConnectionQuota, state: QuotaState) -> None:
        """Write the ledger ConfigMap when the ledger changed (resourceVersion precondition)."""
        if not state.ledger_dirty or state.ledger is None:
            return
        ledger = ledgers.prune(state.ledger, self.monotonic())
        body = builders.build_ledger_configmap(quota, ledgers.ledger_json(ledger))
        ns, name = state.key.split("/", 1)
        cm_name = names.ledger_configmap_name(name)
        try:
            wrote = await self.api.apply(body, resource_version=state.ledger_rv)
        except KubeError:
            state.ledger_rv = None
            self.api.forget("ConfigMap", ns, cm_name)
            raise
        state.ledger_rv = self.api.resource_version("ConfigMap", ns, cm_name)
        state.ledger_dirty = False
        if wrote:
            crash_point("ledger")

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
        secrets = {c.secretRef.name for c in quota.spec.credentials}
        auth = quota.spec.gateway.consumerAuthSecretRef
        if auth:
            secrets.add(auth.name)
        missing = [s for s in sorted(secrets) if not await self._secret_exists(meta.namespace, s)]
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

    async def _secret_exists(self, namespace: str, name: str) -> bool:
        """Whether a Secret exists (metadata-only read). A Secret seen within the resync
        interval is not read again, so a pool reconcile with nothing changed makes no request
        per quota; a deleted Secret is noticed within that interval. Absence is never cached."""
        key = (namespace, name)
        now = self.monotonic()
        seen = self._secrets_seen.get(key)
        if seen is not None and now - seen < self.config.resyncIntervalSeconds:
            return True
        if await self.api.exists("Secret", namespace, name):
            self._secrets_seen[key] = now
            return True
        self._secrets_seen.pop(key, None)
        return False

    async def _has_published(self, body: dict[str, Any], state: QuotaState) -> bool:
        await self._load_published(body, state)
        return any(p.connections for p in state.published.values())

    async def _load_published(self, body: dict[str, Any], state: QuotaState) -> None:
        """Read the quota's plan ConfigMaps (and, once per operator start, its ledger)."""
        uid = body["metadata"].get("uid", "")
        if state.loaded and state.uid == uid:
            return
        if state.uid != uid:
            state.ledger = None
            state.ledger_loaded = False
            state.ledger_rv = None
            state.gone_seen.clear()
        ns, name = state.key.split("/", 1)
        state.published.clear()
        state.plan_rv.clear()
        selector = f"{names.LABEL_QUOTA}={name},{names.LABEL_COMPONENT} in (plan,ledger)"
        ledger_cm: dict[str, Any] | None = None
        for cm in await self.api.list("ConfigMap", ns, selector):
            if not _owned_by(cm, uid):
                continue
            data = cm.get("data") or {}
            if names.LEDGER_KEY in data:
                ledger_cm = cm
                continue
            try:
                pod = PodPlan.model_validate_json(data.get(names.PLAN_KEY, ""))
            except ValidationError:
                continue
            state.published[pod.ordinal] = pod
            state.plan_rv[pod.ordinal] = cm["metadata"]["resourceVersion"]
        if ledger_cm is not None:
            state.ledger_rv = ledger_cm["metadata"]["resourceVersion"]
        if not state.ledger_loaded:
            text = (ledger_cm.get("data") or {}).get(names.LEDGER_KEY) if ledger_cm else None
            ledger = ledgers.parse_ledger(text, state.key)
            if ledger is not None:
                # Monotonic times of a previous operator process mean nothing now: every
                # acknowledgement counts as just seen, every release a full window from now.
                ledger = rebase_clock(
                    ledger, round(self.monotonic(), 3), self.config.windowMarginSeconds
                )
            state.ledger = ledger
            state.ledger_loaded = True
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
        reports: dict[int, GatewayReport],
        quarantines: list[Quarantine],
    ) -> float | None:
        key = state.key
        deleting = _deleting(body)
        sts = self.sources.statefulset_of_quota(key)
        current_replicas = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
        ready = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
        waiting: str | None = None
        reached = True
        retry: float | None = None

        if quota is not None and prepared is not None and not frozen and not deleting:
            qin, streams = prepared
            state.dead_connection_s = qin.profile.deadConnectionTimeoutSeconds
            published = state.published_plan()
            plan: QuotaPlan | None = None
            try:
                own = shares.quotas.get(key) if shares is not None else None
                if own is None:
                    raise planning.QuotaProblem("ImpossibleQuota", f"no share computed for {key}")
                own = planning.quarantined(own, quarantines)
                target = planning.plan_target(qin, streams, pool.spec, own, published)
                state.target = target
                now = round(self.monotonic(), 3)
                step = planning.transition(
                    pool.spec,
                    budget_table(shares.budgets),
                    self._pool_ledgers(pool.metadata.name),
                    key,
                    published,
                    target,
                    now,
                )
                reached = step.reached_target
                if step.plan is not None:
                    plan = planning.complete(step.plan, state.published, qin)
                    if not _changes(state.published, plan):
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
                await self._label_pods(key, state)
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
        if plan_for_status is not None and state.target is not None:
            plan_for_status = plan_for_status.model_copy(
                update={
                    "unserved": state.target.unserved,
                    "recoveryBounds": state.target.recoveryBounds,
                }
            )
        addresses, accounts = usage.quota_scope_use(
            shares, key, pool.spec, plan_for_status, reports, quarantines
        )
        obs = QuotaObservation(
            generation=int(body["metadata"].get("generation") or 0),
            problem=problem,
            plan=plan_for_status,
            addresses=addresses,
            accounts=accounts,
            target_generation_reached=reached,
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
            until = min(q.until for q in quarantines) - self.wall() + 0.5
            retry = min(retry or until, until)
        return retry

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
        ledger = state.ledger or QuotaLedger(quota=state.key)
        state.ledger = record_publication(ledger, plan, pool.spec)
        state.ledger_dirty = True
        await self._persist_ledger(quota, state)
        sts = self.sources.statefulset_of_quota(state.key)
        current = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
        await self._ensure_objects(quota, plan, current)
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

    async def _ensure_objects(
        self,
        quota: ExchangeConnectionQuota,
        plan: QuotaPlan,
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
        wanted = {p.ordinal for p in plan.pods if p.connections} | set(range(current_replicas))
        for ordinal in sorted(wanted):
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
        self, quota: ExchangeConnectionQuota, state: QuotaState, plan: QuotaPlan
    ) -> int:
        """Write the ConfigMaps of pods whose plan content changed; returns how many."""
        changed = 0
        todo = [
            pod
            for pod in plan.pods
            if state.published.get(pod.ordinal) is None
            or not _same_content(state.published[pod.ordinal], pod)
        ]
        for pod in todo:
            body = builders.build_plan_configmap(quota, pod)
            try:
                wrote = await self.api.apply(body, resource_version=state.plan_rv.get(pod.ordinal))
            except KubeError:
                state.loaded = False  # re-read the published plans before trying again
                raise
            state.published[pod.ordinal] = pod
            # The write returned the new resourceVersion: keep it, so the next publish is
            # guarded by it without listing the quota's ConfigMaps again.
            meta = body["metadata"]
            rv = self.api.resource_version("ConfigMap", meta["namespace"], meta["name"])
            if rv:
                state.plan_rv[pod.ordinal] = rv
            else:
                state.plan_rv.pop(pod.ordinal, None)
            if wrote:
                changed += 1
                if len(todo) > 1 and changed == 1:
                    crash_point("plan")
        if changed:
            crash_point("plans")
        return changed

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
        used = [o for o, p in state.published.items() if p.connections]
        needed = max(qin.spec.gateway.minReplicas, 1 + max(used, default=-1))
        replicas = needed
        if needed < current:
            replicas = current
            for ordinal in range(current - 1, needed - 1, -1):
                empty = state.published.get(ordinal)
                report = reports.get(ordinal)
                acked = empty is None or (
                    not empty.connections
                    and report is not None
                    and report.planGeneration >= empty.generation
                )
                if not acked:
                    break
                replicas = ordinal
        addresses = _addresses_used(state, pool)
        sts = builders.build_statefulset(quota, replicas, addresses)
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
        # After a restart the live status is the only reference: compare what it means (the
        # API server reads 6.0 back as 6), so an unchanged quota is not rewritten.
        if state.status_digest == digest or not status_differs(live, desired):
            state.status_digest = digest
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
        state.status_digest = digest
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
        last = state.events.get((reason, message))
        if last is not None and now - last < EVENT_REPEAT_S:
            return
        state.events[(reason, message)] = now
        await self.api.post_event(body, reason=reason, message=message, warning=warning)

    # --- deletion ----------------------------------------------------------------------------

    async def finalize(self, body: dict[str, Any]) -> float | None:
        """Seconds to wait before the quota's share may be released; None: release now.

        The quota's ledger gets an empty generation (written, then published to the pods that
        still run), the StatefulSet is scaled to zero, and the finalizer goes only when the
        planner's `forgettable` says nothing of the quota counts any more: every pod
        acknowledged holding nothing (a pod that is gone counts once the dead-connection
        timeout passed since it went) and every released rate slice's window has passed.
        """
        key = quota_key(body)
        pool_name = ((body.get("spec") or {}).get("egressPoolRef") or {}).get("name", "")
        state = self.quotas.setdefault(key, QuotaState(key))
        state.pool = pool_name or state.pool
        async with self.lock(pool_name):
            try:
                quota = ExchangeConnectionQuota.model_validate(_strip(body))
            except ValidationError:
                quota = None
            pool_body = self.sources.pools(pool_name)
            pool = ExchangeEgressPool.model_validate(_strip(pool_body)) if pool_body else None
            await self._load_published(body, state)
            if quota is not None:
                if state.published:
                    state.dead_connection_s = next(
                        iter(state.published.values())
                    ).profile.deadConnectionTimeoutSeconds
                if pool is not None:
                    self._sync_ledger(state, pool, self._reports(key, body), deleting=True)
                    ledger = state.ledger
                    if ledger is not None and ledgers.holds_anything(ledger):
                        empty = ledgers.empty_plan(
                            QuotaRef(
                                namespace=body["metadata"]["namespace"],
                                name=quota.metadata.name or "",
                            ),
                            ledger,
                            state.published,
                            ledger.last_generation + 1,
                        )
                        state.ledger = record_publication(ledger, empty, pool.spec)
                        state.ledger_dirty = True
                    try:
                        await self._persist_ledger(quota, state)
                        if ledger is not state.ledger:
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
                current = int(((sts or {}).get("spec") or {}).get("replicas") or 0)
                if sts is not None:
                    addresses = _addresses_used(state, pool) if pool is not None else []
                    sts_body = builders.build_statefulset(quota, 0, addresses)
                    if await self.api.apply(sts_body) and current:
                        await self._event(body, state, "ScaledDown", "quota deleted: replicas -> 0")
            if self.sources.pods_of_quota(key):
                return 2.0
            now = self.monotonic()
            ledger = state.ledger
            if ledger is not None and not forgettable(ledger, now):
                untils = [r.until for r in ledger.releases if r.until > now]
                pending = [now + state.dead_connection_s - s for s in state.gone_seen.values()]
                left = max([*(u - now for u in untils), *pending, 0.0])
                return max(0.5, min(left + 0.1, 30.0))
            self.quotas.pop(key, None)
            return None


def _strip(body: Mapping[str, Any]) -> dict[str, Any]:
    """A custom-resource body as the API models read it (status and unknown metadata kept out)."""
    out = {k: v for k, v in dict(body).items() if k in ("apiVersion", "kind", "metadata", "spec")}
    return json.loads(json.dumps(out, default=str))


def state_empty_plan(state: QuotaState) -> QuotaPlan:
    """The empty generation just recorded in the state's ledger, as pod plans to publish."""
    assert state.ledger is not None
    generation = state.ledger.last_generation
    pods = [
        p.model_copy(
            update={"generation": generation, "connections": [], "slices": [], "spare": []}
        )
        for p in state.published.values()
    ]
    quota = pods[0].quota if pods else QuotaRef(namespace="-", name="-")
    return QuotaPlan(generation=generation, quota=quota, replicas=0, pods=pods)


def _deleting(body: Mapping[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def _changes(published: Mapping[int, PodPlan], plan: QuotaPlan) -> bool:
    """Whether publishing `plan` would change any pod's plan content."""
    for pod in plan.pods:
        old = published.get(pod.ordinal)
        if old is None or not _same_content(old, pod):
            return True
    return False


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
