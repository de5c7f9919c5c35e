"""`kubectl drain` of a node running a gateway pod (issue 14): the pod's connections move to
other pods before it goes, when room allows. On the real API server (with its disruption and
StatefulSet controllers), the real `kubectl drain`, real gateways run by the pod harness on
three fake nodes (never binding a pod to a cordoned one), the mock exchange as referee.

The quota's PodDisruptionBudget (`maxUnavailable: 0`) selects only the pods labelled
`connquota.io/holds-connections=true`; the operator treats a pod on a cordoned node as outdated
and drains it make-before-break (copies of its connections on the other pods first, then it
lets its own go and loses the label), then evicts it. So `kubectl drain`, whose evictions are
refused while the pod holds connections, completes once they moved: the exchange never sees a
declared stream without a subscription, a consumer on another pod sees consecutive `seq`, and
the pod's successor runs on a node that is not cordoned. Without room the pod is replaced
break-before-make (the operator removes the label when its turn comes) and the drain still
completes, within every limit.
"""

from __future__ import annotations

import subprocess
import time
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
    get_quota,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from cluster.operator.test_drain import STREAMS, StreamsDown, _consecutive
from connquota.api.common import ObjectMeta
from connquota.api.limits import LimitName, LimitScope
from connquota.api.pool import (
    EgressAddress,
    EgressCheck,
    EgressCheckMethod,
    EgressMode,
    ExchangeEgressPool,
    ExchangeEgressPoolSpec,
)
from connquota.operator import names
from connquota.testing.chaos import SeqConsumer
from connquota.testing.controlplane import ControlPlane
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(480)]

DRAIN_HARNESS_LABEL = "connquota.io/test-node-drain"
"""The pods of these tests are run by their own harness (three nodes), not the session's."""
DRAIN_TIMEOUT_S = 240
NO_ROOM_BOUND_S = 90.0
"""Without room the drain waits only for the operator's break-before-make turn (the plan
settled, the pod's eviction): well within this bound (a few seconds here)."""


@pytest.fixture
def nodes_harness(control_plane: ControlPlane, api_client: Any) -> Iterator[PodHarness]:
    """A harness with three nodes of its own, spreading pods over them (least loaded first)."""
    suffix = uuid.uuid4().hex[:6]
    harness = PodHarness(
        api_client,
        f"{DRAIN_HARNESS_LABEL}=true",
        node_name=f"drain-a-{suffix}",
        extra_node_names=[f"drain-b-{suffix}", f"drain-c-{suffix}"],
        spread=True,
        api_port=control_plane.apiserver_port,
        lease_renew_interval_s=2.0,
        node_status_interval_s=20.0,
    )
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


