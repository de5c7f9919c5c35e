"""The pod harness plays kubelet and scheduler faithfully enough for gateway pods."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from connquota.testing.podharness import POD_ROOT_ENV, PodHarness

from .conftest import HARNESS_LABEL, NODE_MONITOR_GRACE_S, wait_for

pytestmark = pytest.mark.cluster

PODSERVER = str(Path(__file__).with_name("podserver.py"))
PORT = 8080


def pod_manifest(
    name: str,
    env: list[dict[str, Any]] | None = None,
    *,
    grace_s: int = 30,
    readiness: dict[str, Any] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    mounts: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    harness_label: str = HARNESS_LABEL,
) -> dict[str, Any]:
    """A Pod running tests/cluster/podserver.py under the harness."""
    base_env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "PORT", "value": str(PORT)},
    ]
    container: dict[str, Any] = {
        "name": "server",
        "image": "connquota/podserver:test",
        "command": [sys.executable, PODSERVER],
        "env": base_env + (env or []),
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": readiness
        or {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        "volumeMounts": mounts or [],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {harness_label: "true", **(labels or {})}},
        "spec": {
            "containers": [container],
            "terminationGracePeriodSeconds": grace_s,
            "volumes": volumes or [],
        },
    }


def http(method: str, url: str, timeout_s: float = 5.0) -> tuple[int, Any]:
    """One request to a pod's server on loopback; returns (status, parsed JSON)."""
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines podserver.py appended to its EVENTS_FILE."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def is_ready(pod: Any) -> bool:
    """Whether the Pod's Ready condition is True."""
    conditions = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def wait_ready(core: client.CoreV1Api, namespace: str, name: str, timeout_s: float = 30) -> Any:
    """Wait until the Pod reports Ready; return it."""
    return wait_for(
        lambda: (pod := core.read_namespaced_pod(name, namespace)) and is_ready(pod) and pod,
        timeout_s,
        f"pod {namespace}/{name} Ready",
    )


def wait_gone(core: client.CoreV1Api, namespace: str, name: str, timeout_s: float = 30) -> float:
    """Wait until the Pod object is gone; return the monotonic time it was seen gone."""

    def gone() -> float | None:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return time.monotonic()
            raise
        return None

    return float(wait_for(gone, timeout_s, f"pod {namespace}/{name} deleted"))


@pytest.fixture
def core(api_client: Any) -> client.CoreV1Api:
    """CoreV1Api on the test control plane."""
    return client.CoreV1Api(api_client)


