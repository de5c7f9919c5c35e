"""Readiness and liveness probes (httpGet, tcpSocket, exec) and their thresholds."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def probe_once(
    probe: Mapping[str, Any],
    pod_ip: str,
    ports: Mapping[str, int],
    env: Mapping[str, str],
    cwd: Path,
) -> bool:
    timeout_s = float(probe.get("timeoutSeconds") or 1)
    if probe.get("httpGet"):
        get = probe["httpGet"]
        port = get.get("port")
        port_num = ports.get(port) if isinstance(port, str) and not port.isdigit() else int(port)
        if port_num is None:
            return False
        scheme = (get.get("scheme") or "HTTP").lower()
        host = get.get("host") or pod_ip
        path = get.get("path") or "/"
        req = urllib.request.Request(f"{scheme}://{host}:{port_num}{path}")
        for header in get.get("httpHeaders") or []:
            req.add_header(header["name"], header["value"])
        ctx = None
        if scheme == "https":  # the kubelet does not verify probe certificates either
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=ctx) as resp:
                return 200 <= int(resp.status) < 400
        except urllib.error.HTTPError as err:
            return 200 <= err.code < 400
        except (OSError, ValueError):
            return False
    if probe.get("tcpSocket"):
        sock = probe["tcpSocket"]
        port = sock.get("port")
        port_num = ports.get(port) if isinstance(port, str) and not port.isdigit() else int(port)
        if port_num is None:
            return False
        try:
            with socket.create_connection((sock.get("host") or pod_ip, port_num), timeout_s):
                return True
        except OSError:
            return False
    if probe.get("exec"):
        try:
            done = subprocess.run(
                list(probe["exec"].get("command") or []),
                env=dict(env),
                cwd=cwd,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except (subprocess.SubprocessError, OSError):
            return False
        return done.returncode == 0
    return True


class ProbeState:
    """Thresholds and period of one probe, and its current result."""

    def __init__(self, spec: Mapping[str, Any], next_at: float, result: bool = False) -> None:
        self.spec = spec
        self.next_at = next_at
        self.successes = 0
        self.failures = 0
        self.result = result

    def run(self, now: float, probe: Callable[[Mapping[str, Any]], bool]) -> bool:
        """Run the probe when due; return whether the result changed."""
        if now < self.next_at:
            return False
        self.next_at = now + float(self.spec.get("periodSeconds") or 10)
        before = self.result
        if probe(self.spec):
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold") or 1):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.result = False
        return before != self.result
