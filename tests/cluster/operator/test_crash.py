"""The operator killed at each of its write points during a scale-down: no limit is broken.

`CONNQUOTA_OPERATOR_CRASH_AT=<point>` makes the operator `os._exit` right after its first
write of that kind (connquota/operator/crash.py). The fleet fills the address's concurrent
limit (4 of 4 connections open at the exchange before the crash); the scale-down empties pod 1
and moves nothing else. After the crash a fresh operator resumes from what is in the API
(plans, the ledger ConfigMap, Lease reports): the scale-down completes, pod 0 keeps its two
connections (nothing reopened), the referee saw no violation, and the deletion is finalized.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    MockThread,
    get_quota,
    pool_body,
    quota_body,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.operator.crash import EXIT_CODE, POINTS
from connquota.testing.controlplane import ControlPlane
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

STREAMS = [f"s{i}usdt@trade" for i in range(8)]


@pytest.mark.parametrize("point", POINTS)
def test_operator_killed_at_a_write_point_during_scale_down_breaks_no_limit(
    point: str,
    api_client: Any,
    control_plane: ControlPlane,
    crds: None,
    namespace: str,
    pod_harness: PodHarness,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    objects = custom_object(api_client)
    apps = client.AppsV1Api(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool, echo_url=ip_echo.url)
    )
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "md", pool, exchange, STREAMS),
    )
    operator = OperatorProcess(control_plane)
    operator.start()
    try:
        wait_ready(api_client, namespace, "md", 90, operator.log)
        # The fleet at 100% of the address's concurrent connections before the crash.
        wait_for(
            lambda: len(mock_exchange.open_connections()) == 4,
            60,
            f"4 connections open at the exchange\n{operator.log()}",
            interval_s=0.3,
        )
        kept = mock_exchange.open_connections()
        # ...and the status says so: the restarted operator has nothing to write before the
        # scale-down (its first write of each kind is the one it crashes at).
        wait_for(
            lambda: _live(api_client, namespace) == (4, 8),
            30,
            f"status: 4 live connections, 8 live streams\n{operator.log()}",
            interval_s=0.3,
        )
        operator.stop()
        operator.start(extra_env={"CONNQUOTA_OPERATOR_CRASH_AT": point})
        wait_for(
            lambda: operator.metric("connquota_operator_reconciles_total") >= 1,
            60,
            "the crashing operator's first reconcile",
        )
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {"spec": {"streams": [{"name": s} for s in STREAMS[:4]]}},
        )
        assert operator.popen is not None
        code = operator.popen.wait(timeout=60)
        assert code == EXIT_CODE, f"the operator did not crash at {point}\n{operator.log()}"
        mock_exchange.assert_no_violation()
        operator.start()
        wait_for(
            lambda: apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 1,
            90,
            f"the scale-down finished after the restart\n{operator.log()}",
        )
        wait_ready(api_client, namespace, "md", 60, operator.log)
        # Pod 0 kept its two connections throughout: nothing was reopened.
        wait_for(
            lambda: len(mock_exchange.open_connections()) == 2,
            30,
            "pod 1's connections closed",
            interval_s=0.3,
        )
        assert mock_exchange.open_connections() <= kept
        mock_exchange.assert_no_violation()
        assert mock_exchange.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) >= 0.9
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
        wait_for(lambda: get_quota(api_client, namespace, "md") is None, 90, "deletion")
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
    finally:
        operator.stop()
    if os.environ.get("CONNQUOTA_KEEP_LOGS") is None:
        operator.log_path.unlink(missing_ok=True)  # kept when the test failed


def _live(api_client: Any, namespace: str) -> tuple[int, int]:
    """(live connections, live streams) in the quota's status."""
    status = (get_quota(api_client, namespace, "md") or {}).get("status") or {}
    return (
        int((status.get("connections") or {}).get("live") or 0),
        int((status.get("streams") or {}).get("live") or 0),
    )
