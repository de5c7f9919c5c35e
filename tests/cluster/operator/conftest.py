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
from connquota.testing.controlplane import ControlPlane


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

    def start(self) -> None:
        """Start the operator process (no liveness or metrics ports: tests run in parallel)."""
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
                    "0",
                    "--verbose",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
