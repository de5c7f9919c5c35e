"""Pod status as a kubelet reports it: phase, conditions, container state, QoS class."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import MERGE_PATCH, kube_time
from connquota.testing.podharness.state import RunnerState

log = logging.getLogger(__name__)


QOS_RESOURCES = ("cpu", "memory")


def qos_class(pod: Mapping[str, Any]) -> str:
    """The Pod's QoS class as the kubelet computes it (``BestEffort``, ``Burstable``,
    ``Guaranteed``) from its containers' cpu and memory requests and limits.

    The API server sets ``status.qosClass`` at creation and refuses a status update that
    changes it, so the harness must report the same class.
    """
    from kubernetes.utils import parse_quantity

    def quantity(value: Any) -> Decimal:
        return Decimal(parse_quantity(value))  # type: ignore[no-untyped-call]

    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        for name, value in (resources.get("requests") or {}).items():
            if name in QOS_RESOURCES and quantity(value) != 0:
                requests[name] = requests.get(name, 0) + quantity(value)
        found = set()
        for name, value in (resources.get("limits") or {}).items():
            if name in QOS_RESOURCES and quantity(value) != 0:
                found.add(name)
                limits[name] = limits.get(name, 0) + quantity(value)
        if found != set(QOS_RESOURCES):
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and requests == limits:
        return "Guaranteed"
    return "Burstable"


def full_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A container state with explicit nulls, so a merge patch replaces the previous one."""
    return {key: state.get(key) for key in ("waiting", "running", "terminated")}


class StatusReporter(RunnerState):
    """Builds the Pod's status and patches it when it changed."""

    def _status(self, pod: dict[str, Any]) -> dict[str, Any]:
        container = self.container
        running = self.popen is not None
        ready = running and (self.readiness.result if self.readiness else True)
        now = kube_time()
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
            "state": full_state(self.state),
            "lastState": full_state(self.last_state),
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
