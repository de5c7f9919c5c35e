"""What every part of the mock exchange shares: settings, the profile's limits, the ledger,
the open connections and the per-IP logs.

`MockExchange` fills these in its constructor; each concern (`accept`, `penalties`,
`serving`, `session_services`, `housekeeping`, `observation`, `faults`) is a class that
inherits `MockState`, so it reads the shared state and calls the other concerns' methods
through one declared surface that a type checker verifies.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
from types import ModuleType
from typing import TYPE_CHECKING

from aiohttp import web

from connquota.api.limits import Dialect, ExchangeProfile, Limit, LimitName, LimitScope
from connquota.mockexchange.books import MockBooks
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.feeds import FeedBook
from connquota.mockexchange.ledger import Ban, Ledger, SlidingLog, SortedLog
from connquota.mockexchange.metrics import MockMetrics
from connquota.mockexchange.settings import MockSettings


class MockState:
    """The mock exchange's shared state and limit lookups."""

    settings: MockSettings
    profile: ExchangeProfile
    dialect: Dialect
    wire: ModuleType
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    ledger: Ledger
    feeds: FeedBook
    books: MockBooks
    metrics: MockMetrics
    conns: dict[tuple[str, int], Conn]
    malformed_received: int
    _ids: itertools.count[int]
    _attempts: dict[str, SortedLog]
    _ip_messages: dict[str, SlidingLog]
    _forced: list[tuple[int, float, str | None]]
    _frame_cache: dict[tuple[str, int, str], str]
    _tasks: list[asyncio.Task[None]]
    _socket_tasks: set[asyncio.Task[None]]
    _listener: socket.socket | None
    _runner: web.AppRunner | None
    _started_mono: float
    _started_wall: float

    # --- limits ---------------------------------------------------------------------------

    def limit(self, name: LimitName, scope: LimitScope | None = None) -> Limit | None:
        """The enforced limit of this kind (None when the profile has none or it is not enforced)."""
        limit = self.profile.limit(name, scope)
        if limit is None:
            return None
        if limit.confidence == "assumed" and not self.settings.enforce_assumed:
            return None
        return limit

    def limit_value(self, name: LimitName, scope: LimitScope | None = None) -> float | None:
        """The enforced value of a limit, or None."""
        limit = self.limit(name, scope)
        return None if limit is None else limit.value

    def _window_s(self, limit: Limit) -> float:
        return self.settings.scaled_s(limit.windowSeconds or 1.0)

    @property
    def url(self) -> str:
        """The base URL clients connect to: ``ws://host:port`` or ``wss://host:port``."""
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    if TYPE_CHECKING:
        # What one concern calls on another; each is defined in the module named beside it.

        def violate(  # penalties
            self,
            conn: Conn,
            limit: Limit,
            value: float,
            action: str,
            penalised: bool = True,
            account: str | None = None,
        ) -> Ban | None: ...

        def _refuse_handshake(self, conn: Conn) -> web.Response | None: ...  # penalties

        def close_soon(  # session_services
            self, conn: Conn, code: int, reason: str
        ) -> asyncio.Task[None] | None: ...

        def wall_ms_of(self, mono: float) -> int: ...  # session_services

        def websockets(self, ip: str | None = None) -> list[Conn]: ...  # observation

        def conn_of(self, request: web.Request) -> Conn | None: ...  # accept

        def _attempts_in_window(self, ip: str, now: float) -> int: ...  # accept

        def _concurrent(self, ip: str) -> int: ...  # accept
