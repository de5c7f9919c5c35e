"""The state of one Pod's runner, shared by its parts."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
from typing import TYPE_CHECKING, Any

from connquota.testing.podharness.common import ProcessRecord, kube_time
from connquota.testing.podharness.probes import ProbeState

if TYPE_CHECKING:
    from connquota.testing.podharness.harness import PodHarness


class RunnerState:
    """What the harness knows about one Pod (one UID): its object, process and container state.

    The runner's parts (sources, volumes, deletion, status, the main loop) share these fields.
    """

    def __init__(self, harness: PodHarness, pod: dict[str, Any]) -> None:
        self.harness = harness
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.node: str = pod["spec"].get("nodeName") or harness.node_name
        self._pod = pod
        self._gone = False  # the Pod object is no longer in the API
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.finished = threading.Event()
        self.process_exited = threading.Event()
        self.process_exited.set()
        self.thread: threading.Thread  # set by PodRunner, which owns the thread
        self.root = harness.work_dir / f"{self.namespace}_{self.name}_{self.uid}"
        self.pod_ip = ""
        self.popen: subprocess.Popen[bytes] | None = None
        self.record: ProcessRecord | None = None
        self.restart_count = 0
        self.last_state: dict[str, Any] = {}
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.started_at: dt.datetime | None = None
        self.readiness: ProbeState | None = None
        self.liveness: ProbeState | None = None
        self.volumes_refresh_at = 0.0
        self.token_refresh_at: float | None = None
        self.next_start_at = 0.0
        self.config_error = ""
        self.reported: dict[str, Any] | None = None
        self.pod_start_time = kube_time()
        self._env_cache: dict[str, str] = {}

    # Called by the harness' watch thread.
    def update(self, pod: dict[str, Any] | None) -> None:
        with self._lock:
            if pod is None:
                self._gone = True
            else:
                self._pod = pod
        self.wake.set()

    def snapshot(self) -> tuple[dict[str, Any], bool]:
        with self._lock:
            return self._pod, self._gone

    @property
    def container(self) -> dict[str, Any]:
        container: dict[str, Any] = self._pod["spec"]["containers"][0]
        return container
