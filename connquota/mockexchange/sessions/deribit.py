"""Deribit API v2 on the mock: JSON-RPC 2.0 at ``/ws/api/v2`` (public market data; user
channels after ``public/auth``)."""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from typing import Any

from connquota.api.limits import Limit, LimitName, LimitScope
from connquota.exchanges.dialects import deribit
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    OtherRequest,
    PingRequest,
    RequestId,
    SubscribeRequest,
    WireFormatError,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.books import MockBook
from connquota.mockexchange.sessions.base import DialectSession, wall_ms

BOOK_DEPTH = 20
"""Levels per side of a mock Deribit book (``book.<instrument>.100ms`` is the full book)."""
VERSION = "1.2.26"
"""What ``public/test`` answers (``{"version": ..}``)."""
TOKEN_TTL_S = 900
"""Exchange seconds an access token lives (``expires_in``) unless renewed; a test may set
``mock.deribit_token_ttl_s`` to a shorter life. The answer's ``expires_in`` is in the mock's
(scaled) wall seconds, as every duration a gateway under test sees."""


class CreditBucket:
    """Deribit's credits as a token bucket: ``burst`` requests at once, refilled at ``rate``
    requests per wall second (500 credits a request, 50,000 at most, 10,000 a second)."""

    def __init__(self, burst: float, rate_per_s: float) -> None:
        self.burst = burst
        self.rate = rate_per_s
        self.tokens = burst
        self.at = time.monotonic()

    def take(self, now: float) -> bool:
        """One request: True when a token was left (and taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    @property
    def used(self) -> float:
        """Requests' worth of credits in use (what the ledger observes)."""
        return self.burst - self.tokens


def _levels(levels: list[Any], snapshot: bool) -> list[list[Any]]:
    """Mock levels ``[price, size]`` as Deribit's ``[action, price, amount]``."""
    out: list[list[Any]] = []
    for level in levels:
        price, size = float(level[0]), float(level[1])
        action = "new" if snapshot else ("delete" if size == 0 else "change")
        out.append([action, price, size])
    return out


