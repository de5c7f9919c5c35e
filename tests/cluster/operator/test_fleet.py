"""The operator with real gateways (run by the pod harness) and the mock exchange as referee.

Limits are shrunk (4 connections per IP, 2 streams per connection, 6 attempts per 2 s) and
time is scaled, so a quota of 8 streams fills the address's concurrent limit to 100%, and every
scenario either keeps the referee silent or fails.
"""

from __future__ import annotations

import json
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
    condition,
    consume,
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.api.report import REPORT_ANNOTATION, EgressCheckState, GatewayReport
from connquota.testing.controlplane import ControlPlane
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

STREAMS = [f"s{i}usdt@trade" for i in range(8)]


def _consumers_get_every_stream(api_client: Any, namespace: str, core: Any) -> None:
    ips = pod_ips(api_client, namespace, "md")
    for ordinal, streams in streams_by_pod(core, namespace, "md").items():
        seen = consume(ips[ordinal], streams)
        for stream, seqs in seen.items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (stream, seqs)


def _every_pod_relays_with_the_operators_peer_token(
    api_client: Any, namespace: str, core: Any
) -> None:
    """The operator created the quota's peer Secret (owned by the quota); every gateway pod
    found the others by Pod IP (its Role lists and watches the quota's Pods) and links to
    each with the mounted token; a consumer on any pod gets every stream of the quota, the
    ones other pods hold relayed, consecutive, with nothing subscribed upstream twice."""
    secret = core.read_namespaced_secret("md-gw-peer", namespace)
    assert [o.kind for o in secret.metadata.owner_references] == ["ExchangeConnectionQuota"]
    assert len(secret.data["token"]) > 40
    ips = pod_ips(api_client, namespace, "md")
    held = streams_by_pod(core, namespace, "md")
    for ordinal, ip in sorted(ips.items()):
        others = {f"http://{other}:8080" for o, other in ips.items() if o != ordinal}
        wait_for(
            lambda ip=ip, others=others: _linked_peers(ip) == others,
            30,
            f"pod {ordinal} linked to its peers {sorted(others)}: {_relay_status(ip)}",
        )
        every = sorted(s for streams in held.values() for s in streams)
        seen = consume(ip, every)
        for stream, seqs in seen.items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (ordinal, stream, seqs)
        relayed = sum(len(v) for o, v in held.items() if o != ordinal)
        assert relayed > 0, held


def _linked_peers(ip: str) -> set[str]:
    peers = _relay_status(ip)["peers"]  # type: ignore[index]
    return {url for url, link in peers.items() if link["connected"]}


def _relay_status(ip: str) -> object:
    import urllib.request

    with urllib.request.urlopen(f"http://{ip}:8080/status", timeout=5) as resp:
        return json.loads(resp.read()).get("relay")


