"""What the dialect sessions ask of the exchange: control-message and size limits, logins per
account, subscriptions, closing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from connquota.api.limits import (
    LimitName,
    LimitScope,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.settings import TestAccount
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")


class SessionServices(MockState):
    """What the dialect sessions ask of the exchange (a part of `MockExchange`)."""

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

    def _key_conns(self, api_key: str) -> list[Conn]:
        return [
            c for c in self.conns.values() if c.api_key == api_key and c.state == cstate.WEBSOCKET
        ]

    def login(self, conn: Conn, account: TestAccount, action: str | None) -> int | None:
        """Log ``conn`` in with ``account``'s key. With an ``action``, enforce connections per
        account (counted by its account id) and per API key (by the key itself): returns the
        limit (and logs nothing in) when this login would exceed one."""
        counted = (
            (LimitScope.ACCOUNT, account.account, self._account_conns),
            (LimitScope.API_KEY, account.api_key, self._key_conns),
        )
        observed = []
        for scope, key, conns_of in counted:
            limit = self.limit(LimitName.CONCURRENT_CONNECTIONS, scope)
            if limit is None or action is None:
                continue
            count = len(conns_of(key)) + 1
            if count > limit.value:
                self.violate(conn, limit, count, action, penalised=False, account=account.account)
                return int(limit.value)
            observed.append((limit, key, count))
        for limit, key, count in observed:
            self.ledger.observe(limit.name, limit.scope, key, count)
        conn.account = account.account
        conn.api_key = account.api_key
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
                if conn.session is not None and conn.session.opens_with_snapshot(stream):
                    conn.snapshot_due.add(stream)
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
                conn.snapshot_due.discard(stream)
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
