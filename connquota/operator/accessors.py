"""Small typed readers of the fields the operator reads from objects it gets as dicts (kopf
indexes and API answers): one place that knows where each field lives and its default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connquota.api.report import REPORT_ANNOTATION
from connquota.operator import names

Obj = Mapping[str, Any] | None


def _path(obj: Obj, *keys: str) -> Any:
    value: Any = obj
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def labels(obj: Obj) -> Mapping[str, str]:
    """metadata.labels (empty when absent)."""
    return _path(obj, "metadata", "labels") or {}


def object_annotations(obj: Obj) -> Mapping[str, str]:
    """metadata.annotations (empty when absent)."""
    return _path(obj, "metadata", "annotations") or {}


def resource_version(obj: Obj) -> str:
    """metadata.resourceVersion ("" when absent)."""
    return str(_path(obj, "metadata", "resourceVersion") or "")


def deleting(obj: Obj) -> bool:
    """Whether metadata.deletionTimestamp is set."""
    return bool(_path(obj, "metadata", "deletionTimestamp"))


def sts_replicas(sts: Obj) -> int:
    """A StatefulSet's spec.replicas (0 when there is none)."""
    return int(_path(sts, "spec", "replicas") or 0)


def sts_ready_replicas(sts: Obj) -> int:
    """A StatefulSet's status.readyReplicas (0 when absent)."""
    return int(_path(sts, "status", "readyReplicas") or 0)


def quota_pool(quota: Obj) -> str:
    """A quota's spec.egressPoolRef.name ("" when absent)."""
    return str(_path(quota, "spec", "egressPoolRef", "name") or "")


def lease_ordinal(lease: Obj) -> int | None:
    """The gateway ordinal a Lease is labelled with (None when it is not a gateway Lease)."""
    label = labels(lease).get(names.LABEL_ORDINAL)
    return int(label) if label is not None and label.isdigit() else None


def lease_report_text(lease: Obj) -> str | None:
    """The gateway report JSON on a Lease (None when there is none)."""
    return object_annotations(lease).get(REPORT_ANNOTATION)


def pod_egress_label(pod: Obj) -> str | None:
    """A gateway pod's connquota.io/egress label."""
    return labels(pod).get(names.LABEL_EGRESS)


def uid(obj: Obj) -> str:
    """metadata.uid ("" when absent)."""
    return str(_path(obj, "metadata", "uid") or "")


def pod_ordinal(pod: Obj) -> int | None:
    """The StatefulSet ordinal of a gateway pod (the suffix of its name), or None."""
    text = str(_path(pod, "metadata", "name") or "").rsplit("-", 1)[-1]
    return int(text) if text.isdigit() else None


def pod_ready(pod: Obj) -> bool:
    """Whether a pod's Ready condition is True."""
    for cond in _path(pod, "status", "conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_node(pod: Obj) -> str:
    """The node a pod is bound to (spec.nodeName, "" when not scheduled yet)."""
    return str(_path(pod, "spec", "nodeName") or "")


def node_unschedulable(node: Obj) -> bool:
    """Whether a Node is cordoned (spec.unschedulable)."""
    return bool(_path(node, "spec", "unschedulable"))


def pod_holds_connections_label(pod: Obj) -> bool:
    """Whether a gateway pod carries connquota.io/holds-connections=true."""
    return labels(pod).get(names.LABEL_HOLDS_CONNECTIONS) == "true"


def pod_template_hash(pod: Obj) -> str | None:
    """The connquota.io/template-hash annotation a gateway pod was created with."""
    return object_annotations(pod).get(names.ANNOTATION_TEMPLATE_HASH)


def lease_holder(lease: Obj) -> str:
    """A Lease's spec.holderIdentity ("" when free)."""
    return str(_path(lease, "spec", "holderIdentity") or "")


def sts_observed(sts: Obj, applied_hash: str) -> bool:
    """Whether a StatefulSet carries the body of `applied_hash` and its controller observed
    that generation (its updateRevision is then the desired template)."""
    if sts is None or object_annotations(sts).get(names.ANNOTATION_HASH) != applied_hash:
        return False
    generation = int(_path(sts, "metadata", "generation") or 0)
    observed = int(_path(sts, "status", "observedGeneration") or 0)
    return observed >= generation > 0