def test_fleet_lifecycle_scale_replace_and_mass_disconnect_within_every_limit(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
    kstatus: Any,
    argocd_health: Any,
    control_plane: ControlPlane,
) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool, echo_url=ip_echo.url)
    )
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "md", pool, exchange, STREAMS),
    )
    log = operator_process.log
    try:
        # Up: 4 connections on 2 pods fill the address's 4 concurrent connections.
        wait_ready(api_client, namespace, "md", 90, log)
        assert apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 2
        # Egress was verified through the pool's echo service, never the exchange (it has no
        # /whoami), and each pod reports it on its Lease.
        leases = client.CoordinationV1Api(api_client)
        for ordinal in (0, 1):
            lease = leases.read_namespaced_lease(f"md-gw-{ordinal}", namespace)
            report = GatewayReport.model_validate_json(
                lease.metadata.annotations[REPORT_ANNOTATION]
            )
            assert [(c.address, c.state) for c in report.egressChecks] == [
                ("lo-2", EgressCheckState.VERIFIED)
            ]
        assert set(ip_echo.requests()) == {"127.0.0.2"}
        # Flux's kstatus judges the Ready quota and its pool Current.
        assert kstatus(get_quota(api_client, namespace, "md"))[0] == "Current"
        pool_obj = objects.get_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        assert kstatus(pool_obj)[0] == "Current"
        # Argo CD's view with the shipped Lua: both Healthy.
        assert argocd_health(get_quota(api_client, namespace, "md"))[0] == "Healthy"
        assert argocd_health(pool_obj)[0] == "Healthy"
        # The operator's status metrics (what the alerts and the dashboard read) agree.
        wait_for(
            lambda: _metrics_agree_with_status(
                operator_process,
                lambda: get_quota(api_client, namespace, "md"),
                lambda: objects.get_cluster_custom_object(
                    GROUP, VERSION, "exchangeegresspools", pool
                ),
            ),
            30,
            "the status metrics to agree with the status",
        )
        # `kubectl wait` (the real client) sees the quota Ready.
        control_plane.kubectl(
            "wait", "--for=condition=Ready", "ecq/md", "-n", namespace, "--timeout=60s"
        )
        # Paused: an edit changes nothing in the fleet; Argo CD shows Suspended on the object
        # the API server returns; unpaused, it is Healthy again.
        before = get_quota(api_client, namespace, "md")
        assert before is not None
        quota_patch = {"spec": {"paused": True, "streams": [{"name": s} for s in STREAMS[:4]]}}
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md", quota_patch
        )
        paused = wait_for(
            lambda: (
                lambda q: (
                    q
                    if q and q["status"].get("observedGeneration") == q["metadata"]["generation"]
                    else None
                )
            )(get_quota(api_client, namespace, "md")),
            30,
            f"the paused edit observed\n{log()}",
        )
        assert argocd_health(paused)[0] == "Suspended"
        assert kstatus(paused)[0] == "Current"
        assert paused["status"]["planGeneration"] == before["status"]["planGeneration"]
        assert apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 2
        resume = {"spec": {"paused": False, "streams": [{"name": s} for s in STREAMS]}}
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md", resume
        )
        wait_ready(api_client, namespace, "md", 60, log)
        assert argocd_health(get_quota(api_client, namespace, "md"))[0] == "Healthy"
        _consumers_get_every_stream(api_client, namespace, core)
        _every_pod_relays_with_the_operators_peer_token(api_client, namespace, core)
        # Relaying opened nothing upstream: each stream is subscribed once, as planned (I2).
        upstream = sorted(s for streams in mock_exchange.open_streams().values() for s in streams)
        assert upstream == sorted(STREAMS), upstream
        mock_exchange.assert_no_violation()
        assert mock_exchange.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) >= 0.9

        # A restarted operator resumes without reopening anything.
        before = mock_exchange.open_connections()
        operator_process.stop()
        operator_process.start()
        reconciles = wait_for(
            lambda: operator_process.metric("connquota_operator_reconciles_total"),
            60,
            "a reconcile after the restart",
        )
        wait_ready(api_client, namespace, "md", 60, log)
        assert reconciles >= 1
        assert mock_exchange.open_connections() == before

        # Scale down: half the streams leave; pod 1 empties, then the StatefulSet shrinks.
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {"spec": {"streams": [{"name": s} for s in STREAMS[:4]]}},
        )
        wait_for(
            lambda: apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 1,
            60,
            f"scale-down to 1 replica\n{log()}",
        )
        wait_ready(api_client, namespace, "md", 60, log)
        # Scale up again.
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {"spec": {"streams": [{"name": s} for s in STREAMS]}},
        )
        wait_ready(api_client, namespace, "md", 90, log)
        assert apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 2
        # Egress was verified through the pool's echo service, never the exchange (it has no
        # /whoami), and each pod reports it on its Lease.
        leases = client.CoordinationV1Api(api_client)
        for ordinal in (0, 1):
            lease = leases.read_namespaced_lease(f"md-gw-{ordinal}", namespace)
            report = GatewayReport.model_validate_json(
                lease.metadata.annotations[REPORT_ANNOTATION]
            )
            assert [(c.address, c.state) for c in report.egressChecks] == [
                ("lo-2", EgressCheckState.VERIFIED)
            ]
        assert set(ip_echo.requests()) == {"127.0.0.2"}
        # Flux's kstatus judges the Ready quota and its pool Current.
        assert kstatus(get_quota(api_client, namespace, "md"))[0] == "Current"
        pool_obj = objects.get_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        assert kstatus(pool_obj)[0] == "Current"
        mock_exchange.assert_no_violation()

        # A gateway pod deleted and replaced (fresh emptyDir: it starts conservatively).
        core.delete_namespaced_pod("md-gw-0", namespace)
        wait_for(
            lambda: (
                len(mock_exchange.open_connections()) == 4
                and 0 in pod_ips(api_client, namespace, "md")
            ),
            90,
            f"pod md-gw-0 replaced and reconnected\n{log()}",
            interval_s=0.3,
        )
        wait_ready(api_client, namespace, "md", 60, log)
        _consumers_get_every_stream(api_client, namespace, core)
        mock_exchange.assert_no_violation()

        # A mass disconnect at the exchange: everything reconnects within the limits.
        assert mock_exchange.disconnect_all() == 4
        wait_for(
            lambda: len(mock_exchange.open_connections()) == 4,
            60,
            "reconnection after the mass disconnect",
            interval_s=0.3,
        )
        _consumers_get_every_stream(api_client, namespace, core)
        mock_exchange.assert_no_violation()

        # The exchange answers the next reconnect with 429: the gateway quarantines the
        # address, the quota says RateLimited (condition, metric, Warning Event) and, once
        # the Retry-After has passed, everything reconnects.
        mock_exchange.refuse_next_handshakes(1, 429, retry_after_s=10)
        assert mock_exchange.disconnect_all() == 4
        wait_for(
            lambda: (
                (condition(get_quota(api_client, namespace, "md"), "RateLimited") or {}).get(
                    "status"
                )
                == "True"
            ),
            60,
            f"RateLimited on the quota\n{log()}",
            interval_s=0.3,
        )
        assert (
            {"namespace": namespace, "quota": "md", "condition": "RateLimited"},
            1.0,
        ) in operator_process.samples("connquota_quota_condition")
        wait_for(
            lambda: len(mock_exchange.open_connections()) == 4,
            90,
            "reconnection after the quarantine",
            interval_s=0.3,
        )
        wait_ready(api_client, namespace, "md", 90, log)
        mock_exchange.assert_no_violation()
        # `kubectl describe` tells the story: plans, scaling, the quarantine.
        described = control_plane.kubectl("describe", "ecq", "md", "-n", namespace).stdout
        events = described[described.index("Events:") :]
        for reason in ("PlanPublished", "ScaledUp", "ScaledDown", "RateLimited"):
            assert reason in events, described
        assert "quarantined after 429" in events, described
    finally:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
    wait_for(lambda: get_quota(api_client, namespace, "md") is None, 90, f"deletion\n{log()}")
    assert mock_exchange.open_connections() == set()
    mock_exchange.assert_no_violation()
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)


