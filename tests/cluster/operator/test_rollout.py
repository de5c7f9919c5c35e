"""A new gateway pod template rolled out by the operator (issue 14), on the real API server with
the real StatefulSet controller (`OnDelete`: it recreates an evicted pod at the new revision),
real gateways run by the pod harness, and the mock exchange as referee.

A 3-pod fleet (one connection of two streams per pod) gets a new pod annotation through
`podOverrides`. The operator evicts the pods one at a time, highest ordinal first, each only
once every other pod is Ready, enforces its plan and serves its streams; `status.rollout` shows
the progress and `RolledOut` turns True (`kubectl wait --for=condition=RolledOut` returns); every
stream is live again and the referee saw no violation.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import HARNESS_LABEL, wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    MockThread,
    condition,
    consume,
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    streams_by_pod,
    wait_ready,
)
from connquota.operator import names
from connquota.testing.controlplane import ControlPlane
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

STREAMS = [f"{s}@trade" for s in ("btcusdt", "ethusdt", "bnbusdt", "solusdt", "xrpusdt", "adausdt")]


class PodSampler:
    """Lists the quota's pods every 0.2 s in a thread: per sample, ordinal -> (uid, template
    hash, available) where available means Ready and not terminating."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.samples: list[dict[int, tuple[str, str, bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PodSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample: dict[int, tuple[str, str, bool]] = {}
            for pod in self.core.list_namespaced_pod(
                self.namespace, label_selector="connquota.io/quota=md"
            ).items:
                ready = any(
                    c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])
                )
                ordinal = int(pod.metadata.name.rsplit("-", 1)[-1])
                template = (pod.metadata.annotations or {}).get(names.ANNOTATION_TEMPLATE_HASH)
                available = ready and pod.metadata.deletion_timestamp is None
                sample[ordinal] = (pod.metadata.uid, template or "", available)
            self.samples.append(sample)
            self._stop.wait(0.2)


def test_a_new_pod_template_rolls_out_one_pod_at_a_time_highest_first_within_every_limit(
    api_client: Any,
    control_plane: ControlPlane,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
) -> None:
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    body = quota_body(namespace, "md", pool, exchange, STREAMS, connections_per_pod=1)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )
    log = operator_process.log
    wait_ready(api_client, namespace, "md", 120, log)
    held = streams_by_pod(core, namespace, "md")
    assert len(held) == 3 and all(len(v) == 2 for v in held.values()), held
    quota = get_quota(api_client, namespace, "md")
    assert quota is not None
    before = quota["status"]["rollout"]
    assert (before["updated"], before["total"]) == (3, 3), before
    assert (condition(quota, "RolledOut") or {}).get("status") == "True"
    old_uids = {o: p[0] for o, p in _pods(core, namespace).items()}
    old_template = before["template"]

    sampler = PodSampler(core, namespace).start()
    seen_rollouts: list[dict[str, Any]] = []
    seen_conditions: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
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

        def rolled_out() -> bool:
            q = get_quota(api_client, namespace, "md") or {}
            status = q.get("status") or {}
            rollout = status.get("rollout") or {}
            cond = condition(q, "RolledOut") or {}
            if rollout:
                seen_rollouts.append(rollout)
            if cond:
                seen_conditions.append(cond)
            pods = _pods(core, namespace)
            return (
                rollout.get("template") not in (None, old_template)
                and rollout.get("updated") == 3
                and cond.get("status") == "True"
                and status.get("observedGeneration") == q["metadata"]["generation"]
                and len(pods) == 3
                and all(uid != old_uids[o] for o, (uid, _) in pods.items())
            )

        wait_for(rolled_out, 240, f"the rollout to finish\n{log()}", interval_s=0.3)
        elapsed = time.monotonic() - started
        # kubectl wait reads the same condition.
        control_plane.kubectl(
            "wait", "--for=condition=RolledOut", "ecq/md", "-n", namespace, "--timeout=30s"
        )
        wait_ready(api_client, namespace, "md", 120, log)
        # Done: nothing current, nothing waited for (a merge patch must null them).
        final_rollout = (get_quota(api_client, namespace, "md") or {})["status"]["rollout"]
        assert set(final_rollout) == {"template", "updated", "total"}, final_rollout
    finally:
        sampler.stop()

    # Status showed the progress: RollingOut with a current pod and what it waited for.
    rolling = [c for c in seen_conditions if c["status"] == "False"]
    assert rolling and all(c["reason"] == "RollingOut" for c in rolling), seen_conditions[:5]
    progress = [r for r in seen_rollouts if r.get("template") != old_template]
    assert {1, 2} & {r["updated"] for r in progress}, progress
    assert any(r.get("currentPod") and r.get("waitingFor") for r in progress), progress[:10]
    assert any(r.get("recoverySeconds") is not None for r in progress), progress[:10]
    new_template = progress[-1]["template"]

    # One pod at a time: never two of the three unavailable in one listing; replaced highest
    # ordinal first; every pod ends on the new template.
    worst = max(
        sum(1 for o in range(3) if not s.get(o, ("", "", False))[2]) for s in sampler.samples
    )
    assert worst <= 1, "two pods were unavailable at once"
    order: list[int] = []
    for sample in sampler.samples:
        for ordinal, (uid, _, _) in sample.items():
            if uid != old_uids[ordinal] and ordinal not in order:
                order.append(ordinal)
    assert order == [2, 1, 0], order
    final = _pods(core, namespace)
    assert all(template == new_template for _, template in final.values()), final

    # Every stream live again, served, and the referee saw nothing beyond any limit.
    wait_for(
        lambda: (
            sorted(s for v in mock_exchange.open_streams().values() for s in v) == sorted(STREAMS)
        ),
        60,
        f"every stream subscribed upstream once\n{log()}",
    )
    ips = pod_ips(api_client, namespace, "md")
    for ordinal, streams in streams_by_pod(core, namespace, "md").items():
        seen = consume(ips[ordinal], streams)
        for stream, seqs in seen.items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (stream, seqs)
    mock_exchange.assert_no_violation()
    print(f"rollout of 3 pods: {elapsed:.1f}s; {len(progress)} status samples")

    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
    )
    wait_for(lambda: get_quota(api_client, namespace, "md") is None, 120, "deletion")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)


def _pods(core: client.CoreV1Api, namespace: str) -> dict[int, tuple[str, str]]:
    """ordinal -> (uid, template hash) of the quota's pods that are not terminating."""
    out = {}
    for pod in core.list_namespaced_pod(namespace, label_selector="connquota.io/quota=md").items:
        if pod.metadata.deletion_timestamp is None:
            annotations = pod.metadata.annotations or {}
            out[int(pod.metadata.name.rsplit("-", 1)[-1])] = (
                pod.metadata.uid,
                annotations.get(names.ANNOTATION_TEMPLATE_HASH, ""),
            )
    return out
