"""A harness that plays kubelet and scheduler for selected Pods, running them as local processes.

No kubelet and no scheduler run in the test control plane. :class:`PodHarness` registers a
fake Node, or several (Ready, each with a Lease in ``kube-node-lease`` that it keeps renewing
so the node lifecycle controller never taints or evicts it), binds every pending Pod matching
its label selector to the first of its Nodes that the Pod's ``nodeSelector`` and required node
affinity admit, and runs the Pod's single container as a local subprocess:

* argv: the container's ``command`` + ``args`` (``$(VAR)`` references expanded as the kubelet
  does). A container without ``command`` uses ``image_commands[image]``; there is no image.
* env: exactly the container's ``env`` and ``envFrom`` (values, downward API ``fieldRef``,
  ``secretKeyRef``, ``configMapKeyRef``, ``resourceFieldRef``), plus what the kubelet and a
  container runtime add: ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` (the
  loopback API server), ``HOSTNAME`` (the Pod name) and ``PATH`` (the harness's PATH with the
  current interpreter's directory first, so the venv's console scripts resolve). And one
  harness variable: ``CONNQUOTA_POD_ROOT``.
* volumes: a process cannot mount at absolute paths, so every ``volumeMount`` is materialised
  under the Pod's root directory: ``mountPath: /etc/connquota/plan`` is the directory
  ``$CONNQUOTA_POD_ROOT/etc/connquota/plan``. A program that reads a mounted file opens
  ``os.path.join(os.environ.get("CONNQUOTA_POD_ROOT", "/"), path.lstrip("/"))`` (the working
  directory is the Pod root as well). Secret, ConfigMap, downward API and projected volumes
  (including the ServiceAccount token, obtained with a TokenRequest bound to the Pod and
  refreshed at 80 % of its lifetime) are written as files; ``emptyDir`` is a directory that
  survives a container restart and is wiped when the Pod is replaced (it lives in the Pod's
  root, which is per Pod UID).
* status: ``Running``, ``podIP`` (one loopback address per Pod, ``127.0.10.x``, or one fixed
  address), container state and restart count, and ``Ready`` from the readiness probe
  (``httpGet``, ``tcpSocket`` or ``exec``; ready as soon as it runs when there is none).
  A container that exits, or fails its liveness probe, is restarted per ``restartPolicy``
  after a short, capped backoff (``restart_backoff_s`` doubling up to
  ``max_restart_backoff_s``, not the kubelet's 10 s .. 5 min).
* Secret, ConfigMap and downward API files are refreshed every ``volume_refresh_s`` (changed
  keys are rewritten atomically; removed keys are left in place; None turns refreshing off,
  e.g. for benchmarks that count API requests).
* deletion: when the Pod gets a ``deletionTimestamp``: SIGTERM, wait the deletion grace
  period, SIGKILL the process group, then the final delete (grace 0, UID precondition). A Pod
  deleted with grace 0 is killed the same way, with its ``terminationGracePeriodSeconds``.
  A successor Pod with the same namespace and name starts only after the old process exited.

Each Pod gets its own loopback address, and all share the host's network namespace: a server
in a Pod must listen on its Pod IP (``status.podIP`` through the downward API), not 0.0.0.0,
or the second Pod of a StatefulSet cannot bind the same port.

Not supported: more than one container or init containers (the Pod is left alone and an error
recorded in :attr:`PodHarness.errors`), lifecycle hooks, startup probes, ``subPath`` mounts,
resource limits and security contexts (ignored). :attr:`PodHarness.history` records every
process the harness ran, for tests to assert on.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger(__name__)

POD_ROOT_ENV = "CONNQUOTA_POD_ROOT"
DEFAULT_NODE_NAME = "connquota-harness"
LEASE_NAMESPACE = "kube-node-lease"
MERGE_PATCH = "application/merge-patch+json"
CONTAINER_LOG = "container.log"  # stdout+stderr of every run of the container, in the Pod root
TOKEN_KINDS = frozenset({"serviceAccountToken"})
DATA_KINDS = frozenset({"secret", "configMap", "downwardAPI"})
ALL_KINDS = TOKEN_KINDS | DATA_KINDS

# Pod IPs in use are locked files here, so harnesses of concurrent test runs never share one.
POD_IP_LOCK_DIR = Path(tempfile.gettempdir()) / "connquota-pod-ips"
_POD_IPS_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ts(moment: dt.datetime | None = None) -> str:
    """RFC 3339 with seconds, as Kubernetes ``Time`` fields want it."""
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_ts(moment: dt.datetime | None = None) -> str:
    """RFC 3339 with microseconds, as Kubernetes ``MicroTime`` fields want it."""
    return (moment or _now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(NAME)`` like the kubelet: unknown references stay as they are, ``$$`` is ``$``."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(repl, text)


@dataclass
class ProcessRecord:
    """One process the harness ran for a Pod's container."""

    namespace: str
    name: str
    uid: str
    pid: int
    started_at: float  # time.monotonic()
    exited_at: float | None = None
    returncode: int | None = None
    signals: list[tuple[str, float]] = field(default_factory=list)  # (name, monotonic) sent
    restart_count: int = 0


