"""The state every part of the reconciler shares: the API door, settings, sources, clocks and
what it remembers of each quota. The parts (one module each) extend this class."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from connquota.operator.kube import KubeApi
from connquota.operator.reconcile_state import QuotaState, Sources
from connquota.operator.settings import OperatorConfig


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
        self.last_progress = monotonic()
