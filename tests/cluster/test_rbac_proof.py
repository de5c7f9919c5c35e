"""Least privilege, proven: the operator runs with exactly the chart's RBAC and nothing else.

The chart is rendered, its ServiceAccount and RBAC objects are applied to the real API server,
a token is minted for that ServiceAccount with TokenRequest (`kubectl create token`), and
`connquota operator` runs as a local process with a kubeconfig holding only that token and the
arguments the chart's Deployment gives it. The example pool (examples/01-pool-bind.yaml) and a
quota on the mock exchange are applied in a namespace labelled Pod Security `restricted`; the
quota must reconcile end to end (StatefulSet, plan ConfigMaps, gateway pods run by the pod
harness with their own ServiceAccount tokens, status Ready) with no Forbidden in any log, and
be deleted through its finalizer. A token minted for the quota's gateway ServiceAccount is then
refused everything it must not do. Both RBAC shapes are proven: cluster-wide (one ClusterRole)
and `watchNamespaces` (a Role per watched namespace).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from cluster.conftest import wait_for
from cluster.operator.fleet import (
    MockThread,
    get_quota,
    quota_body,
    shrunk_limits,
    wait_ready,
)
from connquota.operator import names
from connquota.testing.controlplane import ControlPlane, free_port
from connquota.testing.podharness import PodHarness

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "connquota"
EXAMPLE_POOL = REPO / "examples" / "01-pool-bind.yaml"
POOL = "loopback"
POOL_NODE = "connquota-node-0"
PROOF_LABEL = "connquota.io/rbac-proof"
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
FORBIDDEN_MARKS = ("Forbidden", "forbidden", " 403")


def token_kubeconfig(control_plane: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig holding only `token` (no client certificate): the API server sees the
    ServiceAccount and nothing else."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "proof",
                "cluster": {
                    "server": control_plane.server,
                    "certificate-authority": str(control_plane.ca_file),
                },
            }
        ],
        "users": [{"name": "proof", "user": {"token": token}}],
        "contexts": [{"name": "proof", "context": {"cluster": "proof", "user": "proof"}}],
        "current-context": "proof",
    }
    path.write_text(json.dumps(doc))
    return path


def mint_token(control_plane: ControlPlane, namespace: str, service_account: str) -> str:
    """A TokenRequest token for `namespace/service_account`, valid for one hour."""
    return control_plane.kubectl(
        "create", "token", service_account, "-n", namespace, "--duration=1h"
    ).stdout.strip()


def can_i(control_plane: ControlPlane, kubeconfig: Path, *args: str) -> str:
    """`kubectl auth can-i` as the kubeconfig's identity: "yes" or "no"."""
    result = control_plane.kubectl(
        "--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False
    )
    return result.stdout.strip()


def refusals(control_plane: ControlPlane, since: int, *users: str) -> list[str]:
    """Requests by `users` the API server answered 403 since byte `since` of its audit log
    (each user must have made requests: the check is not vacuous)."""
    events, _ = control_plane.audit_events(since)
    for user in users:
        assert any(e.get("user", {}).get("username") == user for e in events), (
            f"no request by {user}"
        )
    return [
        f"{e['user']['username']} {e['verb']} {e.get('requestURI')}"
        for e in events
        if e.get("user", {}).get("username") in users
        and (e.get("responseStatus") or {}).get("code") == 403
    ]


def render(control_plane: ControlPlane, release: str, namespace: str, *sets: str) -> list[dict]:
    """The chart's objects as `helm template` renders them for `namespace`."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for item in sets:
        args += ["--set", item]
    out = control_plane.helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class ChartOperator:
    """`connquota operator` with the chart's Deployment arguments and only its token."""

    def __init__(self, control_plane: ControlPlane, args: list[str], kubeconfig: Path) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="connquota-proof-", suffix=".log")[1])
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "connquota.cli", *args, "--kubeconfig", str(kubeconfig)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    "PATH": "/usr/bin:/bin",
                    "PYTHONUNBUFFERED": "1",
                    "HOME": tempfile.gettempdir(),
                },
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@pytest.fixture
def restricted_namespace(api_client: Any) -> Iterator[str]:
    """A fresh namespace enforcing Pod Security `restricted`; deleted afterwards."""
    core = client.CoreV1Api(api_client)
    name = f"proof-{uuid.uuid4().hex[:8]}"
    core.create_namespace(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/warn": "restricted",
                },
            }
        }
    )
    wait_for(
        lambda: any(
            sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items
        ),
        30,
        f"the default ServiceAccount in {name}",
    )
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            core.delete_namespace(name)


