"""One upstream session: an attempt from the limiter, the WebSocket, login, subscriptions,
heartbeats, the reader and the watchdog, until it ends (SessionEnded says why)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from connquota.api.limits import HeartbeatDirection, LimitName, LimitScope
from connquota.exchanges.dialects.base import (
    Ack,
    Data,
    Error,
    LoginResult,
    Notice,
    Ping,
    Pong,
)
from connquota.gateway.credentials import CredentialError, load_credentials
from connquota.gateway.egress import EgressError
from connquota.gateway.endpoints import EndpointChooser
from connquota.gateway.limiter import ConnectionSlot
from connquota.gateway.message_gate import MessageGate, MessageKind
from connquota.gateway.private_wire import (
    PrivateWire,
)
from connquota.gateway.protocol import connect_urls, wire_format
from connquota.gateway.proxy_tunnel import TUNNEL_GATE, ProxyFault, ProxyFaultKind, TunnelGate
from connquota.gateway.upstream_policy import RATE_LIMIT_STATUSES, SessionEnded, retry_after_s

if TYPE_CHECKING:
    from connquota.gateway.upstream import UpstreamConnection

ENDPOINT_FAULTS = frozenset({ProxyFaultKind.UPSTREAM_REFUSED, ProxyFaultKind.UPSTREAM_TIMEOUT})
"""Proxy faults that say the exchange endpoint could not be reached (it fails over)."""
log = logging.getLogger("connquota.gateway.upstream")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The largest frame the gateway reads from an exchange."""


