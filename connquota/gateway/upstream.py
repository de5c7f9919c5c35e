"""Upstream connections: hold one planned connection up, within the pod's slices.

An `UpstreamConnection` owns a planned connection id. It opens `Session`s (one WebSocket
each) through the limiter, logs in when the connection is private, subscribes in batches
paced by the message slice, answers pings itself (no library autoping: Binance counts pongs),
pings in the exchange's direction, watches for staleness (any frame from the exchange counts
as life; quiet streams are fine while heartbeats arrive), and reconnects with capped
exponential backoff and full jitter. A 429/418 quarantines the address at once.

Before the exchange's maximum connection age, the connection opens a replacement session
(make-before-break, when the slices leave room), moves its streams to it once subscribed,
then closes the original; the hub keeps sequence numbers consecutive.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp

from connquota.api.limits import ExchangeProfile, HeartbeatDirection, LimitName, LimitScope
from connquota.api.plan import CONNECTION_SCOPE_KEY, ConnectionPlan, PlanCredential, PodPlan
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
from connquota.gateway.egress import EgressError, EgressPool
from connquota.gateway.hub import StreamHub
from connquota.gateway.limiter import INF, Limiter, MessageKind, WaitKind
from connquota.gateway.private_wire import (
    PrivateWire,
    credential_fingerprint,
    wait_for_credential_change,
)
from connquota.gateway.protocol import connect_url, wire_format

log = logging.getLogger(__name__)

RATE_LIMIT_STATUSES = (429, 418)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class UpstreamSettings:
    """Timing knobs of upstream connections (defaults suit real exchanges)."""

    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    linger_s: float = 2.0
    """A stream leaving the plan is unsubscribed only after this long (it may come back)."""
    rotation_lead_fraction: float = 0.05
    """Rotate this fraction of the maximum age before the exchange would drop the connection."""
    stable_after_s: float = 5.0
    """A session that lived this long resets the backoff."""
    default_429_retry_s: float | None = None
    """Quarantine after a 429 without Retry-After (None: one attempt window plus margin)."""
    default_418_retry_s: float = 120.0
    """Quarantine after a 418 without Retry-After."""
    stale_after_s: float | None = None
    """Seconds without any frame from the exchange before a session is declared dead
    (None: the profile's heartbeat interval plus timeout)."""
    subscribe_ack_timeout_s: float = 10.0
    auth_retry_s: float = 300.0
    """After the exchange refused a credential (or its files could not be read), the next try
    waits until the credential's files change (a rotated Secret) or this long."""


@dataclass
class UpstreamContext:
    """What every upstream connection of the pod shares."""

    limiter: Limiter
    hub: StreamHub
    egress: EgressPool
    settings: UpstreamSettings = field(default_factory=UpstreamSettings)
    credentials: dict[str, PlanCredential] = field(default_factory=dict)
    accounts: dict[str, str] = field(default_factory=dict)
    """credential name -> account id the exchange counts by."""
    stats: Counter = field(default_factory=Counter)
    """('reconnect', reason) / ('rate_limited', status) / ('messages_in',) ... counters."""
    log_extra: dict[str, str] = field(default_factory=dict)


class ConnectionState(StrEnum):
    """Where an upstream connection is (its `/status` `state`)."""

    STARTING = "starting"
    REFUSED = "refused"
    CONNECTING = "connecting"
    WAITING = "waiting"
    BACKOFF = "backoff"
    SUBSCRIBING = "subscribing"
    CREDENTIAL_ERROR = "credential-error"
    AUTH_REFUSED = "auth-refused"
    LIVE = "live"
    STOPPED = "stopped"


def plan_max_age_s(plan: PodPlan) -> float | None:
    """The maximum connection age the plan allows (its connection slice, headroom applied).

    The planner gives every pod a connection-scoped `maxConnectionAge` slice of
    floor(headroom x the exchange's value); the gateway rotates within that, not within the
    profile's published value. A plan without the slice falls back to the profile's limit.
    """
    got = plan.slice(LimitName.MAX_CONNECTION_AGE, LimitScope.CONNECTION, CONNECTION_SCOPE_KEY)
    if got is not None:
        return float(got.value)
    limit = plan.profile.limit(LimitName.MAX_CONNECTION_AGE)
    return None if limit is None else float(limit.value)


def rotation_after_s(max_age_s: float, connect_timeout_s: float, lead_fraction: float) -> float:
    """Seconds after a session opened to start its make-before-break rotation.

    Early enough that the replacement can take its attempt and connect (two connect timeouts,
    or `lead_fraction` of the age, whichever is longer) — and never before half the age.
    """
    lead = max(connect_timeout_s * 2, max_age_s * lead_fraction)
    return max(max_age_s * 0.5, max_age_s - lead)


class SessionEnded(Exception):
    """A session ended; `reason` says why, `clean` whether the exchange knows it ended."""

    def __init__(self, reason: str, clean: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


def retry_after_s(headers: Any, now_wall_s: float) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), or None."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall_s)


def backoff_delay_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**failures))."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** min(failures, 30))))


