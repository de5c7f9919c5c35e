"""PodHarness: the harness's public face (construction, start/stop, queries for tests) and the
Pod watch that hands each Pod to its runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from connquota.testing.podharness.binding import Scheduler
from connquota.testing.podharness.common import (
    CONTAINER_LOG,
    DEFAULT_NODE_NAME,
    LEASE_NAMESPACE,
    ProcessRecord,
)
from connquota.testing.podharness.nodes import NodeAgent
from connquota.testing.podharness.podips import PodAddresses
from connquota.testing.podharness.relay import ApiRelay
from connquota.testing.podharness.runner import PodRunner


class PodHarness(NodeAgent, Scheduler, PodAddresses):
    """Plays kubelet and scheduler for the Pods matching ``label_selector``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``api_client`` is a
    ``kubernetes.client.ApiClient`` with rights to nodes, leases, pods, pods/binding,
    pods/status, secrets, configmaps and serviceaccounts/token (cluster admin in tests).
    ``api_host``/``api_port`` are what Pods get as ``KUBERNETES_SERVICE_HOST``/``_PORT``;
    with ``partitionable=True`` each node's Pods reach them through a relay of that node
    instead, which :meth:`lose_node` cuts (see ``relay``).
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        label_selector: str,
        *,
        namespace: str | None = None,
        node_name: str = DEFAULT_NODE_NAME,
        extra_node_names: Sequence[str] = (),
        spread: bool = False,
        node_labels: Mapping[str, str] | None = None,
        work_dir: Path | None = None,
        api_host: str = "127.0.0.1",
        api_port: int = 443,
        image_commands: Mapping[str, Sequence[str]] | None = None,
        pod_ip_prefix: str | None = "127.0.10.",
        fixed_pod_ip: str = "127.0.0.1",
        host_ip: str = "127.0.0.1",
        lease_duration_s: int = 40,
        lease_renew_interval_s: float = 10.0,
        node_status_interval_s: float = 60.0,
        restart_backoff_s: float = 0.5,
        max_restart_backoff_s: float = 5.0,
        stop_grace_s: float = 5.0,
        volume_refresh_s: float | None = 2.0,
        tick_s: float = 0.2,
        watch_timeout_s: int = 20,
        partitionable: bool = False,
    ) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.label_selector = label_selector
        self.namespace = namespace
        self.node_name = node_name
        self.node_names = [node_name, *[n for n in extra_node_names if n != node_name]]
        self.spread = spread
        self.node_labels = dict(node_labels or {})
        self._node_labels: dict[str, dict[str, str]] = {}
        self._own_work_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="connquota-pods-"))
        self.api_host = api_host
        self.api_port = api_port
        self.image_commands = dict(image_commands or {})
        self.pod_ip_prefix = pod_ip_prefix
        self.fixed_pod_ip = fixed_pod_ip
        self.host_ip = host_ip
        self.lease_duration_s = lease_duration_s
        self.lease_renew_interval_s = lease_renew_interval_s
        self.node_status_interval_s = node_status_interval_s
        self.restart_backoff_s = restart_backoff_s
        self.max_restart_backoff_s = max_restart_backoff_s
        self.stop_grace_s = stop_grace_s
        self.volume_refresh_s = volume_refresh_s
        self.tick_s = tick_s
        self.watch_timeout_s = watch_timeout_s
        interpreter_dir = str(Path(sys.executable).parent)
        self.path_env = os.pathsep.join([interpreter_dir, os.environ.get("PATH", "")])
        self.history: list[ProcessRecord] = []
        self.lease_renewals = 0
        self._runners: dict[str, PodRunner] = {}  # by UID
        self._all_runners: list[PodRunner] = []
        self._lock = threading.Lock()
        self._ip_locks: dict[str, int] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._watch_resp: Any = None
        self.partitionable = partitionable
        self._relays: dict[str, ApiRelay] = {}
        self.lost_nodes: set[str] = set()
        """Nodes lost now (:meth:`lose_node`): no Lease, status or kubelet work, no API."""

    # --- lifecycle
    def start(self) -> PodHarness:
        """Register the Node and its Lease, then start binding and running Pods."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.partitionable:
            for node_name in self.node_names:
                self._relays[node_name] = ApiRelay(self.api_host, self.api_port).start()
        self._register_nodes()
        for target, name in ((self._lease_loop, "lease"), (self._pod_loop, "pods")):
            thread = threading.Thread(target=target, name=f"harness-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, delete_node: bool = True, timeout_s: float = 60.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL after ``stop_grace_s``) and the threads."""
        self._stopping.set()
        resp = self._watch_resp
        if resp is not None:  # unblock the watch thread at once
            with contextlib.suppress(Exception):
                resp.shutdown()
        deadline = time.monotonic() + timeout_s
        with self._lock:
            runners = list(self._all_runners)
        for runner in runners:
            runner.wake.set()
        for runner in runners:
            runner.thread.join(max(0.0, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for relay in self._relays.values():
            relay.stop()
        if delete_node:
            for node_name in self.node_names:
                with contextlib.suppress(ApiException):
                    self.coordination.delete_namespaced_lease(node_name, LEASE_NAMESPACE)
                with contextlib.suppress(ApiException):
                    self.core.delete_node(node_name)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> PodHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- node loss
    def api_address(self, node_name: str) -> tuple[str, int]:
        """(host, port) the Pods of the node reach the API server at."""
        relay = self._relays.get(node_name)
        return (relay.host, relay.port) if relay else (self.api_host, self.api_port)

    def node_lost(self, node_name: str) -> bool:
        """Whether the node is lost now (:meth:`lose_node`)."""
        return node_name in self.lost_nodes

    def lose_node(self, node_name: str) -> None:
        """Lose the node: its Lease and status are no longer renewed (the node lifecycle
        controller marks it NotReady/Unknown and taints it after its grace period), its Pods
        get no kubelet work (no status, probes, volume refresh, restart or final delete: a
        deleted Pod stays Terminating), and its processes are cut from the API server (its
        relay closed) while they keep running, exchange connections included.

        Needs ``partitionable=True``."""
        if node_name not in self._relays:
            raise ValueError(f"{node_name}: not a node of a partitionable harness")
        self.lost_nodes.add(node_name)
        self._relays[node_name].cut()

    def heal_node(self, node_name: str) -> None:
        """The node is back: its relay listens again, its Lease and Ready status are posted at
        once, and its kubelet work resumes: a process whose Pod (UID) no longer exists is killed
        (kubelet orphan cleanup; ``ProcessRecord.orphan_killed_at``), a Terminating Pod's
        deletion finishes."""
        if node_name not in self.lost_nodes:
            return
        self._relays[node_name].restore()
        self.lost_nodes.discard(node_name)
        self._heal_node_status(node_name)
        with self._lock:
            runners = [r for r in self._all_runners if r.node == node_name]
        for runner in runners:
            runner.wake.set()

    # --- queries for tests
    def processes(self, namespace: str, name: str) -> list[ProcessRecord]:
        """Every process run for Pods named ``namespace/name``, oldest first."""
        with self._lock:
            return [r for r in self.history if r.namespace == namespace and r.name == name]

    def pod_root(self, namespace: str, name: str) -> Path | None:
        """The root directory of the live Pod ``namespace/name`` (its ``CONNQUOTA_POD_ROOT``)."""
        with self._lock:
            for runner in self._runners.values():
                if (runner.namespace, runner.name) == (namespace, name):
                    return runner.root
        return None

    def logs(self, namespace: str, name: str) -> str:
        """The container output (all restarts) of Pod ``namespace/name``: live, or the last gone.

        A live Pod's log is ``<pod root>/container.log``; when a Pod goes, its log is kept in
        ``<work_dir>/logs/`` until the harness stops.
        """
        root = self.pod_root(namespace, name)
        candidates = [root / CONTAINER_LOG] if root else []
        kept = sorted(
            (self.work_dir / "logs").glob(f"{namespace}_{name}_*.log"),
            key=lambda path: path.stat().st_mtime,
            reverse=True,
        )
        for path in [*candidates, *kept]:
            with contextlib.suppress(OSError):
                return path.read_text(errors="replace")
        return ""

    # --- internals used by runners
    def _record(self, record: ProcessRecord) -> None:
        with self._lock:
            self.history.append(record)

    def _predecessor(self, runner: PodRunner) -> PodRunner | None:
        """An earlier runner for the same namespace/name that has not finished yet."""
        with self._lock:
            for other in self._all_runners:
                if other is runner:
                    return None  # only runners created earlier count
                same = (other.namespace, other.name) == (runner.namespace, runner.name)
                # A predecessor on a lost node does not hold back a successor on another node
                # (that node's kubelet knows nothing of it): both may run at once (split brain).
                elsewhere = other.node != runner.node and other.node in self.lost_nodes
                if same and not other.finished.is_set() and not elsewhere:
                    return other
        return None

    def _runner_finished(self, runner: PodRunner) -> None:
        with self._lock:
            if self._runners.get(runner.uid) is runner:
                del self._runners[runner.uid]
            if runner in self._all_runners:
                self._all_runners.remove(runner)

    # --- pods
    def _list_pods(self, **kwargs: Any) -> Any:
        if self.namespace:
            return self.core.list_namespaced_pod(self.namespace, **kwargs)
        return self.core.list_pod_for_all_namespaces(**kwargs)

    def _pod_loop(self) -> None:
        """List (resync) then watch, until stopped; every watch is bounded in time."""
        while not self._stopping.is_set():
            try:
                listing = self._raw_pods(label_selector=self.label_selector, _request_timeout=30)
                seen = set()
                for pod in listing.get("items") or []:
                    seen.add(pod["metadata"]["uid"])
                    self._handle(pod)
                with self._lock:
                    vanished = [r for uid, r in self._runners.items() if uid not in seen]
                for runner in vanished:
                    runner.update(None)
                self._watch(listing["metadata"]["resourceVersion"])
            except Exception as err:
                if self._stopping.is_set():
                    return
                self.errors.append(f"pod watch: {err}")
                self._stopping.wait(0.5)

    def _raw_pods(self, **kwargs: Any) -> Any:
        """List or watch Pods without the client's models: the raw JSON (or the response)."""
        func: Callable[..., Any] = (
            self.core.list_namespaced_pod
            if self.namespace
            else self.core.list_pod_for_all_namespaces
        )
        args: Iterable[Any] = (self.namespace,) if self.namespace else ()
        resp = func(*args, _preload_content=False, **kwargs)
        if kwargs.get("watch"):
            return resp
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _watch(self, resource_version: str) -> None:
        resp = self._raw_pods(
            label_selector=self.label_selector,
            resource_version=resource_version,
            timeout_seconds=self.watch_timeout_s,
            allow_watch_bookmarks=False,
            watch=True,
            _request_timeout=self.watch_timeout_s + 10,
        )
        self._watch_resp = resp
        try:
            if self._stopping.is_set():
                return
            for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    return
                event = json.loads(line)
                kind, pod = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    return  # e.g. 410 Gone: resync with a fresh list
                if kind == "DELETED":
                    with self._lock:
                        runner = self._runners.get(pod["metadata"]["uid"])
                    if runner:
                        runner.update(None)
                elif kind in ("ADDED", "MODIFIED"):
                    self._handle(pod)
        finally:
            self._watch_resp = None
            with contextlib.suppress(Exception):
                resp.close()
                resp.release_conn()

    def _handle(self, pod: dict[str, Any]) -> None:
        if self._stopping.is_set():
            return
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        node = spec.get("nodeName")
        if not node:
            if meta.get("deletionTimestamp") or spec.get(
                "schedulerName", "default-scheduler"
            ) not in (
                "default-scheduler",
                "",
            ):
                return
            target = self._choose_node(pod)
            if target is None:
                message = f"{meta['namespace']}/{meta['name']}: no harness node fits"
                if message not in self.errors:
                    self.errors.append(message)
                return
            self._bind(pod, target)
            return
        if node not in self.node_names:
            return
        with self._lock:
            runner = self._runners.get(uid)
            if runner is None:
                if len(spec.get("containers") or []) != 1 or spec.get("initContainers"):
                    message = f"{meta['namespace']}/{meta['name']}: not exactly one container"
                    if message not in self.errors:
                        self.errors.append(message)
                    return
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return
                runner = PodRunner(self, pod)
                self._runners[uid] = runner
                self._all_runners.append(runner)
                runner.thread.start()
                return
        runner.update(pod)
