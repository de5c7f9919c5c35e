"""Real forward-proxy processes for proxy-egress tests: tinyproxy (HTTP CONNECT) and microsocks
(SOCKS5), installed by `hack/install-proxies.sh` from pinned Debian packages.

Each proxy listens on its own loopback address and binds its outgoing connections to another
(tinyproxy `Bind`, microsocks `-b`), so the mock exchange sees one source IP per proxy, the
picture of a real proxy pool. `proxy_binaries()` finds (or installs) the binaries; with
`CI=true` a missing binary is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "hack" / "install-proxies.sh"


class ProxyUnavailable(RuntimeError):
    """The proxy binaries are not installed and could not be installed here."""


def proxy_binaries() -> Path:
    """The directory holding bin/tinyproxy and bin/microsocks (installs them when missing).

    `$CONNQUOTA_PROXIES_DIR` names an existing install; otherwise the install script runs
    (idempotent: it only checks the binaries when they are there).
    """
    configured = os.environ.get("CONNQUOTA_PROXIES_DIR")
    if configured:
        base = Path(configured)
    else:
        if not INSTALL_SCRIPT.exists():
            raise ProxyUnavailable(f"{INSTALL_SCRIPT} not found (not a source checkout)")
        run = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=300
        )
        if run.returncode != 0:
            raise ProxyUnavailable(f"hack/install-proxies.sh failed: {run.stderr.strip()[-600:]}")
        base = Path(run.stdout.strip().splitlines()[-1])
    for name in ("tinyproxy", "microsocks"):
        if not os.access(base / "bin" / name, os.X_OK):
            raise ProxyUnavailable(f"{base / 'bin' / name} is missing")
    return base


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ProxyProcess:
    """One proxy server process: `kind` is "http" (tinyproxy) or "socks5" (microsocks)."""

    kind: str
    binaries: Path
    listen_ip: str
    egress_ip: str
    workdir: Path
    username: str | None = None
    password: str | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def url(self) -> str:
        """The pool's `proxyUrl` (no credentials: those go in the Secret files)."""
        return f"{self.kind}://{self.listen_ip}:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "socks5":
            cmd = [str(self.binaries / "bin" / "microsocks"), "-i", self.listen_ip]
            cmd += ["-p", str(self.port), "-b", self.egress_ip]
            if self.username is not None:
                cmd += ["-u", self.username, "-P", self.password or ""]
            return cmd
        conf = self.workdir / f"tinyproxy-{self.listen_ip}.conf"
        lines = [
            f"Port {self.port}",
            f"Listen {self.listen_ip}",
            f"Bind {self.egress_ip}",
            "Timeout 600",
            "MaxClients 1000",
            "LogLevel Notice",
            "Allow 127.0.0.0/8",
            "DisableViaHeader Yes",
        ]
        if self.username is not None:
            lines.append(f"BasicAuth {self.username} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        return [str(self.binaries / "bin" / "tinyproxy"), "-d", "-c", str(conf)]

    async def start(self, timeout_s: float = 10.0) -> None:
        """Start the process and wait until it accepts TCP connections (bounded)."""
        if self.port == 0:
            self.port = free_port(self.listen_ip)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.kind}-{self.listen_ip}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self._command(), stdout=log, stderr=log)
        log.close()
        self.starts += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} proxy exited {self.proc.returncode} at start")
            try:
                _, writer = await asyncio.open_connection(self.listen_ip, self.port)
            except OSError:
                if loop.time() > deadline:
                    raise TimeoutError(f"{self.url} did not listen within {timeout_s} s") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    async def kill(self) -> None:
        """SIGKILL the process (every tunnel through it drops) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 10)
        self.proc = None

    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None
