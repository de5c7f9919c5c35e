"""Fixtures for tests that need the real control plane (etcd, kube-apiserver, controllers).

Build the binaries with ``bash hack/build-control-plane.sh``. Without them these tests skip,
except with ``CI=true``, where a missing or failing control plane fails the run.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connquota.testing.controlplane import (
    BUILD_HINT,
    ControlPlane,
    ControlPlaneError,
    expected_bin_dir,
    find_binaries,
    start_control_plane,
)
from connquota.testing.podharness import PodHarness
from connquota.testing.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

# Short node-monitor periods so the node-lease test can watch several of them quickly.
NODE_MONITOR_GRACE_S = 8
CONTROLLER_MANAGER_ARGS = (
    f"--node-monitor-grace-period={NODE_MONITOR_GRACE_S}s",
    "--node-monitor-period=1s",
    "--node-startup-grace-period=10s",
)


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"control plane unavailable (CI=true): {message}", pytrace=False)
    pytest.skip(f"control plane unavailable: {message}")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A control plane on 127.0.0.1 for the whole session, stopped (data deleted) at its end."""
    try:
        expected = None if os.environ.get("CONNQUOTA_CONTROLPLANE_BIN") else expected_bin_dir(REPO)
        bin_dir = find_binaries(expected)
    except ControlPlaneError as err:
        _unavailable(str(err))
        raise AssertionError("unreachable") from err
    try:
        # The audit log (about 1 KiB per request) lets tests count one client's requests by
        # user agent.
        plane = start_control_plane(
            bin_dir, controller_manager_args=CONTROLLER_MANAGER_ARGS, audit=True
        )
    except ControlPlaneError as err:
        _unavailable(f"{err}\n(binaries in {bin_dir}; {BUILD_HINT})")
        raise AssertionError("unreachable") from err
    try:
        yield plane
    finally:
        plane.stop()


HARNESS_LABEL = "connquota.io/test-harness"


def _hack_output(script: str, timeout_s: float) -> str:
    """The last line a hack/ script prints (the path of what it built or fetched, cached);
    the control plane's tools are unavailable (a failure in CI) when the script fails."""
    import subprocess

    built = subprocess.run(
        ["bash", str(REPO / "hack" / script)], capture_output=True, text=True, timeout=timeout_s
    )
    if built.returncode != 0:
        _unavailable(f"hack/{script} failed: {built.stderr[-2000:]}")
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def kstatus() -> Any:
    """How Flux judges an object: `judge(obj) -> (status, message)` with Flux's own kstatus
    library (hack/tools/kstatus, built and cached by hack/build-kstatus.sh)."""
    import json
    import subprocess

    binary = _hack_output("build-kstatus.sh", 600)

    def judge(obj: dict[str, Any]) -> tuple[str, str]:
        out = subprocess.run(
            [binary], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=True
        )
        doc = json.loads(out.stdout)
        return doc["status"], doc["message"]

    return judge


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Prometheus' promtool, built from the pinned Go module and cached by
    hack/build-promtool.sh (`make controlplane` builds it)."""
    return Path(_hack_output("build-promtool.sh", 1800))


@pytest.fixture(scope="session")
def monitoring_crds(control_plane: ControlPlane) -> Path:
    """The prometheus-operator CRDs (ServiceMonitor, PodMonitor, PrometheusRule) from the pinned
    Go module (hack/prometheus-operator-crds.sh, cached), installed on the session's API server
    (cluster-wide, left installed)."""
    crds = Path(_hack_output("prometheus-operator-crds.sh", 600))
    control_plane.kubectl("apply", "--server-side", "-f", str(crds))
    for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
        # `kubectl wait` right after the apply can see no status at all yet: poll the condition.
        wait_for(
            lambda crd=f"crd/{plural}.monitoring.coreos.com": (
                control_plane.kubectl(
                    "get",
                    crd,
                    "-o",
                    'jsonpath={.status.conditions[?(@.type=="Established")].status}',
                ).stdout
                == "True"
            ),
            60,
            f"the {plural}.monitoring.coreos.com CRD to be Established",
        )
    return crds


@pytest.fixture(scope="session")
def argocd_health() -> Any:
    """How Argo CD judges an object with connquota's shipped health check: `judge(obj) ->
    (status, message)`, the Lua of charts/connquota/files/argocd-health run in real Lua."""
    import lupa

    script = (REPO / "charts/connquota/files/argocd-health/health.lua").read_text()

    def judge(obj: dict[str, Any]) -> tuple[str, str]:
        lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = lua.table_from(obj, recursive=True)
        result = lua.execute(script)
        return str(result["status"]), str(result["message"])

    return judge


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[Any]:
    """An admin ``kubernetes.client.ApiClient`` for the session's control plane."""
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def pod_harness(control_plane: ControlPlane, api_client: Any) -> Iterator[PodHarness]:
    """One harness node for the session; it runs Pods labelled ``connquota.io/test-harness``."""
    harness = PodHarness(
        api_client,
        f"{HARNESS_LABEL}=true",
        api_port=control_plane.apiserver_port,
        lease_renew_interval_s=2.0,
        node_status_interval_s=20.0,
    )
    harness.start()
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def namespace(api_client: Any) -> Iterator[str]:
    """A fresh namespace whose default ServiceAccount exists; deleted afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace({"metadata": {"name": name}})
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
