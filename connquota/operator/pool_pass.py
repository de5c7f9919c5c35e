"""One pass over a pool: every quota's ledger and inputs, the pool's division of its budgets, each quota's reconcile, then the pool's status."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import GatewayReport, Quarantine
from connquota.operator import names, planning, status_metrics, usage
from connquota.operator.adaptive_budgets import AdaptivePass
from connquota.operator.kube import KubeError
from connquota.operator.planning import (
    DesiredStream,
    QuotaInput,
)
from connquota.operator.quota_pass import QuotaRound
from connquota.operator.reconcile_state import (
    NO_SHARE,
    QuotaState,
    is_deleting,
    quota_key,
    strip_status,
)
from connquota.operator.status import (
    Problem,
    pool_status,
    status_differs,
    status_hash,
)
from connquota.operator.status_writer import write_failure

log = logging.getLogger(__name__)


class PoolPass(AdaptivePass):
    """One pass over a pool (a part of `Reconciler`)."""

    async def reconcile_pool(self, pool_name: str) -> float | None:
        """Reconcile every quota of one pool; returns seconds until a re-run is needed, if any."""
        pool_body = self.sources.pools(pool_name)
        bodies = sorted(self.sources.quotas_of_pool(pool_name), key=quota_key)
        quotas: list[tuple[dict[str, Any], ExchangeConnectionQuota | None]] = []
        for body in bodies:
            try:
                quotas.append((body, ExchangeConnectionQuota.model_validate(strip_status(body))))
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
        pool = ExchangeEgressPool.model_validate(strip_status(pool_body))

        # 0. Every quota's published plans and ledger, with the acknowledgements seen now:
        # all ledgers of the pool must be current before any transition is computed.
        reports_of: dict[str, dict[int, GatewayReport]] = {}
        refused: dict[str, Problem] = {}
        """Quotas whose ledger the API server refused to store: they publish nothing this round
        (plans never go out before their ledger) and show why; the others go on."""
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas.setdefault(key, QuotaState(key))
            state.pool = pool_name
            await self._load_published(body, state)
            reports_of[key] = self._reports(key, body)
            self._sync_ledger(state, pool, reports_of[key], deleting=is_deleting(body))
            if quota is not None:
                try:
                    await self._persist_ledger(quota, state)
                except KubeError as exc:
                    failure = write_failure(exc)
                    if failure is None:
                        raise
                    self.api.forget_namespaces([key.split("/", 1)[0]])
                    refused[key] = Problem(*failure)

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
            if is_deleting(body):
                continue
            try:
                if quota is None:
                    raise planning.QuotaProblem("InvalidSpec", "the spec does not validate")
                prepared = await self._prepare(quota, pool)
                state.plans.last_good = prepared
                inputs[key] = prepared
            except planning.QuotaProblem as exc:
                problems[key] = exc.problem
                if state.plans.last_good is not None:
                    inputs[key] = state.plans.last_good
                elif any(p.connections for p in state.plans.published.values()):
                    frozen = True

        problems.update(refused)

        retry: list[float] = []
        if refused:
            retry.append(self.config.errorBackoffsSeconds[-1])
        shares = None
        pool_problem: Problem | None = None
        # Budgets the exchange throttled although the fleet kept inside them: lowered.
        adaptive, adaptive_wait = await self._adaptive_budgets(
            pool, pool_body, [i for i, _ in inputs.values()], reports_of,
            {k: self._domain(k, inputs) for k in reports_of},
        )  # fmt: skip
        if adaptive_wait is not None:
            retry.append(adaptive_wait)
        if not frozen and inputs:
            try:
                shares = planning.divide(pool.spec, [i for i, _ in inputs.values()], adaptive)
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

        # Proxy addresses whose proxy any gateway of the pool reports down: planned without.
        self.proxy_outages.observe(
            pool_name, (r for reports in reports_of.values() for r in reports.values()), wall
        )
        proxy_down = self.proxy_outages.down(pool_name, wall)
        node_down = self.node_outages.observe(
            pool_name, pool.spec.addresses, self.sources.lost_nodes(), wall
        )

        # 2. Per quota: target, next safe step, publish, scale, status.
        generations = {
            k: s.ledgers.ledger.last_generation if s.ledgers.ledger else 0
            for k, s in self.quotas.items()
        }
        published_any = False
        for body, quota in quotas:
            key = quota_key(body)
            state = self.quotas[key]
            domain = self._domain(key, inputs)
            try:
                wait = await self._reconcile_quota(
                    QuotaRound(
                        body=body,
                        quota=quota,
                        pool=pool,
                        state=state,
                        prepared=inputs.get(key),
                        shares=shares,
                        problem=problems.get(key),
                        frozen=frozen,
                        reports=reports_of[key],
                        quarantines=quarantines.get(domain or "", []),
                        proxy_down=proxy_down,
                        node_down=node_down,
                    )
                )
            except KubeError as exc:
                log.warning("quota %s: API error: %s", key, exc, extra={"quota": key})
                self.api.forget_namespaces([key.split("/", 1)[0]])
                # A refused write (403, a webhook, a ResourceQuota) is shown on the quota, with
                # the API server's reason, and as an Event: never only in the operator's log.
                await self._report_write_failure(body, state, exc)
                raise
            if wait is not None:
                retry.append(wait)
            if (
                state.ledgers.ledger is not None
                and state.ledgers.ledger.last_generation != generations.get(key, 0)
            ):
                published_any = True
        if published_any and retry:
            # A quota planned before another published its shrink in this same pass waits
            # on stale holds: look again at once rather than at its retry time.
            retry.append(self.config.reconcileDebounceSeconds)
        admitted = sum(
            1
            for body, _ in quotas
            if not is_deleting(body)
            and (shares is None or (shares.quotas.get(quota_key(body)) or NO_SHARE).admitted)
        )
        await self._write_pool_status(
            pool_body,
            pool_status(
                pool_body.get("status"),
                generation=int(pool_body["metadata"].get("generation") or 0),
                quotas=admitted,
                budgets=usage.pool_budgets(shares, pool.spec, reports_of),
                problem=pool_problem,
                adaptive=self._adaptive_status(pool, shares, adaptive),
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
        status_metrics.record_pool(name, desired)
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
        for pod in state.plans.published.values() if state else []:
            return pod.profile.domain
        return None
