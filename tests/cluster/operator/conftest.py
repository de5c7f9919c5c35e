"""Fixtures for operator tests: the CRDs installed, and `connquota operator` as a real process."""

from __future__ import annotations

import contextlib
import json
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

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample of one of the operator's metrics, parsed by
        prometheus-client's own exposition parser."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return [
            (dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        ]

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


OPERATOR_AGENT = "connquota-operator/"
"""The User-Agent prefix of every request the operator makes (its client and kopf's)."""
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def audit_mark(control_plane: ControlPlane, after: int = 0) -> int:
    """A byte offset of the API server's audit log such that every request that completed
    before this call is logged before it: a marker request is made and waited for."""
    import time
    import uuid

    marker = uuid.uuid4().hex
    control_plane.kubectl("get", "--raw", f"/version?connquota-mark={marker}")
    offset = after
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events, end = control_plane.audit_events(offset)
        for event in events:
            if marker in event.get("requestURI", ""):
                return end
        offset = end
        time.sleep(0.05)
    pytest.fail(f"the audit log did not show the marker request {marker} within 30 s")


def operator_requests(
    control_plane: ControlPlane, start: int, end: int, *, verbs: frozenset[str] | None = None
) -> list[dict[str, Any]]:
    """Audit events of the operator's requests between two `audit_mark` offsets."""
    assert control_plane.audit_log is not None, "the session control plane runs with audit=True"
    with control_plane.audit_log.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    out = []
    for line in data.splitlines():
        event = json.loads(line)
        if not event.get("userAgent", "").startswith(OPERATOR_AGENT):
            continue
        if verbs is None or event.get("verb") in verbs:
            out.append(event)
    return out


def describe(events: list[dict[str, Any]]) -> str:
    """Audit events counted by verb, resource and namespace (for failure messages)."""
    from collections import Counter

    counts = Counter(
        (
            e.get("verb"),
            (e.get("objectRef") or {}).get("resource"),
            (e.get("objectRef") or {}).get("subresource", ""),
            (e.get("objectRef") or {}).get("namespace", ""),
        )
        for e in events
    )
    return "\n".join(f"{n:5d} {k}" for k, n in counts.most_common(30))


from cluster.operator.fleet import (  # noqa: E402, F401  (fixtures for the fleet tests)
    ip_echo,
    mock_exchange,
)
