"""What tests and the admin API read: violations, peaks, bans, connections, stats."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from connquota.api.limits import (
    LimitName,
    LimitScope,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.ledger import Violation
from connquota.mockexchange.state import MockState

log = logging.getLogger("connquota.mockexchange.server")


class Observation(MockState):
    """What tests and the admin API read (a part of `MockExchange`)."""

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
