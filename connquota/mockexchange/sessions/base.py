"""What a dialect session does on top of the common connection loop of the mock exchange.

The server owns the connection (counting, heartbeats, max age, faults); a session speaks one
exchange's language: it answers requests, builds data frames and notices, and applies the
exchange's penalty when a limit is exceeded.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web

from connquota.api.limits import LimitName
from connquota.exchanges.dialects.base import Endpoint

if TYPE_CHECKING:
    from connquota.mockexchange.connection import Conn
    from connquota.mockexchange.server import MockExchange


def wall_ms() -> int:
    """Wall-clock epoch milliseconds (event timestamps)."""
    return int(time.time() * 1000)


class DialectSession:
    """The exchange-specific half of one WebSocket connection."""

    heartbeat_close: tuple[int, str] = (1000, "heartbeat timeout")
    overflow_close: tuple[int, str] = (1008, "send buffer full")
    age_close: tuple[int, str] = (1001, "connection reached its maximum age")
    shutdown_close: tuple[int, str] = (1001, "server shutdown")

    def __init__(self, mx: MockExchange, conn: Conn, endpoint: Endpoint) -> None:
        self.mx = mx
        self.conn = conn
        self.endpoint = endpoint

    @property
    def variant(self) -> str:
        """Which frame shape this connection gets (connections with equal variants share frames)."""
        return "default"

    def handshake_error(self) -> web.Response | None:
        """An HTTP answer refusing the upgrade (e.g. too many streams in the URL), or None."""
        return None

    async def on_open(self) -> None:
        """Called once the WebSocket is open (subscribe streams named in the URL...)."""

    async def on_text(self, text: str) -> None:
        """Answer one text frame from the client."""

    async def on_binary(self, data: bytes) -> None:
        """Answer one binary frame from the client (exchanges expect text)."""
        await self.on_text(data.decode("utf-8", errors="replace"))

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        """The data frame of one event."""
        raise NotImplementedError

    def opens_with_snapshot(self, stream: str) -> bool:
        """Whether the first push of ``stream`` to a subscriber is a snapshot (order books that
        send updates afterwards)."""
        return False

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        """The first push of ``stream`` to a new subscriber: a snapshot at event ``seq`` (a
        stream that does not open with one gets its ordinary frame)."""
        return self.frame(stream, seq, event_time_ms)

    def heartbeat_frame(self) -> str | None:
        """The server heartbeat sent about every heartbeat interval without other updates once
        subscribed (profiles whose heartbeat is ``serverHeartbeat``: Kraken), or None."""
        return None

    def ping_interval_s(self, profile_s: float) -> float | None:
        """Seconds between server pings (``serverPing`` profiles): the profile's by default;
        None while this connection has not asked for heartbeats (Deribit's opt-in
        ``public/set_heartbeat``)."""
        return profile_s

    def ping_text(self) -> str | None:
        """The server ping as a text frame (Deribit's ``test_request``, answered by a request
        that pops ``conn.pings``), or None for a WebSocket ping frame."""
        return None

    def notice(self) -> str | None:
        """The notice sent before a planned disconnect (max age, shutdown), or None."""
        return None

    def on_key_revoked(self, account: str) -> bool:
        """The key of ``account`` was revoked: tell this session if it uses it (True when it
        did). Default: a session logged in as ``account`` is closed."""
        if self.conn.account != account:
            return False
        self.mx.close_soon(self.conn, 1000, "API key revoked")
        return True

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        """Apply the exchange's penalty; True when the offending frame must be ignored."""
        await self.mx.close_conn(self.conn, 1008, "too many messages")
        return True

    def send(self, text: str) -> None:
        """Queue a frame to the client."""
        self.conn.send_later(text)
