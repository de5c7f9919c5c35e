"""The test control plane is the pinned, real one, secured, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connquota.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    start_control_plane,
)

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def pins() -> dict[str, str]:
    """The versions pinned in hack/controlplane/pins.env."""
    lines = (REPO / "hack" / "controlplane" / "pins.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (a data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def test_kubectl_and_server_report_the_pinned_kubernetes_version(
    control_plane: ControlPlane,
) -> None:
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    expected = pins()["KUBERNETES_VERSION"]
    assert version["serverVersion"]["gitVersion"] == expected
    assert version["clientVersion"]["gitVersion"] == expected
    helm = control_plane.helm("version", "--template", "{{.Version}}").stdout
    assert helm == pins()["HELM_VERSION"]
    # helm reaches the API server through the same kubeconfig.
    assert control_plane.helm("list", "--all-namespaces").returncode == 0


def test_the_server_listens_on_loopback_only(control_plane: ControlPlane) -> None:
    assert control_plane.server.startswith("https://127.0.0.1:")
    assert control_plane.etcd_url.startswith("http://127.0.0.1:")


def test_rbac_is_enforced(control_plane: ControlPlane) -> None:
    sa = "system:serviceaccount:default:default"
    denied = control_plane.kubectl("auth", "can-i", "list", "pods", f"--as={sa}", check=False)
    assert denied.stdout.strip() == "no"
    assert control_plane.kubectl("auth", "can-i", "list", "pods").stdout.strip() == "yes"


def test_owner_references_permission_enforcement_is_on(control_plane: ControlPlane) -> None:
    ns = "ownerref-check"
    user = f"system:serviceaccount:{ns}:default"
    control_plane.kubectl("create", "namespace", ns)
    try:
        control_plane.kubectl("-n", ns, "create", "configmap", "owner")
        control_plane.kubectl(
            "-n", ns, "create", "role", "cm-writer", "--verb=create,get", "--resource=configmaps"
        )
        control_plane.kubectl(
            "-n", ns, "create", "rolebinding", "cm-writer", "--role=cm-writer", f"--user={user}"
        )
        owner_uid = control_plane.kubectl(
            "-n", ns, "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"
        ).stdout
        owned = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "owned",
                "namespace": ns,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "owner",
                        "uid": owner_uid,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
        }
        result = control_plane.kubectl(
            "create", f"--as={user}", "-f", "-", input=json.dumps(owned), check=False
        )
        assert result.returncode != 0
        assert "cannot set blockOwnerDeletion" in result.stderr
    finally:
        control_plane.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_stop_ends_exactly_its_processes_and_deletes_its_data(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    other = start_control_plane(control_plane.bin_dir, parent_dir=tmp_path)
    data_dir = other.data_dir
    assert set(other.is_running().values()) == {True}
    assert pids_mentioning(str(data_dir))
    other.stop()
    assert not data_dir.exists()
    assert pids_mentioning(str(data_dir)) == []
    # The session's control plane is untouched.
    assert set(control_plane.is_running().values()) == {True}
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout == "ok"


def test_a_failed_start_stops_what_it_started_and_leaves_no_data(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    with pytest.raises(ControlPlaneError, match="kube-apiserver exited"):
        start_control_plane(
            control_plane.bin_dir,
            parent_dir=tmp_path,
            apiserver_args=["--no-such-flag"],
            timeout_s=60,
        )
    assert list(tmp_path.iterdir()) == []
    assert pids_mentioning(str(tmp_path)) == []


def _run_fixture_check(env_update: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    test = tmp_path / "test_needs_plane.py"
    test.write_text("def test_needs_plane(control_plane):\n    pass\n")
    conftest = REPO / "tests" / "cluster" / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(env_update)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_missing_binaries_skip_locally_and_fail_in_ci(
    ci: str, outcome: str, tmp_path: Path
) -> None:
    env = {"CONNQUOTA_CONTROLPLANE_BIN": str(tmp_path / "nothing-here")}
    if ci:
        env["CI"] = ci
    result = _run_fixture_check(env, tmp_path)
    assert outcome in result.stdout, result.stdout + result.stderr
    assert "hack/build-control-plane.sh" in result.stdout


def test_helm_installs_a_chart_into_the_control_plane(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    chart = tmp_path / "hello"
    control_plane.helm("create", str(chart))
    rendered = control_plane.helm(
        "template", "hello", str(chart), "--kube-version", pins()["KUBERNETES_VERSION"]
    ).stdout
    assert "kind: Deployment" in rendered
    control_plane.helm("install", "hello", str(chart), "-n", "helm-check", "--create-namespace")
    try:
        releases = json.loads(control_plane.helm("list", "-n", "helm-check", "-o", "json").stdout)
        assert [(r["name"], r["status"]) for r in releases] == [("hello", "deployed")]
        control_plane.kubectl("-n", "helm-check", "get", "deployment", "hello")
    finally:
        control_plane.helm("uninstall", "hello", "-n", "helm-check", check=False)
        control_plane.kubectl("delete", "namespace", "helm-check", "--wait=false", check=False)
