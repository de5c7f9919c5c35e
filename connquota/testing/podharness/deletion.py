"""Stopping a container and deleting its Pod: SIGTERM, grace period, SIGKILL of the process
group, then the final delete (grace 0, UID precondition).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.state import RunnerState


class Deletion(RunnerState):
    """Signals, grace periods and the final delete of one Pod."""

    def _signal(self, sig: signal.Signals, group: bool) -> None:
        popen = self.popen
        if popen is None or popen.poll() is not None:
            return
        if self.record is not None:
            self.record.signals.append((sig.name, time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(popen.pid, sig)
            else:
                popen.send_signal(sig)

    def _terminate(self, grace_s: float) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL the process group; wait for exit."""
        popen = self.popen
        if popen is None:
            return
        if popen.poll() is None:
            self._signal(signal.SIGTERM, group=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(grace_s, 0.0))
        if popen.poll() is None:
            self._signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=30)
        self._on_exit_final(popen)

    def _on_exit_final(self, popen: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        if self.record is not None and self.record.exited_at is None:
            self.record.exited_at = time.monotonic()
            self.record.returncode = popen.returncode
        self.popen = None
        self.process_exited.set()

    def _kill_now(self) -> None:
        if self.popen is not None:
            self._terminate(min(self.harness.stop_grace_s, self._grace(self._pod)))

    def _grace(self, pod: Mapping[str, Any]) -> float:
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None or grace == 0:
            grace = pod["spec"].get("terminationGracePeriodSeconds")
        return float(30 if grace is None else grace)

    def _finish_deletion(self, pod: dict[str, Any], gone: bool) -> None:
        self._terminate(self._grace(pod))
        if gone:
            return
        with contextlib.suppress(ApiException):
            self.harness.core.delete_namespaced_pod(
                self.name,
                self.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=self.uid)
                ),
            )