class Session:
    """One WebSocket to the exchange for one planned connection."""

    _generations = itertools.count(1)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.generation = next(self._generations)
        self.slot_id = f"{conn.id}#{self.generation}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.slot: ConnectionSlot | None = None
        self.gate: MessageGate | None = None
        self.opened_mono: float | None = None
        self.last_rx_mono = time.monotonic()
        self.acked: set[str] = set()
        self.pending: dict[Any, tuple[str, list[str]]] = {}
        self.subscribed = asyncio.Event()
        self.wanted: set[str] = set()
        self.control: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.book_ids: dict[str, int] = {}
        """Deribit: book stream -> the last ``change_id`` published."""
        self.book_gaps: set[str] = set()
        """Deribit: book streams dropped since a continuity gap, until a fresh snapshot."""
        self.last_sequence: int | None = None
        """Coinbase: the last ``sequence_num`` of this connection (counted per connection)."""
        self.ended: asyncio.Future[SessionEnded] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self._ids = itertools.count(1)
        self._login: asyncio.Future[LoginResult] | None = None
        self.fmt: Any = wire_format(conn.profile.dialect)
        self.url = ""
        """The URL this session opened (or tried)."""
        self.chooser: EndpointChooser | None = None
        """The profile's endpoints, when it has alternates (`endpoints.py`)."""
        self.private: PrivateWire | None = None
        """Set on private sessions: login and private-stream frames (see private_wire.py)."""

    @property
    def extra(self) -> dict[str, str]:
        """Structured log fields of this session."""
        return {**self.ctx.log_extra, "connection": self.conn.id, "session": str(self.generation)}

    def end(self, reason: str, clean: bool) -> None:
        """Mark the session ended (first reason wins)."""
        if not self.ended.done():
            self.ended.set_result(SessionEnded(reason, clean))

    async def open(self) -> None:
        """Take an attempt from the limiter and connect; raises SessionEnded on failure.

        Through a proxy the attempt is taken inside the connect, once the proxy accepted a TCP
        connection and before the CONNECT / SOCKS5 connect is sent (`proxy_tunnel`); the
        connect timeout runs from that moment.
        """
        conn, limiter = self.conn, self.ctx.limiter
        profile = conn.profile
        proxied = self.ctx.egress.is_proxied(conn.address)
        timeout_s = profile.connectTimeoutSeconds
        loop = asyncio.get_running_loop()
        deadline: asyncio.Timeout | None = None

        async def take_attempt() -> None:
            self.slot = await limiter.acquire_attempt(
                self.slot_id, conn.address, conn.identities, "proxy" if proxied else "direct"
            )
            self.ctx.stats[("attempts", conn.address)] += 1
            if deadline is not None:
                deadline.reschedule(loop.time() + timeout_s)

        if not proxied:
            await take_attempt()
        urls = connect_urls(profile, private=conn.credential is not None)
        chooser = self.chooser = self.ctx.endpoints.chooser(urls) if len(urls) > 1 else None
        url = self.url = urls[0] if chooser is None else chooser.pick()
        tunnel_opened = False

        def opened() -> None:
            nonlocal tunnel_opened
            tunnel_opened = True
            self.ctx.egress.record_tunnel_opened(conn.address)

        gate = TUNNEL_GATE.set(TunnelGate(take_attempt, opened)) if proxied else None
        try:
            session = self.ctx.egress.session(conn.address)
            async with asyncio.timeout(None if proxied else timeout_s) as deadline:
                self.ws = await session.ws_connect(
                    url,
                    autoping=False,
                    autoclose=False,
                    heartbeat=None,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except ProxyFault as fault:
            self.ctx.egress.record_proxy_fault(conn.address, fault)
            if chooser is not None and fault.kind in ENDPOINT_FAULTS:
                chooser.failed(url, f"proxy: {fault.kind.value}")
            self._release(clean=True)
            raise SessionEnded(f"proxy-{fault.kind.value}", True) from None
        except aiohttp.WSServerHandshakeError as exc:
            self._release(clean=True)
            if exc.status in RATE_LIMIT_STATUSES:
                self._quarantine(
                    exc.status, exc.headers, f"handshake answered {exc.status}", on_session=False
                )
                raise SessionEnded(f"rate-limited-{exc.status}", True) from None
            if chooser is not None and exc.status >= 500:
                chooser.failed(url, f"handshake answered {exc.status}")
            raise SessionEnded(f"handshake-{exc.status}", True) from None
        except TimeoutError:
            if proxied and self.slot is not None and not tunnel_opened:
                # The connect timeout ended the CONNECT / SOCKS5 connect: the attempt was
                # spent and its outcome is the proxy's, as when the proxy says it timed out.
                self.ctx.egress.record_proxy_fault(
                    conn.address,
                    ProxyFault(
                        ProxyFaultKind.UPSTREAM_TIMEOUT,
                        f"no tunnel within the connect timeout ({timeout_s:g} s)",
                        True,
                    ),
                )
            elif chooser is not None and not proxied:
                chooser.failed(url, "connect timeout")
            self._release(clean=False)
            raise SessionEnded("connect-timeout", False) from None
        except (aiohttp.ClientError, OSError, EgressError) as exc:
            if chooser is not None and not isinstance(exc, EgressError) and not proxied:
                chooser.failed(url, f"unreachable: {type(exc).__name__}")
            self._release(clean=True)
            log.info("connect failed: %s", type(exc).__name__, extra=self.extra)
            raise SessionEnded("connect-failed", True) from None
        finally:
            if gate is not None:
                TUNNEL_GATE.reset(gate)
        if self.slot is not None:
            self.slot.connected()
        if chooser is not None:
            chooser.opened(url)
            if url != urls[0]:
                log.info("connected to an alternate endpoint %s", url, extra=self.extra)
        self.opened_mono = time.monotonic()
        self.last_rx_mono = self.opened_mono
        self.gate = limiter.message_gate(self.slot_id, conn.address, conn.identities)
        log.info("connected", extra=self.extra)

    def _release(self, clean: bool) -> None:
        """Give back the attempt's slots (none taken when a proxy was unreachable)."""
        if self.slot is not None:
            self.slot.release(clean=clean)

    def _quarantine(self, status: int, headers: Any, reason: str, on_session: bool = True) -> None:
        limiter = self.ctx.limiter
        settings = self.ctx.settings
        retry = retry_after_s(headers, time.time())
        if retry is None:
            if status == 418:
                retry = settings.default_418_retry_s
            else:
                wait = settings.default_429_retry_s
                if wait is None:
                    wait = limiter.attempt_hold_s(self.conn.address) or 60.0
                retry = wait
        self.ctx.stats[("rate_limited", str(status))] += 1
        limiter.quarantine(LimitScope.IP, self.conn.address, status, retry, reason)
        limiter.record_throttle(LimitScope.IP, self.conn.address, status, on_session)
        for scope, key in self.conn.identities if status == 418 else ():
            limiter.quarantine(scope, key, status, retry, reason)
            limiter.record_throttle(scope, key, status, on_session)

    async def start(self, streams: set[str]) -> None:
        """Log in if private, then run reader, heartbeats, watchdog and subscriptions."""
        assert self.ws is not None
        if self.conn.credential is not None and not await self._load_private():
            return
        self._tasks.append(asyncio.create_task(self._reader(), name=f"{self.slot_id}-reader"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"{self.slot_id}-watch"))
        direction = self.conn.profile.heartbeat.direction
        if direction == HeartbeatDirection.CLIENT_PING:
            self._tasks.append(asyncio.create_task(self._pinger(), name=f"{self.slot_id}-ping"))
        elif direction == HeartbeatDirection.SERVER_HEARTBEAT and getattr(
            self.fmt, "PING_WHEN_QUIET", False
        ):
            task = asyncio.create_task(self._quiet_pinger(), name=f"{self.slot_id}-ping")
            self._tasks.append(task)
        if self.private is not None:
            await self._login_now()
            if self.ended.done():
                return
        set_heartbeat = getattr(self.fmt, "build_set_heartbeat", None)
        if set_heartbeat is not None and direction == HeartbeatDirection.SERVER_PING:
            # Deribit: heartbeats are opt-in (public/set_heartbeat); the server then sends
            # test_request, answered with public/test (see the reader)
            interval = self.conn.profile.heartbeat.intervalSeconds
            frame = functools.partial(set_heartbeat, interval, next(self._ids))
            await self._send(frame, MessageKind.HEARTBEAT)
        heartbeats = getattr(self.fmt, "build_heartbeats_subscribe", None)
        if heartbeats is not None:
            # Coinbase: no client ping; the heartbeats channel (once a second) keeps quiet
            # connections open. A subscribe: it counts against the message limits.
            await self._send(functools.partial(heartbeats, next(self._ids)), MessageKind.CONTROL)
        self.want(streams)
        self._tasks.append(asyncio.create_task(self._controller(), name=f"{self.slot_id}-ctl"))

    async def _load_private(self) -> bool:
        """Read the key and wrap the wire format for this credential (before the reader runs);
        False (session ended) when the credential is missing or unreadable."""
        cred = self.ctx.credentials.get(self.conn.credential or "")
        if cred is None:
            self.end("credential-missing", True)
            return False
        try:
            creds = await load_credentials(cred)
        except CredentialError as exc:
            log.error("%s", exc, extra=self.extra)
            self.end("credential-unreadable", True)
            return False
        self.private = PrivateWire(self.fmt, creds)
        self.fmt = self.private
        # Kraken: the WebSocket token from REST GetWebSocketsToken, through the same egress.
        try:
            async with asyncio.timeout(self.conn.profile.connectTimeoutSeconds):
                refused = await self.private.prepare(
                    self.ctx.egress.session(self.conn.address), self.url
                )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            log.warning("no private session token: %s", type(exc).__name__, extra=self.extra)
            self.end("token-unavailable", True)
            return False
        if refused is not None:
            self._auth_refused(refused.code, refused.msg)
            return False
        return True

    async def _login_now(self) -> None:
        """Log in (where the session needs it) and wait for the answer; the session ends when
        the exchange refuses."""
        private = self.private
        assert private is not None
        if not private.logs_on:
            return  # Binance HMAC/RSA keys: the subscription itself is signed
        request_id = f"login{self.generation}"
        self._login = asyncio.get_running_loop().create_future()
        await self._send(lambda: private.login_frame(request_id), MessageKind.CONTROL)
        try:
            async with asyncio.timeout(self.conn.profile.connectTimeoutSeconds):
                result = await self._login
        except TimeoutError:
            self.end("login-timeout", True)
            return
        if not result.ok:
            self._auth_refused(result.code, result.msg)

    def _auth_refused(self, code: str, msg: str) -> None:
        """The exchange refused the key, its signature or timestamp: end the session; the
        connection waits for the credential files to change before it tries again."""
        self.conn.auth_error = f"code {code}: {msg[:160]}"
        log.error("login refused by the exchange (%s)", self.conn.auth_error, extra=self.extra)
        self.end("login-refused", True)

    async def _send(self, frame: str | Callable[[], str | None], kind: MessageKind) -> None:
        """Send one frame through the message slices; a callable is built only once the
        limiter lets it go (signed frames carry a fresh timestamp), None sends nothing."""
        assert self.ws is not None and self.gate is not None
        await self.gate.acquire(kind)
        text = frame() if callable(frame) else frame
        if text is None:
            return
        await self.ws.send_str(text)
        self.ctx.stats[("messages_out", str(kind))] += 1

    def want(self, streams: set[str]) -> None:
        """Subscribe what `streams` adds, unsubscribe what it drops (queued, paced)."""
        cap = self.ctx.limiter.streams_per_connection()
        ordered = sorted(streams)
        if cap is not None and len(ordered) > cap:
            log.warning(
                "plan gives %d streams, the slice allows %d", len(ordered), cap, extra=self.extra
            )
            ordered = ordered[:cap]
        target = set(ordered)
        added = sorted(target - self.wanted)
        removed = sorted(self.wanted - target)
        self.wanted = target
        if added:
            self.control.put_nowait(("sub", added))
        if removed:
            self.control.put_nowait(("unsub", removed))
        if not added and self.acked >= self.wanted:
            self.subscribed.set()

    def _batches(self, streams: list[str]) -> list[list[str]]:
        group = getattr(self.fmt, "subscribe_group", None)
        if group is None:
            return self._sized_batches(streams)
        # Kraken: one channel (and depth or interval) per request, a symbol list in each.
        groups: dict[str, list[str]] = {}
        for stream in streams:
            groups.setdefault(group(stream), []).append(stream)
        return [batch for same in groups.values() for batch in self._sized_batches(same)]

    def _sized_batches(self, streams: list[str]) -> list[list[str]]:
        limiter = self.ctx.limiter
        size = limiter.size_limit(LimitName.ARGS_PER_SUBSCRIBE) or 100
        max_bytes = limiter.size_limit(LimitName.SUBSCRIBE_PAYLOAD_BYTES)
        out: list[list[str]] = []
        i = 0
        while i < len(streams):
            n = max(1, size)
            batch = streams[i : i + n]
            while (
                max_bytes and len(batch) > 1 and len(self.fmt.build_subscribe(batch, 0)) > max_bytes
            ):
                batch = batch[: len(batch) // 2]
            out.append(batch)
            i += len(batch)
        return out

    async def _controller(self) -> None:
        try:
            while True:
                op, streams = await self.control.get()
                if op == "resub":
                    await self._resubscribe(streams)
                    continue
                if op == "sub":
                    streams = [s for s in streams if s in self.wanted and s not in self.acked]
                else:
                    streams = [s for s in streams if s not in self.wanted]
                for batch in self._batches(streams):
                    request_id = next(self._ids)
                    self.pending[request_id] = (op, batch)
                    build = self.fmt.build_subscribe if op == "sub" else self.fmt.build_unsubscribe
                    frame = functools.partial(build, batch, request_id)
                    if op != "sub":
                        for s in batch:
                            self.acked.discard(s)
                            self.ctx.hub.release(s, self)
                    await self._send(frame, MessageKind.CONTROL)
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            self.end("send-failed", False)

    async def _resubscribe(self, streams: list[str]) -> None:
        """Deribit: a book whose ``change_id`` continuity broke is unsubscribed and subscribed
        again, so the exchange sends a fresh snapshot (the hub keeps the stream claimed)."""
        streams = [s for s in streams if s in self.wanted and s in self.acked]
        for batch in self._batches(streams):
            for op, build in (("resub-unsub", self.fmt.build_unsubscribe),
                              ("sub", self.fmt.build_subscribe)):  # fmt: skip
                request_id = next(self._ids)
                self.pending[request_id] = (op, batch)
                await self._send(functools.partial(build, batch, request_id), MessageKind.CONTROL)

    def _continuous(self, stream: str, payload: Any, cont: Callable[[Any], Any]) -> bool:
        """Deribit books: whether this message follows the last one (its ``prev_change_id`` is
        the last ``change_id``). A gap is counted (``exchange_frames_dropped_total{reason=
        "book-gap"}``), the message and the ones after it are dropped until a fresh snapshot,
        which a resubscription asks for."""
        ids = cont(payload)
        if ids is None:
            return True
        prev, change = ids
        if prev is None:  # a snapshot starts the chain again
            self.book_gaps.discard(stream)
            self.book_ids[stream] = change
            return True
        if stream in self.book_gaps:
            self.ctx.stats[("dropped", "book-gap")] += 1
            return False
        last = self.book_ids.get(stream)
        if last is None or prev == last:
            self.book_ids[stream] = change
            return True
        self.ctx.stats[("dropped", "book-gap")] += 1
        self.book_gaps.add(stream)
        log.warning(
            "order book %s: prev_change_id %s after change_id %s: messages were missed; "
            "dropped until a fresh snapshot (resubscribing)",
            stream,
            prev,
            last,
            extra=self.extra,
        )
        self.control.put_nowait(("resub", [stream]))
        return False

    def _pending_entry(self, request_id: Any, streams: tuple[str, ...]) -> Any:
        """The pending request ``request_id`` answers (popped). Per-symbol acks (Kraken): only
        the answered ``streams`` leave it; the entry stays until every stream is answered."""
        key: Any = request_id
        entry = self.pending.get(key)
        if entry is None and request_id is not None:
            with contextlib.suppress(ValueError, TypeError):
                key = int(request_id)
                entry = self.pending.get(key)
        if entry is None:
            return None
        per_symbol = getattr(self.fmt, "PER_SYMBOL_ACKS", False)
        if per_symbol and streams:
            op, batch = entry
            answered = [s for s in batch if s in streams]
            rest = [s for s in batch if s not in streams]
            if rest:
                self.pending[key] = (op, rest)
            else:
                del self.pending[key]
            return (op, answered)
        del self.pending[key]
        return entry

    def _check_sequence(self, number: int | None) -> None:
        """Coinbase: ``sequence_num`` counts every message of the connection; a number other
        than the last + 1 means messages were lost (or came out of order): counted
        (``exchange_frames_dropped_total{reason="sequence-gap"}``, the messages missed) and
        logged; the data itself is still forwarded."""
        if number is None:
            return
        last, self.last_sequence = self.last_sequence, number
        if last is None or number == last + 1:
            return
        missed = number - last - 1 if number > last else 1
        self.ctx.stats[("dropped", "sequence-gap")] += missed
        log.warning(
            "sequence_num %d after %d: %d messages lost or out of order",
            number,
            last,
            missed,
            extra=self.extra,
        )

    def _on_ack(self, ev: Ack) -> None:
        if ev.request_id is None and getattr(self.fmt, "ACKS_LIST_ALL", False):
            # Coinbase: `subscriptions` lists everything held, answering no request by id:
            # the requests it settles leave `pending`
            held = set(ev.streams)
            for key, (op, batch) in list(self.pending.items()):
                settled = held.issuperset(batch) if op == "sub" else held.isdisjoint(batch)
                if settled:
                    del self.pending[key]
        entry = self._pending_entry(ev.request_id, ev.streams)
        if entry is not None:
            op, streams = entry
        else:
            op, streams = ev.op, list(ev.streams)
        if op in ("sub", "subscribe") and getattr(self.fmt, "ACK_LISTS_ACCEPTED", False):
            # Deribit: a channel left out of the result was not subscribed
            refused = [s for s in streams if s not in ev.streams]
            if refused:
                self.ctx.stats[("dropped", "error")] += 1
                log.warning(
                    "exchange left %d of %d channels out of its subscribe result: %s",
                    len(refused),
                    len(streams),
                    ",".join(refused[:5]),
                    extra=self.extra,
                )
                streams = [s for s in streams if s in ev.streams]
        if op in ("sub", "subscribe"):
            for s in streams:
                if s in self.wanted:
                    self.acked.add(s)
                    self.ctx.hub.claim(s, self)
        if self.wanted and self.acked >= self.wanted:
            self.subscribed.set()

    async def _reader(self) -> None:
        assert self.ws is not None
        ws, ctx, hub = self.ws, self.ctx, self.ctx.hub
        # The dialect's data-frame fast path (Binance combined frames), if it has one.
        fast = getattr(self.fmt, "fast_data", None)
        # Kraken book data does not say its depth: the subscribed stream it belongs to.
        resolve = getattr(self.fmt, "resolve_stream", None)
        # Deribit books: change_id / prev_change_id continuity.
        cont = getattr(self.fmt, "continuity", None)
        # Deribit's test_request is answered with a request (public/test).
        ping_reply = getattr(self.fmt, "build_ping_reply", None)
        # Coinbase: sequence_num per connection (gap detection).
        conn_seq = getattr(self.fmt, "sequence_of", None)
        stats = ctx.stats
        reason, clean = "closed-by-exchange", True
        try:
            while True:
                msg = await ws.receive()
                self.last_rx_mono = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    ctx.text_in += 1
                    if fast is not None:
                        hit = fast(msg.data)
                        if hit is not None:  # a data frame: no event object needed
                            if hit[0] in self.wanted or hit[0] in self.acked:
                                hub.publish(hit[0], None, self, hit[1], hit[2])
                            else:  # a stream this session never subscribed: dropped
                                stats[("dropped", "unsubscribed")] += 1
                            continue
                    ev = self.fmt.parse_server_message(msg.data)
                    if conn_seq is not None:
                        self._check_sequence(conn_seq(ev))
                    if isinstance(ev, Data):
                        stream = ev.stream
                        if resolve is not None:
                            stream = resolve(stream, self.wanted)
                        if stream not in self.wanted and stream not in self.acked:
                            # a stream this session never subscribed: it would count as live
                            stats[("dropped", "unsubscribed")] += 1
                            continue
                        if cont is not None and not self._continuous(stream, ev.payload, cont):
                            continue
                        hub.publish(stream, ev.payload, self, ev.seq, ev.raw)
                    elif isinstance(ev, Ack):
                        self._on_ack(ev)
                    elif isinstance(ev, LoginResult):
                        if self._login is not None and not self._login.done():
                            self._login.set_result(ev)
                    elif isinstance(ev, Error):
                        self._on_error(ev)
                    elif isinstance(ev, Notice):
                        if ev.kind == "heartbeat":  # Kraken's server heartbeat, once a second
                            stats[("heartbeats_in",)] += 1
                            continue
                        log.info("exchange notice %s %s", ev.kind, ev.msg, extra=self.extra)
                        if ev.kind == "serverShutdown":
                            self.conn.rotation_requested.set()
                    elif isinstance(ev, Ping):
                        self.ctx.stats[("pings_in",)] += 1
                        if ping_reply is not None:  # Deribit: test_request -> public/test
                            await self._send(ping_reply(next(self._ids)), MessageKind.HEARTBEAT)
                    elif isinstance(ev, Pong):
                        self.ctx.stats[("pongs_in",)] += 1
                    else:  # a frame the dialect does not recognise: counted and dropped
                        stats[("dropped", "unrecognised")] += 1
                        log.debug("dropped an unrecognised frame", extra=self.extra)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    stats[("dropped", "binary")] += 1
                elif msg.type == aiohttp.WSMsgType.PING:
                    self.ctx.stats[("pings_in",)] += 1
                    assert self.gate is not None
                    await self.gate.acquire(MessageKind.HEARTBEAT)
                    await ws.pong(msg.data)
                    self.ctx.stats[("messages_out", "heartbeat")] += 1
                elif msg.type == aiohttp.WSMsgType.PONG:
                    self.ctx.stats[("pongs_in",)] += 1
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING):
                    reason = f"closed-by-exchange-{ws.close_code or msg.data}"
                    break
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    reason, clean = "connection-lost", False
                    break
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            reason, clean = "connection-lost", False
        self.end(reason, clean)

    def _on_error(self, ev: Error) -> None:
        if self.private is not None and self.private.is_auth_error(ev):
            if self._login is not None and not self._login.done():
                self._login.set_result(LoginResult(False, ev.request_id, ev.code, ev.msg))
            else:  # a signed subscribe refused, or the key revoked mid-session
                self._auth_refused(ev.code, ev.msg)
            return
        raw = ev.raw if isinstance(ev.raw, dict) else {}
        status = raw.get("status")
        if status in RATE_LIMIT_STATUSES or ev.code in ("-1003", "429", "418"):
            code = int(status) if isinstance(status, int) else 429
            self._quarantine(code, None, f"exchange error {ev.code}")
        refused: tuple[str, ...] = ()
        symbol = raw.get("symbol")
        if isinstance(symbol, str) and getattr(self.fmt, "PER_SYMBOL_ACKS", False):
            # Kraken refuses symbol by symbol: the refused one of the request's streams
            entry = self.pending.get(ev.request_id)
            batch = entry[1] if entry else []
            refused = tuple(s for s in batch if s.partition(":")[2] == symbol)
        self.ctx.stats[("dropped", "error")] += 1
        entry = self._pending_entry(ev.request_id, refused)
        streams = entry[1] if entry else []
        log.warning(
            "exchange refused a request: code %s %s (%d streams)",
            ev.code,
            ev.msg[:200],
            len(streams),
            extra=self.extra,
        )

    async def _pinger(self) -> None:
        interval = self.conn.profile.heartbeat.intervalSeconds
        try:
            while True:
                await asyncio.sleep(interval)
                frame = self.fmt.build_ping(next(self._ids))
                if frame is None:
                    assert self.ws is not None and self.gate is not None
                    await self.gate.acquire(MessageKind.HEARTBEAT)
                    await self.ws.ping(b"")
                else:
                    await self._send(frame, MessageKind.HEARTBEAT)
                self.ctx.stats[("pings_out",)] += 1
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            self.end("send-failed", False)

    async def _quiet_pinger(self) -> None:
        """Kraken sends heartbeats only once a channel is subscribed: a connection that holds
        no stream (or whose server went quiet) pings after half the heartbeat timeout without
        a frame, so the exchange keeps it and the pong feeds the watchdog. Costs no message
        while data or heartbeats flow."""
        hb = self.conn.profile.heartbeat
        quiet_s = max(hb.intervalSeconds, hb.timeoutSeconds / 2)
        last_ping = 0.0
        try:
            while True:
                await asyncio.sleep(max(0.05, quiet_s / 4))
                now = time.monotonic()
                if now - self.last_rx_mono < quiet_s or now - last_ping < quiet_s:
                    continue
                last_ping = now
                await self._send(self.fmt.build_ping(next(self._ids)), MessageKind.HEARTBEAT)
                self.ctx.stats[("pings_out",)] += 1
        except (ConnectionResetError, aiohttp.ClientError, RuntimeError):
            self.end("send-failed", False)

    async def _watchdog(self) -> None:
        hb = self.conn.profile.heartbeat
        stale_s = self.ctx.settings.stale_after_s or (hb.intervalSeconds + hb.timeoutSeconds)
        while True:
            await asyncio.sleep(max(0.05, stale_s / 8))
            if time.monotonic() - self.last_rx_mono > stale_s:
                log.warning("no frame from the exchange for %.1fs", stale_s, extra=self.extra)
                self.end("stale", False)
                return

    async def close(self, clean: bool = True, code: int = 1000) -> None:
        """Stop the tasks, close the socket, give the slots back."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self.ctx.hub.release_all(self)
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self.ws.close(code=code)
        if self.slot is not None:
            self.slot.release(clean=clean)
