"""An endpoint published as a separate limit domain gets budgets of its own (issue 15,
secondary endpoints), tested with two mock exchanges as the two endpoints of one venue.

The custom venue lists the second endpoint as `separate` (domain `<pool>-b.test`). Quota `a`
uses the primary, quota `b` the second (`spec.endpoint`), on one pool address: each is planned
with its own domain's budgets, so each fills its own exchange's 4 connections per IP (were the
endpoint shared they would split the 4: tests/unit/planner/test_separate_domains.py), the
pool's status shows a budget per domain, and each exchange's referee sees 100% and 0
violations. The primary's gateways never fail over to the separate endpoint.
"""

from __future__ import annotations

import uuid
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
    consume,
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

LIMITS = {
    "concurrentConnections": (4, None),
    "connectionAttempts": (6, 2 * TIME_SCALE),
    "streamsPerConnection": (2, None),
}


def test_a_separate_endpoint_is_planned_with_budgets_of_its_own(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
) -> None:
    primary, second = (MockThread(shrunk_limits(**LIMITS)) for _ in range(2))
    objects = custom_object(api_client)
    core = client.CoreV1Api(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    venue = primary.quota_exchange(f"{pool}.test")
    venue["alternateEndpoints"] = [
        {"url": second.mock.url, "limitDomain": "separate", "domain": f"{pool}-b.test"}
    ]
    streams = {q: [f"{q}{i}usdt@trade" for i in range(8)] for q in ("a", "b")}
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    for name, endpoint in (("a", None), ("b", second.mock.url)):
        body = quota_body(namespace, name, pool, venue, streams[name])
        if endpoint:
            body["spec"]["endpoint"] = endpoint
        objects.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", body
        )

    def log() -> str:
        out = [operator_process.log()]
        for name in ("a", "b"):
            for ordinal in range(3):
                pod = f"{name}-gw-{ordinal}"
                out += [f"--- {pod}", *pod_harness.logs(namespace, pod).splitlines()[-20:]]
        return "\n".join(out)

    try:
        for name in ("a", "b"):
            wait_ready(api_client, namespace, name, 90, log)
        for name, mock in (("a", primary), ("b", second)):
            upstream = sorted(s for v in mock.open_streams().values() for s in v)
            assert upstream == sorted(streams[name]), (name, upstream)
            assert mock.open_by_ip() == {"127.0.0.2": 4}
            ips = pod_ips(api_client, namespace, name)
            for ordinal, held in streams_by_pod(core, namespace, name).items():
                consume(ips[ordinal], held)
        # Each domain has its own budget on the address, each quota all of it.
        pool_obj = objects.get_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        concurrent = {
            b.get("domain"): b["budget"]
            for b in pool_obj["status"]["budgets"]
            if b["limit"] == LimitName.CONCURRENT_CONNECTIONS.value
        }
        assert concurrent == {f"{pool}.test": 4, f"{pool}-b.test": 4}, pool_obj["status"]
        # A mass disconnect at the primary: its connections come back to it, never to the
        # separate endpoint (whose budgets are quota b's).
        assert primary.disconnect_all() == 4
        wait_for(
            lambda: len(primary.open_connections()) == 4,
            60,
            f"reconnection to the primary\n{log()}",
            interval_s=0.2,
        )
        assert second.open_by_ip() == {"127.0.0.2": 4}
        for mock in (primary, second):
            mock.assert_no_violation()
            assert mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) == 1.0
    finally:
        for name in ("a", "b"):
            objects.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "exchangeconnectionquotas", name
            )
        for name in ("a", "b"):
            wait_for(
                lambda n=name: get_quota(api_client, namespace, n) is None, 90, f"deletion {name}"
            )
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        violations = [primary.violations(), second.violations()]
        primary.stop()
        second.stop()
    assert violations == [[], []]
