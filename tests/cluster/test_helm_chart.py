"""The Helm chart installs, upgrades and uninstalls the operator on the real API server.

No kubelet runs the operator's own Pod here (the pod harness runs only gateway pods), so these
tests check what Helm and the API server decide: the chart lints strictly and rejects bad
values through values.schema.json, the operator's Pod is admitted under Pod Security
`restricted`, its RBAC is exactly the documented table (docs/install.md), and the CRD lifecycle
(upgrade CRDs first, uninstall keeps quotas, finalizers) behaves as documented. The operator
running with exactly the chart's rights is proven in test_rbac_proof.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster.conftest import wait_for
from connquota.testing.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "connquota"
INSTALL_DOC = REPO / "docs" / "install.md"
KUBE_VERSION = "v1.34.12"
QUOTA_CRD = "exchangeconnectionquotas.connquota.io"
POOL_CRD = "exchangeegresspools.connquota.io"


def render(control_plane: ControlPlane, *sets: str) -> list[dict[str, Any]]:
    args = ["template", "cq", str(CHART), "--kube-version", KUBE_VERSION, "--namespace", "ops"]
    for item in sets:
        args += ["--set", item]
    return [d for d in yaml.safe_load_all(control_plane.helm(*args).stdout) if d]


def test_chart_lints_strictly_and_renders_for_the_pinned_kubernetes(
    control_plane: ControlPlane,
) -> None:
    lint = control_plane.helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in lint.stdout
    every_option = control_plane.helm(
        "lint", "--strict", str(CHART), "--kube-version", "v1.31.0",
        "--set", "watchNamespaces={team-a,team-b}", "--set", "podLabelEgress=true",
        "--set", "mode=peering", "--set", "image.digest=sha256:" + "b" * 64,
        "--set", "imagePullSecrets={regcred}", "--set", "serviceAccount.annotations.a=b",
    )  # fmt: skip
    assert "0 chart(s) failed" in every_option.stdout
    docs = render(control_plane, "watchNamespaces={team-a,team-b}")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    roles = sorted(
        (d["kind"], d["metadata"].get("namespace", "")) for d in docs if "Role" in d["kind"]
    )
    assert roles == [
        ("ClusterRole", ""),
        ("ClusterRoleBinding", ""),
        ("Role", "team-a"),
        ("Role", "team-b"),
        ("RoleBinding", "team-a"),
        ("RoleBinding", "team-b"),
    ]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("livenessPort=abc", "at '/livenessPort': got string, want integer"),
        ("metricsPort=70000", "at '/metricsPort': maximum: got 70,000, want 65,535"),
        ("logLevel=DEBUG", "at '/logLevel': value must be one of 'info', 'debug'"),
        ("mode=both", "at '/mode': value must be one of 'standalone', 'peering'"),
        ("replicaCount=2", "additional properties 'replicaCount' not allowed"),
        ("image.pullPolicy=sometimes", "at '/image/pullPolicy'"),
        ("watchNamespaces={Team_A}", "at '/watchNamespaces/0'"),
    ],
)
def test_chart_rejects_a_wrong_value_before_anything_is_applied(
    control_plane: ControlPlane, namespace: str, value: str, message: str
) -> None:
    lint = control_plane.helm("lint", "--strict", str(CHART), "--set", value, check=False)
    assert lint.returncode != 0 and message in lint.stdout + lint.stderr, lint.stdout
    install = control_plane.helm(
        "install", "bad", str(CHART), "--namespace", namespace, "--set", value, check=False
    )
    assert install.returncode != 0
    assert "values don't meet the specifications of the schema" in install.stderr
    assert message in install.stderr, install.stderr
    releases = control_plane.helm("list", "-q", "--namespace", namespace).stdout.split()
    assert releases == [], "a rejected install left a release behind"


def rbac_table() -> list[tuple[str, str, str, str]]:
    """(apiGroup, resource, verb, when) from the RBAC table of docs/install.md."""
    text = INSTALL_DOC.read_text()
    body = text.split("<!-- rbac-table:start -->", 1)[1].split("<!-- rbac-table:end -->", 1)[0]
    out = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("API group", "---") or set(cells[0]) <= {"-"}:
            continue
        group = cells[0].strip("`")
        group = "" if group == "core" else group
        for resource in re.findall(r"`([^`]+)`", cells[1]):
            for verb in re.findall(r"`([^`]+)`", cells[2]):
                out.append((group, resource, verb, cells[3]))
        assert cells[4], f"no code path for {cells[:3]}"
    return out


def granted(docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out = set()
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "Role"):
            continue
        for rule in doc["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((group, resource, verb))
    return out


@pytest.mark.parametrize(
    ("sets", "conditions"),
    [
        ((), {"always"}),
        (("watchNamespaces={team-a}",), {"always", "watchNamespaces"}),
        (("podLabelEgress=true", "mode=peering"), {"always", "podLabelEgress", "peering"}),
    ],
)
def test_every_rbac_rule_is_in_the_documented_table_with_the_code_that_needs_it(
    control_plane: ControlPlane, sets: tuple[str, ...], conditions: set[str]
) -> None:
    rules = granted(render(control_plane, *sets))
    table = rbac_table()
    documented = {(g, r, v) for g, r, v, when in table if when.strip("`") in conditions}
    assert rules == documented, (
        f"granted, not documented: {sorted(rules - documented)}\n"
        f"documented, not granted: {sorted(documented - rules)}"
    )
    never = {("", "secrets", "list"), ("", "secrets", "watch")}
    assert not rules & never
    # The one delete: a Terminating gateway pod on a lost node (the chart's second
    # ValidatingAdmissionPolicy allows no other pod; test_rbac_proof.py proves it).
    assert not any(
        v in ("delete", "deletecollection", "escalate", "bind", "*")
        for rule in rules - {("", "pods", "delete")}
        for v in rule[2:]
    )


def test_operator_pod_is_admitted_under_pod_security_restricted(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    install = control_plane.helm(
        "install", "cq", str(CHART), "--namespace", namespace, "--wait=false"
    )
    try:
        assert "would violate PodSecurity" not in install.stderr, install.stderr
        # The ReplicaSet controller creates the Pod; admission refuses it unless it is restricted.
        pods = wait_for(
            lambda: json.loads(
                control_plane.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
            )["items"],
            60,
            "the operator Pod to be admitted",
        )
        spec = pods[0]["spec"]
        container = spec["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        events = control_plane.kubectl(
            "get", "events", "-n", namespace, "--field-selector=reason=FailedCreate", "-o", "name"
        ).stdout.strip()
        assert events == ""
        control_plane.helm(
            "upgrade", "cq", str(CHART), "--namespace", namespace, "--set", "logLevel=debug"
        )
        args = control_plane.kubectl(
            "get", "deployment", "cq-connquota", "-n", namespace,
            "-o", "jsonpath={.spec.template.spec.containers[0].args}",
        ).stdout  # fmt: skip
        assert "--verbose" in json.loads(args)
    finally:
        control_plane.helm("uninstall", "cq", "--namespace", namespace, check=False)


def _crd(control_plane: ControlPlane, name: str) -> dict[str, Any]:
    return json.loads(control_plane.kubectl("get", "crd", name, "-o", "json").stdout)


def _columns(crd: dict[str, Any]) -> list[str]:
    return [c["name"] for c in crd["spec"]["versions"][0].get("additionalPrinterColumns", [])]


def _uid(control_plane: ControlPlane, *target: str) -> str:
    return control_plane.kubectl("get", *target, "-o", "jsonpath={.metadata.uid}").stdout


def test_crd_lifecycle_upgrade_crds_first_uninstall_keeps_quotas_finalizers_documented(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """install -> upgrade with a changed CRD -> uninstall, with a quota held by its finalizer.

    The CRDs are cluster-wide and shared by the session; the "older" CRD is the current one
    without its last printer column, applied as an older chart would have installed it, and
    the current CRDs are back at the end.
    """
    pool = f"life-{uuid.uuid4().hex[:6]}"
    shipped = yaml.safe_load((CHART / "crds" / f"{QUOTA_CRD}.yaml").read_text())
    wanted_columns = _columns(shipped)
    older = json.loads(json.dumps(shipped))
    dropped = wanted_columns[-1]
    older["spec"]["versions"][0]["additionalPrinterColumns"] = older["spec"]["versions"][0][
        "additionalPrinterColumns"
    ][:-1]
    older_chart = tmp_path / "connquota"
    shutil.copytree(CHART, older_chart)
    (older_chart / "crds" / f"{QUOTA_CRD}.yaml").write_text(yaml.safe_dump(older))

    # 1. Install (an older chart): its CRDs, as that chart shipped them.
    control_plane.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(older_chart / "crds")
    )
    control_plane.helm("install", "cq", str(older_chart), "--namespace", namespace, "--wait=false")
    operator = None
    try:
        assert dropped not in _columns(_crd(control_plane, QUOTA_CRD))
        operator = _start_operator(control_plane)
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(_pool(pool)))
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(_quota(namespace, pool)))
        wait_for(
            lambda: (
                "connquota.io/budget"
                in control_plane.kubectl(
                    "get", "ecq", "life", "-n", namespace, "-o", "jsonpath={.metadata.finalizers}"
                ).stdout
            ),
            60,
            "the operator's finalizer on the quota",
        )
        quota_uid = _uid(control_plane, "ecq", "life", "-n", namespace)
        wait_for(
            lambda: _uid(control_plane, "statefulset", "life-gw", "-n", namespace),
            60,
            "the quota's gateway StatefulSet",
        )
        fleet_uid = _uid(control_plane, "statefulset", "life-gw", "-n", namespace)

        # 2. helm upgrade alone leaves the CRD as it was (Helm never upgrades crds/) ...
        control_plane.helm("upgrade", "cq", str(CHART), "--namespace", namespace, "--wait=false")
        assert dropped not in _columns(_crd(control_plane, QUOTA_CRD))
        # ... the documented step upgrades it, and the quota is untouched.
        control_plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds")
        )
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{QUOTA_CRD}")
        assert _columns(_crd(control_plane, QUOTA_CRD)) == wanted_columns
        assert _uid(control_plane, "ecq", "life", "-n", namespace) == quota_uid

        # 3. Uninstall (operator gone): CRDs, pool and quota stay.
        _stop_operator(operator)
        operator = None
        control_plane.helm("uninstall", "cq", "--namespace", namespace)
        assert (
            control_plane.kubectl("get", "deployment", "-n", namespace, "-o", "name").stdout == ""
        )
        assert _exists(control_plane, QUOTA_CRD) and _exists(control_plane, POOL_CRD)
        assert _uid(control_plane, "ecq", "life", "-n", namespace) == quota_uid
        assert _uid(control_plane, "ecp", pool)
        # The gateways keep running on their last plan (nothing deleted their StatefulSet).
        assert _uid(control_plane, "statefulset", "life-gw", "-n", namespace) == fleet_uid

        # 4. With no operator, deleting the quota waits on its finalizer (documented) ...
        control_plane.kubectl("delete", "ecq", "life", "-n", namespace, "--wait=false")
        stuck = json.loads(
            control_plane.kubectl("get", "ecq", "life", "-n", namespace, "-o", "json").stdout
        )
        assert stuck["metadata"].get("deletionTimestamp")
        assert "connquota.io/budget" in stuck["metadata"]["finalizers"]
        # ... and the documented removal releases it.
        control_plane.kubectl(
            "patch",
            "ecq",
            "life",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
        )
        control_plane.kubectl("wait", "--for=delete", "ecq/life", "-n", namespace, "--timeout=30s")
        control_plane.kubectl("delete", "ecp", pool, "--wait=false")
        control_plane.kubectl(
            "patch",
            "ecp",
            pool,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )
        control_plane.kubectl("wait", "--for=delete", f"ecp/{pool}", "--timeout=30s")
    finally:
        if operator is not None:
            _stop_operator(operator)
        control_plane.helm("uninstall", "cq", "--namespace", namespace, check=False)
        control_plane.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds")
        )
        for target in (["ecq", "life", "-n", namespace], ["ecp", pool]):
            control_plane.kubectl(
                "patch",
                *target,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
                check=False,
            )
            control_plane.kubectl("delete", *target, "--ignore-not-found", check=False)


def _exists(control_plane: ControlPlane, crd: str) -> bool:
    return control_plane.kubectl("get", "crd", crd, check=False).returncode == 0


def _pool(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeEgressPool",
        "metadata": {"name": name},
        "spec": {
            "addresses": [
                {
                    "name": "lo-9",
                    "publicAddress": "127.0.0.9",
                    "mode": "bind",
                    "bindAddress": "127.0.0.9",
                    "node": "nowhere",
                }
            ]
        },
    }


def _quota(namespace: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": "life", "namespace": namespace},
        "spec": {
            "exchange": "binance-spot",
            "endpoint": "ws://127.0.0.1:9/ws",
            "egressPoolRef": {"name": pool},
            "streams": [{"name": "btcusdt@trade"}],
            "gateway": {"minReplicas": 0, "maxReplicas": 1},
        },
    }


def _start_operator(control_plane: ControlPlane) -> subprocess.Popen[bytes]:
    log = Path(tempfile.mkstemp(prefix="connquota-life-", suffix=".log")[1])
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "connquota.cli",
                "operator",
                "--kubeconfig",
                str(control_plane.kubeconfig),
                "--liveness-port",
                "0",
                "--metrics-port",
                "0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_operator(popen: subprocess.Popen[bytes]) -> None:
    popen.terminate()
    try:
        popen.wait(timeout=20)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(timeout=10)


CODE_NAME = re.compile(r"^_[a-z_]+$|^[a-z]+_[a-z_]+$|^(KubeApi|Reconciler)\.\w+$")


def test_rbac_table_names_only_code_that_exists() -> None:
    """Each function the table cites as needing a rule is defined in connquota/operator."""
    text = INSTALL_DOC.read_text()
    body = text.split("<!-- rbac-table:start -->", 1)[1].split("<!-- rbac-table:end -->", 1)[0]
    source = "\n".join(p.read_text() for p in (REPO / "connquota" / "operator").rglob("*.py"))
    cited = set()
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5:
            cited |= {n for n in re.findall(r"`([^`]+)`", cells[4]) if CODE_NAME.match(n)}
    assert len(cited) >= 15, sorted(cited)
    missing = [
        name
        for name in sorted(cited)
        if not re.search(
            rf"^\s*(async def|def) {re.escape(name.rsplit('.', 1)[-1])}\(", source, re.M
        )
    ]
    assert missing == [], f"docs/install.md cites code that no longer exists: {missing}"
