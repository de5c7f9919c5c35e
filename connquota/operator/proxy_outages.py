"""Proxy addresses whose proxy is down, as the gateways report them (pure bookkeeping).

A gateway reports each proxy-mode address's unresolved proxy fault on its Lease
(`egressChecks[].proxyFault`). An address whose proxy is unreachable, refuses the credentials
or whose credential files are unreadable cannot carry connections, so the operator plans
without it: its shares become 0 for every quota of the pool (`planning.without_addresses`),
and the planner moves those connections to other addresses with room through the usual
ordered transitions, or reports their streams unserved. Never beyond another address's
budget: the shares of the other addresses do not change.

The gateways keep the fault on their reports while the proxy is down, and probe it (a TCP
connect, nothing sent: no exchange attempt); once it answers, the fault clears and, after
`OUTAGE_HOLD_S` without a report of it, the address is planned again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from connquota.api.report import GatewayReport

DOWN_FAULTS = frozenset({"unreachable", "auth-refused", "credentials-unreadable"})
"""Proxy faults that mean the address carries nothing (upstream faults are the exchange's)."""

OUTAGE_HOLD_S = 10.0
"""How long an address stays out of the plans after the last report of its proxy's fault:
bridges reports written before the fault and keeps a flapping proxy from moving connections
back and forth."""


@dataclass
class ProxyOutages:
    """(pool, address) -> until when (wall clock) and which fault, from the latest reports."""

    seen: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

    def observe(self, pool: str, reports: Iterable[GatewayReport], wall: float) -> None:
        """Record every down fault the pool's gateways report now."""
        for report in reports:
            for check in report.egressChecks:
                if check.proxyFault in DOWN_FAULTS:
                    self.seen[(pool, check.address)] = (wall + OUTAGE_HOLD_S, check.proxyFault)

    def down(self, pool: str, wall: float) -> dict[str, str]:
        """The pool's addresses to plan without now: address -> fault."""
        for key in [k for k, (until, _) in self.seen.items() if until <= wall]:
            del self.seen[key]
        return {a: fault for (p, a), (_, fault) in sorted(self.seen.items()) if p == pool}

    def next_change_s(self, pool: str, wall: float) -> float | None:
        """Seconds until the first of the pool's outages may lapse (None: none)."""
        untils = [until for (p, _), (until, _) in self.seen.items() if p == pool]
        return max(0.0, min(untils) - wall) + 0.5 if untils else None
