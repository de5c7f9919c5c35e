"""Faults on demand: refused handshakes, disconnects, shutdown notices, revoked keys, stalls,
rates, silence and malformed frames."""

from __future__ import annotations

import asyncio
import logging
import time

from connquota.api.limits import Limit
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")


class Faults(MockState):
    """Faults on demand (a part of `MockExchange`)."""

    def refuse_next_handshakes(
        self, count: int, status: int = 429, retry_after_s: float = 1.0, ip: str | None = None
    ) -> None:
        """Answer the next ``count`` WebSocket handshakes (from ``ip`` only, if given) with
        ``status`` (429 or 418) and Retry-After."""
        self._forced.extend([(status, retry_after_s, ip)] * count)

    def set_limits(self, limits: list[Limit]) -> None:
        """Enforce `limits` from now on instead of the profile's limits of the same kind and
        scope (an exchange whose real limit differs from its published one); connections
        already open stay open."""
        self.profile = self.profile.with_overrides(limits)
        log.warning(
            "limits set: %s",
            ", ".join(f"{lim.name.value}/{lim.scope.value}={lim.value:g}" for lim in limits),
        )

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