class Session:
    """One WebSocket to the exchange for one planned connection."""

    _generations = itertools.count(1)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.generation = next(self._generations)
        self.slot_id = f"{conn.id}#{self.generation}"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.slot = None
        self.gate = None
        self.opened_mono: float | None = None
        self.last_rx_mono = time.monotonic()
        self.acked: set[str] = set()
        self.pending: dict[Any, tuple[str, list[str]]] = {}
        self.subscribed = asyncio.Event()
        self.wanted: set[str] = set()
        self.control: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        self.ended: asyncio.Future[SessionEnded] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task] = []
        self._ids = itertools.count(1)
        self._login: asyncio.Future[LoginResult] | None = None
        self.fmt: Any = wire_format(conn.profile.dialect)
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
        """Take an attempt from the limiter and connect; raises SessionEnded on failure."""
        conn, limiter = self.conn, self.ctx.limiter
        profile = conn.profile
        self.slot = await limiter.acquire_attempt(self.slot_id, conn.address, conn.account)
        self.ctx.stats[("attempts", conn.address)] += 1
        url = connect_url(profile, private=conn.credential is not None)
        try:
            session = self.ctx.egress.session(conn.address)
            async with asyncio.timeout(profile.connectTimeoutSeconds):
                self.ws = await session.ws_connect(
                    url,
                    autoping=False,
                    autoclose=False,
                    heartbeat=None,
                    max_msg_size=MAX_MESSAGE_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as exc:
            self.slot.release(clean=True)
            if exc.status in RATE_LIMIT_STATUSES:
                self._quarantine(exc.status, exc.headers, f"handshake answered {exc.status}")
                raise SessionEnded(f"rate-limited-{exc.status}", True) from None
            raise SessionEnded(f"handshake-{exc.status}", True) from None
        except TimeoutError:
            self.slot.release(clean=False)
            raise SessionEnded("connect-timeout", False) from None
        except (aiohttp.ClientError, OSError, EgressError) as exc:
            self.slot.release(clean=True)
            log.info("connect failed: %s", type(exc).__name__, extra=self.extra)
            raise SessionEnded("connect-failed", True) from None
        self.opened_mono = time.monotonic()
        self.last_rx_mono = self.opened_mono
        self.gate = limiter.message_gate(self.slot_id, conn.address, conn.account)
        log.info("connected", extra=self.extra)

    def _quarantine(self, status: int, headers: Any, reason: str) -> None:
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
        if self.conn.account is not None and status == 418:
            limiter.quarantine(LimitScope.ACCOUNT, self.conn.account, status, retry, reason)

    async def start(self, streams: set[str]) -> None:
        """Log in if private, then run reader, heartbeats, watchdog and subscriptions."""
        assert self.ws is not None
        if self.conn.credential is not None and not await self._load_private():
            return
        self._tasks.append(asyncio.create_task(self._reader(), name=f"{self.slot_id}-reader"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"{self.slot_id}-watch"))
        if self.conn.profile.heartbeat.direction == HeartbeatDirection.CLIENT_PING:
            self._tasks.append(asyncio.create_task(self._pinger(), name=f"{self.slot_id}-ping"))
        if self.private is not None:
            await self._login_now()
            if self.ended.done():
                return
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

    def _on_ack(self, ev: Ack) -> None:
        entry = self.pending.pop(ev.request_id, None)
        if entry is None and ev.request_id is not None:
            with contextlib.suppress(ValueError, TypeError):
                entry = self.pending.pop(int(ev.request_id), None)
        if entry is not None:
            op, streams = entry
        else:
            op, streams = ev.op, list(ev.streams)
        if op in ("sub", "subscribe"):
            for s in streams:
                if s in self.wanted:
                    self.acked.add(s)
                    self.ctx.hub.claim(s, self)
        if self.wanted and self.acked >= self.wanted:
            self.subscribed.set()

    async def _reader(self) -> None:
        assert self.ws is not None
        ws, hub = self.ws, self.ctx.hub
        reason, clean = "closed-by-exchange", True
        try:
            while True:
                msg = await ws.receive()
                self.last_rx_mono = time.monotonic()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.ctx.stats[("messages_in",)] += 1
                    ev = self.fmt.parse_server_message(msg.data)
                    if isinstance(ev, Data):
                        hub.publish(ev.stream, ev.payload, self, ev.seq)
                    elif isinstance(ev, Ack):
                        self._on_ack(ev)
                    elif isinstance(ev, LoginResult):
                        if self._login is not None and not self._login.done():
                            self._login.set_result(ev)
                    elif isinstance(ev, Error):
                        self._on_error(ev)
                    elif isinstance(ev, Notice):
                        log.info("exchange notice %s %s", ev.kind, ev.msg, extra=self.extra)
                        if ev.kind == "serverShutdown":
                            self.conn.rotation_requested.set()
                    elif isinstance(ev, Ping):
                        # No dialect the gateway speaks pings in JSON from the server yet.
                        self.ctx.stats[("pings_in",)] += 1
                    elif isinstance(ev, Pong):
                        self.ctx.stats[("pongs_in",)] += 1
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
        entry = self.pending.pop(ev.request_id, None)
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


class UpstreamConnection:
    """One planned connection, kept open across failures, rotations and plan changes."""

    def __init__(self, ctx: UpstreamContext, plan: ConnectionPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.id = plan.id
        self.address = plan.address
        self.credential = plan.credential
        self.account = ctx.accounts.get(plan.credential) if plan.credential else None
        self.streams: set[str] = set(plan.streams)
        self.state = ConnectionState.STARTING
        self.status = ""
        self.opening_slot_id = ""
        self.current: Session | None = None
        self.rotation_requested = asyncio.Event()
        self.sessions_opened = 0
        self.auth_error: str | None = None
        """Why the exchange last refused this connection's credential (no secret in it)."""
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._rng = random.Random()

    @property
    def profile(self) -> ExchangeProfile:
        """The profile of the plan the limiter enforces."""
        plan = self.ctx.limiter.plan
        assert plan is not None
        return plan.profile

    @property
    def extra(self) -> dict[str, str]:
        """Structured log fields."""
        return {**self.ctx.log_extra, "connection": self.id}

    def start(self) -> None:
        """Start holding the connection up."""
        self._task = asyncio.create_task(self._run(), name=f"upstream-{self.id}")

    def update(self, plan: ConnectionPlan) -> None:
        """Apply a new plan for the same id: new streams now, leaving ones after a linger."""
        self.plan = plan
        new = set(plan.streams)
        for s in new:
            handle = self._lingering.pop(s, None)
            if handle is not None:
                handle.cancel()
        leaving = (self.streams | set(self._lingering)) - new
        self.streams = new | set(self._lingering)
        loop = asyncio.get_running_loop()
        for s in leaving:
            if s not in self._lingering:
                self._lingering[s] = loop.call_later(self.ctx.settings.linger_s, self._drop, s)
        self._push_streams()

    def _drop(self, stream: str) -> None:
        self._lingering.pop(stream, None)
        self.streams.discard(stream)
        self._push_streams()

    def _push_streams(self) -> None:
        if self.current is not None and self.current.ws is not None:
            self.current.want(self.streams)

    async def _run(self) -> None:
        failures = 0
        settings = self.ctx.settings
        while not self._stopping:
            check = await self.ctx.egress.ensure_checked(self.address)
            if not check.usable:
                # The address is not verified: no attempt leaves from it. The check itself is
                # shared by every connection of the address and retried on its own backoff.
                self.state, self.status = ConnectionState.REFUSED, check.message
                await asyncio.sleep(max(0.5, check.retry_in_s()))
                continue
            if self.credential is not None and not await self._credential_ready():
                continue
            session = Session(self)
            self.opening_slot_id = session.slot_id
            self.state, self.status = ConnectionState.CONNECTING, ""
            waited = self.ctx.limiter.attempt_wait(self.address, self.account)
            if waited[0] > 0:
                self.state, self.status = ConnectionState.WAITING, waited[1]
            try:
                await session.open()
            except SessionEnded as ended:
                failures += 1
                self.ctx.stats[("reconnect", ended.reason)] += 1
                self.state, self.status = ConnectionState.BACKOFF, ended.reason
                await asyncio.sleep(
                    backoff_delay_s(
                        failures, settings.backoff_base_s, settings.backoff_cap_s, self._rng
                    )
                )
                continue
            self.sessions_opened += 1
            self.current = session
            self.state = ConnectionState.SUBSCRIBING
            await session.start(self.streams)
            ended = await self._hold(session)
            if self._stopping:
                return
            lived = time.monotonic() - (session.opened_mono or time.monotonic())
            failures = 0 if lived >= settings.stable_after_s else failures + 1
            self.ctx.stats[("reconnect", ended.reason)] += 1
            log.info("session ended: %s", ended.reason, extra=self.extra)
            if ended.reason == "login-refused":
                await self._wait_after_refusal()
                continue
            self.state, self.status = ConnectionState.BACKOFF, ended.reason
            await asyncio.sleep(
                backoff_delay_s(
                    failures, settings.backoff_base_s, settings.backoff_cap_s, self._rng
                )
            )

    async def _credential_ready(self) -> bool:
        """Whether the credential's files can be read; otherwise wait for them to change (or
        `auth_retry_s`) without spending an attempt, and return False."""
        cred = self.ctx.credentials.get(self.credential or "")
        problem = "not in the plan" if cred is None else None
        if cred is not None:
            try:
                await load_credentials(cred)
            except CredentialError as exc:
                problem = str(exc)
        if problem is None:
            return True
        self.state = ConnectionState.CREDENTIAL_ERROR
        self.status = f"credential {self.credential}: {problem}"
        log.error("%s", self.status, extra=self.extra)
        if cred is None:
            await asyncio.sleep(self.ctx.settings.auth_retry_s)
        else:
            since = await credential_fingerprint(cred)
            await wait_for_credential_change(cred, since, self.ctx.settings.auth_retry_s)
        return False

    async def _wait_after_refusal(self) -> None:
        """After the exchange refused the credential: no tight retry loop, the next attempt
        waits until the credential's files change (a rotated Secret) or `auth_retry_s`."""
        retry_s = self.ctx.settings.auth_retry_s
        self.state = ConnectionState.AUTH_REFUSED
        self.status = (
            f"login refused by the exchange ({self.auth_error}); next try when the credential "
            f"files change or in {retry_s:.0f} s"
        )
        cred = self.ctx.credentials.get(self.credential or "")
        if cred is None:
            await asyncio.sleep(retry_s)
            return
        since = await credential_fingerprint(cred)
        if await wait_for_credential_change(cred, since, retry_s):
            log.info("credential files changed: trying again", extra=self.extra)

    def max_age_s(self) -> float | None:
        """The connection's maximum age: the plan's slice (headroom applied), else the profile's."""
        plan = self.ctx.limiter.plan
        if plan is None:
            return None
        return plan_max_age_s(plan)

    def _rotation_deadline(self, session: Session) -> float | None:
        max_age = self.max_age_s()
        if max_age is None or session.opened_mono is None:
            return None
        return session.opened_mono + rotation_after_s(
            max_age, self.profile.connectTimeoutSeconds, self.ctx.settings.rotation_lead_fraction
        )

    async def _hold(self, session: Session) -> SessionEnded:
        """Keep `session` until it ends; rotate it before its maximum age. Returns why it ended."""
        while True:
            if session.subscribed.is_set() and self.state == ConnectionState.SUBSCRIBING:
                self.state = ConnectionState.LIVE
            deadline = self._rotation_deadline(session)
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            waiters = [session.ended, asyncio.ensure_future(self.rotation_requested.wait())]
            if self.state == ConnectionState.SUBSCRIBING:
                waiters.append(asyncio.ensure_future(session.subscribed.wait()))
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters[1:]:
                waiter.cancel()
            if session.ended.done():
                ended = session.ended.result()
                await session.close(clean=ended.clean)
                self.current = None
                return ended
            due = deadline is not None and time.monotonic() >= deadline
            if self.rotation_requested.is_set() or due:
                self.rotation_requested.clear()
                replacement = await self._rotate(session)
                if replacement is None:
                    return SessionEnded("rotation-break-before-make", True)
                session = replacement
            if self._stopping:
                return SessionEnded("stopping", True)

    async def _rotate(self, old: Session) -> Session | None:
        """Make-before-break when the slices leave room; else close first and reconnect."""
        wait = self.ctx.limiter.attempt_wait_reason(self.address, self.account)
        if wait.seconds == INF or wait.kind == WaitKind.CONCURRENT_SLICE:
            # No room for a second connection (or none will come): close first.
            log.info("rotating break-before-make: %s", wait.text, extra=self.extra)
            await old.close(clean=True)
            self.current = None
            return None
        new = Session(self)
        try:
            await new.open()
        except SessionEnded as ended:
            self.ctx.stats[("reconnect", ended.reason)] += 1
            return old
        self.sessions_opened += 1
        await new.start(self.streams)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.ctx.settings.subscribe_ack_timeout_s):
                await new.subscribed.wait()
        self.ctx.stats[("reconnect", "rotation")] += 1
        log.info("rotated make-before-break", extra=self.extra)
        self.current = new
        await old.close(clean=True)
        return new

    def live_streams(self) -> int:
        """Streams acknowledged on the current session."""
        return len(self.current.acked) if self.current is not None else 0

    async def stop(self, code: int = 1000) -> None:
        """Close the connection cleanly and stop reconnecting."""
        self._stopping = True
        for handle in self._lingering.values():
            handle.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.current is not None:
            await self.current.close(clean=True, code=code)
            self.current = None
        self.state = ConnectionState.STOPPED