@pytest.fixture
def proof_harness(
    control_plane: ControlPlane, api_client: Any, restricted_namespace: str
) -> Iterator[PodHarness]:
    """A pod harness playing the example pool's node: it runs the proof's gateway pods, each
    with the token of the ServiceAccount its Pod spec names."""
    harness = PodHarness(
        api_client,
        f"{PROOF_LABEL}=true",
        namespace=restricted_namespace,
        node_name=POOL_NODE,
        api_port=control_plane.apiserver_port,
        lease_renew_interval_s=2.0,
        node_status_interval_s=20.0,
    )
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.mark.parametrize("scope", ["cluster-wide", "watchNamespaces"])
def test_operator_with_only_the_charts_rights_reconciles_the_example_and_gateways_are_fenced(
    control_plane: ControlPlane,
    api_client: Any,
    restricted_namespace: str,
    proof_harness: PodHarness,
    tmp_path: Path,
    scope: str,
    kstatus: Any,
    argocd_health: Any,
) -> None:
    ns = restricted_namespace
    release = f"proof{uuid.uuid4().hex[:6]}"
    operator_ns = ns  # the operator's own ServiceAccount lives in the release namespace
    sets = [f"livenessPort={free_port()}", f"metricsPort={free_port()}"]
    if scope == "watchNamespaces":
        sets.append(f"watchNamespaces={{{ns}}}")
    docs = render(control_plane, release, operator_ns, *sets)
    rbac = [d for d in docs if d["kind"] in RBAC_KINDS]
    kinds = sorted(d["kind"] for d in rbac)
    if scope == "watchNamespaces":
        assert kinds == [
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ServiceAccount",
        ]
        cluster_role = next(d for d in rbac if d["kind"] == "ClusterRole")
        cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
        assert "secrets" not in cluster_resources and "configmaps" not in cluster_resources
    else:
        assert kinds == ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]

    assert control_plane.audit_log is not None, "the session control plane runs with audit=True"
    audit_start = control_plane.audit_log.stat().st_size
    operator_user = f"system:serviceaccount:{operator_ns}:{sa_name}"
    gateway_user = f"system:serviceaccount:{ns}:{names.service_account_name('proof')}"
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    for crd in ("exchangeconnectionquotas.connquota.io", "exchangeegresspools.connquota.io"):
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}")
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(4, None),
            connectionAttempts=(6, 40.0),
            streamsPerConnection=(2, None),
        )
    )
    operator: ChartOperator | None = None
    custom = client.CustomObjectsApi(api_client)
    try:
        operator_kubeconfig = token_kubeconfig(
            control_plane, mint_token(control_plane, operator_ns, sa_name), tmp_path / "op"
        )
        # The token alone: the operator may read quotas but not Secrets' contents anywhere.
        assert can_i(control_plane, operator_kubeconfig, "list", "secrets", "-A") == "no"
        assert can_i(control_plane, operator_kubeconfig, "list", "secrets", "-n", ns) == "no"
        assert can_i(control_plane, operator_kubeconfig, "delete", "statefulsets", "-n", ns) == "no"
        assert can_i(control_plane, operator_kubeconfig, "update", "configmaps", "-n", ns) == "no"
        # Pods: patched for their labels only (holds-connections, egress), evicted, and
        # deleted only when a Terminating gateway pod (on a lost node; the chart's
        # ValidatingAdmissionPolicies confine both). Nodes: only watched.
        assert can_i(control_plane, operator_kubeconfig, "patch", "pods", "-n", ns) == "yes"
        assert can_i(control_plane, operator_kubeconfig, "delete", "pods", "-n", ns) == "yes"
        assert can_i(control_plane, operator_kubeconfig, "watch", "nodes") == "yes"
        assert can_i(control_plane, operator_kubeconfig, "patch", "nodes") == "no"
        if scope == "watchNamespaces":
            assert (
                can_i(control_plane, operator_kubeconfig, "get", "secrets", "-n", "kube-system")
                == "no"
            )
            assert (
                can_i(
                    control_plane,
                    operator_kubeconfig,
                    "watch",
                    "exchangeconnectionquotas",
                    "-n",
                    "default",
                )
                == "no"
            )

        operator = ChartOperator(control_plane, container["args"], operator_kubeconfig)
        pool_existed = control_plane.kubectl("get", "ecp", POOL, check=False).returncode == 0
        control_plane.kubectl("apply", "-f", str(EXAMPLE_POOL))
        quota = quota_body(
            ns,
            "proof",
            POOL,
            mock.quota_exchange("proof.mock"),
            ["s0usdt@trade", "s1usdt@trade"],
            max_replicas=2,
            connections_per_pod=1,
        )
        quota["spec"]["gateway"]["podOverrides"] = {"labels": {PROOF_LABEL: "true"}}
        custom.create_namespaced_custom_object(
            "connquota.io", "v1alpha1", ns, "exchangeconnectionquotas", quota
        )
        wait_ready(api_client, ns, "proof", 180, operator.log)
        # As Flux and Argo CD see the Ready quota and the example pool: Current and Healthy.
        ready_quota = get_quota(api_client, ns, "proof")
        example_pool = json.loads(control_plane.kubectl("get", "ecp", POOL, "-o", "json").stdout)
        for obj in (ready_quota, example_pool):
            assert kstatus(obj)[0] == "Current", obj.get("status")
            assert argocd_health(obj)[0] == "Healthy", obj.get("status")

        apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)
        sts = apps.read_namespaced_stateful_set(names.statefulset_name("proof"), ns)
        assert (sts.status.ready_replicas or 0) >= 1
        plans = core.list_namespaced_config_map(
            ns, label_selector="connquota.io/quota=proof,app.kubernetes.io/component=plan"
        ).items
        assert plans, "no plan ConfigMap published"
        status = get_quota(api_client, ns, "proof")["status"]  # type: ignore[index]
        assert status["observedGeneration"] == 1
        pods = [p.metadata.name for p in core.list_namespaced_pod(ns).items]
        assert pods, "no gateway pod was admitted in the restricted namespace"
        for mark in FORBIDDEN_MARKS:
            assert mark not in operator.log(), operator.log()[-4000:]
        # The API server's own record: not one request of the operator or of a gateway refused.
        assert refusals(control_plane, audit_start, operator_user, gateway_user) == []
        for pod in pods:
            gateway_log = proof_harness.logs(ns, pod)
            assert gateway_log, f"gateway {pod} never ran"
            for mark in FORBIDDEN_MARKS:
                assert mark not in gateway_log, gateway_log[-3000:]

        # The gateways' identity, with a token of its own.
        gw_sa = names.service_account_name("proof")
        gw = token_kubeconfig(control_plane, mint_token(control_plane, ns, gw_sa), tmp_path / "gw")
        own_plan = names.plan_configmap_name("proof", 0)
        own_lease = names.lease_name("proof", 0)
        assert can_i(control_plane, gw, "get", f"configmap/{own_plan}", "-n", ns) == "yes"
        assert (
            can_i(control_plane, gw, "update", f"lease.coordination.k8s.io/{own_lease}", "-n", ns)
            == "yes"
        )
        refused = [
            ("get", "secrets", "-n", ns),
            ("get", "secrets", "-n", "kube-system"),
            ("list", "secrets", "-A"),
            ("get", f"configmap/{names.ledger_configmap_name('proof')}", "-n", ns),
            ("get", f"configmap/{names.plan_configmap_name('other', 0)}", "-n", ns),
            ("get", f"configmap/{own_plan}", "-n", "default"),
            ("update", f"lease.coordination.k8s.io/{names.lease_name('other', 0)}", "-n", ns),
            ("create", "leases.coordination.k8s.io", "-n", ns),
            ("delete", f"lease.coordination.k8s.io/{own_lease}", "-n", ns),
            ("patch", "pods", "-n", ns),
            ("get", "pods", "-n", ns),
            ("create", "configmaps", "-n", ns),
            ("get", "exchangeconnectionquotas", "-n", ns),
        ]
        for args in refused:
            assert can_i(control_plane, gw, *args) == "no", f"a gateway may {' '.join(args)}"
        # And the API server itself refuses the real request (not only the review).
        ledger = control_plane.kubectl(
            "--kubeconfig",
            str(gw),
            "get",
            "configmap",
            names.ledger_configmap_name("proof"),
            "-n",
            ns,
            check=False,
        )
        assert ledger.returncode != 0 and "Forbidden" in ledger.stderr
        got = control_plane.kubectl(
            "--kubeconfig", str(gw), "get", "configmap", own_plan, "-n", ns, "-o", "json"
        )
        assert json.loads(got.stdout)["metadata"]["name"] == own_plan

        # Delete through the finalizer, still with only the chart's rights.
        audit_delete = control_plane.audit_log.stat().st_size
        custom.delete_namespaced_custom_object(
            "connquota.io", "v1alpha1", ns, "exchangeconnectionquotas", "proof"
        )
        wait_for(lambda: get_quota(api_client, ns, "proof") is None, 120, "the quota to be gone")
        for mark in FORBIDDEN_MARKS:
            assert mark not in operator.log(), operator.log()[-4000:]
        assert refusals(control_plane, audit_delete, operator_user) == []
        mock.assert_no_violation()
        if not pool_existed:
            control_plane.kubectl("delete", "-f", str(EXAMPLE_POOL), "--timeout=60s")
    finally:
        with contextlib.suppress(Exception):
            custom.delete_namespaced_custom_object(
                "connquota.io", "v1alpha1", ns, "exchangeconnectionquotas", "proof"
            )
        if operator is not None:
            operator.stop()
        mock.stop()
        for doc in rbac:
            if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                control_plane.kubectl(
                    "delete",
                    doc["kind"].lower(),
                    doc["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )


def test_the_operator_may_label_only_gateway_pods_and_only_their_egress_and_holds_labels(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """RBAC cannot name the Pods `patch` applies to; the chart's ValidatingAdmissionPolicy
    (rendered by default) confines the operator's ServiceAccount to the egress and
    holds-connections labels of gateway pods."""
    release = f"plabel{uuid.uuid4().hex[:6]}"
    docs = render(control_plane, release, namespace)
    kinds = (*RBAC_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    objects = [d for d in docs if d["kind"] in kinds]
    assert {d["kind"] for d in objects} == set(kinds) - {"Role", "RoleBinding"}
    sa_name = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        for name, labels in (("gw", {names.LABEL_NAME: names.GATEWAY_APP}), ("app", {})):
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]},
            }
            control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))
        op = token_kubeconfig(
            control_plane, mint_token(control_plane, namespace, sa_name), tmp_path / "op"
        )
        assert can_i(control_plane, op, "patch", "pods", "-n", namespace) == "yes"

        op_config = client.Configuration()
        config.load_kube_config(config_file=str(op), client_configuration=op_config)
        op_core = client.CoreV1Api(client.ApiClient(op_config))

        def label(pod: str, value: str, *dry_run: str) -> str:
            """Patch one label as the operator does (no read first: it may not get Pods);
            returns "" or the API server's refusal."""
            key, _, val = value.partition("=")
            try:
                op_core.patch_namespaced_pod(
                    pod,
                    namespace,
                    {"metadata": {"labels": {key: val}}},
                    dry_run="All" if dry_run else None,
                )
            except client.ApiException as exc:
                return f"{exc.status} {exc.body}"
            return ""

        # The policy takes effect within seconds of being created: probe with server dry runs.
        attempt = iter(range(10_000))
        wait_for(
            lambda: (
                "gateway pods only"
                in label("app", f"{names.LABEL_EGRESS}=probe-{next(attempt)}", "dry-run")
            ),
            60,
            "the gateway-pods-only policy to refuse labelling a non-gateway pod",
        )
        refused = label("app", f"{names.LABEL_EGRESS}=lo-2")
        assert refused.startswith("422") and "gateway pods only" in refused, refused
        assert label("gw", f"{names.LABEL_EGRESS}=lo-2") == ""
        assert label("gw", f"{names.LABEL_HOLDS_CONNECTIONS}=true") == ""
        refused = label("app", f"{names.LABEL_HOLDS_CONNECTIONS}=true")
        assert refused.startswith("422") and "gateway pods only" in refused, refused
        other_label = label("gw", "team=x")
        assert "only the connquota.io/egress label" in other_label, other_label
        got = control_plane.kubectl(
            "get", "pod", "gw", "-n", namespace, "-o", "jsonpath={.metadata.labels}"
        ).stdout
        assert json.loads(got) == {
            names.LABEL_NAME: names.GATEWAY_APP,
            names.LABEL_EGRESS: "lo-2",
            names.LABEL_HOLDS_CONNECTIONS: "true",
        }
    finally:
        for doc in objects:
            if "namespace" not in doc["metadata"]:
                control_plane.kubectl(
                    "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found",
                    check=False,
                )  # fmt: skip


