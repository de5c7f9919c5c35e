"""An IP-echo service for tests and the demo: answers each caller's source address.

Pools verify their egress addresses through such a service (`egressCheck.method: url`), never
through the exchange. `GET /` (or any path) answers ``{"ip": "<caller address>"}``; the
service counts the requests it served per caller address, so a test can show that the checks
went here and not to the exchange. Run it in-process (`IpEchoServer`) or in its own thread
(`ThreadedIpEcho`) for synchronous callers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from aiohttp import web


class IpEchoServer:
    """An aiohttp server on `host:port` answering the caller's address as JSON."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.requests: Counter[str] = Counter()
        """Requests served per caller address."""
        self.refuse = False
        """When True, answer 503 (an echo service that is down but reachable)."""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The URL a pool's `egressCheck.url` names."""
        return f"http://{self.host}:{self.port}/ip"

    async def _echo(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ip = peer[0] if peer else (request.remote or "")
        self.requests[ip] += 1
        if self.refuse:
            return web.Response(status=503, text="echo service unavailable")
        return web.json_response({"ip": ip})

    async def start(self) -> None:
        """Listen until `stop`; `port` 0 picks a free port (read `port`/`url` afterwards)."""
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ThreadedIpEcho:
    """An `IpEchoServer` on its own event loop in a daemon thread (for synchronous callers)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 10.0) -> None:
        self.server = IpEchoServer(host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout_s)

    @property
    def url(self) -> str:
        """The URL a pool's `egressCheck.url` names."""
        return self.server.url

    def requests(self) -> dict[str, int]:
        """Requests served per caller address (a copy)."""

        async def read() -> dict[str, int]:
            return dict(self.server.requests)

        return asyncio.run_coroutine_threadsafe(read(), self.loop).result(10)

    def stop(self) -> None:
        """Stop the server, then its loop and thread."""
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
