"""Scheduling: which harness node a Pod's nodeSelector and required node affinity admit (never
a cordoned one, unless the Pod tolerates it), and the Binding that assigns it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import HarnessFields, RawBody


def term_matches(term: Mapping[str, Any], labels: Mapping[str, str], node_name: str) -> bool:
    """One nodeSelectorTerm: all its matchExpressions and matchFields hold."""
    for expr in term.get("matchExpressions") or []:
        if not expression_holds(expr, labels.get(expr["key"]), expr["key"] in labels):
            return False
    for expr in term.get("matchFields") or []:
        value = node_name if expr["key"] == "metadata.name" else None
        if not expression_holds(expr, value, value is not None):
            return False
    return True


def expression_holds(expr: Mapping[str, Any], value: str | None, present: bool) -> bool:
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


NODE_HEALTH_TAINTS = frozenset({"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"})
"""The node lifecycle controller's taints: for its own nodes the harness goes by `lost_nodes`."""

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
"""The taint the scheduler reads a cordoned node's `spec.unschedulable` as."""


def _tolerates_unschedulable(toleration: Mapping[str, Any]) -> bool:
    key = toleration.get("key") or ""
    effect = toleration.get("effect") or ""
    operator = toleration.get("operator") or "Equal"
    if effect not in ("", "NoSchedule"):
        return False
    if not key:
        return operator == "Exists"
    return key == UNSCHEDULABLE_TAINT


def tolerates(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration tolerates one taint (key, value, effect), as the scheduler reads
    them."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    operator = toleration.get("operator") or "Equal"
    if not key:
        return operator == "Exists"
    if key != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


class Scheduler(HarnessFields):
    """Plays the scheduler for the harness's Pods."""

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
        return any(term_matches(term, labels, node_name) for term in terms)

    def _schedulable(self, pod: Mapping[str, Any], node_name: str) -> bool:
        """Whether the node takes new Pods: not lost (`lose_node`), no NoSchedule/NoExecute
        taint the Pod does not tolerate (beyond the node lifecycle controller's, which follow
        the harness's own renewals), and not cordoned (`spec.unschedulable`, as `kubectl cordon` and `kubectl drain`
        set it), unless the Pod tolerates the `node.kubernetes.io/unschedulable` taint the
        scheduler reads it as (DaemonSet pods)."""
        try:
            node = self.core.read_node(node_name)
        except ApiException as err:
            self.errors.append(f"read node {node_name}: {err.status} {err.reason}")
            return False
        if node_name in self.lost_nodes:
            return False  # lost (`lose_node`): tainted unreachable, or about to be
        tolerations = pod["spec"].get("tolerations") or []
        for taint in (node.spec.taints if node.spec is not None else None) or []:
            if taint.key in NODE_HEALTH_TAINTS:
                # The harness knows its nodes' health itself: tests may renew a node's Lease
                # less often than the controller manager's grace period (its taints flap).
                continue
            wire = {"key": taint.key, "value": taint.value, "effect": taint.effect}
            if taint.effect in ("NoSchedule", "NoExecute") and not any(
                tolerates(t, wire) for t in tolerations
            ):
                return False
        if not (node.spec is not None and node.spec.unschedulable):
            return True
        return any(
            _tolerates_unschedulable(toleration)
            for toleration in pod["spec"].get("tolerations") or []
        )

    def _pods_on(self, node_name: str) -> int:
        """Pods bound to the node and not terminating or finished (for `spread`)."""
        items = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node_name}"
        ).items
        return sum(
            1
            for p in items
            if p.metadata is not None
            and p.metadata.deletion_timestamp is None
            and (p.status is None or p.status.phase not in ("Succeeded", "Failed"))
        )

    def _choose_node(self, pod: Mapping[str, Any]) -> str | None:
        """The first harness node that admits the Pod and is not cordoned; with `spread`,
        the one of those with the fewest Pods (ties: the first)."""
        fitting = [n for n in self.node_names if self._fits(pod, n) and self._schedulable(pod, n)]
        if not fitting:
            return None
        if not self.spread:
            return fitting[0]
        return min(fitting, key=lambda n: (self._pods_on(n), self.node_names.index(n)))

    def _bind(self, pod: dict[str, Any], node_name: str) -> None:
        meta = pod["metadata"]
        body: RawBody = {
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
