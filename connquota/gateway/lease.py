"""The ordinal's fence: no attempt before the gateway holds it, and where its report goes.

Standalone: an exclusive `fcntl.flock` on `<state-dir>/gateway-<ordinal>.lock` plays the
Lease. A second process for the same ordinal waits for the lock before any attempt (the
kernel drops the lock when the holder dies, even on SIGKILL). The report is written as JSON
next to it (`gateway-<ordinal>.report.json`, atomically).

In cluster: the coordination.k8s.io Lease `<quota>-gw-<ordinal>` (created by the operator).
The gateway takes it only when it is free or its holder stopped renewing it for a whole
`leaseDurationSeconds` (observed on this process's monotonic clock, so clock skew between
nodes does not matter). It renews every duration/3. When it cannot renew for a whole
duration it stops new attempts; after `close_after_s` (default 2 x duration) without a
renewal it closes its upstream connections, because a successor may then take over. The
report rides on the Lease as the `connquota.io/report` annotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from connquota.api.report import REPORT_ANNOTATION

log = logging.getLogger(__name__)


class FileLease:
    """The standalone fence: an exclusive flock held for the life of the process."""

    def __init__(self, state_dir: Path, ordinal: int, poll_s: float = 0.1) -> None:
        self.lock_path = state_dir / f"gateway-{ordinal}.lock"
        self.report_path = state_dir / f"gateway-{ordinal}.report.json"
        self.poll_s = poll_s
        self.held = False
        self._fd: int | None = None

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


class KubeLease:
    """The in-cluster fence: the ordinal's coordination.k8s.io Lease (sync client in threads)."""

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
        self.holder = holder
        self.duration_s = duration_s
        self.close_after_s = close_after_s if close_after_s is not None else 2.0 * duration_s
        self.held = False
        self.last_renew_mono = 0.0
        self._report: str | None = None
        self._published: str | None = None

    def _read(self) -> Any:
        return self.api.read_namespaced_lease(self.name, self.namespace)

    def _take(self, lease: Any) -> None:
        spec = lease.spec
        now = _now_micro()
        if spec.holder_identity != self.holder:
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
            spec.acquire_time = now
        spec.holder_identity = self.holder
        spec.lease_duration_seconds = self.duration_s
        spec.renew_time = now
        if self._report is not None:
            annotations = dict(lease.metadata.annotations or {})
            annotations[REPORT_ANNOTATION] = self._report
            lease.metadata.annotations = annotations
        self.api.replace_namespaced_lease(self.name, self.namespace, lease)
        self._published = self._report

    async def acquire(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait until the Lease is free or its holder let it expire, then take it."""
        seen_version: str | None = None
        seen_since = time.monotonic()
        while True:
            try:
                lease = await asyncio.to_thread(self._read)
                spec = lease.spec
                version = lease.metadata.resource_version
                if version != seen_version:
                    seen_version, seen_since = version, time.monotonic()
                holder = spec.holder_identity
                duration = spec.lease_duration_seconds or self.duration_s
                expired = time.monotonic() - seen_since > duration
                if not holder or holder == self.holder or expired:
                    await asyncio.to_thread(self._take, lease)
                    self.held = True
                    self.last_renew_mono = time.monotonic()
                    log.info("holding Lease %s/%s", self.namespace, self.name)
                    return
                if on_wait is not None:
                    on_wait(f"Lease held by {holder}; waiting for it to expire")
            except Exception as exc:  # conflict or API away: retry
                log.warning("Lease %s: %s", self.name, type(exc).__name__)
            await asyncio.sleep(1.0)

    async def keep(
        self,
        on_lost: Callable[[], None],
        on_close: Callable[[], Awaitable[None]],
        on_regained: Callable[[], None] | None = None,
    ) -> None:
        """Renew every duration/3. After a duration without a renewal: `on_lost` (stop new
        attempts); renewed again in time: `on_regained`; after `close_after_s`: `on_close`
        (close connections) and return, so the caller takes the Lease anew. Also returns when
        another holder has taken the Lease."""
        while True:
            await asyncio.sleep(self.duration_s / 3)
            try:
                lease = await asyncio.to_thread(self._read)
                if lease.spec.holder_identity != self.holder:
                    log.error("Lease %s taken by %s", self.name, lease.spec.holder_identity)
                    self.held = False
                    on_lost()
                    await on_close()
                    return
                await asyncio.to_thread(self._take, lease)
                self.last_renew_mono = time.monotonic()
                if not self.held:
                    log.info("Lease renewed again")
                    self.held = True
                    if on_regained is not None:
                        on_regained()
            except Exception as exc:
                silent_s = time.monotonic() - self.last_renew_mono
                log.warning(
                    "cannot renew Lease %s (%s) for %.0fs", self.name, type(exc).__name__, silent_s
                )
                if silent_s > self.duration_s and self.held:
                    self.held = False
                    on_lost()
                if silent_s > self.close_after_s:
                    await on_close()
                    return

    async def publish(self, report_json: str) -> None:
        """Carry the report on the Lease (written with the next renewal, or now)."""
        self._report = report_json
        if self.held and self._published != report_json:
            with contextlib.suppress(Exception):
                lease = await asyncio.to_thread(self._read)
                if lease.spec.holder_identity == self.holder:
                    await asyncio.to_thread(self._take, lease)

    async def release(self) -> None:
        """Give the Lease up on a clean shutdown so a successor need not wait."""
        if not self.held:
            return
        with contextlib.suppress(Exception):
            lease = await asyncio.to_thread(self._read)
            if lease.spec.holder_identity == self.holder:
                lease.spec.holder_identity = None
                lease.spec.renew_time = None
                await asyncio.to_thread(
                    self.api.replace_namespaced_lease, self.name, self.namespace, lease
                )
        self.held = False
