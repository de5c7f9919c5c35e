"""200 quotas on one pool: a reconcile of the pool with nothing to change makes (almost) no API
request. Counted from the API server's audit log by the operator's User-Agent.

The quotas' pods are left Pending (no harness label): nothing but the operator acts on them,
so every request counted is one the operator chose to make.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import (
    WRITE_VERBS,
    OperatorProcess,
    audit_mark,
    custom_object,
    describe,
    operator_requests,
)
from connquota.operator.settings import OperatorConfig
from connquota.testing.controlplane import ControlPlane
from connquota.testing.resources import loopback_pool as _pool

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

GROUP, VERSION = "connquota.io", "v1alpha1"
QUOTAS = 200
RECONCILES = 3
MAX_REQUESTS_PER_RECONCILE = 1
SETTLE_ROUNDS = 10
"""kopf's own bookkeeping of the touched pool (its diff-base annotation) and nothing per quota:
quotas, pools, Leases, Pods and StatefulSets come from kopf's indexes, what the operator wrote
is remembered by content hash, and a Secret seen within the resync interval is not read
again."""


RESYNC_INTERVAL_S = OperatorConfig().resyncIntervalSeconds
"""The interval within which a Secret seen once is not read again (the operator's default)."""


def _is_secret_read(event: dict[str, Any]) -> bool:
    return (
        event.get("verb") == "get" and (event.get("objectRef") or {}).get("resource") == "secrets"
    )


def _quota(namespace: str, name: str, pool: str) -> dict[str, Any]:
    """A one-stream quota on one address, limits wide enough for 200 quotas to share it."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "exchange": "custom",
            "custom": {
                "endpoint": "ws://127.0.0.1:9",
                "dialect": "binance",
                "domain": f"{pool}.test",
                "deadConnectionTimeoutSeconds": 1,
                "limits": [
                    {
                        "name": "connectionAttempts",
                        "value": 1000,
                        "windowSeconds": 1,
                        "scope": "ip",
                        "shape": "slidingWindow",
                    },
                    {
                        "name": "concurrentConnections",
                        "value": 1000,
                        "scope": "ip",
                        "shape": "concurrent",
                    },
                    {
                        "name": "streamsPerConnection",
                        "value": 10,
                        "scope": "connection",
                        "shape": "concurrent",
                    },
                    {
                        "name": "messagesPerConnection",
                        "value": 10,
                        "windowSeconds": 1,
                        "burst": 10,
                        "scope": "connection",
                        "shape": "tokenBucket",
                    },
                    {
                        "name": "maxConnectionAge",
                        "value": 3600,
                        "scope": "connection",
                        "shape": "duration",
                    },
                ],
            },
            "egressPoolRef": {"name": pool},
            # One Secret shared by every quota: its existence is checked, not read per reconcile.
            "credentials": [{"name": "main", "secretRef": {"name": "keys"}, "accountId": "a1"}],
            "streams": [{"name": f"{name}@trade"}],
            "gateway": {"maxReplicas": 1, "minReplicas": 1, "resources": {}},
        },
    }


def _settled(objects: Any, namespace: str) -> bool:
    items = objects.list_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas"
    )["items"]
    return len(items) == QUOTAS and all(
        (q.get("status") or {}).get("observedGeneration") == q["metadata"]["generation"]
        and (q.get("status") or {}).get("planGeneration")
        for q in items
    )


def test_a_pool_of_200_quotas_reconciles_with_a_bounded_number_of_api_requests(
    api_client: Any,
    control_plane: ControlPlane,
    namespace: str,
    operator_process: OperatorProcess,
) -> None:
    objects = custom_object(api_client)
    client.CoreV1Api(api_client).create_namespaced_secret(
        namespace, {"metadata": {"name": "keys"}, "stringData": {"apiKey": "k", "apiSecret": "s"}}
    )
    pool = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", _pool(pool))
    for i in range(QUOTAS):
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", _quota(namespace, f"q{i}", pool)
        )
    metric = "connquota_operator_reconciles_total"
    try:
        wait_for(
            lambda: _settled(objects, namespace),
            180,
            f"every quota planned, with status\n{operator_process.log(30)}",
            interval_s=1.0,
        )
        # Settled means the operator has nothing left to write: forced reconciles until one
        # makes no request at all (on a loaded machine the first ones may still publish a
        # status the operator computed late). Bounded: at most SETTLE_ROUNDS rounds.
        for attempt in range(SETTLE_ROUNDS):
            mark = audit_mark(control_plane)
            done = operator_process.metric(metric)
            _touch(objects, pool, f"settle-{attempt}")
            wait_for(lambda d=done: operator_process.metric(metric) > d, 60, "a reconcile")
            writes = operator_requests(
                control_plane, mark, audit_mark(control_plane, mark), verbs=WRITE_VERBS
            )
            if len(writes) <= MAX_REQUESTS_PER_RECONCILE:
                break
        started = time.monotonic()
        start = audit_mark(control_plane)
        for i in range(RECONCILES):
            done = operator_process.metric(metric)
            _touch(objects, pool, str(i))
            wait_for(lambda d=done: operator_process.metric(metric) > d, 60, f"reconcile {i}")
        end = audit_mark(control_plane, start)
        elapsed = time.monotonic() - started
        requests = operator_requests(control_plane, start, end)
        print(f"{len(requests)} operator API requests over {RECONCILES} pool reconciles")
        # The one Secret is re-checked (metadata only) once per resync interval by design: on
        # a loaded machine the measured reconciles may span an interval's end.
        rechecks = [r for r in requests if _is_secret_read(r)]
        others = [r for r in requests if not _is_secret_read(r)]
        assert len(rechecks) <= 1 + int(elapsed // RESYNC_INTERVAL_S), (
            f"{len(rechecks)} Secret reads in {elapsed:.0f} s:\n{describe(rechecks)}"
        )
        assert len(others) <= MAX_REQUESTS_PER_RECONCILE * RECONCILES, (
            f"{len(others)} API requests over {RECONCILES} reconciles of {QUOTAS} quotas:\n"
            f"{describe(others)}"
        )
    finally:
        # The namespace goes with the test; the pool goes once no quota holds a share of it.
        objects.delete_collection_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas"
        )
    wait_for(
        lambda: (
            not objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "exchangeconnectionquotas"
            )["items"]
        ),
        120,
        "every quota released",
        interval_s=1.0,
    )
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)


def _touch(objects: Any, pool: str, value: str) -> None:
    """Change an annotation of the pool: the operator reconciles every quota of it."""
    objects.patch_cluster_custom_object(
        GROUP,
        VERSION,
        "exchangeegresspools",
        pool,
        {"metadata": {"annotations": {"test/touch": value}}},
    )
