"""Fixtures for operator tests: the CRDs installed, and `connquota operator` as a real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.conftest import REPO, wait_for
from connquota.testing.controlplane import ControlPlane, free_port


@pytest.fixture(scope="session")
def crds(control_plane: ControlPlane) -> None:
    """Both CRDs applied (server-side) and Established."""
    control_plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    for name in (
        "exchangeconnectionquotas.connquota.io",
        "exchangeegresspools.connquota.io",
    ):
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


class OperatorProcess:
    """`connquota operator` running against the test control plane, with its log kept."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane
        self.log_path = Path(tempfile.mkstemp(prefix="connquota-operator-", suffix=".log")[1])
        self.popen: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Start the operator process (no liveness port; metrics on a free loopback port)."""
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "connquota.cli",
                    "operator",
                    "--kubeconfig",
                    str(self.control_plane.kubeconfig),
                    "--liveness-port",
                    "0",
                    "--metrics-port",
                    str(self.metrics_port),
                    "--verbose",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})},
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 20 s)."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)

    def metric(self, name: str) -> float:
        """Sum of one of the operator's own Prometheus metrics (all label sets)."""
        import urllib.request

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log(self, lines: int = 80) -> str:
        """The last lines of the operator's log."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def operator_process(control_plane: ControlPlane, crds: None) -> Iterator[OperatorProcess]:
    """The operator, started once per test module and stopped after it."""
    proc = OperatorProcess(control_plane)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        with contextlib.suppress(OSError):
            if os.environ.get("CONNQUOTA_KEEP_LOGS") is None:
                proc.log_path.unlink()


def custom_object(api_client: Any) -> Any:
    """The CustomObjectsApi of the admin client."""
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


__all__ = ["OperatorProcess", "custom_object", "wait_for"]

_ = signal  # re-exported for tests that kill the operator


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "CREATE", "UPDATE"})
OPERATOR_ONLY = frozenset(
    {
        ("", "configmaps", ""),
        ("apps", "statefulsets", ""),
        ("", "services", ""),
        ("", "serviceaccounts", ""),
        ("rbac.authorization.k8s.io", "roles", ""),
        ("rbac.authorization.k8s.io", "rolebindings", ""),
        ("policy", "poddisruptionbudgets", ""),
        ("connquota.io", "exchangeconnectionquotas", "status"),
    }
)
"""(group, resource, subresource) that only the operator writes in these tests: the harness
writes pods, the gateways their Leases, kube-controller-manager StatefulSet status."""


def apiserver_writes(control_plane: ControlPlane) -> int:
    """Write requests the API server counted on operator-only resources (its own metrics)."""
    import re

    text = control_plane.kubectl("get", "--raw", "/metrics").stdout
    total = 0
    pattern = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        key = (labels.get("group", ""), labels.get("resource", ""), labels.get("subresource", ""))
        if labels.get("verb") in WRITE_VERBS and key in OPERATOR_ONLY:
            total += int(float(match["value"]))
    return total


from cluster.operator.fleet import mock_exchange  # noqa: E402, F401  (a fixture for the fleet tests)
