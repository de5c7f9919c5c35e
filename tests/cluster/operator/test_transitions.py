"""Budget moving between quotas on the real API server: acknowledged transitions.

Here the test plays the gateways' part of the protocol itself: it writes each pod's report
(the plan generation it enforces) on the pod's Lease, exactly as a gateway does, and decides
when. That makes the order of events under test deterministic: a quota's grow must wait for
the other quota's acknowledgement of its shrink, and no reopened connection is needed. The
gateway pods are not run (no harness label: they stay Pending), so no real gateway writes a
report of its own.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.test_lifecycle import GROUP, VERSION, _condition, _pool, _quota
from connquota.api.plan import PodPlan, QuotaRef
from connquota.api.report import REPORT_ANNOTATION, GatewayReport

pytestmark = pytest.mark.cluster

LIMIT = 10  # concurrentConnections and connectionAttempts per address in `_quota`


def _unrun(namespace: str, pool: str, streams: list[str]) -> dict[str, Any]:
    """`_quota` whose gateway pods the harness does not run: the test writes their reports."""
    body = _quota(namespace, pool, streams)
    del body["spec"]["gateway"]["podOverrides"]
    return body


@pytest.fixture
def second_namespace(api_client: Any) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespace(name)


def _plans(core: client.CoreV1Api, namespace: str) -> dict[int, PodPlan]:
    out = {}
    for cm in core.list_namespaced_config_map(
        namespace, label_selector="connquota.io/quota=md,app.kubernetes.io/component=plan"
    ).items:
        plan = PodPlan.model_validate_json(cm.data["plan.json"])
        out[plan.ordinal] = plan
    return out


def _slice(plans: dict[int, PodPlan], limit: str) -> int:
    return sum(
        s.value for p in plans.values() for s in p.slices if s.limit.value == limit and s.key
    )


def _acknowledge(api_client: Any, namespace: str, plans: dict[int, PodPlan]) -> None:
    """Write each pod's report on its Lease: 'I enforce the generation of my plan'."""
    leases = client.CoordinationV1Api(api_client)
    for ordinal, plan in plans.items():
        report = GatewayReport(
            quota=QuotaRef(namespace=namespace, name="md"),
            pod=f"md-gw-{ordinal}",
            ordinal=ordinal,
            bootId="test",
            planGeneration=plan.generation,
            connections=len(plan.connections),
            streams=sum(len(c.streams) for c in plan.connections),
        )
        wait_for(
            lambda o=ordinal: leases.read_namespaced_lease(f"md-gw-{o}", namespace),
            30,
            f"Lease md-gw-{ordinal}",
        )
        leases.patch_namespaced_lease(
            f"md-gw-{ordinal}",
            namespace,
            {"metadata": {"annotations": {REPORT_ANNOTATION: report.model_dump_json()}}},
        )


def test_a_second_quota_gets_its_share_only_after_the_first_acknowledged_its_shrink(
    api_client: Any,
    namespace: str,
    second_namespace: str,
    operator_process: OperatorProcess,
) -> None:
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    pool_name = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", _pool(pool_name))
    for ns in (namespace, second_namespace):
        core.create_namespaced_secret(
            ns, {"metadata": {"name": "keys"}, "stringData": {"apiKey": "k", "apiSecret": "s"}}
        )
    streams = [f"s{i}@trade" for i in range(6)]
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", _unrun(namespace, pool_name, streams)
    )
    first = wait_for(
        lambda: _plans(core, namespace) or None, 60, f"first plans\n{operator_process.log()}"
    )
    _acknowledge(api_client, namespace, first)
    alone = _slice(first, "concurrentConnections")
    assert alone > LIMIT // 2  # alone, the first quota holds more than half of the address
    first_ids = {c.id for p in first.values() for c in p.connections}

    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        second_namespace,
        "exchangeconnectionquotas",
        _unrun(second_namespace, pool_name, ["x@trade", "y@trade"]),
    )
    # The first quota's shrink is published at once; the second's grow is held back.
    shrunk = wait_for(
        lambda: (
            p
            if (p := _plans(core, namespace)) and _slice(p, "concurrentConnections") < alone
            else None
        ),
        60,
        f"the first quota's shrink\n{operator_process.log()}",
    )
    assert {c.id for p in shrunk.values() for c in p.connections} == first_ids  # nothing reopened

    def held_back() -> dict[str, Any] | None:
        q = objects.get_namespaced_custom_object(
            GROUP, VERSION, second_namespace, "exchangeconnectionquotas", "md"
        )
        cond = _condition(q, "Reconciling")
        return q if cond and f"waiting on {namespace}/md#" in cond["message"] else None

    wait_for(held_back, 60, f"the second quota waiting on the first\n{operator_process.log()}")
    # Until the first quota acknowledges, the old (bigger) slice still counts: the second
    # quota's published slices fit beside it.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        second = _plans(core, second_namespace)
        for limit in ("concurrentConnections", "connectionAttempts"):
            assert _slice(second, limit) + _slice(first, limit) <= LIMIT, limit
        time.sleep(0.5)

    before_ack = _plans(core, second_namespace)
    acked_at = time.monotonic()
    _acknowledge(api_client, namespace, shrunk)
    # Concurrent slices have no memory: they move as soon as the shrink is acknowledged.
    wait_for(
        lambda: (
            _slice(_plans(core, second_namespace), "concurrentConnections")
            > _slice(before_ack, "concurrentConnections")
        ),
        30,
        f"the second quota's concurrent grow\n{operator_process.log()}",
    )
    early = _slice(_plans(core, second_namespace), "connectionAttempts")
    # Rate slices move only one window + margin after the acknowledgement.
    grown = wait_for(
        lambda: (
            p
            if (p := _plans(core, second_namespace)) and _slice(p, "connectionAttempts") > early
            else None
        ),
        60,
        f"the second quota's attempt grow\n{operator_process.log()}",
    )
    assert time.monotonic() - acked_at >= 3.0
    for limit in ("concurrentConnections", "connectionAttempts"):
        assert _slice(grown, limit) + _slice(shrunk, limit) <= LIMIT, limit

    for ns in (namespace, second_namespace):
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", "md"
        )
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_name)
