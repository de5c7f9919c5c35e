"""Gateway processes for the demo and the component tests: start, watch, signal, restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class GatewayProcess:
    """One `connquota gateway --plan ... --pod N` child process."""

    def __init__(
        self,
        plan_path: Path,
        ordinal: int,
        state_dir: Path,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.plan_path = plan_path
        self.ordinal = ordinal
        self.state_dir = state_dir
        self.log_path = log_path or state_dir / f"gateway-{ordinal}.log"
        self.extra_args = extra_args or []
        self.host = host
        self.port = free_port(host)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_mono: float | None = None

    @property
    def base_url(self) -> str:
        """`http://host:port` of its HTTP server."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The consumer endpoint."""
        return f"ws://{self.host}:{self.port}/v1/ws"

    def start(self) -> None:
        """Spawn the process (its log goes to `log_path`)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "connquota.cli",
            "gateway",
            "--plan",
            str(self.plan_path),
            "--pod",
            str(self.ordinal),
            "--state-dir",
            str(self.state_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--report-interval",
            "0.5",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = {k: v for k, v in os.environ.items() if not k.startswith("POD_")}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        log.close()
        self.started_mono = time.monotonic()

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send `sig` to the process (only this one, by pid)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float = 15.0) -> int | None:
        """Wait for the process to exit; SIGKILL it after `timeout_s`. Returns its code."""
        if self.proc is None:
            return None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        return self.proc.returncode

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then wait (SIGKILL after the timeout)."""
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout_s)

    async def kill(self) -> None:
        """SIGKILL and reap."""
        self.signal(signal.SIGKILL)
        await self.wait_exit(5.0)

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any] | None:
        """Its /status, or None when it does not answer."""
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            async with asyncio.timeout(2.0):
                async with session.get(self.base_url + "/status") as resp:
                    doc = await resp.json()
                    return doc if isinstance(doc, dict) else None
        return None