class PodConfigError(RuntimeError):
    """A Pod's spec refers to something that does not exist yet (a Secret, a key...)."""


def _listening_ips() -> set[str]:
    """IPv4 addresses some socket on this machine listens on (from /proc/net/tcp)."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
            address = fields[1].split(":")[0]
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


# --- probes --------------------------------------------------------------------------------


def _probe_once(
    probe: Mapping[str, Any],
    pod_ip: str,
    ports: Mapping[str, int],
    env: Mapping[str, str],
    cwd: Path,
) -> bool:
    timeout_s = float(probe.get("timeoutSeconds") or 1)
    if probe.get("httpGet"):
        get = probe["httpGet"]
        port = get.get("port")
        port_num = ports.get(port) if isinstance(port, str) and not port.isdigit() else int(port)
        if port_num is None:
            return False
        scheme = (get.get("scheme") or "HTTP").lower()
        host = get.get("host") or pod_ip
        path = get.get("path") or "/"
        req = urllib.request.Request(f"{scheme}://{host}:{port_num}{path}")
        for header in get.get("httpHeaders") or []:
            req.add_header(header["name"], header["value"])
        ctx = None
        if scheme == "https":  # the kubelet does not verify probe certificates either
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as resp:
                return 200 <= resp.status < 400
        except urllib.error.HTTPError as err:
            return 200 <= err.code < 400
        except (OSError, ValueError):
            return False
    if probe.get("tcpSocket"):
        sock = probe["tcpSocket"]
        port = sock.get("port")
        port_num = ports.get(port) if isinstance(port, str) and not port.isdigit() else int(port)
        if port_num is None:
            return False
        try:
            with socket.create_connection((sock.get("host") or pod_ip, port_num), timeout_s):
                return True
        except OSError:
            return False
    if probe.get("exec"):
        try:
            done = subprocess.run(
                list(probe["exec"].get("command") or []),
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except (subprocess.SubprocessError, OSError):
            return False
        return done.returncode == 0
    return True


class _ProbeState:
    """Thresholds and period of one probe, and its current result."""

    def __init__(self, spec: Mapping[str, Any], next_at: float, result: bool = False) -> None:
        self.spec = spec
        self.next_at = next_at
        self.successes = 0
        self.failures = 0
        self.result = result

    def run(self, now: float, probe: Callable[[Mapping[str, Any]], bool]) -> bool:
        """Run the probe when due; return whether the result changed."""
        if now < self.next_at:
            return False
        self.next_at = now + float(self.spec.get("periodSeconds") or 10)
        before = self.result
        if probe(self.spec):
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold") or 1):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.result = False
        return before != self.result


QOS_RESOURCES = ("cpu", "memory")


def qos_class(pod: Mapping[str, Any]) -> str:
    """The Pod's QoS class as the kubelet computes it (``BestEffort``, ``Burstable``,
    ``Guaranteed``) from its containers' cpu and memory requests and limits.

    The API server sets ``status.qosClass`` at creation and refuses a status update that
    changes it, so the harness must report the same class.
    """
    from kubernetes.utils import parse_quantity

    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        for name, value in (resources.get("requests") or {}).items():
            if name in QOS_RESOURCES and parse_quantity(value) != 0:
                requests[name] = requests.get(name, 0) + parse_quantity(value)
        found = set()
        for name, value in (resources.get("limits") or {}).items():
            if name in QOS_RESOURCES and parse_quantity(value) != 0:
                found.add(name)
                limits[name] = limits.get(name, 0) + parse_quantity(value)
        if found != set(QOS_RESOURCES):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def _full_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A container state with explicit nulls, so a merge patch replaces the previous one."""
    return {key: state.get(key) for key in ("waiting", "running", "terminated")}


