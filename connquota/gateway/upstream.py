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
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from connquota.api.limits import ExchangeProfile
from connquota.api.plan import ConnectionPlan, PlanCredential, identities_of
from connquota.gateway.credentials import CredentialError, load_credentials
from connquota.gateway.egress import EgressPool
from connquota.gateway.endpoints import EndpointBook
from connquota.gateway.hub import StreamHub
from connquota.gateway.limiter import INF, AttemptWait, Limiter, WaitKind
from connquota.gateway.private_wire import (
    credential_fingerprint,
    wait_for_credential_change,
)
from connquota.gateway.session import MAX_MESSAGE_BYTES, Session
from connquota.gateway.upstream_policy import (
    RATE_LIMIT_STATUSES,
    ConnectionState,
    SessionEnded,
    backoff_delay_s,
    plan_max_age_s,
    retry_after_s,
    rotation_after_s,
)

log = logging.getLogger(__name__)

SUPERVISOR_RESTART_S = 1.0
"""Seconds before a connection loop that failed unexpectedly starts again."""


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
    stats: Counter[tuple[str, ...]] = field(default_factory=Counter)
    """('reconnect', reason) / ('rate_limited', status) ... counters."""
    text_in: int = 0
    """Text messages from the exchange (a plain integer: counted once per message)."""
    endpoints: EndpointBook = field(default_factory=EndpointBook)
    """The profile's endpoints and their health (failover to alternates, `endpoints.py`)."""
    log_extra: dict[str, str] = field(default_factory=dict)


class UpstreamConnection:
    """One planned connection, kept open across failures, rotations and plan changes."""

    def __init__(self, ctx: UpstreamContext, plan: ConnectionPlan) -> None:
        self.ctx = ctx
        self.plan = plan
        self.id = plan.id
        self.address = plan.address
        self.credential = plan.credential
        self.identities = identities_of(ctx.credentials.get(plan.credential or ""))
        """What the exchange counts the credential by: (account, id) and (apiKey, id)."""
        self.streams: set[str] = set(plan.streams)
        self.state = ConnectionState.STARTING
        self.status = ""
        self.opening_slot_id = ""
        self.current: Session | None = None
        self.rotation_requested = asyncio.Event()
        self.sessions_opened = 0
        self.auth_error: str | None = None
        """Why the exchange last refused this connection's credential (no secret in it)."""
        self._task: asyncio.Task[None] | None = None
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
        self._task = asyncio.create_task(self._supervised(), name=f"upstream-{self.id}")

    async def _supervised(self) -> None:
        """Run `_run` until the connection is stopped: an unexpected error in it is logged with
        its traceback, counted, and the loop starts again after `SUPERVISOR_RESTART_S` (the
        session it held is closed first), so a bug never leaves a planned connection down for
        good with its last state frozen in /status."""
        while not self._stopping:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: keep the connection's loop alive
                log.exception("connection loop failed: restarting it", extra=self.extra)
                self.ctx.stats[("reconnect", "internal-error")] += 1
                self.state, self.status = ConnectionState.BACKOFF, f"internal error: {exc!r}"[:200]
                if self.current is not None:
                    with contextlib.suppress(Exception):
                        await self.current.close(clean=False)
                    self.current = None
                await asyncio.sleep(SUPERVISOR_RESTART_S)

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
                retry_s = check.retry_in_s()
                await asyncio.sleep(min(1.0, retry_s) if check.proxy_blocked else max(0.5, retry_s))
                continue
            proxy_wait_s, proxy_why = self.ctx.egress.proxy_wait(self.address)
            if proxy_wait_s > 0:
                # The proxy is down (backoff) or refused the credentials (until its Secret
                # files change): no request is sent to it meanwhile.
                self.state, self.status = ConnectionState.BACKOFF, f"proxy: {proxy_why}"
                await asyncio.sleep(min(1.0, proxy_wait_s))
                continue
            if self.credential is not None and not await self._credential_ready():
                continue
            session = Session(self)
            self.opening_slot_id = session.slot_id
            self.state, self.status = ConnectionState.CONNECTING, ""
            waited = self.ctx.limiter.attempt_wait(self.address, self.identities)
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
            why = await self._hold(session)
            if self._stopping:
                return
            lived = time.monotonic() - (session.opened_mono or time.monotonic())
            failures = 0 if lived >= settings.stable_after_s else failures + 1
            self.ctx.stats[("reconnect", why.reason)] += 1
            log.info("session ended: %s", why.reason, extra=self.extra)
            if not why.clean and self.ctx.egress.is_proxied(self.address):
                self.ctx.egress.record_tunnel_closed(self.address)
            if why.reason == "login-refused":
                await self._wait_after_refusal()
                continue
            self.state, self.status = ConnectionState.BACKOFF, why.reason
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
            if (
                session.chooser is not None
                and self.state == ConnectionState.LIVE
                and not self.rotation_requested.is_set()
                and session.chooser.should_return(session.url)
            ):
                log.info("the primary endpoint is back: rotating to it", extra=self.extra)
                self.rotation_requested.set()
            deadline = self._rotation_deadline(session)
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            waiters: list[asyncio.Future[Any]] = [
                session.ended,
                asyncio.ensure_future(self.rotation_requested.wait()),
            ]
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

    def _spare_room(self) -> int:
        """Connections the plan leaves this pod beyond those it holds on this address."""
        plan = self.ctx.limiter.plan
        if plan is None:
            return 0
        return sum(r.connections for r in plan.spare if r.address == self.address)

    async def _wait_for_spare_room(self, old: Session) -> AttemptWait:
        """Until the concurrent slice has room for the replacement, while the plan gives this
        pod spare room on the address (another rotation or move of the pod holds it for a
        moment) and `old` is younger than its maximum age less a connect timeout: rotations
        due together then take the spare room one after the other, each make-before-break,
        instead of all but the first closing first."""
        max_age = self.max_age_s()
        opened = old.opened_mono
        latest = (
            None
            if max_age is None or opened is None
            else opened + max_age - self.profile.connectTimeoutSeconds
        )
        while True:
            wait = self.ctx.limiter.attempt_wait_reason(self.address, self.identities)
            left = None if latest is None else latest - time.monotonic()
            if (
                wait.kind != WaitKind.CONCURRENT_SLICE
                or self._spare_room() == 0
                or left is None
                or left <= 0
                or old.ended.done()
                or self._stopping
            ):
                return wait
            await self.ctx.limiter.wait_for_change(min(left, 1.0))

    async def _rotate(self, old: Session) -> Session | None:
        """Make-before-break when the slices leave room (waiting for the pod's spare room while
        another rotation holds it); else close first and reconnect."""
        wait = await self._wait_for_spare_room(old)
        if old.ended.done():
            await old.close(clean=True)
            self.current = None
            return None
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


__all__ = [
    "MAX_MESSAGE_BYTES",
    "RATE_LIMIT_STATUSES",
    "ConnectionState",
    "Session",
    "SessionEnded",
    "UpstreamConnection",
    "UpstreamContext",
    "UpstreamSettings",
    "backoff_delay_s",
    "plan_max_age_s",
    "retry_after_s",
    "rotation_after_s",
]
