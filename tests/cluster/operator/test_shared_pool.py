"""Two quotas in different namespaces on one pool, with real gateways and the mock exchange.

The address allows 4 concurrent connections (2 streams each) and 6 attempts per 2 s. Quota A
alone fills it (8 streams on 4 connections). Quota B joins with 4 streams: the even split gives
each 2 connections and 3 attempts per window, so A must close 2 connections before B may open
its 2. Together they stay within every per-IP limit at 100% of the concurrent connections,
and A reopens nothing: it closes exactly the 2 connections the shrink requires.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    MockThread,
    condition,
    get_quota,
    pool_body,
    quota_body,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.testing.controlplane import ControlPlane
from connquota.testing.ipecho import ThreadedIpEcho

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

A_STREAMS = [f"a{i}usdt@trade" for i in range(8)]
B_STREAMS = [f"b{i}usdt@trade" for i in range(4)]


@pytest.fixture
def second_namespace(api_client: Any) -> Iterator[str]:
    """Another fresh namespace, deleted afterwards."""
    core = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


def _owned(conns: dict[str, frozenset[str]], streams: list[str]) -> set[str]:
    """Ids of the open connections carrying only the given streams (one quota's)."""
    return {cid for cid, subscribed in conns.items() if subscribed and subscribed <= set(streams)}


def test_a_second_quota_on_the_pool_shrinks_the_first_through_acknowledged_transitions(
    api_client: Any,
    namespace: str,
    second_namespace: str,
    pod_harness: Any,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
    control_plane: ControlPlane,
) -> None:
    objects = custom_object(api_client)
    log = operator_process.log
    pool = f"p-{uuid.uuid4().hex[:8]}"
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool, echo_url=ip_echo.url)
    )
    quotas = [(namespace, A_STREAMS), (second_namespace, B_STREAMS)]
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "md", pool, exchange, A_STREAMS),
    )
    try:
        # A alone: 4 connections, every stream subscribed at the exchange.
        wait_ready(api_client, namespace, "md", 90, log)
        wait_for(
            lambda: len(_owned(mock_exchange.open_streams(), A_STREAMS)) == 4,
            60,
            f"quota A's 4 connections open with their streams\n{log()}",
            interval_s=0.3,
        )
        a_before = _owned(mock_exchange.open_streams(), A_STREAMS)

        # B joins: A shrinks to 2 connections first, then B opens its 2.
        objects.create_namespaced_custom_object(
            GROUP,
            VERSION,
            second_namespace,
            "exchangeconnectionquotas",
            quota_body(second_namespace, "md", pool, exchange, B_STREAMS),
        )
        wait_ready(api_client, second_namespace, "md", 120, log)
        wait_for(
            lambda: len(_owned(mock_exchange.open_streams(), B_STREAMS)) == 2,
            60,
            f"quota B's 2 connections open with their streams\n{log()}",
            interval_s=0.3,
        )
        wait_ready(api_client, namespace, "md", 60, log)
        conns = mock_exchange.open_streams()
        a_after = _owned(conns, A_STREAMS)
        assert len(conns) == 4, conns
        # A kept 2 of its connections and opened none: only what the shrink requires closed.
        assert len(a_after) == 2 and a_after <= a_before, (a_before, conns)
        shrunk = get_quota(api_client, namespace, "md")
        assert shrunk is not None
        assert shrunk["status"]["streams"]["planned"] == 4
        assert (condition(shrunk, "CapacityExceeded") or {}).get("status") == "True"
        mock_exchange.assert_no_violation()
        peak = mock_exchange.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
        assert peak >= 0.9, peak
        # Capacity in `kubectl describe`: a Warning Event when A's streams stopped fitting,
        # a Normal one when B leaves and they fit again.
        core = client.CoreV1Api(api_client)

        def reasons() -> dict[str, str]:
            listed = core.list_namespaced_event(namespace).items
            return {e.reason: e.type for e in listed if e.involved_object.name == "md"}

        wait_for(lambda: reasons().get("CapacityExceeded") == "Warning", 30, "the event")
        described = control_plane.kubectl("describe", "ecq", "md", "-n", namespace).stdout
        assert "CapacityExceeded" in described[described.index("Events:") :], described
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, second_namespace, "exchangeconnectionquotas", "md"
        )
        wait_for(
            lambda: condition(get_quota(api_client, namespace, "md"), "CapacityExceeded") is None,
            120,
            f"A's streams fit again once B is gone\n{log()}",
        )
        wait_for(lambda: reasons().get("CapacityRestored") == "Normal", 30, "the event")
        mock_exchange.assert_no_violation()
    finally:
        for ns, _ in quotas:
            if get_quota(api_client, ns, "md") is not None:
                objects.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, "exchangeconnectionquotas", "md"
                )
    for ns, _ in quotas:
        wait_for(lambda n=ns: get_quota(api_client, n, "md") is None, 90, f"deletion\n{log()}")
    mock_exchange.assert_no_violation()
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
