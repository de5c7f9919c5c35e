"""One TCP connection as the mock exchange sees it, from accept to close.

A connection starts ``pending`` at TCP accept (it already counts against its IP's concurrent
connections), becomes ``control`` (``/whoami``, ``/admin``, ``/metrics``: not an exchange
connection), ``attempt`` (a WebSocket handshake, or a TCP connection that never sent a request)
and, once upgraded, ``ws``. Outgoing frames go through an outbox drained by one writer task, so
a slow client never stalls the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connquota.mockexchange.ledger import SlidingLog

if TYPE_CHECKING:
    from connquota.mockexchange.sessions.base import DialectSession

log = logging.getLogger(__name__)

PENDING = "pending"
CONTROL = "control"
ATTEMPT = "attempt"
WEBSOCKET = "ws"
CLOSED = "closed"


@dataclass(eq=False)
class Conn:
    """Everything the referee tracks about one TCP connection."""

    conn_id: str
    ip: str
    port: int
    accepted_at: float
    accepted_wall: float
    state: str = PENDING
    transport: asyncio.Transport | None = None
    ws: web.WebSocketResponse | None = None
    session: DialectSession | None = None
    path: str = ""
    account: str | None = None
    api_key: str | None = None
    """The API key the connection logged in with (per-key limits count it)."""
    streams: set[str] = field(default_factory=set)
    opened_at: float = 0.0
    msg_log: SlidingLog | None = None
    control_log: SlidingLog | None = None
    pings: deque[tuple[bytes, float]] = field(default_factory=deque)
    next_ping_at: float = 0.0
    last_inbound_at: float = 0.0
    last_data_at: float = 0.0
    last_beat_at: float = 0.0
    """When the server last sent a heartbeat message (``serverHeartbeat`` profiles)."""
    ever_subscribed: bool = False
    silent_until: float = 0.0
    notice_sent: bool = False
    closing: bool = False
    close_reason: str = ""
    outbox: deque[str] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    writer_task: asyncio.Task[None] | None = None
    frames_sent: int = 0
    frames_received: int = 0
    outbox_max: int = 20_000
    frame_builder: Any = None
    snapshot_due: set[str] = field(default_factory=set)
    """Book streams whose next push to this connection is a snapshot (just subscribed)."""
    stamp: Any = None
    """Coinbase: a function applied to every frame as it is queued (the connection's
    ``sequence_num``), or None."""
    on_overflow: Any = None
    attempt_over: bool = False
    """The attempt exceeded connectionAttempts when it was counted (refused at handshake)."""
    max_active_s: float | None = None
    """Bybit private ``max_active_time``: idle seconds before the cut (profile seconds)."""

    @property
    def key(self) -> tuple[str, int]:
        """The peer address as the server sees it."""
        return (self.ip, self.port)

    def silent(self, now: float) -> bool:
        """Whether the server is playing dead on this connection."""
        return now < self.silent_until

    def deliver(self, stream: str, seq: int, event_time_ms: int) -> None:
        """Queue one data event (dropped while the server plays dead or closes)."""
        if self.closing or self.silent_until:
            return
        self.last_data_at = time.monotonic()
        if self.snapshot_due and stream in self.snapshot_due and self.session is not None:
            self.snapshot_due.discard(stream)
            self.send_later(self.session.snapshot_frame(stream, seq, event_time_ms))
            return
        self.send_later(self.frame_builder(stream, seq, event_time_ms))

    def send_later(self, text: str) -> None:
        """Queue a text frame; a client that lets the outbox overflow is dropped."""
        if self.closing:
            return
        if self.stamp is not None:
            text = self.stamp(text)
        self.outbox.append(text)
        if len(self.outbox) > self.outbox_max and self.on_overflow is not None:
            self.outbox.clear()
            self.on_overflow(self)
            return
        self.wake.set()

    async def writer(self) -> None:
        """Send queued frames in order until the connection closes."""
        ws = self.ws
        assert ws is not None
        try:
            while not self.closing:
                await self.wake.wait()
                self.wake.clear()
                while self.outbox and not ws.closed:
                    await ws.send_str(self.outbox.popleft())
                    self.frames_sent += 1
        except (ConnectionError, RuntimeError, asyncio.CancelledError) as exc:
            log.debug(
                "writer of %s stopped: %r", self.conn_id, exc, extra={"connection": self.conn_id}
            )

    def stop_writer(self) -> None:
        """Stop the writer task (the connection is closing)."""
        if self.writer_task is not None and not self.writer_task.done():
            self.writer_task.cancel()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.closing = True
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.abort()

    def summary(self, now: float) -> dict[str, Any]:
        """A JSON-ready description for the admin API."""
        return {
            "connId": self.conn_id,
            "ip": self.ip,
            "port": self.port,
            "state": self.state,
            "path": self.path,
            "account": self.account,
            "streams": len(self.streams),
            "ageSeconds": round(now - (self.opened_at or self.accepted_at), 3),
            "silent": self.silent(now),
            "framesSent": self.frames_sent,
            "framesReceived": self.frames_received,
        }
