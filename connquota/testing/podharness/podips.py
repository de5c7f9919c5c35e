"""Pod IPs: one loopback address per Pod, never shared with another harness on the machine."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import tempfile
import threading
from pathlib import Path

from connquota.testing.podharness.common import HarnessFields

# Pod IPs in use are locked files here, so harnesses of concurrent test runs never share one.
POD_IP_LOCK_DIR = Path(tempfile.gettempdir()) / "connquota-pod-ips"
_POD_IPS_LOCK = threading.Lock()


def listening_ips() -> set[str]:
    """IPv4 addresses some socket on this machine listens on (from /proc/net/tcp)."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
            address = fields[1].split(":")[0]
            found.add(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


class PodAddresses(HarnessFields):
    """Allocates and releases the Pod IPs of one harness."""

    def _allocate_ip(self) -> str:
        """A Pod IP no other harness holds, in this process or any other on the machine.

        Each address in use is held by an exclusive ``flock`` on a file in the system temp
        dir; the kernel releases it when the holder closes it or dies.
        """
        if self.pod_ip_prefix is None:
            return self.fixed_pod_ip
        POD_IP_LOCK_DIR.mkdir(parents=True, exist_ok=True)
        busy = listening_ips()  # e.g. processes of a run that did not lock (or crashed)
        with _POD_IPS_LOCK:
            for last in range(2, 255):
                ip = f"{self.pod_ip_prefix}{last}"
                if ip in busy:
                    continue
                fd = os.open(POD_IP_LOCK_DIR / ip, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                self._ip_locks[ip] = fd
                return ip
        raise RuntimeError(f"no free pod IP left in {self.pod_ip_prefix}2-254")

    def _release_ip(self, ip: str) -> None:
        with _POD_IPS_LOCK:
            fd = self._ip_locks.pop(ip, None)
            if fd is not None:
                os.close(fd)
