"""The background loops: market data pumped to subscribers, heartbeats, timeouts and silence."""

from __future__ import annotations

import asyncio
import logging
import time

from connquota.api.limits import (
    HeartbeatDirection,
    LimitName,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")


class Housekeeping(MockState):
    """The background loops (a part of `MockExchange`)."""

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
            interval_s = session.ping_interval_s(hb.intervalSeconds)
            if interval_s is None:  # Deribit: no heartbeats until public/set_heartbeat
                return
            if conn.pings and now - conn.pings[0][1] > s.scaled_s(hb.timeoutSeconds):
                self.close_soon(conn, *session.heartbeat_close)
                return
            if now >= conn.next_ping_at:
                payload = str(int(time.time() * 1000)).encode()
                conn.pings.append((payload, now))
                conn.next_ping_at = now + s.scaled_s(interval_s)
                text = session.ping_text()
                if text is None:
                    await ws.ping(payload)
                else:
                    conn.send_later(text)
        else:
            if hb.direction == HeartbeatDirection.SERVER_HEARTBEAT and conn.ever_subscribed:
                # Kraken: "approximately once every second in the absence of any other
                # channel updates", once a channel is subscribed.
                quiet_since = max(conn.last_data_at, conn.last_beat_at)
                if now - quiet_since >= s.scaled_s(hb.intervalSeconds):
                    beat = session.heartbeat_frame()
                    if beat is not None:
                        conn.last_beat_at = now
                        conn.send_later(beat)
            timeout_s = conn.max_active_s or hb.timeoutSeconds
            last = max(conn.last_inbound_at, conn.last_data_at if conn.ever_subscribed else 0.0)
            last = max(last, conn.last_beat_at)  # a server heartbeat is activity too
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
