"""The state every part of the reconciler shares: the API door, settings, sources, clocks and
what it remembers of each quota. The parts (one module each) extend this class."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from connquota.operator.kube import KubeApi
from connquota.operator.node_loss import LeaseSighting, NodeOutages
from connquota.operator.proxy_outages import ProxyOutages
from connquota.operator.reconcile_state import QuotaState, Sources
from connquota.operator.settings import OperatorConfig

if TYPE_CHECKING:
    from connquota.api.plan import QuotaPlan
    from connquota.api.pool import ExchangeEgressPool
    from connquota.api.quota import ExchangeConnectionQuota
    from connquota.api.report import GatewayReport
    from connquota.operator.kube import KubeError
    from connquota.operator.planning import DesiredStream, QuotaInput, QuotaLedger
    from connquota.operator.quota_pass import QuotaRound
    from connquota.operator.status import Problem, QuotaObservation


class ReconcilerBase:
    """The reconciler's shared state; see `connquota.operator.reconcile.Reconciler`."""

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
        self.proxy_outages = ProxyOutages()
        """Proxy addresses planned without while their proxy is down."""
        self.node_outages = NodeOutages()
        """Bind addresses planned without while their node is lost."""
        self.lease_sightings: dict[tuple[str, int], LeaseSighting] = {}
        """(quota, ordinal) -> its gateway Lease's version and when it was first seen."""
        self.last_progress = monotonic()

    if TYPE_CHECKING:
        # The parts call one another through `self`; their signatures, for the type checker.
        def lock(self, pool: str) -> asyncio.Lock: ...

        async def reconcile_pool(self, pool_name: str) -> float | None: ...

        def _pool_ledgers(self, pool: str) -> dict[str, QuotaLedger]: ...

        def _sync_ledger(
            self,
            state: QuotaState,
            pool: ExchangeEgressPool,
            reports: Mapping[int, GatewayReport],
            *,
            deleting: bool = False,
        ) -> None: ...

        async def _persist_ledger(
            self, quota: ExchangeConnectionQuota, state: QuotaState
        ) -> None: ...

        async def _load_published(self, body: dict[str, Any], state: QuotaState) -> None: ...

        async def _prepare(
            self, quota: ExchangeConnectionQuota, pool: ExchangeEgressPool
        ) -> tuple[QuotaInput, list[DesiredStream]]: ...

        async def _reconcile_quota(self, round_: QuotaRound) -> float | None: ...

        def _reports(self, key: str, body: dict[str, Any]) -> dict[int, GatewayReport]: ...

        async def _publish_generation(
            self,
            quota: ExchangeConnectionQuota,
            qin: QuotaInput,
            state: QuotaState,
            pool: ExchangeEgressPool,
            plan: QuotaPlan,
            body: dict[str, Any],
        ) -> None: ...

        async def _publish(
            self, quota: ExchangeConnectionQuota, state: QuotaState, plan: QuotaPlan
        ) -> int: ...

        async def _scale(
            self,
            quota: ExchangeConnectionQuota,
            qin: QuotaInput,
            pool: ExchangeEgressPool,
            state: QuotaState,
            reports: Mapping[int, GatewayReport],
            current: int,
            body: dict[str, Any],
        ) -> int: ...

        async def _scale_to_zero(
            self,
            quota: ExchangeConnectionQuota,
            pool: ExchangeEgressPool,
            state: QuotaState,
            current: int,
            body: dict[str, Any],
        ) -> None: ...

        async def _label_pods(
            self,
            key: str,
            state: QuotaState,
            reports: Mapping[int, GatewayReport],
            body: dict[str, Any],
        ) -> None: ...

        async def _restore_deleted(
            self, quota: ExchangeConnectionQuota, state: QuotaState, current_replicas: int
        ) -> None: ...

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
        ) -> tuple[dict[str, Any], bool]: ...

        async def _write_status(
            self, body: dict[str, Any], state: QuotaState, obs: QuotaObservation
        ) -> None: ...

        async def _report_write_failure(
            self, body: dict[str, Any], state: QuotaState, exc: KubeError
        ) -> None: ...

        async def _report_problem(self, body: dict[str, Any], problem: Problem) -> None: ...

        async def _release_for_eviction(self, state: QuotaState, uid: str) -> None: ...

        async def _lost_pods(self, body: dict[str, Any], state: QuotaState) -> float | None: ...

        async def _event(
            self,
            body: dict[str, Any],
            state: QuotaState,
            reason: str,
            message: str,
            *,
            warning: bool = False,
        ) -> None: ...
