"""The fake Nodes: registration, Ready status and the Lease renewals that keep them healthy."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from kubernetes.client.exceptions import ApiException

from connquota.testing.podharness.common import (
    LEASE_NAMESPACE,
    MERGE_PATCH,
    HarnessFields,
    RawBody,
    kube_micro_time,
    kube_time,
)


class NodeAgent(HarnessFields):
    """Registers the harness's Nodes and keeps their status and Leases fresh."""

    def _node_status(self, node_name: str) -> dict[str, Any]:
        now = kube_time()
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
        self._ready_since = getattr(self, "_ready_since", kube_time())
        body: RawBody = {
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
        assert node.metadata is not None
        self._node_labels[node_name] = dict(node.metadata.labels or {})
        self.core.patch_node_status(
            node_name, {"status": self._node_status(node_name)}, _content_type=MERGE_PATCH
        )
        self._node_status_at = time.monotonic()
        lease: RawBody = {
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
                "renewTime": kube_micro_time(),
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
                    "renewTime": kube_micro_time(),
                    "leaseDurationSeconds": self.lease_duration_s,
                }
            },
            _content_type=MERGE_PATCH,
        )

    def _heal_node_status(self, node_name: str) -> None:
        """Renew the Lease and post a Ready status at once (a healed node's kubelet)."""
        status = self._node_status(node_name)
        now = kube_time()
        for cond in status["conditions"]:
            cond["lastTransitionTime"] = now
        try:
            self._renew_lease(node_name)
            self.core.patch_node_status(node_name, {"status": status}, _content_type=MERGE_PATCH)
        except Exception as err:  # the lease loop renews again
            self.errors.append(f"heal of {node_name}: {err}")

    def _lease_loop(self) -> None:
        next_renew = time.monotonic() + self.lease_renew_interval_s
        while not self._stopping.wait(max(0.0, next_renew - time.monotonic())):
            next_renew = time.monotonic() + self.lease_renew_interval_s
            status_due = time.monotonic() - self._node_status_at >= self.node_status_interval_s
            for node_name in self.node_names:
                if node_name in self.lost_nodes:
                    continue  # lost: no Lease renewal, no status
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
