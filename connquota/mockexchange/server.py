"""The mock exchange: an aiohttp server that speaks a profile's dialect and enforces its limits.

Connections are accepted by the mock's own accept loop, so every TCP connection counts at
accept, before any TLS or HTTP: one that never sends a request still counts as a connection
attempt and holds a concurrent slot until the handshake timeout drops it.

Use it in process::

    async with MockExchange(get_profile("binance-spot"), "127.0.0.1", 0, time_scale=60) as mx:
        url = mx.url            # ws://127.0.0.1:PORT
        ...
        assert mx.violations() == []
        assert mx.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, "127.0.0.2") >= 0.9

`MockExchange` keeps its settings, limits and lifecycle here; each concern is one module:
`accept` (attempts counted at the socket, classification), `penalties` (violations, 429,
bans), `serving` (HTTP and WebSocket handlers, per-connection message limits),
`session_services` (what dialect sessions ask: logins, subscriptions, size limits),
`housekeeping` (market-data pump, heartbeats, timeouts), `observation` (violations, peaks,
stats) and `faults` (faults on demand).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import socket
import ssl
import time

from aiohttp import web

from connquota.api.limits import (
    ExchangeProfile,
    Limit,
)
from connquota.exchanges.dialects import wire_format
from connquota.mockexchange.accept import CONTROL_PREFIXES, Accepting
from connquota.mockexchange.books import MockBooks
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.faults import Faults
from connquota.mockexchange.feeds import FeedBook
from connquota.mockexchange.housekeeping import Housekeeping
from connquota.mockexchange.ledger import Ledger, SlidingLog, SortedLog
from connquota.mockexchange.metrics import MockMetrics
from connquota.mockexchange.observation import Observation
from connquota.mockexchange.penalties import Penalties
from connquota.mockexchange.serving import Serving
from connquota.mockexchange.session_services import SessionServices
from connquota.mockexchange.sessions import SESSIONS
from connquota.mockexchange.settings import MockSettings

log = logging.getLogger(__name__)


class MockExchange(
    Accepting, Penalties, Serving, SessionServices, Housekeeping, Observation, Faults
):
    """A limit-enforcing exchange simulator serving one profile on one address."""

    def __init__(
        self,
        profile: ExchangeProfile,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        time_scale: float = 1.0,
        rate_per_stream_hz: float | None = None,
        limits: list[Limit] | None = None,
        settings: MockSettings | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings or MockSettings()
        if time_scale != 1.0:
            self.settings.time_scale = time_scale
        if rate_per_stream_hz is not None:
            self.settings.rate_per_stream_hz = rate_per_stream_hz
        self.profile = profile.with_overrides(limits or [])
        self.dialect = self.profile.dialect
        if self.dialect not in SESSIONS:
            raise ValueError(f"the mock exchange does not speak {self.dialect} yet")
        self.wire = wire_format(self.dialect)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        s = self.settings
        self.ledger = Ledger(
            violation_memory_s=s.scaled_s(s.violation_memory_s),
            ban_after_violations=s.ban_after_violations,
            ban_s=s.scaled_s(s.ban_s),
        )
        self.feeds = FeedBook(s.rate_per_stream_hz, private_rate_hz=s.private_rate_hz)
        self.metrics = MockMetrics()
        self.conns: dict[tuple[str, int], Conn] = {}
        self._ids = itertools.count(1)
        self._attempts: dict[str, SortedLog] = {}
        self._ip_messages: dict[str, SlidingLog] = {}
        self._forced: list[tuple[int, float, str | None]] = []
        self._frame_cache: dict[tuple[str, int, str], str] = {}
        self.books = MockBooks()
        self._tasks: list[asyncio.Task[None]] = []
        self._socket_tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._started_mono = time.monotonic()
        self._started_wall = time.time()
        self.malformed_received = 0

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        """The same server as http(s):// (for /admin, /metrics, and /whoami when served)."""
        return self.url.replace("ws", "http", 1)

    async def start(self) -> None:
        """Listen and serve until ``stop``."""
        from connquota.mockexchange.admin import add_admin_routes
        from connquota.mockexchange.rest import add_rest_routes

        app = web.Application(middlewares=[self._classify_middleware])
        if self.settings.serve_whoami:
            app.router.add_get("/whoami", self._whoami)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        add_admin_routes(app, self)
        add_rest_routes(app, self)
        app.router.add_get("/{tail:.*}", self._websocket)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, keepalive_timeout=15
        )
        await self._runner.setup()
        family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4096)
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._tasks = [
            asyncio.create_task(self._accept_loop(), name="mockexchange-accept"),
            asyncio.create_task(self._pump_loop(), name="mockexchange-pump"),
            asyncio.create_task(self._housekeeping_loop(), name="mockexchange-housekeeping"),
        ]
        log.info("mock exchange %s listening on %s", self.profile.name, self.url)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._listener is not None:
            self._listener.close()
        for conn in list(self.conns.values()):
            conn.stop_writer()
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> MockExchange:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- accept: counting at the socket level ----------------------------------------------

    # --- classification: control request, attempt ------------------------------------------

    # --- violations and penalties -----------------------------------------------------------

    # --- HTTP handlers ----------------------------------------------------------------------

    # --- services for sessions -------------------------------------------------------------

    # --- loops --------------------------------------------------------------------------------

    # --- observation ------------------------------------------------------------------------

    # --- faults -------------------------------------------------------------------------------


__all__ = ["CONTROL_PREFIXES", "MockExchange"]
