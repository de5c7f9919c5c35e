"""Vocabulary every part of the pod harness shares: constants, Kubernetes time stamps,
the record of a process, the configuration error, the harness fields its parts use.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

# A request body as JSON-shaped data. The Kubernetes client sends a dict body as it is, while
# its annotations name only its generated models; the harness writes Kubernetes' own JSON.
RawBody = Any

POD_ROOT_ENV = "CONNQUOTA_POD_ROOT"
DEFAULT_NODE_NAME = "connquota-harness"
LEASE_NAMESPACE = "kube-node-lease"
MERGE_PATCH = "application/merge-patch+json"
CONTAINER_LOG = "container.log"  # stdout+stderr of every run of the container, in the Pod root
TOKEN_KINDS = frozenset({"serviceAccountToken"})
DATA_KINDS = frozenset({"secret", "configMap", "downwardAPI"})
ALL_KINDS = TOKEN_KINDS | DATA_KINDS


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def kube_time(moment: dt.datetime | None = None) -> str:
    """RFC 3339 with seconds, as Kubernetes ``Time`` fields want it."""
    return (moment or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube_micro_time(moment: dt.datetime | None = None) -> str:
    """RFC 3339 with microseconds, as Kubernetes ``MicroTime`` fields want it."""
    return (moment or utc_now()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    orphan_killed_at: float | None = None
    """time.monotonic() it was killed as an orphan: its Pod was deleted while its node was
    lost, and the node came back (``PodHarness.heal_node``)."""


class PodConfigError(RuntimeError):
    """A Pod's spec refers to something that does not exist yet (a Secret, a key...)."""


class HarnessFields:
    """The harness attributes its node, binding and Pod-IP parts share (set in PodHarness)."""

    core: client.CoreV1Api
    coordination: client.CoordinationV1Api
    node_name: str
    node_names: list[str]
    spread: bool
    node_labels: dict[str, str]
    _node_labels: dict[str, dict[str, str]]
    _node_status_at: float
    _ready_since: str
    host_ip: str
    lease_duration_s: int
    lease_renew_interval_s: float
    node_status_interval_s: float
    lease_renewals: int
    errors: list[str]
    _stopping: threading.Event
    pod_ip_prefix: str | None
    fixed_pod_ip: str
    _ip_locks: dict[str, int]
    lost_nodes: set[str]
