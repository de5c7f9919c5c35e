"""No blind wait: a new quota connects at once (fresh certificates on the Leases the operator
creates) and a replaced pod resumes from the reservations its predecessor wrote ahead on the
Lease, with a two-minute attempt window that a full hold would have to wait out.

The attempt window is 120 s (wall clock) with 12 attempts per IP (6 per pod): a gateway that
had to treat its slice as just used would make its first attempt about 2 min after it started,
so every bound below (far shorter) can only be met without a blind wait. The successor counts
its predecessor's reserved attempts (2) against its slice of 6, so its 2 connections fit.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from connquota.api.lease_record import (
    ATTEMPTS_ANNOTATION,
    FRESH_ANNOTATION,
    AttemptReservations,
    FreshCertificate,
)
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

STREAMS = [f"f{i}usdt@trade" for i in range(8)]
WINDOW_S = 120.0


@pytest.fixture
def slow_window_mock() -> Iterator[MockThread]:
    """12 attempts per 120 s per IP (wall clock), 4 connections per IP, 2 streams each."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(4, None),
            connectionAttempts=(12, WINDOW_S * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )
    try:
        yield mock
    finally:
        mock.stop()


def gateway_status(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}:8080/status", timeout=5) as resp:
        return json.loads(resp.read())


def all_streams_at_the_mock(mock: MockThread) -> bool:
    upstream = sorted(s for streams in mock.open_streams().values() for s in streams)
    return upstream == sorted(STREAMS)


def test_a_new_quota_and_a_replaced_pod_start_without_a_blind_wait(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    slow_window_mock: MockThread,
) -> None:
    mock = slow_window_mock
    core = client.CoreV1Api(api_client)
    leases = client.CoordinationV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "fs", pool, mock.quota_exchange(f"{pool}.test"), STREAMS),
    )
    log = operator_process.log
    # 4 connections on 2 pods, all subscribed long before one attempt hold (>120 s) is over.
    wait_for(lambda: all_streams_at_the_mock(mock), 60, f"every stream upstream\n{log()}")
    wait_ready(api_client, namespace, "fs", 30, log)
    ips = pod_ips(api_client, namespace, "fs")
    assert sorted(ips) == [0, 1]
    for ordinal, ip in ips.items():
        lease = leases.read_namespaced_lease(f"fs-gw-{ordinal}", namespace)
        cert = FreshCertificate.model_validate_json(lease.metadata.annotations[FRESH_ANNOTATION])
        assert cert.generation >= 1
        status = gateway_status(ip)
        assert status["attemptLog"].startswith("certified fresh"), status["attemptLog"]
        # Every attempt it made is inside a reservation its Lease carries (write-ahead).
        record = AttemptReservations.model_validate_json(
            leases.read_namespaced_lease(f"fs-gw-{ordinal}", namespace).metadata.annotations[
                ATTEMPTS_ANNOTATION
            ]
        )
        made = sum(status["limiterCounts"]["attempts"].values())
        reserved = sum(r.count for r in record.reservations if r.scope == "ip")
        assert made >= 1 and reserved >= made, (made, record)
    held = streams_by_pod(core, namespace, "fs")[0]
    # Pod 0 deleted gracefully: its successor (new Pod, empty state dir) inherits the
    # reservations instead of waiting out the 2-minute window.
    first = pod_harness.processes(namespace, "fs-gw-0")[-1]
    core.delete_namespaced_pod("fs-gw-0", namespace)

    seen: list[Any] = []

    def successor_serves() -> str | None:
        runs = pod_harness.processes(namespace, "fs-gw-0")
        if len(runs) < 2 or runs[-1].uid == first.uid:
            return None
        ip = pod_ips(api_client, namespace, "fs").get(0)
        if ip is None:
            return None
        try:
            status = gateway_status(ip)
        except OSError:
            return None
        seen[:] = [status]
        return status["attemptLog"] if status["streams"]["live"] >= len(held) else None

    reason = wait_for(
        successor_serves, 45, f"pod 0's successor serving {held}: {json.dumps(seen)[:2000]}"
    )
    assert reason.startswith("inherited"), reason
    assert all_streams_at_the_mock(mock)
    mock.assert_no_violation()