def test_the_operator_may_delete_only_terminating_gateway_pods(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """`delete pods` is for the force delete of a gateway pod on a lost node; the chart's
    second ValidatingAdmissionPolicy lets the operator's token delete only gateway pods that
    are already Terminating: never a non-gateway pod, never a gateway pod not Terminating."""
    release = f"pdel{uuid.uuid4().hex[:6]}"
    docs = render(control_plane, release, namespace)
    kinds = (*RBAC_KINDS, "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
    objects = [d for d in docs if d["kind"] in kinds]
    policies = [d for d in objects if d["kind"] == "ValidatingAdmissionPolicy"]
    assert any(
        "DELETE" in rule["operations"]
        for p in policies
        for rule in p["spec"]["matchConstraints"]["resourceRules"]
    ), policies
    sa_name = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    control_plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    hold = "connquota.io/test-hold"
    pods = {
        "gw-live": ({names.LABEL_NAME: names.GATEWAY_APP}, False),
        "gw-terminating": ({names.LABEL_NAME: names.GATEWAY_APP}, True),
        "app-terminating": ({}, True),
        "app-live": ({}, False),
    }
    try:
        for name, (labels, _) in pods.items():
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                # The finalizer keeps a deleted pod Terminating (no kubelet finishes it here).
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels,
                    "finalizers": [hold],
                },
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none"}]},
            }
            control_plane.kubectl("apply", "-f", "-", input=json.dumps(pod))
        for name, (_, terminating) in pods.items():
            if terminating:
                control_plane.kubectl("delete", "pod", name, "-n", namespace, "--wait=false")
        op = token_kubeconfig(
            control_plane, mint_token(control_plane, namespace, sa_name), tmp_path / "op"
        )
        assert can_i(control_plane, op, "delete", "pods", "-n", namespace) == "yes"
        op_config = client.Configuration()
        config.load_kube_config(config_file=str(op), client_configuration=op_config)
        op_core = client.CoreV1Api(client.ApiClient(op_config))

        def delete(pod: str, *dry_run: str) -> str:
            """Force-delete as the operator does (grace 0); "" or the API server's refusal."""
            try:
                op_core.delete_namespaced_pod(
                    pod,
                    namespace,
                    body=client.V1DeleteOptions(grace_period_seconds=0),
                    dry_run="All" if dry_run else None,
                )
            except client.ApiException as exc:
                return f"{exc.status} {exc.body}"
            return ""

        wait_for(
            lambda: "gateway pods only" in delete("app-terminating", "dry-run"),
            60,
            "the gateway-pods-delete policy to refuse deleting a non-gateway pod",
        )
        refused = delete("app-terminating")
        assert refused.startswith("422") and "gateway pods only" in refused, refused
        refused = delete("app-live")
        assert refused.startswith("422") and "gateway pods only" in refused, refused
        refused = delete("gw-live")
        assert refused.startswith("422") and "only a Terminating gateway pod" in refused, refused
        assert delete("gw-terminating") == ""
    finally:
        for name in pods:
            control_plane.kubectl(
                "patch", "pod", name, "-n", namespace, "--type=json",
                "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False,
            )  # fmt: skip
        for doc in objects:
            if "namespace" not in doc["metadata"]:
                control_plane.kubectl(
                    "delete", doc["kind"].lower(), doc["metadata"]["name"], "--ignore-not-found",
                    check=False,
                )  # fmt: skip