def test_pod_gets_exactly_its_env_downward_api_secret_files_and_token(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str, control_plane: Any
) -> None:
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "creds"}, "stringData": {"apiKey": "k-123", "password": "s3cret"}},
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast", "plan.json": "{}"}}
    )
    env = [
        {"name": "PLAIN", "value": "x-$(PORT)"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {
            "name": "API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "apiKey"}},
        },
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
    ]
    volumes = [
        {"name": "secret", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {
            "name": "settings",
            "configMap": {
                "name": "settings",
                "items": [{"key": "plan.json", "path": "plan/plan.json"}],
            },
        },
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        {"name": "secret", "mountPath": "/etc/connquota/secret", "readOnly": True},
        {"name": "settings", "mountPath": "/etc/connquota/settings"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    core.create_namespaced_pod(
        namespace, pod_manifest("envpod", env, volumes=volumes, mounts=mounts)
    )
    pod = wait_ready(core, namespace, "envpod")
    assert pod.spec.node_name == pod_harness.node_name
    assert pod.status.phase == "Running"
    ip = pod.status.pod_ip
    assert ip.startswith("127.")
    base = f"http://{ip}:{PORT}"

    status, got = http("GET", f"{base}/env")
    assert status == 200
    assert got["PLAIN"] == f"x-{PORT}"
    assert got["POD_NAME"] == "envpod"
    assert got["POD_NAMESPACE"] == namespace
    assert got["POD_IP"] == ip
    assert got["API_KEY"] == "k-123"
    assert got["MODE"] == "fast"
    assert got["KUBERNETES_SERVICE_PORT"] == str(control_plane.apiserver_port)
    # Nothing else leaks in from the test process: only spec env plus what a kubelet adds.
    spec_names = {"POD_IP", "PORT", "PLAIN", "POD_NAME", "POD_NAMESPACE", "API_KEY", "MODE"}
    added = {
        "PATH",
        "HOSTNAME",
        "KUBERNETES_SERVICE_HOST",
        "KUBERNETES_SERVICE_PORT",
        "KUBERNETES_SERVICE_PORT_HTTPS",
        POD_ROOT_ENV,
    }
    # CPython may add LC_CTYPE when it coerces the C locale.
    assert set(got) - {"LC_CTYPE"} == spec_names | added
    assert got["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)

    status, secret_file = http("GET", f"{base}/file?path=/etc/connquota/secret/password")
    assert status == 200 and secret_file["content"] == "s3cret"
    assert secret_file["mode"] & 0o777 == 0o400
    status, plan = http("GET", f"{base}/file?path=/etc/connquota/settings/plan/plan.json")
    assert status == 200 and plan["content"] == "{}"
    # Items restrict a ConfigMap volume to the listed keys.
    assert http("GET", f"{base}/file?path=/etc/connquota/settings/mode")[0] == 404

    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    status, token = http("GET", f"{base}/file?path={sa_dir}/token")
    assert status == 200
    assert http("GET", f"{base}/file?path={sa_dir}/namespace")[1]["content"] == namespace
    assert "BEGIN CERTIFICATE" in http("GET", f"{base}/file?path={sa_dir}/ca.crt")[1]["content"]

    # The token is a real, pod-bound ServiceAccount token the API server accepts.
    review = client.AuthenticationV1Api(core.api_client).create_token_review(
        {"spec": {"token": token["content"]}}
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == ["envpod"]


def test_ready_condition_follows_the_readiness_endpoint(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    readiness = {
        "httpGet": {"path": "/ready", "port": PORT},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    core.create_namespaced_pod(
        namespace,
        pod_manifest("readypod", [{"name": "READY_AT_START", "value": "0"}], readiness=readiness),
    )

    def running_not_ready() -> Any:
        pod = core.read_namespaced_pod("readypod", namespace)
        statuses = pod.status.container_statuses or []
        return pod.status.phase == "Running" and statuses and statuses[0].started and pod

    pod = wait_for(running_not_ready, 30, "readypod running")
    base = f"http://{pod.status.pod_ip}:{PORT}"
    wait_for(lambda: http("GET", f"{base}/ready")[0] == 503, 10, "server up")
    assert not is_ready(core.read_namespaced_pod("readypod", namespace))

    http("POST", f"{base}/ready/1")
    wait_ready(core, namespace, "readypod", 15)
    http("POST", f"{base}/ready/0")
    wait_for(lambda: not is_ready(core.read_namespaced_pod("readypod", namespace)), 15, "not ready")


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    grace_s = 2
    env = [{"name": "IGNORE_SIGTERM", "value": "1"}, {"name": "EVENTS_FILE", "value": str(events)}]
    core.create_namespaced_pod(namespace, pod_manifest("stubborn", env, grace_s=grace_s))
    wait_ready(core, namespace, "stubborn")

    core.delete_namespaced_pod("stubborn", namespace)
    gone_at = wait_gone(core, namespace, "stubborn", 30)

    (record,) = pod_harness.processes(namespace, "stubborn")
    names = [name for name, _ in record.signals]
    assert names == ["SIGTERM", "SIGKILL"]
    term_at, kill_at = (t for _, t in record.signals)
    assert kill_at - term_at >= grace_s - 0.05
    assert record.returncode == -9
    assert record.exited_at is not None and record.exited_at <= gone_at
    assert [e["event"] for e in read_events(events)] == ["start", "sigterm"]
    # The log of a Pod that is gone stays readable until the harness stops.
    assert "podserver listening on 127." in pod_harness.logs(namespace, "stubborn")


def test_a_process_that_honours_sigterm_is_not_killed(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    env = [{"name": "EVENTS_FILE", "value": str(events)}]
    core.create_namespaced_pod(namespace, pod_manifest("polite", env, grace_s=20))
    wait_ready(core, namespace, "polite")
    core.delete_namespaced_pod("polite", namespace)
    wait_gone(core, namespace, "polite", 15)
    (record,) = pod_harness.processes(namespace, "polite")
    assert [name for name, _ in record.signals] == ["SIGTERM"]
    assert record.returncode == 0
    assert [e["event"] for e in read_events(events)] == ["start", "sigterm"]


def test_emptydir_survives_a_container_restart_and_is_wiped_on_replacement(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"

    def manifest() -> dict[str, Any]:
        return pod_manifest(
            "counter",
            [
                {"name": "COUNTER_DIR", "value": "/data"},
                {"name": "EVENTS_FILE", "value": str(events)},
            ],
            grace_s=5,
            volumes=[{"name": "data", "emptyDir": {}}],
            mounts=[{"name": "data", "mountPath": "/data"}],
        )

    def counters() -> list[int]:
        return [e["counter"] for e in read_events(events) if e["event"] == "start"]

    core.create_namespaced_pod(namespace, manifest())
    pod = wait_ready(core, namespace, "counter")
    assert counters() == [1]

    http("POST", f"http://{pod.status.pod_ip}:{PORT}/exit/3")
    restarted = wait_for(
        lambda: (
            (p := core.read_namespaced_pod("counter", namespace))
            and p.status.container_statuses[0].restart_count == 1
            and is_ready(p)
            and p
        ),
        30,
        "counter restarted and ready",
    )
    assert counters() == [1, 2]
    last = restarted.status.container_statuses[0].last_state.terminated
    assert last.exit_code == 3

    core.delete_namespaced_pod("counter", namespace)
    wait_gone(core, namespace, "counter")
    core.create_namespaced_pod(namespace, manifest())
    wait_ready(core, namespace, "counter")
    assert counters() == [1, 2, 1]


def test_a_successor_with_the_same_name_starts_only_after_the_old_process_exited(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    grace_s = 3
    env = [{"name": "IGNORE_SIGTERM", "value": "1"}]
    core.create_namespaced_pod(namespace, pod_manifest("ordinal-0", env, grace_s=grace_s))
    wait_ready(core, namespace, "ordinal-0")

    # Force deletion: the object is gone at once, the process keeps running for its grace.
    core.delete_namespaced_pod("ordinal-0", namespace, grace_period_seconds=0)
    wait_gone(core, namespace, "ordinal-0", 10)
    core.create_namespaced_pod(namespace, pod_manifest("ordinal-0", env, grace_s=grace_s))
    wait_ready(core, namespace, "ordinal-0", 30)

    old, new = pod_harness.processes(namespace, "ordinal-0")
    assert old.uid != new.uid
    assert old.exited_at is not None
    assert new.started_at >= old.exited_at
    assert [name for name, _ in old.signals] == ["SIGTERM", "SIGKILL"]


def test_statefulset_pods_from_the_controller_manager_run_and_become_ready(
    api_client: Any, core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    apps = client.AppsV1Api(api_client)
    template = pod_manifest("unused", labels={"app": "gw"})
    template["metadata"].pop("name")
    del template["apiVersion"], template["kind"]
    apps.create_namespaced_stateful_set(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "gw"},
            "spec": {
                "replicas": 2,
                "serviceName": "gw",
                "podManagementPolicy": "Parallel",
                "updateStrategy": {"type": "OnDelete"},
                "selector": {"matchLabels": {"app": "gw"}},
                "template": template,
            },
        },
    )
    sts = wait_for(
        lambda: (
            (s := apps.read_namespaced_stateful_set("gw", namespace))
            and (s.status.ready_replicas or 0) == 2
            and s
        ),
        60,
        "StatefulSet gw with 2 ready replicas",
    )
    assert sts.status.replicas == 2
    pods = core.list_namespaced_pod(namespace, label_selector="app=gw").items
    assert sorted(p.metadata.name for p in pods) == ["gw-0", "gw-1"]
    assert len({p.status.pod_ip for p in pods}) == 2
    for pod in pods:
        assert pod.metadata.owner_references[0].kind == "StatefulSet"
        assert http("GET", f"http://{pod.status.pod_ip}:{PORT}/ready")[0] == 200
    env = http("GET", f"http://{pods[0].status.pod_ip}:{PORT}/env")[1]
    assert env["HOSTNAME"] == pods[0].metadata.name


def _node_healthy(core: client.CoreV1Api, name: str) -> tuple[bool, str]:
    node = core.read_node(name)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    taints = [t.key for t in (node.spec.taints or [])]
    ok = bool(ready) and ready[0].status == "True" and not taints
    return ok, f"ready={ready[0].status if ready else None} taints={taints}"


def _watch_node_stay_healthy(
    core: client.CoreV1Api,
    coordination: client.CoordinationV1Api,
    harness: PodHarness,
    namespace: str,
    duration_s: float,
) -> None:
    core.create_namespaced_pod(namespace, pod_manifest("longrun"))
    wait_ready(core, namespace, "longrun")
    renewals = set()
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        ok, detail = _node_healthy(core, harness.node_name)
        assert ok, f"harness node unhealthy: {detail}"
        lease = coordination.read_namespaced_lease(harness.node_name, "kube-node-lease")
        renewals.add(lease.spec.renew_time)
        pod = core.read_namespaced_pod("longrun", namespace)
        assert pod.metadata.deletion_timestamp is None
        assert pod.status.phase == "Running" and is_ready(pod)
        time.sleep(0.5)
    # The lease was renewed throughout, several times per grace period.
    assert len(renewals) >= duration_s / harness.lease_renew_interval_s / 2
    assert not harness.errors, harness.errors


def test_node_lease_renewals_keep_the_node_ready_across_several_grace_periods(
    api_client: Any, core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    # The controller manager runs with --node-monitor-grace-period=8s: a node whose lease
    # is not renewed for 8 s is marked NotReady/unreachable and tainted. Three periods pass.
    _watch_node_stay_healthy(
        core,
        client.CoordinationV1Api(api_client),
        pod_harness,
        namespace,
        3 * NODE_MONITOR_GRACE_S + 2,
    )


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_pods_still_running_after_ten_minutes_of_lease_renewals(
    api_client: Any, core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    _watch_node_stay_healthy(
        core, client.CoordinationV1Api(api_client), pod_harness, namespace, 600
    )


def test_a_node_without_lease_renewals_is_marked_unhealthy(
    api_client: Any, control_plane: Any
) -> None:
    """The check above can fail: a node whose lease is never renewed gets tainted."""
    core = client.CoreV1Api(api_client)
    harness = PodHarness(
        api_client,
        "connquota.io/never-matches=true",
        node_name="connquota-silent",
        api_port=control_plane.apiserver_port,
        lease_renew_interval_s=3600,
        node_status_interval_s=3600,
    )
    harness.start()
    try:
        wait_for(
            lambda: not _node_healthy(core, "connquota-silent")[0],
            NODE_MONITOR_GRACE_S * 4,
            "the silent node to be marked unhealthy",
            interval_s=0.5,
        )
    finally:
        harness.stop()


def test_a_failing_liveness_probe_restarts_the_container(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    manifest = pod_manifest("liveness", grace_s=5)
    manifest["spec"]["containers"][0]["livenessProbe"] = {
        "httpGet": {"path": "/ready", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_ready(core, namespace, "liveness")
    http("POST", f"http://{pod.status.pod_ip}:{PORT}/ready/0")
    wait_for(
        lambda: (
            (p := core.read_namespaced_pod("liveness", namespace))
            and p.status.container_statuses[0].restart_count == 1
            and is_ready(p)
        ),
        30,
        "the container restarted after failing liveness, and ready again",
    )
    first, second = pod_harness.processes(namespace, "liveness")
    assert [name for name, _ in first.signals] == ["SIGTERM"]
    assert second.started_at >= (first.exited_at or 0)


def test_configmap_volume_files_follow_configmap_updates(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "plan"}, "data": {"plan.json": '{"generation": 1}'}}
    )
    manifest = pod_manifest(
        "planreader",
        volumes=[{"name": "plan", "configMap": {"name": "plan"}}],
        mounts=[{"name": "plan", "mountPath": "/etc/connquota/plan", "readOnly": True}],
    )
    core.create_namespaced_pod(namespace, manifest)
    pod = wait_ready(core, namespace, "planreader")
    url = f"http://{pod.status.pod_ip}:{PORT}/file?path=/etc/connquota/plan/plan.json"
    assert http("GET", url)[1]["content"] == '{"generation": 1}'
    core.patch_namespaced_config_map(
        "plan",
        namespace,
        {"data": {"plan.json": '{"generation": 2}'}},
        _content_type="application/merge-patch+json",
    )
    wait_for(
        lambda: http("GET", url)[1]["content"] == '{"generation": 2}',
        15,
        "the updated plan file",
    )


def test_pods_are_bound_to_the_harness_node_their_selector_and_affinity_admit(
    api_client: Any, core: client.CoreV1Api, control_plane: Any, namespace: str
) -> None:
    label = "connquota.io/test-scheduling"
    harness = PodHarness(
        api_client,
        f"{label}=true",
        node_name="sched-a",
        extra_node_names=["sched-b"],
        api_port=control_plane.apiserver_port,
    )
    with harness:
        by_selector = pod_manifest("by-selector", harness_label=label)
        by_selector["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "sched-b"}
        by_affinity = pod_manifest("by-affinity", harness_label=label)
        by_affinity["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": ["elsewhere", "sched-b"],
                                }
                            ]
                        }
                    ]
                }
            }
        }
        nowhere = pod_manifest("nowhere", harness_label=label)
        nowhere["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node-9"}
        free = pod_manifest("free", harness_label=label)
        for manifest in (by_selector, by_affinity, nowhere, free):
            core.create_namespaced_pod(namespace, manifest)
        assert wait_ready(core, namespace, "by-selector").spec.node_name == "sched-b"
        assert wait_ready(core, namespace, "by-affinity").spec.node_name == "sched-b"
        assert wait_ready(core, namespace, "free").spec.node_name == "sched-a"
        wait_for(
            lambda: any("nowhere: no harness node fits" in e for e in harness.errors),
            10,
            "the unschedulable pod to be reported",
        )
        pending = core.read_namespaced_pod("nowhere", namespace)
        assert pending.spec.node_name is None
        assert pending.status.phase == "Pending"
        env = http(
            "GET", f"http://{core.read_namespaced_pod('free', namespace).status.pod_ip}:{PORT}/env"
        )
        assert env[0] == 200


def test_pods_are_never_bound_to_a_cordoned_node_and_spread_picks_the_least_loaded(
    api_client: Any, core: client.CoreV1Api, control_plane: Any, namespace: str
) -> None:
    label = "connquota.io/test-cordon"
    suffix = uuid.uuid4().hex[:6]
    first, second = f"cordon-a-{suffix}", f"cordon-b-{suffix}"
    harness = PodHarness(
        api_client,
        f"{label}=true",
        node_name=first,
        extra_node_names=[second],
        spread=True,
        api_port=control_plane.apiserver_port,
    )
    with harness:
        # Spread: the second pod goes to the node with fewer pods.
        core.create_namespaced_pod(namespace, pod_manifest("one", harness_label=label))
        assert wait_ready(core, namespace, "one").spec.node_name == first
        core.create_namespaced_pod(namespace, pod_manifest("two", harness_label=label))
        assert wait_ready(core, namespace, "two").spec.node_name == second
        # Cordoned (as kubectl cordon and kubectl drain do): no new pod lands there, even
        # when it has fewer pods.
        control_plane.kubectl("cordon", second)
        core.delete_namespaced_pod("two", namespace)
        wait_gone(core, namespace, "two")
        core.create_namespaced_pod(namespace, pod_manifest("three", harness_label=label))
        assert wait_ready(core, namespace, "three").spec.node_name == first
        # A pod tolerating the unschedulable taint (a DaemonSet's) may still go there.
        tolerant = pod_manifest("tolerant", harness_label=label)
        tolerant["spec"]["tolerations"] = [
            {
                "key": "node.kubernetes.io/unschedulable",
                "operator": "Exists",
                "effect": "NoSchedule",
            }
        ]
        core.create_namespaced_pod(namespace, tolerant)
        assert wait_ready(core, namespace, "tolerant").spec.node_name == second
        # Both cordoned: the pod stays Pending and the harness says why.
        control_plane.kubectl("cordon", first)
        core.create_namespaced_pod(namespace, pod_manifest("nowhere", harness_label=label))
        wait_for(
            lambda: any("nowhere: no harness node fits" in e for e in harness.errors),
            10,
            "the pod with every node cordoned to be reported",
        )
        assert core.read_namespaced_pod("nowhere", namespace).spec.node_name is None


def test_a_missing_secret_holds_the_container_until_the_secret_exists(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    env = [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "later", "key": "k"}}}]
    core.create_namespaced_pod(namespace, pod_manifest("waits", env))

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("waits", namespace).status.container_statuses
        state = statuses[0].state if statuses else None
        return state.waiting.reason if state and state.waiting else None

    wait_for(lambda: waiting_reason() == "CreateContainerConfigError", 15, "config error")
    assert pod_harness.processes(namespace, "waits") == []
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "later"}, "stringData": {"k": "v"}}
    )
    pod = wait_ready(core, namespace, "waits")
    assert http("GET", f"http://{pod.status.pod_ip}:{PORT}/env")[1]["KEY"] == "v"


def test_a_command_that_does_not_exist_is_reported_not_run(
    core: client.CoreV1Api, pod_harness: PodHarness, namespace: str
) -> None:
    manifest = pod_manifest("nocommand")
    manifest["spec"]["containers"][0]["command"] = ["connquota-no-such-command"]
    core.create_namespaced_pod(namespace, manifest)

    def reason() -> str | None:
        pod = core.read_namespaced_pod("nocommand", namespace)
        statuses = pod.status.container_statuses
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting else None

    wait_for(lambda: reason() == "RunContainerError", 15, "RunContainerError")
    assert not is_ready(core.read_namespaced_pod("nocommand", namespace))


def _node_lost(core: client.CoreV1Api, name: str) -> bool:
    """Ready Unknown/False and tainted unreachable or not-ready by the node lifecycle
    controller."""
    node = core.read_node(name)
    ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
    taints = {t.key for t in node.spec.taints or []}
    return (ready is None or ready.status != "True") and bool(
        taints & {"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"}
    )


def test_a_lost_node_keeps_its_processes_running_cut_from_the_api_until_healed(
    api_client: Any, core: client.CoreV1Api, control_plane: Any, namespace: str
) -> None:
    """lose_node: the node lifecycle controller marks the node lost and taints it; its pod's
    process keeps running but reaches the API server no more (its node's relay is cut), a
    graceful delete stays Terminating, and the pod's successor on the other node starts while
    the old process still runs. heal_node: the node is Ready again and the old process, whose
    Pod is gone, is killed as an orphan."""
    label = "connquota.io/test-lost-node"
    suffix = uuid.uuid4().hex[:6]
    first, second = f"lost-a-{suffix}", f"lost-b-{suffix}"
    harness = PodHarness(
        api_client,
        f"{label}=true",
        node_name=first,
        extra_node_names=[second],
        api_port=control_plane.apiserver_port,
        lease_renew_interval_s=2.0,
        node_status_interval_s=20.0,
        partitionable=True,
    )
    with harness:
        core.create_namespaced_pod(namespace, pod_manifest("victim", harness_label=label))
        pod = wait_ready(core, namespace, "victim")
        assert pod.spec.node_name == first
        _, env = http("GET", f"http://{pod.status.pod_ip}:{PORT}/env")
        relay_port = int(env["KUBERNETES_SERVICE_PORT"])
        assert relay_port == harness.api_address(first)[1] != control_plane.apiserver_port
        old = harness.processes(namespace, "victim")[-1]

        harness.lose_node(first)
        lost_at = time.monotonic()
        with pytest.raises(OSError):  # the node's path to the API server is gone
            socket.create_connection(("127.0.0.1", relay_port), timeout=2).close()
        wait_for(lambda: _node_lost(core, first), NODE_MONITOR_GRACE_S * 4, "the node lost")
        assert time.monotonic() - lost_at >= NODE_MONITOR_GRACE_S - 1
        core.delete_namespaced_pod("victim", namespace)  # graceful: stays Terminating
        until = time.monotonic() + 3  # an assertion over a window: nothing may happen in it
        while time.monotonic() < until:
            pod = core.read_namespaced_pod("victim", namespace)
            assert pod.metadata.deletion_timestamp is not None
            assert old.exited_at is None
            time.sleep(0.5)
        assert http("GET", f"http://{pod.status.pod_ip}:{PORT}/env")[0] == 200
        # Force-deleted: a successor of the same name runs on the other node meanwhile.
        core.delete_namespaced_pod(
            "victim",
            namespace,
            body=client.V1DeleteOptions(
                grace_period_seconds=0, preconditions=client.V1Preconditions(uid=old.uid)
            ),
        )
        core.create_namespaced_pod(namespace, pod_manifest("victim", harness_label=label))
        successor = wait_ready(core, namespace, "victim")
        assert successor.spec.node_name == second
        assert old.exited_at is None, "the lost node's process was stopped"

        harness.heal_node(first)
        wait_for(lambda: old.exited_at is not None, 30, "the orphan killed")
        assert old.orphan_killed_at is not None
        wait_for(lambda: not _node_lost(core, first), 30, "the node Ready again")
        assert harness.processes(namespace, "victim")[-1].exited_at is None  # successor runs