def _exchange(concurrent: int) -> MockThread:
    return MockThread(
        shrunk_limits(
            concurrentConnections=(concurrent, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )


@pytest.fixture
def roomy_exchange() -> Iterator[MockThread]:
    """8 concurrent connections per IP for 3 connections: every pod's slice has spare room."""
    mock = _exchange(8)
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def full_exchange() -> Iterator[MockThread]:
    """3 concurrent connections per IP for 3 connections: no pod has room for a copy."""
    mock = _exchange(3)
    try:
        yield mock
    finally:
        mock.stop()


def _pool(name: str) -> dict[str, Any]:
    """One podLabel address (no node affinity: the pods may run on any node), 127.0.0.1 as
    the exchange sees every harness pod's plain connection."""
    spec = ExchangeEgressPoolSpec(
        addresses=[
            EgressAddress(
                name="lo-1", publicAddress="127.0.0.1", mode=EgressMode.POD_LABEL, podLabel="lo-1"
            )
        ],
        egressCheck=EgressCheck(method=EgressCheckMethod.NONE, reason="loopback test address"),
    )
    return ExchangeEgressPool(metadata=ObjectMeta(name=name), spec=spec).to_wire()


def _pods(core: client.CoreV1Api, namespace: str) -> dict[int, client.V1Pod]:
    """ordinal -> the quota's gateway pod (not terminating)."""
    out = {}
    for pod in core.list_namespaced_pod(namespace, label_selector="connquota.io/quota=md").items:
        if pod.metadata.deletion_timestamp is None:
            out[int(pod.metadata.name.rsplit("-", 1)[-1])] = pod
    return out


def _holds(pod: client.V1Pod) -> bool:
    return (pod.metadata.labels or {}).get(names.LABEL_HOLDS_CONNECTIONS) == "true"


class Fleet:
    """The quota `md` (3 pods, one connection of two streams each) on the harness's nodes."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        mock: MockThread,
        operator: OperatorProcess,
        harness: PodHarness,
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.mock = mock
        self.operator = operator
        self.harness = harness
        self.core = client.CoreV1Api(api_client)
        self.objects = custom_object(api_client)
        self.pool = f"p-{uuid.uuid4().hex[:8]}"

    def create(self) -> None:
        self.objects.create_cluster_custom_object(
            GROUP, VERSION, "exchangeegresspools", _pool(self.pool)
        )
        body = quota_body(
            self.namespace,
            "md",
            self.pool,
            self.mock.quota_exchange(f"{self.pool}.test"),
            STREAMS,
            connections_per_pod=1,
            gateway={"podOverrides": {"labels": {DRAIN_HARNESS_LABEL: "true"}}},
        )
        self.objects.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "exchangeconnectionquotas", body
        )
        wait_ready(self.api_client, self.namespace, "md", 150, self.operator.log)
        held = streams_by_pod(self.core, self.namespace, "md")
        assert len(held) == 3 and all(len(v) == 2 for v in held.values()), held
        wait_for(
            lambda: (
                sorted(s for v in self.mock.open_streams().values() for s in v) == sorted(STREAMS)
            ),
            60,
            "every stream subscribed upstream",
        )
        # Every pod holding connections carries the label the PDB selects, and the fleet runs
        # on more than one node.
        wait_for(
            lambda: (
                len(pods := _pods(self.core, self.namespace)) == 3
                and all(_holds(p) for p in pods.values())
            ),
            60,
            f"the holds-connections label on every pod\n{self.operator.log()}",
        )
        nodes = {p.spec.node_name for p in _pods(self.core, self.namespace).values()}
        assert len(nodes) >= 2 and nodes <= set(self.harness.node_names), nodes
        pdb = client.PolicyV1Api(self.api_client).read_namespaced_pod_disruption_budget(
            "md-gw", self.namespace
        )
        assert pdb.spec.max_unavailable == 0
        assert pdb.spec.selector.match_labels[names.LABEL_HOLDS_CONNECTIONS] == "true"

    def delete(self) -> None:
        self.objects.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "exchangeconnectionquotas", "md"
        )
        wait_for(lambda: get_quota(self.api_client, self.namespace, "md") is None, 120, "deletion")
        self.objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", self.pool)


def _drain(
    control_plane: ControlPlane, node: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Cordon `node`, then the real `kubectl drain` of it; (its result, seconds it took)."""
    control_plane.kubectl("cordon", node)
    started = time.monotonic()
    result = control_plane.kubectl(
        "drain",
        node,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        f"--timeout={DRAIN_TIMEOUT_S}s",
        check=False,
        timeout_s=DRAIN_TIMEOUT_S + 30,
    )
    return result, time.monotonic() - started


def _rescheduled(
    core: client.CoreV1Api, namespace: str, ordinal: int, old_uid: str, cordoned: str
) -> client.V1Pod | None:
    """The successor of the drained pod once it is Ready on another node."""
    pod = _pods(core, namespace).get(ordinal)
    if pod is None or pod.metadata.uid == old_uid or not pod.spec.node_name:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
    return pod if ready and pod.spec.node_name != cordoned else None


def test_a_node_drain_moves_the_pods_connections_first_no_stream_down_consecutive_seq(
    api_client: Any,
    control_plane: ControlPlane,
    namespace: str,
    nodes_harness: PodHarness,
    operator_process: OperatorProcess,
    roomy_exchange: MockThread,
) -> None:
    mock = roomy_exchange
    fleet = Fleet(api_client, namespace, mock, operator_process, nodes_harness)
    fleet.create()
    core = fleet.core
    log = operator_process.log
    pods = _pods(core, namespace)
    # Drain the node of the highest ordinal that shares it with no other pod of the fleet when
    # there is one (one pod to move), and read through the drain from a pod elsewhere.
    by_node: dict[str, list[int]] = {}
    for o, p in pods.items():
        by_node.setdefault(p.spec.node_name, []).append(o)
    drained = max(pods, key=lambda o: (len(by_node[pods[o].spec.node_name]) == 1, o))
    node = pods[drained].spec.node_name
    leaving = set(by_node[node])
    reader = min(o for o in pods if o not in leaving)
    old_uids = {o: pods[o].metadata.uid for o in leaving}
    held = streams_by_pod(core, namespace, "md")

    down = StreamsDown(mock, STREAMS).start()
    consumer = SeqConsumer.on_pod(pods[reader].status.pod_ip, STREAMS)
    try:
        wait_for(lambda: consumer.all_grew(dict.fromkeys(STREAMS, 0), 3), 30, "every stream")
        result, elapsed = _drain(control_plane, node)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log()}"
        # kubectl drain was held back by the PodDisruptionBudget while the pod held connections.
        assert "disruption budget" in result.stderr, result.stderr
        for o in leaving:
            wait_for(
                lambda o=o: _rescheduled(core, namespace, o, old_uids[o], node) is not None,
                120,
                f"pod md-gw-{o} Ready again on a node not cordoned\n{log()}",
            )
        # The drain ends on the plan it started from (copies closed, the successor serving).
        wait_ready(api_client, namespace, "md", 180, log)
        wait_for(
            lambda: (
                streams_by_pod(core, namespace, "md") == held
                and sorted(s for v in mock.open_streams().values() for s in v) == sorted(STREAMS)
            ),
            60,
            f"every stream subscribed once, on the plan the drain started from\n{log()}",
        )
        before = consumer.counts()
        wait_for(lambda: consumer.all_grew(before, 2), 30, "every stream after the drain")
    finally:
        down.stop()
        consumer.stop()

    after = _pods(core, namespace)
    assert all(after[o].spec.node_name != node for o in leaving), {
        o: after[o].spec.node_name for o in leaving
    }
    assert all(p.spec.node_name != node for p in after.values())
    # The exchange never saw a declared stream without a subscription, and saw the copies.
    assert len(down.samples) > 100, len(down.samples)
    assert down.most_down() == 0, [sorted(s) for s in down.samples if s][:5]
    assert down.overlap > 3, down.overlap
    # The consumer on another pod: consecutive gateway seq and exchange trade ids.
    assert consumer.errors == [], consumer.errors
    assert not [n for n in consumer.notices if n.get("notice") == "relay_lost"], consumer.notices
    for stream in STREAMS:
        assert _consecutive(consumer.seqs[stream]), (stream, consumer.seqs[stream])
        ids = consumer.trade_ids[stream]
        assert ids and _consecutive(ids), (stream, ids)
    mock.assert_no_violation()
    peak = mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    print(
        f"kubectl drain of {node} ({len(leaving)} gateway pod(s)) make-before-break: "
        f"{elapsed:.1f}s, {len(down.samples)} samples, most streams down {down.most_down()}, "
        f"most connections open {down.overlap}, concurrent peak {peak:.0%}"
    )
    fleet.delete()


def test_a_node_drain_without_room_replaces_the_pod_break_before_make_and_completes(
    api_client: Any,
    control_plane: ControlPlane,
    namespace: str,
    nodes_harness: PodHarness,
    operator_process: OperatorProcess,
    full_exchange: MockThread,
) -> None:
    mock = full_exchange
    fleet = Fleet(api_client, namespace, mock, operator_process, nodes_harness)
    fleet.create()
    core = fleet.core
    log = operator_process.log
    pods = _pods(core, namespace)
    drained = max(pods)
    node = pods[drained].spec.node_name
    leaving = {o for o, p in pods.items() if p.spec.node_name == node}
    old_uids = {o: pods[o].metadata.uid for o in leaving}

    down = StreamsDown(mock, STREAMS).start()
    try:
        result, elapsed = _drain(control_plane, node)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{log()}"
        assert elapsed < NO_ROOM_BOUND_S, elapsed
        for o in leaving:
            wait_for(
                lambda o=o: _rescheduled(core, namespace, o, old_uids[o], node) is not None,
                120,
                f"pod md-gw-{o} Ready again on a node not cordoned\n{log()}",
            )
        wait_ready(api_client, namespace, "md", 180, log)
        wait_for(
            lambda: sorted(s for v in mock.open_streams().values() for s in v) == sorted(STREAMS),
            60,
            "every stream subscribed again",
        )
    finally:
        down.stop()

    assert all(p.spec.node_name != node for p in _pods(core, namespace).values())
    mock.assert_no_violation()
    # Break-before-make: the pod's streams were down for a while (no room for copies).
    assert down.most_down() > 0, "expected the streams of the drained pod to be down a while"
    events = core.list_namespaced_event(namespace).items
    messages = [e.message or "" for e in events if e.reason == "RollingOut"]
    assert any("off its cordoned node" in m and "break-before-make" in m for m in messages), (
        messages
    )
    print(
        f"kubectl drain of {node} ({len(leaving)} gateway pod(s)) without room, "
        f"break-before-make: {elapsed:.1f}s, most streams down {down.most_down()}, "
        f"{sum(1 for s in down.samples if s)} of {len(down.samples)} samples with a stream down"
    )
    fleet.delete()
