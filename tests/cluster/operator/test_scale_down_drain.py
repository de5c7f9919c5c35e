"""A scale-down that moves the leaving pods' connections first (I4): on the real API server
with the real StatefulSet controller, real gateways run by the pod harness, the mock exchange
as referee.

A 3-pod fleet (one connection of two streams per pod, `connectionsPerPod` 1) on an address
whose concurrent budget (12) leaves pod 0 room for two more connections is scaled to one pod
(`maxReplicas` 1, `connectionsPerPod` 3). Copies of pods 1 and 2's connections open on pod 0
first; pods 1 and 2 let theirs go once the copies are live; then the StatefulSet shrinks. The
mock exchange, sampled every 50 ms, never sees a declared stream without an open subscription;
a `/v1/ws` consumer on pod 0 reading the streams of pods 1 and 2 (relayed, then its own) sees
consecutive gateway `seq` and exchange trade ids; no limit is exceeded.
"""

from __future__ import annotations

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
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from cluster.operator.test_drain import STREAMS, StreamsDown, _consecutive, _uids
from connquota.api.limits import LimitName, LimitScope
from connquota.testing.chaos import SeqConsumer
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


@pytest.fixture
def roomy_exchange() -> Iterator[MockThread]:
    """Two streams per connection, six attempts per 2 s and 12 concurrent connections per IP:
    the staying pod's concurrent slice has room for the two leaving pods' connections."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(12, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )
    try:
        yield mock
    finally:
        mock.stop()


class TimedStreamsDown(StreamsDown):
    """`StreamsDown` that also keeps, per sample, its monotonic time and the open connections
    (to say when and where a stream was down)."""

    def __init__(self, mock: MockThread, streams: list[str]) -> None:
        super().__init__(mock, streams)
        self.timeline: list[tuple[float, dict[str, frozenset[str]]]] = []

    def _run(self) -> None:
        while not self._stop.is_set():
            open_ = self.mock.open_streams()
            up = {s for subscribed in open_.values() for s in subscribed}
            self.samples.append(self.streams - up)
            self.timeline.append((time.monotonic(), open_))
            self.overlap = max(self.overlap, len(open_))
            self._stop.wait(0.05)


def _event_reasons(core: client.CoreV1Api, namespace: str) -> list[tuple[str, str]]:
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=md")
    return [(e.reason or "", e.message or "") for e in events.items]


def test_scaling_three_pods_to_one_moves_the_leaving_connections_first_no_stream_down(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    roomy_exchange: MockThread,
) -> None:
    mock = roomy_exchange
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    body = quota_body(
        namespace, "md", pool, mock.quota_exchange(f"{pool}.test"), STREAMS, connections_per_pod=1
    )
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )
    log = operator_process.log
    wait_ready(api_client, namespace, "md", 120, log)
    held = streams_by_pod(core, namespace, "md")
    assert len(held) == 3 and all(len(v) == 2 for v in held.values()), held
    wait_for(
        lambda: sorted(s for v in mock.open_streams().values() for s in v) == sorted(STREAMS),
        60,
        "every stream subscribed upstream",
    )
    pod0 = _uids(core, namespace)[0]
    ips = pod_ips(api_client, namespace, "md")

    down = TimedStreamsDown(mock, STREAMS).start()
    consumer = SeqConsumer.on_pod(ips[0], STREAMS)
    try:
        wait_for(lambda: consumer.all_grew(dict.fromkeys(STREAMS, 0), 3), 30, "every stream")
        started = time.monotonic()
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {"spec": {"gateway": {"maxReplicas": 1, "connectionsPerPod": 3}}},
        )

        def scaled_down() -> bool:
            sts = apps.read_namespaced_stateful_set("md-gw", namespace)
            return sts.spec.replicas == 1 and list(_uids(core, namespace)) == [0]

        wait_for(scaled_down, 240, f"the fleet scaled to one pod\n{log()}", interval_s=0.3)
        elapsed = time.monotonic() - started
        wait_ready(api_client, namespace, "md", 120, log)
        wait_for(
            lambda: (
                {o: sorted(v) for o, v in streams_by_pod(core, namespace, "md").items()}
                == {0: sorted(STREAMS)}
            ),
            60,
            f"every stream on pod 0\n{log()}",
        )
        before = consumer.counts()
        wait_for(lambda: consumer.all_grew(before, 3), 30, "every stream on pod 0 after")
    finally:
        down.stop()
        consumer.stop()

    # Pod 0 was never replaced: the consumer's socket stayed up through the scale-down.
    assert _uids(core, namespace)[0] == pod0
    reasons = _event_reasons(core, namespace)
    assert any(r == "Draining" and "before scaling down" in m for r, m in reasons), reasons
    assert not any(r == "ScalingDown" for r, _ in reasons), reasons
    # The exchange never saw a declared stream without a subscription, and saw the copies.
    assert len(down.samples) > 50, len(down.samples)
    if down.most_down():
        text = operator_process.log_path.read_text(errors="replace")
        print("\n".join(ln[:400] for ln in text.splitlines() if '"logger":"connquota' in ln))
        last: dict[str, frozenset[str]] | None = None
        for at, open_ in down.timeline:
            if open_ != last:
                print(f"{at - started:+.2f}s", {k: sorted(v) for k, v in open_.items()})
                last = open_
    assert down.most_down() == 0, (
        [(i, sorted(s)) for i, s in enumerate(down.samples) if s][:3],
        sum(1 for s in down.samples if s),
        len(down.samples),
    )
    assert down.overlap > 3, down.overlap
    # The consumer on pod 0: consecutive gateway seq and exchange trade ids, no notice of loss.
    assert consumer.errors == [], consumer.errors
    assert not [n for n in consumer.notices if n.get("notice") == "relay_lost"], consumer.notices
    for stream in STREAMS:
        assert _consecutive(consumer.seqs[stream]), (stream, consumer.seqs[stream])
        ids = consumer.trade_ids[stream]
        assert ids and _consecutive(ids), (stream, ids)
    wait_for(
        lambda: sorted(s for v in mock.open_streams().values() for s in v) == sorted(STREAMS),
        30,
        "every stream subscribed once after the scale-down",
    )
    mock.assert_no_violation()
    peak = mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    print(
        f"scale-down 3 -> 1 make-before-break: {elapsed:.1f}s, {len(down.samples)} samples, "
        f"most streams down {down.most_down()}, most connections open {down.overlap}, "
        f"concurrent peak {peak:.0%}"
    )

    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
    )
    wait_for(lambda: get_quota(api_client, namespace, "md") is None, 120, "deletion")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
