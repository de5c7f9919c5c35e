"""Violations and penalties: every violation recorded, 429 with Retry-After, bans."""

from __future__ import annotations

import logging
import math
import time

from aiohttp import web

from connquota.api.limits import (
    Limit,
    LimitName,
    LimitScope,
)
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.ledger import Ban, Violation
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")


class Penalties(MockState):
    """Violations and penalties (a part of `MockExchange`)."""

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
        forced = next(
            (i for i, (_, _, ip) in enumerate(self._forced) if ip is None or ip == conn.ip), None
        )
        if forced is not None:
            status, retry_s, _ = self._forced.pop(forced)
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
