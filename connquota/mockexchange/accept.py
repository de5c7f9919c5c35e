"""Attempts counted at the socket: the mock's own accept loop, the handshake deadline, and the
classification of each connection (control request or exchange attempt) with the per-IP counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from typing import Any

from aiohttp import web

from connquota.api.limits import (
    LimitName,
    LimitScope,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.ledger import SortedLog
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")

HANDSHAKE_FLOOR_S = 2.0
"""Wall seconds a TCP connection may always take to send its HTTP request, whatever the time
scale: the handshake deadline is a network latency, not an exchange window, and scaled below a
loaded machine's scheduling delays it would drop honest clients (10 s at x900 is 11 ms)."""

CONTROL_PREFIXES = ("/admin", "/metrics", "/healthz")
"""HTTP paths that are the mock's own, not exchange connections (never counted as attempts)."""


class Accepting(MockState):
    """Attempts counted at the socket (a part of `MockExchange`)."""

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            sock, addr = await loop.sock_accept(self._listener)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            now = time.monotonic()
            conn = Conn(
                conn_id=f"c{next(self._ids)}",
                ip=addr[0],
                port=addr[1],
                accepted_at=now,
                accepted_wall=time.time(),
                outbox_max=self.settings.outbox_max_frames,
            )
            self.conns[conn.key] = conn
            self.metrics.tcp_accepted.labels(ip=conn.ip).inc()
            task = loop.create_task(self._serve_socket(sock, conn))
            self._socket_tasks.add(task)
            task.add_done_callback(self._socket_tasks.discard)

    async def _serve_socket(self, sock: socket.socket, conn: Conn) -> None:
        loop = asyncio.get_running_loop()
        assert self._runner is not None and self._runner.server is not None
        server = self._runner.server
        timeout_s = max(
            HANDSHAKE_FLOOR_S,
            self.settings.scaled_s(
                self.settings.handshake_timeout_s or self.profile.connectTimeoutSeconds
            ),
        )
        loop.call_later(timeout_s, self._handshake_deadline, conn)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: _CountingProtocol(server(), self, conn),
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=timeout_s if self.ssl_context else None,
            )
            conn.transport = transport
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.debug("connection %s failed before HTTP: %r", conn.conn_id, exc)
            with contextlib.suppress(OSError):
                sock.close()
            self.connection_lost(conn)

    def _handshake_deadline(self, conn: Conn) -> None:
        if conn.state == cstate.PENDING:
            self._classify_attempt(conn)
            conn.close_reason = "no HTTP request before the handshake timeout"
            conn.abort()
            if conn.transport is None:
                self.connection_lost(conn)

    def connection_lost(self, conn: Conn) -> None:
        """The TCP connection is gone: free its slots (called once per connection)."""
        if conn.state == cstate.CLOSED:
            return
        if conn.state == cstate.PENDING:
            self._classify_attempt(conn)
        conn.state = cstate.CLOSED
        conn.closing = True
        conn.stop_writer()
        for stream in list(conn.streams):
            self.feeds.unsubscribe(stream, conn)
        self.conns.pop(conn.key, None)
        self.metrics.connections_open.labels(ip=conn.ip).set(self._concurrent(conn.ip))

    @web.middleware
    async def _classify_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        conn = self.conn_of(request)
        if conn is not None and conn.state == cstate.PENDING:
            if request.path.startswith(CONTROL_PREFIXES) or (
                self.settings.serve_whoami and request.path == "/whoami"
            ):
                conn.state = cstate.CONTROL
            else:
                conn.path = request.path
                self._classify_attempt(conn)
        response: web.StreamResponse = await handler(request)
        return response

    def conn_of(self, request: web.Request) -> Conn | None:
        """The connection a request arrived on."""
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        return self.conns.get((peer[0], peer[1])) if peer else None

    def _classify_attempt(self, conn: Conn) -> None:
        if conn.state != cstate.PENDING:
            return
        conn.state = cstate.ATTEMPT
        self.metrics.attempts.labels(ip=conn.ip).inc()
        self._observe_concurrent(conn.ip)
        limit = self.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
        if limit is None:
            return
        log_ = self._attempts.setdefault(conn.ip, SortedLog(self._window_s(limit)))
        worst = log_.insert(conn.accepted_at, time.monotonic())
        self.ledger.observe(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, conn.ip, worst)
        if worst > limit.value:
            conn.attempt_over = True
            if conn.path == "":  # never sent a request: no HTTP answer to punish with
                self.violate(conn, limit, worst, "counted (no handshake to refuse)", penalised=True)

    def _attempts_in_window(self, ip: str, now: float) -> int:
        limit = self.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
        log_ = self._attempts.get(ip)
        if limit is None or log_ is None:
            return 0
        pending = [
            c.accepted_at for c in self.conns.values() if c.ip == ip and c.state == cstate.PENDING
        ]
        return log_.count(now, pending)

    def _concurrent(self, ip: str) -> int:
        return sum(
            1
            for c in self.conns.values()
            if c.ip == ip and c.state not in (cstate.CONTROL, cstate.CLOSED)
        )

    def _observe_concurrent(self, ip: str) -> None:
        count = self._concurrent(ip)
        self.metrics.connections_open.labels(ip=ip).set(count)
        if self.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) is not None:
            self.ledger.observe(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP, ip, count)


class _CountingProtocol(asyncio.Protocol):
    """Wraps aiohttp's request handler to learn when the TCP connection is gone."""

    def __init__(self, inner: Any, mx: Accepting, conn: Conn) -> None:
        self._inner = inner
        self._mx = mx
        self._conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.transport = transport  # type: ignore[assignment]
        self._inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._mx.connection_lost(self._conn)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        keep_open: bool | None = self._inner.eof_received()
        return keep_open

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
