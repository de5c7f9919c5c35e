"""The HTTP and WebSocket handlers: the exchange endpoint, its read loop and per-connection message
limits, and the mock's own /healthz, /metrics (and /whoami when served)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from aiohttp import WSMsgType, web

from connquota.api.limits import (
    LimitName,
    LimitScope,
)
from connquota.exchanges.dialects.base import WireFormatError
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.ledger import SlidingLog
from connquota.mockexchange.sessions import SESSIONS, DialectSession
from connquota.mockexchange.state import MockState

if TYPE_CHECKING:
    from connquota.mockexchange.server import MockExchange

log = logging.getLogger("connquota.mockexchange.server")


class Serving(MockState):
    """The HTTP and WebSocket handlers (a part of `MockExchange`)."""

    async def _whoami(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ip = peer[0] if peer else request.remote
        return web.json_response({"ip": ip, "port": peer[1] if peer else None})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        conn = self.conn_of(request)
        if conn is None:
            return web.Response(status=503, text="connection not tracked")
        refusal = self._refuse_handshake(conn)
        if refusal is not None:
            return refusal
        try:
            endpoint = self.wire.parse_endpoint(request.path, request.query_string)
        except WireFormatError as exc:
            return web.Response(status=404, text=str(exc))
        session_cls = SESSIONS[self.dialect]
        session: DialectSession = session_cls(cast("MockExchange", self), conn, endpoint)
        refusal = session.handshake_error()
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade")
        await ws.prepare(request)
        self._open(conn, ws, session, endpoint.max_active_s)
        try:
            await session.on_open()
            await self._read_loop(conn, ws, session)
        finally:
            conn.closing = True
            conn.stop_writer()
            for stream in list(conn.streams):
                self.feeds.unsubscribe(stream, conn)
        return ws

    def _open(
        self,
        conn: Conn,
        ws: web.WebSocketResponse,
        session: DialectSession,
        max_active_s: float | None,
    ) -> None:
        now = time.monotonic()
        conn.state = cstate.WEBSOCKET
        conn.ws = ws
        conn.session = session
        conn.opened_at = now
        conn.last_inbound_at = now
        conn.last_data_at = now
        conn.max_active_s = max_active_s
        hb = self.profile.heartbeat
        conn.next_ping_at = now + self.settings.scaled_s(hb.intervalSeconds)
        conn.frame_builder = self._frame_builder(session)
        conn.on_overflow = self._on_overflow
        for name in (LimitName.MESSAGES_PER_CONNECTION, LimitName.CONTROL_MESSAGES_PER_CONNECTION):
            limit = self.limit(name, LimitScope.CONNECTION)
            if limit is not None:
                log_ = SlidingLog(self._window_s(limit))
                if name == LimitName.MESSAGES_PER_CONNECTION:
                    conn.msg_log = log_
                else:
                    conn.control_log = log_
        conn.writer_task = asyncio.create_task(
            conn.writer(), name=f"mockexchange-writer-{conn.conn_id}"
        )
        self.metrics.websockets_opened.inc()

    def _frame_builder(self, session: DialectSession) -> Any:
        cache = self._frame_cache

        def build(stream: str, seq: int, event_time_ms: int) -> str:
            key = (stream, seq, session.variant)
            text = cache.get(key)
            if text is None:
                text = session.frame(stream, seq, event_time_ms)
                cache[key] = text
            return text

        return build

    def _on_overflow(self, conn: Conn) -> None:
        assert conn.session is not None
        self.close_soon(conn, *conn.session.overflow_close)

    async def _read_loop(
        self, conn: Conn, ws: web.WebSocketResponse, session: DialectSession
    ) -> None:
        counts_heartbeat = self.profile.heartbeat.countsAsMessage
        while not conn.closing:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            while conn.silent_until and time.monotonic() < conn.silent_until:
                # playing dead: what the client sends is not read (nor answered) until the end
                await asyncio.sleep(conn.silent_until - time.monotonic())
            now = time.monotonic()
            conn.last_inbound_at = now
            conn.frames_received += 1
            self.metrics.frames_received.inc()
            heartbeat = msg.type in (WSMsgType.PING, WSMsgType.PONG)
            counted = not heartbeat or counts_heartbeat
            if (
                counted
                and self._over_message_limits(conn, now)
                and await session.on_rate_exceeded(LimitName.MESSAGES_PER_CONNECTION)
            ):
                continue
            if msg.type == WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                self._on_pong(conn, msg.data)
            elif msg.type == WSMsgType.TEXT:
                await session.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await session.on_binary(msg.data)

    def _over_message_limits(self, conn: Conn, now: float) -> bool:
        over = False
        if conn.msg_log is not None:
            limit = self.limit(LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION)
            assert limit is not None
            count = conn.msg_log.add(now)
            self.ledger.observe(limit.name, limit.scope, conn.conn_id, count)
            if count > limit.value:
                self.violate(conn, limit, count, self._penalty_text())
                over = True
        limit = self.limit(LimitName.MESSAGES_PER_IP, LimitScope.IP)
        if limit is not None:
            log_ = self._ip_messages.setdefault(conn.ip, SlidingLog(self._window_s(limit)))
            count = log_.add(now)
            self.ledger.observe(limit.name, limit.scope, conn.ip, count)
            if count > limit.value:
                self.violate(conn, limit, count, self._penalty_text())
                over = True
        return over

    def _penalty_text(self) -> str:
        return {"binance": "connection closed (1008)", "okx": "error 60014"}.get(
            self.dialect.value, "success=false reply"
        )

    def _on_pong(self, conn: Conn, payload: bytes) -> None:
        # a pong answers the ping whose payload it echoes (and every earlier one);
        # unsolicited pongs do not prevent disconnection
        for index, (sent, _) in enumerate(conn.pings):
            if sent == payload:
                for _ in range(index + 1):
                    conn.pings.popleft()
                return
