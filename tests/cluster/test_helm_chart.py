"""The Helm chart installs the operator with the rights it needs, on the real API server.

No kubelet runs the operator's own Pod here (the pod harness runs only gateway pods), so these
tests check what Helm and the API server decide: the chart renders for the pinned Kubernetes
version, installs and upgrades, and its ServiceAccount may do what the operator does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from connquota.testing.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "connquota"
KUBE_VERSION = "v1.34.12"


def test_chart_lints_and_renders_for_the_pinned_kubernetes(control_plane: ControlPlane) -> None:
    lint = control_plane.helm("lint", str(CHART), "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in lint.stdout
    rendered = control_plane.helm(
        "template",
        "cq",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "watchNamespaces={team-a,team-b}",
    ).stdout
    assert "--namespace=team-a" in rendered and "--namespace=team-b" in rendered
    assert "type: Recreate" in rendered


def test_chart_rejects_an_unknown_mode(control_plane: ControlPlane) -> None:
    result = control_plane.helm(
        "template",
        "cq",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "mode=both",
        check=False,
    )
    assert result.returncode != 0
    assert "mode must be standalone or peering" in result.stderr


def test_chart_installs_and_its_service_account_may_do_what_the_operator_does(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.helm(
        "install",
        "cq",
        str(CHART),
        "--namespace",
        namespace,
        "--wait=false",
    )
    try:
        deployment = json.loads(
            control_plane.kubectl(
                "get", "deployment", "cq-connquota", "-n", namespace, "-o", "json"
            ).stdout
        )
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["type"] == "Recreate"
        crds = control_plane.kubectl("get", "crd", "-o", "name").stdout
        assert "exchangeconnectionquotas.connquota.io" in crds
        assert "exchangeegresspools.connquota.io" in crds

        who = f"system:serviceaccount:{namespace}:cq-connquota"
        allowed = [
            ("watch", "exchangeconnectionquotas.connquota.io", "--all-namespaces"),
            ("patch", "exchangeconnectionquotas.connquota.io/status", "-n=default"),
            ("update", "exchangeconnectionquotas.connquota.io/finalizers", "-n=default"),
            ("patch", "exchangeegresspools.connquota.io", ""),
            ("create", "statefulsets.apps", "-n=default"),
            ("create", "configmaps", "-n=default"),
            ("create", "leases.coordination.k8s.io", "-n=default"),
            ("create", "roles.rbac.authorization.k8s.io", "-n=default"),
            ("create", "poddisruptionbudgets.policy", "-n=default"),
            ("get", "secrets", "-n=default"),
            ("create", "events", "-n=default"),
        ]
        for verb, resource, scope in allowed:
            args = ["auth", "can-i", verb, resource, f"--as={who}"] + ([scope] if scope else [])
            answer = control_plane.kubectl(*args, check=False).stdout.strip()
            assert answer == "yes", f"operator may not {verb} {resource}"
        denied = control_plane.kubectl(
            "auth", "can-i", "list", "secrets", f"--as={who}", "-n=default", check=False
        ).stdout.strip()
        assert denied == "no", "the operator must not list (read) Secrets"

        control_plane.helm(
            "upgrade",
            "cq",
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            "logLevel=debug",
        )
        args = json.loads(
            control_plane.kubectl(
                "get",
                "deployment",
                "cq-connquota",
                "-n",
                namespace,
                "-o",
                "jsonpath={.spec.template.spec.containers[0].args}",
            ).stdout
        )
        assert "--verbose" in args
    finally:
        control_plane.helm("uninstall", "cq", "--namespace", namespace, check=False)
