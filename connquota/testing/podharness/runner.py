"""One Pod's thread: wait for a predecessor, start the container, restart it per
``restartPolicy`` with backoff or on failed liveness, refresh volumes, run probes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import (
    ALL_KINDS,
    CONTAINER_LOG,
    DATA_KINDS,
    TOKEN_KINDS,
    PodConfigError,
    ProcessRecord,
    kube_time,
    utc_now,
)
from connquota.testing.podharness.deletion import Deletion
from connquota.testing.podharness.environment import expand_vars
from connquota.testing.podharness.probes import ProbeState, probe_once
from connquota.testing.podharness.status import StatusReporter
from connquota.testing.podharness.volumes import VolumeWriter

if TYPE_CHECKING:
    from connquota.testing.podharness.harness import PodHarness

log = logging.getLogger(__name__)


class PodRunner(VolumeWriter, Deletion, StatusReporter):
    """Runs one Pod (one UID) from binding to final deletion, in its own thread."""

    def __init__(self, harness: PodHarness, pod: dict[str, Any]) -> None:
        super().__init__(harness, pod)
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    def _main(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("harness: runner for %s/%s failed", self.namespace, self.name)
            self._kill_now()
        finally:
            self.harness._release_ip(self.pod_ip)
            with contextlib.suppress(OSError):  # keep the log of a Pod that is gone
                kept = self.harness.work_dir / "logs" / f"{self.root.name}.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / CONTAINER_LOG, kept)
            shutil.rmtree(self.root, ignore_errors=True)
            self.finished.set()
            self.harness._runner_finished(self)

    def _run(self) -> None:
        h = self.harness
        # A successor waits until every predecessor with the same name has exited.
        while not h._stopping.is_set():
            pred = h._predecessor(self)
            if pred is None:
                break
            pred.finished.wait(0.2)
            pod, gone = self.snapshot()
            if gone or pod["metadata"].get("deletionTimestamp"):
                self._finish_deletion(pod, gone)
                return
        self.pod_ip = h._allocate_ip()
        self.root.mkdir(parents=True, exist_ok=True)
        was_lost = False
        while not h._stopping.is_set():
            if h.node_lost(self.node):
                # A lost node's kubelet does nothing (the process keeps running, untouched).
                was_lost = True
                self.wake.wait(h.tick_s)
                self.wake.clear()
                continue
            pod, gone = self.snapshot()
            if gone or pod["metadata"].get("deletionTimestamp"):
                if gone and was_lost and self.record is not None and self.popen is not None:
                    self.record.orphan_killed_at = time.monotonic()
                    log.info("harness: %s/%s: orphan killed", self.namespace, self.name)
                self._finish_deletion(pod, gone)
                return
            now = time.monotonic()
            self._tick(pod, now)
            self._report_status(pod)
            self.wake.wait(h.tick_s)
            self.wake.clear()
        self._kill_now()

    def _tick(self, pod: dict[str, Any], now: float) -> None:
        popen = self.popen
        if popen is not None and popen.poll() is not None:
            self._on_exit(popen.returncode)
        if self.popen is None and now >= self.next_start_at and self._may_start():
            try:
                self._start_process(pod)
                self.config_error = ""
            except (PodConfigError, ApiException, OSError) as err:
                # A missing Secret, a command that does not exist...: retry, as the kubelet does.
                reason = (
                    "CreateContainerConfigError"
                    if isinstance(err, PodConfigError)
                    else "RunContainerError"
                )
                self.config_error = str(err)
                self.state = {"waiting": {"reason": reason, "message": str(err)[:500]}}
                self.next_start_at = now + 1.0
        if self.popen is not None:
            if self.token_refresh_at is not None and now >= self.token_refresh_at:
                with contextlib.suppress(PodConfigError, ApiException, OSError):
                    self._write_volumes(pod, TOKEN_KINDS)
            refresh_s = self.harness.volume_refresh_s
            if refresh_s is not None and now >= self.volumes_refresh_at:
                self.volumes_refresh_at = now + refresh_s
                with contextlib.suppress(PodConfigError, ApiException, OSError):
                    self._write_volumes(pod, DATA_KINDS)
            if self.readiness is not None:
                self.readiness.run(now, self._probe)
            if (
                self.liveness is not None
                and self.liveness.run(now, self._probe)
                and not self.liveness.result
            ):
                self._restart_unhealthy(pod)

    def _restart_unhealthy(self, pod: dict[str, Any]) -> None:
        """Liveness failed: stop the container (SIGTERM, grace, SIGKILL) and restart it."""
        popen = self.popen
        assert popen is not None and self.liveness is not None
        grace = self.liveness.spec.get("terminationGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        log.info("harness: %s/%s failed its liveness probe", self.namespace, self.name)
        self._signal(signal.SIGTERM, group=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=float(grace))
        if popen.poll() is None:
            self._signal(signal.SIGKILL, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=30)
        self._on_exit(popen.returncode if popen.returncode is not None else -9)

    def _may_start(self) -> bool:
        if self.record is None:
            return True
        policy = self._pod["spec"].get("restartPolicy") or "Always"
        if policy == "Never":
            return False
        return not (policy == "OnFailure" and self.record.returncode == 0)

    def _probe(self, spec: Mapping[str, Any]) -> bool:
        ports = {
            p["name"]: int(p["containerPort"])
            for p in self.container.get("ports") or []
            if p.get("name")
        }
        return probe_once(spec, self.pod_ip, ports, self._env_cache, self.root)

    # --- starting
    def _start_process(self, pod: dict[str, Any]) -> None:
        h = self.harness
        container = self.container
        env = self._build_env(pod, container)
        self._write_volumes(pod, ALL_KINDS)
        self.volumes_refresh_at = time.monotonic() + (h.volume_refresh_s or 0.0)
        command = list(container.get("command") or [])
        if not command:
            image = container.get("image", "")
            if image not in h.image_commands:
                raise PodConfigError(
                    f"container {container['name']!r} has no command and image {image!r} "
                    "has no entry in image_commands"
                )
            command = list(h.image_commands[image])
        argv = [expand_vars(a, env) for a in [*command, *(container.get("args") or [])]]
        self._env_cache = env
        stdout = self.root / CONTAINER_LOG
        with stdout.open("ab") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.popen = popen
        self.process_exited.clear()
        self.started_at = utc_now()
        self.state = {"running": {"startedAt": kube_time(self.started_at)}}
        self.record = ProcessRecord(
            self.namespace,
            self.name,
            self.uid,
            popen.pid,
            time.monotonic(),
            restart_count=self.restart_count,
        )
        h._record(self.record)
        start = time.monotonic()
        probe = container.get("readinessProbe")
        self.readiness = (
            ProbeState(probe, start + float(probe.get("initialDelaySeconds") or 0))
            if probe
            else None
        )
        probe = container.get("livenessProbe")
        self.liveness = (
            ProbeState(probe, start + float(probe.get("initialDelaySeconds") or 0), result=True)
            if probe
            else None
        )
        log.info("harness: started %s/%s pid %d: %s", self.namespace, self.name, popen.pid, argv)

    def _on_exit(self, code: int) -> None:
        assert self.popen is not None and self.record is not None
        self.record.exited_at = time.monotonic()
        self.record.returncode = code
        self.popen = None
        self.process_exited.set()
        # Kill whatever the container left behind in its process group, as a runtime would.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.record.pid, signal.SIGKILL)
        self.last_state = {
            "terminated": {
                "exitCode": code if code >= 0 else 128 - code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": kube_time(self.started_at),
                "finishedAt": kube_time(),
            }
        }
        policy = self._pod["spec"].get("restartPolicy") or "Always"
        if policy == "Never" or (policy == "OnFailure" and code == 0):
            self.state = self.last_state
            self.last_state = {}
            return
        self.restart_count += 1
        backoff = min(
            self.harness.restart_backoff_s * 2 ** (self.restart_count - 1),
            self.harness.max_restart_backoff_s,
        )
        self.next_start_at = time.monotonic() + backoff
        self.state = {"waiting": {"reason": "CrashLoopBackOff"}}
        self.readiness = None
        self.liveness = None
