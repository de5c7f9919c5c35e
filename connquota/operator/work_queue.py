"""Scheduling: one worker task per pool, coalesced requests, retries and the drift resync."""

from __future__ import annotations

import asyncio
import logging

from connquota.operator import metrics
from connquota.operator.reconcile_base import ReconcilerBase

log = logging.getLogger(__name__)


class WorkQueue(ReconcilerBase):
    """Scheduling (a part of `Reconciler`)."""

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
