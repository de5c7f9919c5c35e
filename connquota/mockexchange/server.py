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
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import socket
import ssl
import time
from collections import defaultdict
from typing import Any

from aiohttp import WSMsgType, web

from connquota.api.limits import (
    ExchangeProfile,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
)
from connquota.exchanges.dialects import wire_format
from connquota.exchanges.dialects.base import WireFormatError
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.feeds import FeedBook
from connquota.mockexchange.ledger import Ban, Ledger, SlidingLog, SortedLog, Violation
from connquota.mockexchange.metrics import MockMetrics
from connquota.mockexchange.sessions import SESSIONS, DialectSession
from connquota.mockexchange.settings import MockSettings

log = logging.getLogger(__name__)

CONTROL_PREFIXES = ("/admin", "/metrics", "/healthz")
"""HTTP paths that are the mock's own, not exchange connections (never counted as attempts)."""


class MockExchange:
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
        self._forced: list[tuple[int, float]] = []
        self._frame_cache: dict[tuple[str, int, str], str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._socket_tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._started_mono = time.monotonic()
        self._started_wall = time.time()
        self.malformed_received = 0

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

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL clients connect to: ``ws://host:port`` or ``wss://host:port``."""
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def http_url(self) -> str:
        """The same server as http(s):// (for /admin, /metrics, and /whoami when served)."""
        return self.url.replace("ws", "http", 1)

    async def start(self) -> None:
        """Listen and serve until ``stop``."""
        from connquota.mockexchange.admin import add_admin_routes

        app = web.Application(middlewares=[self._classify_middleware])
        if self.settings.serve_whoami:
            app.router.add_get("/whoami", self._whoami)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        add_admin_routes(app, self)
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
        timeout_s = self.settings.scaled_s(
            self.settings.handshake_timeout_s or self.profile.connectTimeoutSeconds
        )
        loop.call_later(timeout_s, self._handshake_deadline, conn)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: _CountingProtocol(server(), self, conn),
                sock,
                ssl=self.ssl_context,
                ssl_handshake_timeout=timeout_s if self.ssl_context else None,
            )
            conn.transport = transport  # type: ignore[assignment]
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

    # --- classification: control request, attempt ------------------------------------------

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
        return await handler(request)

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

    # --- violations and penalties -----------------------------------------------------------

    def violate(
        self,
        conn: Conn,
        limit: Limit,
        value: float,
        action: str,
        penalised: bool = True,
        account: str | None = None,
    ) -> Ban | None:
        """Record that ``conn`` exceeded ``limit``; may ban its IP."""
        violation = Violation(
            wall_time=time.time(),
            limit=limit.name.value,
            scope=limit.scope.value,
            value=value,
            limit_value=limit.value,
            ip=conn.ip,
            account=account or conn.account,
            conn_id=conn.conn_id,
            action=action,
        )
        log.warning(
            "limit %s/%s exceeded by %s: %s > %s; %s",
            limit.name.value, limit.scope.value, conn.ip, value, limit.value, action,
            extra={"connection": conn.conn_id, "ip": conn.ip},
        )  # fmt: skip
        self.metrics.violations.labels(limit=limit.name.value, scope=limit.scope.value).inc()
        ban = self.ledger.record(violation, time.monotonic(), penalised)
        if ban is not None:
            log.warning(
                "banning %s for %.1f s", ban.ip, ban.until - time.monotonic(), extra={"ip": ban.ip}
            )
            self.metrics.bans.inc()
        return ban

    def violate_rule(
        self,
        conn: Conn,
        rule: str,
        scope: LimitScope,
        value: float,
        limit_value: float,
        action: str,
        account: str | None = None,
    ) -> None:
        """Record a violation of a documented rule that is no profile limit (Binance: one
        user-data subscription per account per connection); never penalised with a ban."""
        violation = Violation(
            wall_time=time.time(),
            limit=rule,
            scope=scope.value,
            value=value,
            limit_value=limit_value,
            ip=conn.ip,
            account=account or conn.account,
            conn_id=conn.conn_id,
            action=action,
        )
        log.warning(
            "rule %s/%s broken by %s: %s > %s; %s",
            rule, scope.value, conn.ip, value, limit_value, action,
            extra={"connection": conn.conn_id, "ip": conn.ip},
        )  # fmt: skip
        self.metrics.violations.labels(limit=rule, scope=scope.value).inc()
        self.ledger.record(violation, time.monotonic(), False)

    def _http_refusal(self, status: int, retry_after_s: float, text: str) -> web.Response:
        retry = max(1, math.ceil(retry_after_s))
        self.metrics.handshake_refusals.labels(status=str(status)).inc()
        return web.Response(status=status, text=text, headers={"Retry-After": str(retry)})

    def _refuse_handshake(self, conn: Conn) -> web.Response | None:
        now = time.monotonic()
        if self._forced:
            status, retry_s = self._forced.pop(0)
            return self._http_refusal(status, retry_s, "fault injected by the admin API")
        ban = self.ledger.active_bans(now).get(conn.ip)
        if ban is not None:
            return self._http_refusal(
                418, ban.until - now, f"IP banned until {self.wall_ms_of(ban.until)}"
            )
        limit = self.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
        if limit is not None and conn.attempt_over:
            count = self._attempts_in_window(conn.ip, now)
            self.violate(conn, limit, max(count, limit.value + 1), "HTTP 429 on the handshake")
            retry_s = self._attempts[conn.ip].wait_s(now, limit.value)
            return self._http_refusal(429, retry_s, "Too many connection attempts")
        limit = self.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
        if limit is not None:
            count = self._concurrent(conn.ip)
            if count > limit.value:
                self.violate(conn, limit, count, "HTTP 429 on the handshake")
                return self._http_refusal(429, 1.0, "Too many concurrent connections")
        return None

    # --- HTTP handlers ----------------------------------------------------------------------

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
        session: DialectSession = session_cls(self, conn, endpoint)
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

    # --- services for sessions -------------------------------------------------------------

    def note_malformed(self, conn: Conn) -> None:
        """Count a malformed client frame (answered with the dialect's error)."""
        self.malformed_received += 1

    def count_control(self, conn: Conn, action: str) -> bool:
        """Count a subscribe/unsubscribe/login request; True when it exceeds the limit."""
        if conn.control_log is None:
            return False
        limit = self.limit(LimitName.CONTROL_MESSAGES_PER_CONNECTION, LimitScope.CONNECTION)
        assert limit is not None
        count = conn.control_log.add(time.monotonic())
        self.ledger.observe(limit.name, limit.scope, conn.conn_id, count)
        if count > limit.value:
            self.violate(conn, limit, count, action)
            return True
        return False

    def _over_size(self, conn: Conn, name: LimitName, value: float, action: str) -> bool:
        limit = self.limit(name)
        if limit is None:
            return False
        self.ledger.observe(limit.name, limit.scope, conn.conn_id, value)
        if value > limit.value:
            self.violate(conn, limit, value, action, penalised=False)
            return True
        return False

    def over_stream_limit(self, conn: Conn, streams: int, action: str) -> bool:
        """Whether ``streams`` on ``conn`` exceed streamsPerConnection (records the use)."""
        return self._over_size(conn, LimitName.STREAMS_PER_CONNECTION, streams, action)

    def over_args_limit(self, conn: Conn, args: int, action: str) -> bool:
        """Whether one request naming ``args`` streams exceeds argsPerSubscribe."""
        return self._over_size(conn, LimitName.ARGS_PER_SUBSCRIBE, args, action)

    def over_payload_limit(self, conn: Conn, size: int, action: str) -> bool:
        """Whether one request's stream list of ``size`` bytes exceeds subscribePayloadBytes."""
        return self._over_size(conn, LimitName.SUBSCRIBE_PAYLOAD_BYTES, size, action)

    def _account_conns(self, account: str) -> list[Conn]:
        return [
            c for c in self.conns.values() if c.account == account and c.state == cstate.WEBSOCKET
        ]

    def login(self, conn: Conn, account: str, action: str | None) -> int | None:
        """Log ``conn`` in as ``account``. With an ``action``, enforce connections per account:
        returns the limit (and logs nothing in) when this login would exceed it."""
        limit = self.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT)
        count = len(self._account_conns(account)) + 1
        if limit is not None and action is not None:
            if count > limit.value:
                self.violate(conn, limit, count, action, penalised=False, account=account)
                return int(limit.value)
            self.ledger.observe(limit.name, limit.scope, account, count)
        conn.account = account
        return None

    def channel_connections_over(self, conn: Conn, channel: str, action: str) -> int | None:
        """OKX: connections per private channel per account; the limit when ``conn`` would
        exceed it by subscribing ``channel``."""
        limit = self.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT)
        if limit is None or conn.account is None:
            return None
        prefix = channel + ":"
        count = 1 + sum(
            1
            for c in self._account_conns(conn.account)
            if c is not conn and any(s.startswith(prefix) for s in c.streams)
        )
        if count > limit.value:
            self.violate(conn, limit, count, action, penalised=False)
            return int(limit.value)
        self.ledger.observe(limit.name, limit.scope, conn.account, count)
        return None

    def subscribe(self, conn: Conn, streams: list[str], private: bool = False) -> None:
        """Start sending ``streams`` to ``conn`` (``private``: an account's feeds, at the private
        rate)."""
        now = time.monotonic()
        for stream in streams:
            if stream not in conn.streams:
                conn.streams.add(stream)
                self.feeds.subscribe(stream, conn, now, private)
        conn.ever_subscribed = conn.ever_subscribed or bool(streams)
        limit = self.limit(LimitName.STREAMS_PER_CONNECTION)
        if limit is not None:
            self.ledger.observe(limit.name, limit.scope, conn.conn_id, len(conn.streams))

    def unsubscribe(self, conn: Conn, streams: list[str]) -> None:
        """Stop sending ``streams`` to ``conn``."""
        for stream in streams:
            if stream in conn.streams:
                conn.streams.discard(stream)
                self.feeds.unsubscribe(stream, conn)

    def close_soon(self, conn: Conn, code: int, reason: str) -> asyncio.Task[None] | None:
        """Start closing ``conn`` with ``code`` unless it is already closing."""
        if conn.closing:
            return None
        conn.closing = True
        conn.close_reason = reason
        conn.wake.set()
        return asyncio.get_running_loop().create_task(self._close(conn, code, reason))

    async def close_conn(self, conn: Conn, code: int, reason: str) -> None:
        """Close a WebSocket with ``code`` (abort the TCP connection if the close hangs)."""
        task = self.close_soon(conn, code, reason)
        if task is not None:
            await task

    async def _close(self, conn: Conn, code: int, reason: str) -> None:
        ws = conn.ws
        self.metrics.server_closes.labels(code=str(code)).inc()
        if ws is not None:
            # let frames queued before the close (an error, a notice) go out first
            with contextlib.suppress(Exception):
                while conn.outbox and not ws.closed:
                    await asyncio.wait_for(ws.send_str(conn.outbox.popleft()), 1.0)
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, RuntimeError):
                await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120]), 2.0)
        conn.abort()

    def wall_ms_of(self, mono: float) -> int:
        """Epoch milliseconds of a monotonic instant."""
        return int((time.time() + (mono - time.monotonic())) * 1000)

    # --- loops --------------------------------------------------------------------------------

    async def _pump_loop(self) -> None:
        tick = self.settings.tick_real_s
        while True:
            await asyncio.sleep(tick)
            self._frame_cache.clear()
            sent = self.feeds.pump(time.monotonic(), int(time.time() * 1000))
            if sent:
                self.metrics.data_sent.inc(sent)

    async def _housekeeping_loop(self) -> None:
        tick = max(0.005, min(0.05, self.settings.scaled_s(1.0) / 4))
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for conn in list(self.conns.values()):
                if conn.state == cstate.WEBSOCKET and not conn.closing:
                    try:
                        await self._keep(conn, now)
                    except (ConnectionError, RuntimeError) as exc:
                        log.debug("housekeeping %s: %r", conn.conn_id, exc)

    async def _keep(self, conn: Conn, now: float) -> None:
        session = conn.session
        ws = conn.ws
        assert session is not None and ws is not None
        if conn.silent_until:
            if now < conn.silent_until:
                return
            self._end_silence(conn, now)
        s = self.settings
        hb = self.profile.heartbeat
        max_age = self.limit_value(LimitName.MAX_CONNECTION_AGE)
        if max_age is not None:
            age = now - conn.opened_at
            if not conn.notice_sent and age >= s.scaled_s(max(0.0, max_age - s.notice_lead_s)):
                conn.notice_sent = True
                notice = session.notice()
                if notice is not None:
                    conn.send_later(notice)
            if age >= s.scaled_s(max_age):
                self.close_soon(conn, *session.age_close)
                return
        if hb.direction == HeartbeatDirection.SERVER_PING:
            if conn.pings and now - conn.pings[0][1] > s.scaled_s(hb.timeoutSeconds):
                self.close_soon(conn, *session.heartbeat_close)
                return
            if now >= conn.next_ping_at:
                payload = str(int(time.time() * 1000)).encode()
                conn.pings.append((payload, now))
                conn.next_ping_at = now + s.scaled_s(hb.intervalSeconds)
                await ws.ping(payload)
        else:
            timeout_s = conn.max_active_s or hb.timeoutSeconds
            last = max(conn.last_inbound_at, conn.last_data_at if conn.ever_subscribed else 0.0)
            if self.dialect.value == "okx":
                # "break automatically if the subscription is not established or data has not
                # been pushed for more than 30 seconds" (a client ping counts as activity)
                last = conn.last_inbound_at if not conn.streams else max(last, conn.last_data_at)
            if now - last > s.scaled_s(timeout_s):
                self.close_soon(conn, *session.heartbeat_close)

    def _end_silence(self, conn: Conn, now: float) -> None:
        conn.silent_until = 0.0
        conn.last_inbound_at = now
        conn.pings.clear()

    # --- observation ------------------------------------------------------------------------

    def violations(self) -> list[Violation]:
        """Every violation recorded since start (or the last reset)."""
        return list(self.ledger.violations)

    def peak(self, name: LimitName, scope: LimitScope, key: str | None = None) -> float:
        """Peak use of a limit for one IP / account / connection id (or the max over all)."""
        return self.ledger.peak(name, scope, key)

    def peak_fraction(self, name: LimitName, scope: LimitScope, key: str | None = None) -> float:
        """Peak use divided by the limit's value (1.0 = at the limit)."""
        value = self.limit_value(name, scope)
        return 0.0 if not value else self.peak(name, scope, key) / value

    def bans(self) -> dict[str, float]:
        """Active bans: IP -> wall-clock seconds left."""
        now = time.monotonic()
        return {ip: ban.until - now for ip, ban in self.ledger.active_bans(now).items()}

    def connections(self, ip: str | None = None) -> list[Conn]:
        """Open connections (of one IP), in every state but closed and control."""
        return [
            c
            for c in self.conns.values()
            if c.state not in (cstate.CONTROL, cstate.CLOSED) and (ip is None or c.ip == ip)
        ]

    def websockets(self, ip: str | None = None) -> list[Conn]:
        """Open WebSocket connections (of one IP)."""
        return [c for c in self.connections(ip) if c.state == cstate.WEBSOCKET and not c.closing]

    def stats(self) -> dict[str, Any]:
        """A JSON-ready summary: limits, connections per IP, peaks, bans, counters."""
        now = time.monotonic()
        per_ip: dict[str, int] = defaultdict(int)
        for conn in self.connections():
            per_ip[conn.ip] += 1
        return {
            "profile": self.profile.name,
            "dialect": self.dialect.value,
            "url": self.url,
            "timeScale": self.settings.time_scale,
            "ratePerStreamHz": self.feeds.rate_hz,
            "uptimeSeconds": round(now - self._started_mono, 3),
            "limits": [limit.to_wire() for limit in self.profile.limits],
            "connectionsPerIp": dict(per_ip),
            "attemptsInWindowPerIp": {
                ip: self._attempts_in_window(ip, now) for ip in self._attempts
            },
            "websockets": len(self.websockets()),
            "streamsActive": len(self.feeds.active),
            "dataMessagesSent": self.feeds.events_sent,
            "malformedReceived": self.malformed_received,
            "violations": len(self.ledger.violations),
            "bans": {ip: round(left, 3) for ip, left in self.bans().items()},
            "peaks": self.peaks_json(),
        }

    def peaks_json(self) -> list[dict[str, Any]]:
        """Every peak as ``{limit, scope, key, peak, limitValue, fraction}``."""
        rows = []
        for (name, scope, key), value in sorted(self.ledger.peaks.items()):
            limit_value = self.limit_value(name, scope)
            rows.append(
                {"limit": name.value, "scope": scope.value, "key": key, "peak": value,
                 "limitValue": limit_value,
                 "fraction": round(value / limit_value, 4) if limit_value else None}
            )  # fmt: skip
        return rows

    def reset(self) -> None:
        """Forget peaks, violations, bans, attempt logs and pending faults (connections stay)."""
        self.ledger.reset()
        self._attempts.clear()
        self._ip_messages.clear()
        self._forced.clear()
        self.malformed_received = 0

    # --- faults -------------------------------------------------------------------------------

    def refuse_next_handshakes(
        self, count: int, status: int = 429, retry_after_s: float = 1.0
    ) -> None:
        """Answer the next ``count`` WebSocket handshakes with ``status`` (429 or 418)."""
        self._forced.extend([(status, retry_after_s)] * count)

    async def disconnect(
        self, ip: str | None = None, abrupt: bool = False, code: int = 1001
    ) -> int:
        """Close every WebSocket (of one IP): with a close frame, or by dropping TCP."""
        targets = self.websockets(ip)
        for conn in targets:
            if abrupt:
                conn.close_reason = "dropped by the admin API"
                conn.abort()
            else:
                self.close_soon(conn, code, "disconnected by the admin API")
        return len(targets)

    def send_shutdown_notice(
        self, ip: str | None = None, close_after_s: float | None = None
    ) -> int:
        """Send the dialect's shutdown notice (Binance serverShutdown, OKX 64008); with
        ``close_after_s`` (profile seconds), close those connections that much later."""
        targets = self.websockets(ip)
        for conn in targets:
            assert conn.session is not None
            notice = conn.session.notice()
            if notice is not None:
                conn.send_later(notice)
            if close_after_s is not None:
                asyncio.get_running_loop().call_later(
                    self.settings.scaled_s(close_after_s),
                    self.close_soon,
                    conn,
                    *conn.session.shutdown_close,
                )
        return len(targets)

    def revoke_key(self, api_key: str) -> int:
        """The API key stops working (logins with it fail as for an unknown key); every session
        using it is told the exchange's way (Binance ``-2015`` with ``id: null``, OKX close
        4007, Bybit close). Returns how many sessions were told."""
        account = self.settings.account_for_key(api_key)
        if account is None:
            return 0
        self.settings.accounts = tuple(a for a in self.settings.accounts if a is not account)
        told = 0
        for conn in self.websockets():
            if conn.session is not None and conn.session.on_key_revoked(account.account):
                told += 1
        return told

    def stall_stream(self, stream: str, duration_s: float) -> None:
        """No events on ``stream`` for ``duration_s`` wall-clock seconds (no gap afterwards)."""
        self.feeds.feed(stream, time.monotonic()).stall(time.monotonic(), duration_s)

    def set_rate(self, rate_per_stream_hz: float) -> None:
        """Change the data rate of every public stream (messages per wall-clock second)."""
        self.feeds.set_rate(rate_per_stream_hz, time.monotonic())

    def set_private_rate(self, rate_hz: float) -> None:
        """Change the event rate of every account's private feed (per wall-clock second)."""
        self.feeds.set_private_rate(rate_hz, time.monotonic())

    def go_silent(
        self, conn_id: str | None = None, ip: str | None = None, duration_s: float = 3600.0
    ) -> int:
        """Stop reading, sending and pinging on connections (keep the sockets) for ``duration_s``
        wall-clock seconds: the client sees a half-open connection."""
        targets = [c for c in self.websockets(ip) if conn_id is None or c.conn_id == conn_id]
        until = time.monotonic() + duration_s
        for conn in targets:
            conn.silent_until = until
            conn.outbox.clear()
        return len(targets)

    def send_malformed(
        self, conn_id: str | None = None, ip: str | None = None, count: int = 1
    ) -> int:
        """Send ``count`` malformed frames (broken JSON) on connections."""
        targets = [c for c in self.websockets(ip) if conn_id is None or c.conn_id == conn_id]
        for conn in targets:
            for n in range(count):
                conn.send_later('{"e":"trade","E":' + str(n) + ',"s":')
        return len(targets)


class _CountingProtocol:
    """Wraps aiohttp's request handler to learn when the TCP connection is gone."""

    def __init__(self, inner: Any, mx: MockExchange, conn: Conn) -> None:
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
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