class DeribitSession(DialectSession):
    """Deribit: one JSON-RPC answer per request (a subscribe's result lists the channels
    subscribed; an unknown channel is left out), opt-in heartbeats (``test_request`` until the
    client answers with ``public/test``), snapshots then changes with ``change_id`` continuity,
    every request charged to the credit bucket of its account (its IP when not logged in)."""

    heartbeat_close = (1000, "heartbeat: test_request not answered")

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.heartbeat_s: float | None = None
        """The interval ``public/set_heartbeat`` asked for (None: heartbeats off)."""
        self.terminating = False
        """Out of credits: the session ends once the 10028 error has gone out."""
        self._closer: asyncio.Task[None] | None = None
        self.refresh_token: str | None = None
        """The refresh token this connection's login was given (renewals must present it)."""
        self._expiry: asyncio.TimerHandle | None = None

    # -- heartbeats (housekeeping asks) ------------------------------------------------------

    def ping_interval_s(self, profile_s: float) -> float | None:
        return self.heartbeat_s

    def ping_text(self) -> str | None:
        return deribit.build_heartbeat("test_request")

    # -- requests ----------------------------------------------------------------------------

    def _bucket_limit(self) -> Limit | None:
        return self.mx.limit(LimitName.MESSAGES_PER_ACCOUNT, LimitScope.ACCOUNT)

    def _charge(self, request: object, us_in: int) -> bool:
        """Charge one request to the credit bucket; False when no credit was left: error
        10028 sent, the violation recorded, the session closed."""
        limit = self._bucket_limit()
        if limit is None:
            return True
        key = self.conn.account or f"ip:{self.conn.ip}"
        buckets: dict[str, CreditBucket] = self.mx.__dict__.setdefault("_deribit_credits", {})
        bucket = buckets.get(key)
        if bucket is None:
            burst = float(limit.burst if limit.burst is not None else limit.value)
            rate = limit.value / self.mx.settings.scaled_s(limit.windowSeconds or 1.0)
            bucket = buckets[key] = CreditBucket(burst, rate)
        ok = bucket.take(time.monotonic())
        self.mx.ledger.observe(limit.name, limit.scope, key, bucket.used + (0 if ok else 1))
        if not ok:
            rid = getattr(request, "request_id", None)
            self.send(deribit.build_error(rid, *deribit.TOO_MANY_REQUESTS, us_in=us_in))
            self.mx.violate(self.conn, limit, bucket.used + 1, "error 10028 and session closed")
            self._terminate()
        return ok

    def _terminate(self) -> None:
        """End the session once what is queued (the 10028 error) has gone out."""
        if self.terminating:
            return
        self.terminating = True

        async def close_after_flush() -> None:
            for _ in range(100):
                if not self.conn.outbox:
                    break
                await asyncio.sleep(0.01)
            self.mx.close_soon(self.conn, 1000, "too_many_requests")

        self._closer = asyncio.get_running_loop().create_task(close_after_flush())

    async def on_text(self, text: str) -> None:
        if self.terminating:
            return
        us_in = deribit.now_us()
        request = deribit.parse_client_message(text)
        if not self._charge(request, us_in):
            return
        if isinstance(request, PingRequest):
            if self.conn.pings:  # the oldest test_request is answered
                self.conn.pings.popleft()
            self.send(deribit.build_result(request.request_id, {"version": VERSION}, us_in))
        elif isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply)
        elif isinstance(request, OtherRequest):
            self._on_other(request, us_in)
        elif isinstance(request, SubscribeRequest):
            self._on_subscribe(request, us_in)

    def _on_other(self, request: OtherRequest, us_in: int) -> None:
        rid, method, params = request.request_id, request.method, request.params or {}
        if method == "public/set_heartbeat":
            interval = params.get("interval")
            if not isinstance(interval, (int, float)) or interval < deribit.MIN_HEARTBEAT_S:
                reason = f"must be at least {deribit.MIN_HEARTBEAT_S}"
                data = {"reason": reason, "param": "interval"}
                self.send(deribit.build_error(rid, *deribit.INVALID_PARAMS, data, us_in))
                return
            profile_s = self.mx.profile.heartbeat.intervalSeconds
            # the profile's interval in the mock's time: a test at time scale 20 asks for 30 s
            self.heartbeat_s = float(profile_s if interval == profile_s else interval)
            self.conn.next_ping_at = time.monotonic() + self.mx.settings.scaled_s(self.heartbeat_s)
            self.send(deribit.build_result(rid, "ok", us_in))
        elif method == "public/disable_heartbeat":
            self.heartbeat_s = None
            self.conn.pings.clear()
            self.send(deribit.build_result(rid, "ok", us_in))
        elif method == "public/get_time":
            self.send(deribit.build_result(rid, wall_ms(), us_in))
        elif method == "public/hello":
            self.send(deribit.build_result(rid, {"version": VERSION}, us_in))
        elif method == "public/unsubscribe_all":
            self.mx.unsubscribe(self.conn, list(self.conn.streams))
            self.send(deribit.build_result(rid, "ok", us_in))
        elif method == "public/auth":
            self._on_auth(rid, params, us_in)
        elif method in ("private/subscribe", "private/unsubscribe"):
            self._on_private_subscribe(rid, method, params, us_in)
        else:  # other private methods: not modelled
            self.send(deribit.build_error(rid, *deribit.AUTHORIZATION_REQUIRED, None, us_in))

    # -- authentication ----------------------------------------------------------------------

    def _on_auth(self, rid: RequestId, params: dict[str, Any], us_in: int) -> None:
        """``client_credentials`` or ``client_signature`` (`_signature_refusal`) logs the
        connection in (sessions per API key enforced);
        ``refresh_token`` renews the tokens of this connection's login."""
        grant = params.get("grant_type")
        if grant in ("client_credentials", "client_signature"):
            account = self.mx.settings.account_for_key(str(params.get("client_id", "")))
            if grant == "client_signature":
                refusal = _signature_refusal(params, account.secret if account else None)
            else:
                secret = str(params.get("client_secret", ""))
                known = account is not None and hmac.compare_digest(secret, account.secret)
                refusal = None if known else deribit.INVALID_CREDENTIALS
            self.mx.__dict__.setdefault("deribit_grants", []).append(grant)
            if refusal is not None or account is None:
                self.send(
                    deribit.build_error(rid, *(refusal or deribit.INVALID_CREDENTIALS), None, us_in)
                )
                return
            refused = self.conn.account is None and (
                self.mx.login(self.conn, account, "error 10066 reply") is not None
            )
            if refused:
                reason = {"reason": "too many sessions for this API key"}
                self.send(deribit.build_error(rid, *deribit.TOO_MANY_SESSIONS, reason, us_in))
                return
            self._issue(rid, us_in)
        elif grant == "refresh_token":
            token = str(params.get("refresh_token", ""))
            live = self.conn.api_key is not None and (
                self.mx.settings.account_for_key(self.conn.api_key) is not None
            )
            known = self.refresh_token is not None and hmac.compare_digest(
                token, self.refresh_token
            )
            if not (live and known):
                data = {"reason": "invalid refresh token", "param": "refresh_token"}
                self.send(deribit.build_error(rid, *deribit.INVALID_TOKEN, data, us_in))
                return
            self.mx.__dict__.setdefault("deribit_refreshes", []).append(self.conn.conn_id)
            self._issue(rid, us_in)
        else:
            data = {"reason": "unsupported grant_type", "param": "grant_type"}
            self.send(deribit.build_error(rid, *deribit.INVALID_PARAMS, data, us_in))

    def _issue(self, rid: RequestId, us_in: int) -> None:
        """New tokens for this connection; its private feeds end when they expire unrenewed."""
        ttl = float(getattr(self.mx, "deribit_token_ttl_s", TOKEN_TTL_S))
        wall_s = max(1, round(self.mx.settings.scaled_s(ttl)))
        self.refresh_token = secrets.token_urlsafe(16)
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry = asyncio.get_running_loop().call_later(wall_s, self._expired)
        access = secrets.token_urlsafe(16)
        self.send(deribit.build_auth_result(rid, access, self.refresh_token, wall_s, us_in))

    def _expired(self) -> None:
        """The token was not renewed in time: the mock, as referee, ends the session and notes
        it (``mock.deribit_expired`` lists such connections)."""
        if self.conn.state != cstate.WEBSOCKET:
            return
        self.mx.__dict__.setdefault("deribit_expired", []).append(self.conn.conn_id)
        self.mx.close_soon(self.conn, 1000, "access token expired")

    def _on_private_subscribe(
        self, rid: RequestId, method: str, params: dict[str, Any], us_in: int
    ) -> None:
        """``private/subscribe``: public and user channels (the user channels of the
        connection's account, each its own feed ``<channel>@<account>``)."""
        channels = params.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            data = {"reason": "value must be a list", "param": "channels"}
            self.send(deribit.build_error(rid, *deribit.INVALID_PARAMS, data, us_in))
            return
        if self.conn.account is None:
            self.send(deribit.build_error(rid, *deribit.AUTHORIZATION_REQUIRED, None, us_in))
            return
        channels = list(dict.fromkeys(channels))
        user = [c for c in channels if deribit.is_user_channel(c)]
        public = [c for c in channels if c not in user]
        if method == "private/unsubscribe":
            feeds = [self._feed(c) for c in channels if self._feed(c) in self.conn.streams]
            self.mx.unsubscribe(self.conn, feeds)
            self.send(deribit.build_result(rid, [f.split("@", 1)[0] for f in feeds], us_in))
            return
        if public:
            self._on_subscribe(SubscribeRequest(rid, tuple(public)), us_in, extra=user)
            return
        self._subscribe_user(rid, user, [], us_in)

    def _subscribe_user(
        self, rid: RequestId, user: list[str], public: list[str], us_in: int
    ) -> None:
        feeds = [self._feed(c) for c in user if self._feed(c) not in self.conn.streams]
        total = len(self.conn.streams) + len(feeds)
        if feeds and self.mx.over_stream_limit(self.conn, total, "error reply"):
            data = {"reason": "too many subscriptions on this connection", "param": "channels"}
            self.send(deribit.build_error(rid, *deribit.INVALID_PARAMS, data, us_in))
            return
        self.send(deribit.build_result(rid, public + user, us_in))
        self.mx.subscribe(self.conn, feeds, private=True)

    def _feed(self, channel: str) -> str:
        return f"{channel}@{self.conn.account}"

    def _on_subscribe(
        self, request: SubscribeRequest, us_in: int, extra: list[str] | None = None
    ) -> None:
        """``public/subscribe``; ``extra``: user channels of a ``private/subscribe`` that also
        named these public ones (one result for both)."""
        rid = request.request_id
        channels = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            gone = [c for c in channels if c in self.conn.streams]
            self.mx.unsubscribe(self.conn, gone)
            self.send(deribit.build_result(rid, gone, us_in))
            return
        accepted = []
        for channel in channels:
            try:
                _, _, interval = deribit.stream_parts(channel)
            except WireFormatError:
                continue  # "silently left out of result"
            if interval == "raw":
                continue  # "raw interval is only available to authorized users"
            accepted.append(channel)
        new = [c for c in accepted if c not in self.conn.streams]
        total = len(self.conn.streams) + len(new)
        if new and self.mx.over_stream_limit(self.conn, total, "error reply"):
            data = {"reason": "too many subscriptions on this connection", "param": "channels"}
            self.send(deribit.build_error(rid, *deribit.INVALID_PARAMS, data, us_in))
            return
        if extra is not None:
            self.mx.subscribe(self.conn, new)
            self._subscribe_user(rid, extra, accepted, us_in)
            return
        self.send(deribit.build_result(rid, accepted, us_in))
        self.mx.subscribe(self.conn, new)

    # -- data --------------------------------------------------------------------------------

    def _book(self, stream: str) -> MockBook:
        return self.mx.books.book(stream, BOOK_DEPTH, okx_levels=False)

    def _book_frame(self, stream: str, seq: int, event_time_ms: int, snapshot: bool) -> str:
        book = self._book(stream)
        book.advance(seq)
        if snapshot:
            bids = _levels(book.top_bids(), True)
            asks = _levels(book.top_asks(), True)
            return deribit.build_book(stream, "snapshot", seq, None, bids, asks, event_time_ms)
        bids = _levels(book.changed_bids, False)
        asks = _levels(book.changed_asks, False)
        # events are gapless per stream and every subscriber gets each one after its snapshot:
        # the change of event seq follows the change_id seq - 1 (frames are shared)
        return deribit.build_book(stream, "change", seq, seq - 1, bids, asks, event_time_ms)

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if "@" in stream:  # an account's user channel
            return deribit.build_user_data(stream.split("@", 1)[0], seq, event_time_ms)
        try:
            kind = deribit.stream_parts(stream)[0]
        except WireFormatError:
            kind = ""
        if kind == "book":
            return self._book_frame(stream, seq, event_time_ms, snapshot=False)
        return deribit.build_data(stream, seq, event_time_ms)

    def opens_with_snapshot(self, stream: str) -> bool:
        return stream.startswith("book.")

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if stream.startswith("book."):
            return self._book_frame(stream, seq, event_time_ms, snapshot=True)
        return self.frame(stream, seq, event_time_ms)

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        """Over the per-connection message rate: error 10028, then the session ends."""
        if not self.terminating:
            self.send(deribit.build_error(None, *deribit.TOO_MANY_REQUESTS))
            self._terminate()
        return True


def _signature_refusal(params: dict[str, Any], secret: str | None) -> tuple[int, str] | None:
    """Why a ``client_signature`` login is refused (None: accepted): an unknown key or a
    signature that is not the HMAC of its secret is 13004; a timestamp more than 60 s from
    the wall clock (either way, unscaled: it is a clock check, not a rate) is 13004 too
    (Deribit documents the 60 s validity, not the code)."""
    timestamp, nonce = params.get("timestamp"), params.get("nonce")
    data, signature = params.get("data", ""), params.get("signature")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        return deribit.INVALID_PARAMS
    if not all(isinstance(v, str) for v in (nonce, data, signature)):
        return deribit.INVALID_PARAMS
    if secret is None:
        return deribit.INVALID_CREDENTIALS
    want = deribit.client_signature(secret, timestamp, str(nonce), str(data))
    if not hmac.compare_digest(want, str(signature)):
        return deribit.INVALID_CREDENTIALS
    if abs(time.time() * 1000 - timestamp) > deribit.SIGNATURE_VALIDITY_S * 1000:
        return deribit.INVALID_CREDENTIALS
    return None
