"""A rollout that drains each pod make-before-break (issue 14): on the real API server with the
real StatefulSet controller, real gateways run by the pod harness, the mock exchange as referee.

A 3-pod fleet (one connection of two streams per pod, `connectionsPerPod` 1) on an address
whose concurrent budget (8) leaves every pod spare room gets a new pod template. Before each
pod is evicted, copies of its connections open on the other pods (one extra connection each at
most), then the pod lets its own go; after its successor is up it reopens them beside the copies
and the copies close. The mock exchange, sampled every 50 ms, never sees a declared stream
without an open subscription; a `/v1/ws` consumer on pod 0 sees consecutive gateway `seq` and
consecutive exchange trade ids through the replacement of pods 2 and 1; no limit is exceeded.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import HARNESS_LABEL, wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    condition,
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.testing.chaos import SeqConsumer
from connquota.testing.controlplane import ControlPlane
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

STREAMS = [f"{s}@trade" for s in ("btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt")]


@pytest.fixture
def roomy_exchange() -> Iterator[MockThread]:
    """Two streams per connection, six attempts per 2 s and 8 concurrent connections per IP:
    three connections leave the pods' concurrent slices spare room for the copies."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(8, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )
    try:
        yield mock
    finally:
        mock.stop()


class StreamsDown:
    """Samples the mock exchange every 50 ms in a thread: per sample, the declared streams no
    open connection has subscribed (the exchange's own view of what is down)."""

    def __init__(self, mock: MockThread, streams: list[str]) -> None:
        self.mock = mock
        self.streams = set(streams)
        self.samples: list[set[str]] = []
        self.overlap = 0
        """The most connections open at once in a sample."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streams-down", daemon=True)

    def start(self) -> StreamsDown:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            open_ = self.mock.open_streams()
            up = {s for subscribed in open_.values() for s in subscribed}
            self.samples.append(self.streams - up)
            self.overlap = max(self.overlap, len(open_))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()

    def most_down(self) -> int:
        return max((len(s) for s in self.samples), default=-1)


def _consecutive(values: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(values))


def _uids(core: client.CoreV1Api, namespace: str) -> dict[int, str]:
    out = {}
    for pod in core.list_namespaced_pod(namespace, label_selector="connquota.io/quota=md").items:
        if pod.metadata.deletion_timestamp is None:
            out[int(pod.metadata.name.rsplit("-", 1)[-1])] = pod.metadata.uid
    return out


def test_a_rollout_moves_each_pods_connections_first_no_stream_down_consecutive_seq(
    api_client: Any,
    control_plane: ControlPlane,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    roomy_exchange: MockThread,
) -> None:
    mock = roomy_exchange
    core = client.CoreV1Api(api_client)
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
    old_uids = _uids(core, namespace)
    old_template = get_quota(api_client, namespace, "md")["status"]["rollout"]["template"]
    ips = pod_ips(api_client, namespace, "md")

    down = StreamsDown(mock, STREAMS).start()
    consumer = SeqConsumer.on_pod(ips[0], STREAMS)
    seen: list[dict[str, Any]] = []
    try:
        wait_for(lambda: consumer.all_grew(dict.fromkeys(STREAMS, 0), 3), 30, "every stream")
        started = time.monotonic()
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {
                "spec": {
                    "gateway": {
                        "podOverrides": {
                            "labels": {HARNESS_LABEL: "true"},
                            "annotations": {"example.com/rollout": "2"},
                        }
                    }
                }
            },
        )

        def rollout() -> dict[str, Any]:
            status = (get_quota(api_client, namespace, "md") or {}).get("status") or {}
            r = status.get("rollout") or {}
            if r:
                seen.append(r)
            return r

        # The consumer on pod 0 reads through the replacement of pods 2 and 1; it stops when
        # pod 0 itself is drained (its own socket goes with the pod).
        wait_for(
            lambda: rollout().get("currentPod") == "md-gw-0",
            240,
            f"pods 2 and 1 replaced\n{log()}",
            interval_s=0.3,
        )
        replaced = {o for o, uid in _uids(core, namespace).items() if uid != old_uids.get(o)}
        assert replaced == {1, 2}, replaced
        before = consumer.counts()
        wait_for(lambda: consumer.all_grew(before, 2), 30, "every stream on pod 0")
        consumer.stop()

        def rolled_out() -> bool:
            q = get_quota(api_client, namespace, "md") or {}
            r = rollout()
            cond = condition(q, "RolledOut") or {}
            uids = _uids(core, namespace)
            return (
                r.get("template") not in (None, old_template)
                and r.get("updated") == 3
                and cond.get("status") == "True"
                and len(uids) == 3
                and all(uid != old_uids[o] for o, uid in uids.items())
            )

        wait_for(rolled_out, 240, f"the rollout to finish\n{log()}", interval_s=0.3)
        elapsed = time.monotonic() - started
        control_plane.kubectl(
            "wait", "--for=condition=RolledOut", "ecq/md", "-n", namespace, "--timeout=30s"
        )
        wait_ready(api_client, namespace, "md", 120, log)
    finally:
        down.stop()
        consumer.stop()

    # The exchange never saw a declared stream without a subscription, and saw the copies.
    assert len(down.samples) > 100, len(down.samples)
    assert down.most_down() == 0, [sorted(s) for s in down.samples if s][:5]
    assert down.overlap > 3, down.overlap
    # The consumer on pod 0: consecutive gateway seq and exchange trade ids, no notice of loss.
    assert consumer.errors == [], consumer.errors
    assert not [n for n in consumer.notices if n.get("notice") == "relay_lost"], consumer.notices
    for stream in STREAMS:
        assert _consecutive(consumer.seqs[stream]), (stream, consumer.seqs[stream])
        ids = consumer.trade_ids[stream]
        assert ids and _consecutive(ids), (stream, ids)
    # Status said what the rollout waited for, and that it moved connections first.
    waits = [r.get("waitingFor", "") for r in seen]
    assert any("copies" in w for w in waits), waits[:20]
    assert not any(r.get("recoverySeconds") for r in seen), seen[:10]
    # Back on the plan it started from: one connection per pod, every stream once.
    assert streams_by_pod(core, namespace, "md") == held
    wait_for(
        lambda: sorted(s for v in mock.open_streams().values() for s in v) == sorted(STREAMS),
        30,
        "every stream subscribed once after the rollout",
    )
    mock.assert_no_violation()
    peak = mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    print(
        f"rollout of 3 pods make-before-break: {elapsed:.1f}s, {len(down.samples)} samples, "
        f"most streams down {down.most_down()}, most connections open {down.overlap}, "
        f"concurrent peak {peak:.0%}"
    )

    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
    )
    wait_for(lambda: get_quota(api_client, namespace, "md") is None, 120, "deletion")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