def _term_matches(term: Mapping[str, Any], labels: Mapping[str, str], node_name: str) -> bool:
    """One nodeSelectorTerm: all its matchExpressions and matchFields hold."""
    for expr in term.get("matchExpressions") or []:
        if not _expression_holds(expr, labels.get(expr["key"]), expr["key"] in labels):
            return False
    for expr in term.get("matchFields") or []:
        value = node_name if expr["key"] == "metadata.name" else None
        if not _expression_holds(expr, value, value is not None):
            return False
    return True


def _expression_holds(expr: Mapping[str, Any], value: str | None, present: bool) -> bool:
    operator, values = expr["operator"], list(expr.get("values") or [])
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and value is not None:
        try:
            number, bound = int(value), int(values[0])
        except (ValueError, IndexError):
            return False
        return number > bound if operator == "Gt" else number < bound
    return False


# --- the per-Pod runner --------------------------------------------------------------------


class _PodRunner:
    """Runs one Pod (one UID) from binding to final deletion, in its own thread."""

    def __init__(self, harness: PodHarness, pod: dict[str, Any]) -> None:
        self.harness = harness
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self._pod = pod
        self._gone = False  # the Pod object is no longer in the API
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self.finished = threading.Event()
        self.process_exited = threading.Event()
        self.process_exited.set()
        self.thread = threading.Thread(
            target=self._main, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )
        self.root = harness.work_dir / f"{self.namespace}_{self.name}_{self.uid}"
        self.pod_ip = ""
        self.popen: subprocess.Popen[bytes] | None = None
        self.record: ProcessRecord | None = None
        self.restart_count = 0
        self.last_state: dict[str, Any] = {}
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.started_at: dt.datetime | None = None
        self.readiness: _ProbeState | None = None
        self.liveness: _ProbeState | None = None
        self.volumes_refresh_at = 0.0
        self.token_refresh_at: float | None = None
        self.next_start_at = 0.0
        self.config_error = ""
        self.reported: dict[str, Any] | None = None
        self.pod_start_time = _ts()
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
        return self._pod["spec"]["containers"][0]

    # --- main loop
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
        while not h._stopping.is_set():
            pod, gone = self.snapshot()
            if gone or pod["metadata"].get("deletionTimestamp"):
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
        return _probe_once(spec, self.pod_ip, ports, self._env_cache, self.root)

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
        self.started_at = _now()
        self.state = {"running": {"startedAt": _ts(self.started_at)}}
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
            _ProbeState(probe, start + float(probe.get("initialDelaySeconds") or 0))
            if probe
            else None
        )
        probe = container.get("livenessProbe")
        self.liveness = (
            _ProbeState(probe, start + float(probe.get("initialDelaySeconds") or 0), result=True)
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
                "startedAt": _ts(self.started_at),
                "finishedAt": _ts(),
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

    # --- env and volumes
    def _field(self, pod: dict[str, Any], path: str) -> str:
        meta = pod["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod["spec"].get("nodeName") or self.harness.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName") or "default",
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.harness.host_ip,
            "status.hostIPs": self.harness.host_ip,
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if match:
            return (meta.get(match.group(1)) or {}).get(match.group(2), "")
        if path in ("metadata.labels", "metadata.annotations"):
            items = sorted((meta.get(path.split(".")[1]) or {}).items())
            return "\n".join(f'{k}="{v}"' for k, v in items)
        raise PodConfigError(f"unsupported fieldRef {path!r}")

    def _resource_field(self, container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
        resource = ref["resource"]  # e.g. limits.cpu
        kind, _, name = resource.partition(".")
        value = ((container.get("resources") or {}).get(kind) or {}).get(name)
        return str(value) if value is not None else "0"

    def _secret(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            secret = self.harness.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise PodConfigError(f"secret {namespace}/{name}: {err.reason}") from err
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _config_map(self, namespace: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            cm = self.harness.core.read_namespaced_config_map(name, namespace)
        except ApiException as err:
            if err.status == 404 and optional:
                return None
            raise PodConfigError(f"configmap {namespace}/{name}: {err.reason}") from err
        data = {k: v.encode() for k, v in (cm.data or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
        return data

    def _build_env(self, pod: dict[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
        h = self.harness
        ns = self.namespace
        env: dict[str, str] = {
            "PATH": h.path_env,
            "HOSTNAME": self.name,
            "KUBERNETES_SERVICE_HOST": h.api_host,
            "KUBERNETES_SERVICE_PORT": str(h.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(h.api_port),
            POD_ROOT_ENV: str(self.root),
        }
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix") or ""
            if src.get("configMapRef"):
                ref = src["configMapRef"]
                data = self._config_map(ns, ref["name"], bool(ref.get("optional")))
            elif src.get("secretRef"):
                ref = src["secretRef"]
                data = self._secret(ns, ref["name"], bool(ref.get("optional")))
            else:
                continue
            for key, value in (data or {}).items():
                env[prefix + key] = value.decode(errors="replace")
        for var in container.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var or not var["valueFrom"]:
                env[name] = expand_vars(var.get("value") or "", env)
                continue
            source = var["valueFrom"]
            if source.get("fieldRef"):
                env[name] = self._field(pod, source["fieldRef"]["fieldPath"])
            elif source.get("resourceFieldRef"):
                env[name] = self._resource_field(container, source["resourceFieldRef"])
            elif source.get("secretKeyRef") or source.get("configMapKeyRef"):
                is_secret = bool(source.get("secretKeyRef"))
                ref = source["secretKeyRef"] if is_secret else source["configMapKeyRef"]
                optional = bool(ref.get("optional"))
                getter = self._secret if is_secret else self._config_map
                data = getter(ns, ref["name"], optional)
                if data is None or ref["key"] not in data:
                    if optional:
                        continue
                    raise PodConfigError(f"key {ref['key']!r} not found in {ref['name']!r}")
                env[name] = data[ref["key"]].decode(errors="replace")
        return env

    def _token(self, pod: dict[str, Any], source: Mapping[str, Any]) -> tuple[bytes, float]:
        sa = pod["spec"].get("serviceAccountName") or "default"
        expiration = int(source.get("expirationSeconds") or 3607)
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [source["audience"]] if source.get("audience") else None,
                "expirationSeconds": expiration,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        try:
            resp = self.harness.core.create_namespaced_service_account_token(
                sa, self.namespace, body
            )
        except ApiException as err:
            raise PodConfigError(f"TokenRequest for {self.namespace}/{sa}: {err.reason}") from err
        return resp.status.token.encode(), expiration * 0.8

    def _source_files(
        self, pod: dict[str, Any], source: Mapping[str, Any], kind: str
    ) -> dict[str, tuple[bytes, int | None]]:
        """Files (relative path -> content, mode) of one volume or projection source."""
        files: dict[str, tuple[bytes, int | None]] = {}
        if kind in ("secret", "configMap"):
            name = source.get("secretName") if kind == "secret" else source.get("name")
            optional = bool(source.get("optional"))
            getter = self._secret if kind == "secret" else self._config_map
            data = getter(self.namespace, str(name), optional) or {}
            items = source.get("items")
            if items:
                for item in items:
                    if item["key"] not in data:
                        if optional:
                            continue
                        raise PodConfigError(f"key {item['key']!r} not found in {name!r}")
                    files[item["path"]] = (data[item["key"]], item.get("mode"))
            else:
                files.update({k: (v, None) for k, v in data.items()})
        elif kind == "downwardAPI":
            for item in source.get("items") or []:
                if item.get("fieldRef"):
                    value = self._field(pod, item["fieldRef"]["fieldPath"])
                else:
                    value = self._resource_field(self.container, item["resourceFieldRef"])
                files[item["path"]] = (value.encode(), item.get("mode"))
        elif kind == "serviceAccountToken":
            token, refresh_s = self._token(pod, source)
            files[source["path"]] = (token, None)
            refresh_at = time.monotonic() + refresh_s
            if self.token_refresh_at is None or refresh_at < self.token_refresh_at:
                self.token_refresh_at = refresh_at
        return files

    def _volume_files(
        self, pod: dict[str, Any], volume: Mapping[str, Any], kinds: frozenset[str]
    ) -> tuple[dict[str, tuple[bytes, int | None]], int] | None:
        """Files of one volume (of the sources in ``kinds``) and its default mode.

        None for a directory volume (emptyDir).
        """
        for kind in ("secret", "configMap", "downwardAPI"):
            if volume.get(kind):
                if kind not in kinds:
                    return {}, 0o644
                src = volume[kind]
                return self._source_files(pod, src, kind), int(src.get("defaultMode") or 0o644)
        if volume.get("projected"):
            projected = volume["projected"]
            files: dict[str, tuple[bytes, int | None]] = {}
            for source in projected.get("sources") or []:
                for kind in ("secret", "configMap", "downwardAPI", "serviceAccountToken"):
                    if source.get(kind) and kind in kinds:
                        files.update(self._source_files(pod, source[kind], kind))
            return files, int(projected.get("defaultMode") or 0o644)
        return None

    def _write_volumes(self, pod: dict[str, Any], kinds: frozenset[str]) -> None:
        """Write the files of the volume sources in ``kinds``; unchanged files are not touched."""
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        if "serviceAccountToken" in kinds:
            self.token_refresh_at = None
        for mount in self.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodConfigError(f"volumeMount {mount['name']!r} names no volume")
            target = self.root / mount["mountPath"].lstrip("/")
            if mount.get("subPath"):
                target = target.parent / f".{target.name}.subpath"  # not supported: keep apart
            content = self._volume_files(pod, volume, kinds)
            if content is None:
                if volume.get("emptyDir") is not None or "emptyDir" in volume:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if kinds != ALL_KINDS:
                    continue
                raise PodConfigError(f"volume {mount['name']!r}: unsupported volume type")
            files, default_mode = content
            target.mkdir(parents=True, exist_ok=True)
            for rel, (data, mode) in files.items():
                path = target / rel
                with contextlib.suppress(OSError):
                    if path.read_bytes() == data:
                        continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(data)
                tmp.chmod(int(mode) if mode is not None else default_mode)
                os.replace(tmp, path)

    # --- stopping
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

    # --- status
    def _status(self, pod: dict[str, Any]) -> dict[str, Any]:
        container = self.container
        running = self.popen is not None
        ready = running and (self.readiness.result if self.readiness else True)
        now = _ts()
        prev = {c.get("type"): c for c in (self.reported or {}).get("conditions", [])}

        def cond(kind: str, ok: bool) -> dict[str, Any]:
            status = "True" if ok else "False"
            old = prev.get(kind)
            changed_at = old["lastTransitionTime"] if old and old["status"] == status else now
            return {"type": kind, "status": status, "lastTransitionTime": changed_at}

        status_block: dict[str, Any] = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "containerID": f"harness://{self.record.pid}" if self.record else None,
            "ready": bool(ready),
            "started": running,
            "restartCount": self.restart_count,
            "state": _full_state(self.state),
            "lastState": _full_state(self.last_state),
        }
        terminal = "terminated" in self.state and not running
        if terminal:
            code = self.state["terminated"].get("exitCode", 1)
            phase = "Succeeded" if code == 0 else "Failed"
        elif running or self.restart_count:
            phase = "Running"
        else:
            phase = "Pending"
        return {
            "phase": phase,
            "hostIP": self.harness.host_ip,
            "hostIPs": [{"ip": self.harness.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.pod_start_time,
            # The class the API server computed at creation; it refuses any other.
            "qosClass": (pod.get("status") or {}).get("qosClass") or qos_class(pod),
            "conditions": [
                cond("PodReadyToStartContainers", True),
                cond("Initialized", True),
                cond("Ready", bool(ready)),
                cond("ContainersReady", bool(ready)),
                cond("PodScheduled", True),
            ],
            "containerStatuses": [status_block],
        }

    def _report_status(self, pod: dict[str, Any]) -> None:
        status = self._status(pod)
        comparable = json.dumps(
            {**status, "conditions": [(c["type"], c["status"]) for c in status["conditions"]]},
            sort_keys=True,
        )
        if self.reported is not None and comparable == self.reported.get("_key"):
            return
        try:
            self.harness.core.patch_namespaced_pod_status(
                self.name, self.namespace, {"status": status}, _content_type=MERGE_PATCH
            )
        except ApiException as err:
            if err.status != 404:
                log.warning("harness: status of %s/%s: %s", self.namespace, self.name, err)
            return
        self.reported = {**status, "_key": comparable}


# --- the harness ---------------------------------------------------------------------------


class PodHarness:
    """Plays kubelet and scheduler for the Pods matching ``label_selector``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``api_client`` is a
    ``kubernetes.client.ApiClient`` with rights to nodes, leases, pods, pods/binding,
    pods/status, secrets, configmaps and serviceaccounts/token (cluster admin in tests).
    ``api_host``/``api_port`` are what Pods get as ``KUBERNETES_SERVICE_HOST``/``_PORT``.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        label_selector: str,
        *,
        namespace: str | None = None,
        node_name: str = DEFAULT_NODE_NAME,
        extra_node_names: Sequence[str] = (),
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
    ) -> None:
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.label_selector = label_selector
        self.namespace = namespace
        self.node_name = node_name
        self.node_names = [node_name, *[n for n in extra_node_names if n != node_name]]
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
        self._runners: dict[str, _PodRunner] = {}  # by UID
        self._all_runners: list[_PodRunner] = []
        self._lock = threading.Lock()
        self._ip_locks: dict[str, int] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self._watch_resp: Any = None

    # --- lifecycle
    def start(self) -> PodHarness:
        """Register the Node and its Lease, then start binding and running Pods."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
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

    def _predecessor(self, runner: _PodRunner) -> _PodRunner | None:
        """An earlier runner for the same namespace/name that has not finished yet."""
        with self._lock:
            for other in self._all_runners:
                if other is runner:
                    return None  # only runners created earlier count
                same = (other.namespace, other.name) == (runner.namespace, runner.name)
                if same and not other.finished.is_set():
                    return other
        return None

    def _runner_finished(self, runner: _PodRunner) -> None:
        with self._lock:
            if self._runners.get(runner.uid) is runner:
                del self._runners[runner.uid]
            if runner in self._all_runners:
                self._all_runners.remove(runner)

    def _allocate_ip(self) -> str:
        """A Pod IP no other harness holds, in this process or any other on the machine.

        Each address in use is held by an exclusive ``flock`` on a file in the system temp
        dir; the kernel releases it when the holder closes it or dies.
        """
        if self.pod_ip_prefix is None:
            return self.fixed_pod_ip
        POD_IP_LOCK_DIR.mkdir(parents=True, exist_ok=True)
        busy = _listening_ips()  # e.g. processes of a run that did not lock (or crashed)
        with _POD_IPS_LOCK:
            for last in range(2, 255):
                ip = f"{self.pod_ip_prefix}{last}"
                if ip in busy:
                    continue
                fd = os.open(POD_IP_LOCK_DIR / ip, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                self._ip_locks[ip] = fd
                return ip
        raise RuntimeError(f"no free pod IP left in {self.pod_ip_prefix}2-254")

    def _release_ip(self, ip: str) -> None:
        with _POD_IPS_LOCK:
            fd = self._ip_locks.pop(ip, None)
            if fd is not None:
                os.close(fd)

    # --- node and lease
    def _node_status(self, node_name: str) -> dict[str, Any]:
        now = _ts()
        return {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "connquota pod harness is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": getattr(self, "_ready_since", now),
                },
                *[
                    {
                        "type": kind,
                        "status": "False",
                        "reason": f"KubeletHas{reason}",
                        "message": "",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": getattr(self, "_ready_since", now),
                    }
                    for kind, reason in (
                        ("MemoryPressure", "SufficientMemory"),
                        ("DiskPressure", "NoDiskPressure"),
                        ("PIDPressure", "SufficientPID"),
                    )
                ],
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.host_ip},
                {"type": "Hostname", "address": node_name},
            ],
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "250"},
            "nodeInfo": {
                "machineID": "connquota-harness",
                "systemUUID": "connquota-harness",
                "bootID": "connquota-harness",
                "kernelVersion": os.uname().release,
                "osImage": "connquota pod harness",
                "containerRuntimeVersion": "harness://1",
                "kubeletVersion": "v1.34.0-harness",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_nodes(self) -> None:
        for node_name in self.node_names:
            self._register_node(node_name)

    def _register_node(self, node_name: str) -> None:
        self._ready_since = getattr(self, "_ready_since", _ts())
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name,
                "labels": {
                    **self.node_labels,
                    "kubernetes.io/hostname": node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "connquota.io/pod-harness": "true",
                },
            },
            "spec": {},
        }
        try:
            node = self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
            node = self.core.read_node(node_name)
        self._node_labels[node_name] = dict(node.metadata.labels or {})
        self.core.patch_node_status(
            node_name, {"status": self._node_status(node_name)}, _content_type=MERGE_PATCH
        )
        self._node_status_at = time.monotonic()
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": node_name,
                "namespace": LEASE_NAMESPACE,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": node_name,
                        "uid": node.metadata.uid,
                    }
                ],
            },
            "spec": {
                "holderIdentity": node_name,
                "leaseDurationSeconds": self.lease_duration_s,
                "renewTime": _micro_ts(),
            },
        }
        try:
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, lease)
        except ApiException as err:
            if err.status != 409:
                raise
            self._renew_lease(node_name)
        self.lease_renewals += 1

    def _renew_lease(self, node_name: str) -> None:
        self.coordination.patch_namespaced_lease(
            node_name,
            LEASE_NAMESPACE,
            {
                "spec": {
                    "holderIdentity": node_name,
                    "renewTime": _micro_ts(),
                    "leaseDurationSeconds": self.lease_duration_s,
                }
            },
            _content_type=MERGE_PATCH,
        )

    def _lease_loop(self) -> None:
        next_renew = time.monotonic() + self.lease_renew_interval_s
        while not self._stopping.wait(max(0.0, next_renew - time.monotonic())):
            next_renew = time.monotonic() + self.lease_renew_interval_s
            status_due = time.monotonic() - self._node_status_at >= self.node_status_interval_s
            for node_name in self.node_names:
                try:
                    self._renew_lease(node_name)
                    self.lease_renewals += 1
                    if status_due:
                        self.core.patch_node_status(
                            node_name,
                            {"status": self._node_status(node_name)},
                            _content_type=MERGE_PATCH,
                        )
                except ApiException as err:
                    if err.status == 404:
                        with contextlib.suppress(ApiException):
                            self._register_node(node_name)
                    self.errors.append(f"lease renewal of {node_name}: {err.status} {err.reason}")
                    next_renew = time.monotonic() + min(1.0, self.lease_renew_interval_s)
                except Exception as err:  # connection refused while the API server restarts
                    self.errors.append(f"lease renewal of {node_name}: {err}")
                    next_renew = time.monotonic() + min(1.0, self.lease_renew_interval_s)
            if status_due:
                self._node_status_at = time.monotonic()

    # --- scheduling
    def _fits(self, pod: Mapping[str, Any], node_name: str) -> bool:
        """Whether the Pod's nodeSelector and required node affinity admit the node."""
        labels = self._node_labels.get(node_name, {})
        spec = pod["spec"]
        for key, value in (spec.get("nodeSelector") or {}).items():
            if labels.get(key) != value:
                return False
        required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution"
        ) or {}
        terms = required.get("nodeSelectorTerms") or []
        if not terms:
            return True
        return any(_term_matches(term, labels, node_name) for term in terms)

    def _choose_node(self, pod: Mapping[str, Any]) -> str | None:
        for node_name in self.node_names:
            if self._fits(pod, node_name):
                return node_name
        return None

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
        func = (
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
            for line in iter_resp_lines(resp):
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
                runner = _PodRunner(self, pod)
                self._runners[uid] = runner
                self._all_runners.append(runner)
                runner.thread.start()
                return
        runner.update(pod)

    def _bind(self, pod: dict[str, Any], node_name: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
        }
        try:
            # _preload_content=False: the client cannot deserialize the Status it gets back.
            self.core.create_namespaced_pod_binding(
                meta["name"], meta["namespace"], body, _preload_content=False
            )
        except ApiException as err:
            if err.status not in (404, 409):
                self.errors.append(f"bind {meta['namespace']}/{meta['name']}: {err.reason}")
