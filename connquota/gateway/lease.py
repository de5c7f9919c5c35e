"""The ordinal's fence: no attempt before the gateway holds it, and where its report goes.

Standalone: an exclusive `fcntl.flock` on `<state-dir>/gateway-<ordinal>.lock` plays the
Lease. A second process for the same ordinal waits for the lock before any attempt (the
kernel drops the lock when the holder dies, even on SIGKILL). The report is written as JSON
next to it (`gateway-<ordinal>.report.json`, atomically).

In cluster: the coordination.k8s.io Lease `<quota>-gw-<ordinal>` (created by the operator).
The gateway takes it only when it is free, already its own, or its holder stopped renewing it
for a whole `leaseDurationSeconds` (observed on this process's monotonic clock, so clock skew
between nodes does not matter). It renews every duration/3. A failed renewal stops new
attempts at once; `close_after_s` (default: one duration) after the last successful renewal
was sent, it closes its upstream connections, because from then on a successor may hold the
Lease. The report rides on the Lease as the `connquota.io/report` annotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from connquota.api.lease_record import ATTEMPTS_ANNOTATION, AttemptReservations
from connquota.api.report import REPORT_ANNOTATION
from connquota.gateway.reservations import Inheritance, inheritance_from_lease

log = logging.getLogger(__name__)


class FileLease:
    """The standalone fence: an exclusive flock held for the life of the process."""

    def __init__(self, state_dir: Path, ordinal: int, poll_s: float = 0.1) -> None:
        self.lock_path = state_dir / f"gateway-{ordinal}.lock"
        self.report_path = state_dir / f"gateway-{ordinal}.report.json"
        self.poll_s = poll_s
        self.held = False
        self._fd: int | None = None
        self.taken: Inheritance | None = None
        """Standalone: nothing handed down (the state dir's attempt log is the record)."""

    async def acquire(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait (polling, never blocking the loop) until this process holds the lock."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.warning("another process holds %s; waiting for it", self.lock_path)
                    if on_wait is not None:
                        on_wait(f"waiting for the lock {self.lock_path.name}")
                    told = True
                await asyncio.sleep(self.poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        self.held = True
        log.info("holding %s", self.lock_path)

    async def keep(
        self,
        on_lost: Callable[[], None],
        on_close: Callable[[], Awaitable[None]],
        on_regained: Callable[[], None] | None = None,
    ) -> None:
        """A flock cannot be lost while the process lives: nothing to renew."""
        await asyncio.Event().wait()

    async def publish(self, report_json: str) -> None:
        """Write the report next to the lock, atomically."""

        def write() -> None:
            tmp = self.report_path.with_name(f".{self.report_path.name}.tmp")
            tmp.write_text(report_json)
            os.replace(tmp, self.report_path)

        await asyncio.to_thread(write)

    async def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process dies)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None
            self.held = False


def _now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseTaken(Exception):
    """The Lease names another holder."""


class KubeLease:
    """The in-cluster fence: the ordinal's coordination.k8s.io Lease (sync client in threads).

    Timing, with D = `duration_s` (see docs/gateway.md, "The fence and the report"):

    - renewals every D/3, each API call bounded by `request_timeout_s` (at most D/3);
    - a renewal counts from the moment its request was *sent*: a successor can observe that
      version no earlier, so it cannot take the Lease before `sent + D`;
    - a renewal that fails stops new attempts at once (a later success resumes them);
    - `close_after_s` (default D) after the last successful renewal was sent, the upstream
      connections are closed, whether or not the failing call has returned;
    - a Lease found naming another holder means: stop and close at once.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        holder: str,
        duration_s: int = 15,
        close_after_s: float | None = None,
    ) -> None:
        from kubernetes import client

        from connquota.gateway.podroot import load_cluster_config

        load_cluster_config()
        self.api = client.CoordinationV1Api()
        self.namespace = namespace
        self.name = name
        # Unique per process: a replacement pod (or container) may have the same name and PID
        # (PID 1 in a container) and must still wait for its predecessor's Lease to expire.
        self.holder = f"{holder}/{secrets.token_hex(4)}"
        self.duration_s = duration_s
        self.renew_every_s = duration_s / 3
        self.close_after_s = close_after_s if close_after_s is not None else float(duration_s)
        self.request_timeout_s = min(5.0, self.renew_every_s)
        self.poll_s = min(1.0, self.renew_every_s)
        self.held = False
        self.last_renew_mono = 0.0
        """Monotonic time the last successful renewal (or take) was sent."""
        self._report: str | None = None
        self._published: str | None = None
        self._record: str | None = None
        """The write-ahead attempt reservations to write (None: leave the Lease's as it is)."""
        self._write_lock = asyncio.Lock()
        self.taken: Inheritance | None = None
        """What the version this process replaced when it took the Lease hands down."""
        self.writes: Counter[str] = Counter()
        """Lease writes by reason (take, renew, report, reserve), for the metrics and bench."""

    # -- API calls (in threads, bounded) ------------------------------------------------------

    async def _call(
        self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = None
    ) -> Any:
        budget = timeout_s if timeout_s is not None else self.request_timeout_s
        budget = max(0.05, budget)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
        async with asyncio.timeout(budget + 0.05):
            return await asyncio.to_thread(fn, *args, _request_timeout=budget)

    async def _read(self, timeout_s: float | None = None) -> Any:
        return await self._call(
            self.api.read_namespaced_lease, self.name, self.namespace, timeout_s=timeout_s
        )

    async def _write(self, lease: Any, timeout_s: float | None = None) -> None:
        """Replace `lease` (optimistic concurrency: a 409 when it changed since it was read) as
        held by this process, renewed now, with the latest report."""
        spec = lease.spec
        now = _now_micro()
        if spec.holder_identity != self.holder:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity = self.holder
        spec.lease_duration_seconds = self.duration_s
        spec.renew_time = now
        report = self._report
        record = self._record
        if report is not None or record is not None:
            annotations = dict(lease.metadata.annotations or {})
            if report is not None:
                annotations[REPORT_ANNOTATION] = report
            if record is not None:
                annotations[ATTEMPTS_ANNOTATION] = record
            lease.metadata.annotations = annotations
        await self._call(
            self.api.replace_namespaced_lease, self.name, self.namespace, lease, timeout_s=timeout_s
        )
        self._published = report

    async def _renew(
        self, timeout_s: float | None = None, report_only: bool = False, reason: str = "renew"
    ) -> None:
        """Read the Lease and write it as ours; LeaseTaken when it names another holder.

        On success `last_renew_mono` becomes the time the read was sent. A conflict (someone
        wrote the Lease in between) is retried once with a fresh read. `report_only`: nothing
        to do when the latest report is already on the Lease (a renewal carried it).
        """
        from kubernetes.client.exceptions import ApiException

        for attempt in range(2):
            sent = time.monotonic()
            async with self._write_lock:
                if report_only and self._published == self._report:
                    return
                lease = await self._read(timeout_s)
                if lease.spec.holder_identity != self.holder:
                    raise LeaseTaken(lease.spec.holder_identity or "nobody")
                try:
                    await self._write(lease, timeout_s)
                except ApiException as exc:
                    if exc.status == 409 and attempt == 0:
                        continue
                    raise
                self.writes[reason] += 1
            self.last_renew_mono = max(self.last_renew_mono, sent)
            return

    # -- the fence ----------------------------------------------------------------------------

    async def acquire(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until the Lease is free or its holder let it expire, then take it.

        Expiry is judged on this process's monotonic clock: the Lease must not have changed
        (same resourceVersion) for its whole `leaseDurationSeconds` since this process first
        saw that version.
        """
        seen_version: str | None = None
        seen_since = time.monotonic()
        while True:
            try:
                sent = time.monotonic()
                async with self._write_lock:
                    lease = await self._read()
                    spec = lease.spec
                    version = lease.metadata.resource_version
                    if version != seen_version:
                        seen_version, seen_since = version, time.monotonic()
                    holder = spec.holder_identity
                    duration = spec.lease_duration_seconds or self.duration_s
                    expired = time.monotonic() - seen_since > duration
                    if not holder or holder == self.holder or expired:
                        never_held = (
                            not holder and spec.acquire_time is None and not spec.lease_transitions
                        )
                        taken = inheritance_from_lease(
                            dict(lease.metadata.annotations or {}),
                            holder,
                            never_held,
                            time.time(),
                        )
                        # The take carries the record forward under this holder's name, so a
                        # successor of this process inherits it even before its first batch.
                        self._record = AttemptReservations(
                            holder=self.holder,
                            blindFrom=taken.blind_from,
                            reservations=list(taken.reservations),
                        ).model_dump_json(exclude_none=True)
                        await self._write(lease)
                        self.writes["take"] += 1
                        self.taken = taken
                        self.held = True
                        self.last_renew_mono = sent
                        log.info(
                            "holding Lease %s/%s as %s (was: %s)",
                            self.namespace,
                            self.name,
                            self.holder,
                            holder or "free",
                        )
                        return
                if on_wait is not None:
                    on_wait(f"Lease held by {holder}; waiting for it to expire")
            except Exception as exc:  # conflict or API away: retry
                log.warning("Lease %s: %s", self.name, _why(exc))
            await asyncio.sleep(self.poll_s)

    async def keep(
        self,
        on_lost: Callable[[], None],
        on_close: Callable[[], Awaitable[None]],
        on_regained: Callable[[], None] | None = None,
    ) -> None:
        """Renew every D/3 until the fence is lost, then close and return.

        A failed renewal calls `on_lost` (stop new attempts) at once; a later successful one
        `on_regained`. `close_after_s` after the last successful renewal was sent, `on_close`
        (close the upstream connections) runs and this returns, so the caller takes the Lease
        anew. A Lease naming another holder means `on_lost`, `on_close` and return at once.
        """
        failures = 0
        while True:
            close_at = self.last_renew_mono + self.close_after_s
            if failures:
                next_at = time.monotonic() + min(self.poll_s, self.renew_every_s)
            else:
                next_at = self.last_renew_mono + self.renew_every_s
            await asyncio.sleep(max(0.0, min(next_at, close_at) - time.monotonic()))
            now = time.monotonic()
            close_at = self.last_renew_mono + self.close_after_s
            if now >= close_at:
                await self._close(on_lost, on_close, "not renewed in time")
                return
            if not failures and now < self.last_renew_mono + self.renew_every_s:
                continue  # a report write renewed the Lease meanwhile
            try:
                await self._renew(min(self.request_timeout_s, close_at - time.monotonic()))
            except LeaseTaken as taken:
                log.error("Lease %s taken by %s", self.name, taken)
                await self._close(on_lost, on_close, f"taken by {taken}")
                return
            except Exception as exc:
                failures += 1
                silent_s = time.monotonic() - self.last_renew_mono
                log.warning(
                    "cannot renew Lease %s (%s) for %.1fs: new attempts stopped; connections "
                    "close %.1fs after the last renewal",
                    self.name,
                    _why(exc),
                    silent_s,
                    self.close_after_s,
                )
                if self.held:
                    self.held = False
                    on_lost()
                continue
            failures = 0
            if not self.held:
                log.info("Lease %s renewed again: attempts resume", self.name)
                self.held = True
                if on_regained is not None:
                    on_regained()

    async def _close(
        self, on_lost: Callable[[], None], on_close: Callable[[], Awaitable[None]], why: str
    ) -> None:
        log.error("Lease %s lost (%s): closing the upstream connections", self.name, why)
        self.held = False
        on_lost()
        await on_close()

    async def publish(self, report_json: str) -> None:
        """Carry the report on the Lease (written now when held, else with the next take)."""
        self._report = report_json
        if self.held and self._published != report_json:
            with contextlib.suppress(Exception):
                await self._renew(report_only=True, reason="report")

    async def write_record(self, record_json: str) -> None:
        """Write the attempt reservations to the Lease now (write-ahead: before any attempt
        they cover); raises when the Lease is not held or the write fails."""
        if not self.held:
            raise LeaseTaken("not held")
        previous = self._record
        self._record = record_json
        try:
            await self._renew(reason="reserve")
        except BaseException:
            self._record = previous
            raise

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a successor need not wait."""
        if not self.held:
            return
        self.held = False
        with contextlib.suppress(Exception):
            async with self._write_lock:
                lease = await self._read()
                if lease.spec.holder_identity == self.holder:
                    lease.spec.holder_identity = None
                    lease.spec.renew_time = None
                    await self._call(
                        self.api.replace_namespaced_lease, self.name, self.namespace, lease
                    )


def _why(exc: BaseException) -> str:
    """A short reason for a failed API call (status code for API errors), never a secret."""
    status = getattr(exc, "status", None)
    if status:
        return f"{type(exc).__name__} {status} {getattr(exc, 'reason', '')}".strip()
    return type(exc).__name__