def _metrics_agree_with_status(
    operator_process: OperatorProcess, read_quota: Any, read_pool: Any
) -> bool:
    """True when the operator's status metrics say what the quota's and the pool's status say
    (both read now: reported use moves); raises ValueError with both views otherwise."""
    quota, pool = read_quota(), read_pool()
    ns, name = quota["metadata"]["namespace"], quota["metadata"]["name"]
    mine = {"namespace": ns, "quota": name}

    def of_quota(metric: str) -> list[tuple[dict[str, str], float]]:
        rows = operator_process.samples(metric)
        return [(labels, v) for labels, v in rows if labels.items() >= mine.items()]

    status = quota["status"]
    from_metrics = {
        "conditions": {
            labels["condition"]: v for labels, v in of_quota("connquota_quota_condition")
        },
        "streams": {labels["state"]: v for labels, v in of_quota("connquota_quota_streams")},
        "used": {
            (labels["scope"], labels["key"], labels["limit"]): v
            for labels, v in of_quota("connquota_quota_limit_used")
        },
        "budgets": {
            (labels["address"], labels["limit"]): v
            for labels, v in operator_process.samples("connquota_pool_budget")
            if labels["pool"] == pool["metadata"]["name"]
        },
    }
    from_status = {
        "conditions": {c["type"]: float(c["status"] == "True") for c in status["conditions"]},
        "streams": {k: float(v) for k, v in status["streams"].items()},
        "used": {
            (scope, row["key"], lim["limit"]): float(lim.get("used", 0))
            for field, scope in (("addresses", "ip"), ("accounts", "account"))
            for row in status.get(field) or []
            for lim in row["limits"]
        },
        "budgets": {
            (b["address"], b["limit"]): float(b["budget"]) for b in pool["status"]["budgets"]
        },
    }
    if from_metrics != from_status or not from_status["used"]:
        raise ValueError(f"metrics {from_metrics} != status {from_status}")
    assert from_metrics["conditions"]["Ready"] == 1.0
    return True
