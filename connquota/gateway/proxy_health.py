"""The health of one address's proxy: its faults, its backoff, and what each tunnel cost.

Kept per address by the `EgressPool`. A proxy that does not accept TCP connections gets a
capped exponential backoff (no exchange attempt is spent while it is down); a proxy that
refused the credentials (407, SOCKS5 auth) blocks the address until the mounted Secret files
change: no retry loop. Every tunnel that took an exchange attempt is counted by its outcome
(`opened`, or the fault kind), so the report says which attempts the proxy failed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connquota.gateway.proxy_tunnel import ProxyFault, ProxyFaultKind

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0
BLOCKING_KINDS = (ProxyFaultKind.AUTH_REFUSED, ProxyFaultKind.CREDENTIALS_UNREADABLE)
"""Faults only a change of the proxy Secret's files can clear."""


@dataclass
class ProxyHealth:
    """One address's proxy, as the gateway last saw it."""

    address: str
    proxy: str
    """The proxy as `scheme://host:port` (the URL carries no credentials)."""
    fingerprint: Callable[[], Any] | None = None
    """Stamps of the mounted credential files (None: the proxy takes no credentials)."""
    last_kind: ProxyFaultKind | None = None
    last_message: str = ""
    last_fault_wall: float | None = None
    unreachable_in_row: int = 0
    retry_at_mono: float = 0.0
    blocked_since: Any = None
    """The credential files' stamp when an auth fault blocked the address."""
    faults: Counter[str] = field(default_factory=Counter)
    """Fault kind -> times seen."""
    attempts: Counter[str] = field(default_factory=Counter)
    """Outcome of every tunnel that took an exchange attempt: `opened` or a fault kind."""

    def record_opened(self) -> None:
        """A tunnel opened: the proxy is healthy again."""
        self.attempts["opened"] += 1
        self.unreachable_in_row = 0
        self.retry_at_mono = 0.0
        self.last_kind = None

    def record_fault(self, fault: ProxyFault) -> None:
        """A fault of a tunnel (or of the egress check through the proxy)."""
        self.faults[fault.kind.value] += 1
        if fault.attempt_spent:
            self.attempts[fault.kind.value] += 1
        self.last_kind, self.last_message = fault.kind, fault.message
        self.last_fault_wall = time.time()
        now = time.monotonic()
        if fault.kind == ProxyFaultKind.UNREACHABLE and now >= self.retry_at_mono:
            # One step per backoff period: the connections that tried together (before the
            # backoff was set) fail together and count once.
            self.unreachable_in_row += 1
            delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** (self.unreachable_in_row - 1))
            self.retry_at_mono = now + delay
        if fault.kind in BLOCKING_KINDS:
            self.blocked_since = self.fingerprint() if self.fingerprint else None

    def record_reachable(self) -> None:
        """A probe reached the proxy (TCP only, nothing sent): an `unreachable` fault is over."""
        if self.last_kind == ProxyFaultKind.UNREACHABLE:
            self.last_kind = None
            self.unreachable_in_row = 0
            self.retry_at_mono = 0.0

    def record_tunnel_closed(self) -> None:
        """An established tunnel ended uncleanly (the proxy, or the path behind it, dropped it)."""
        self.record_fault(
            ProxyFault(ProxyFaultKind.TUNNEL_CLOSED, f"{self.proxy}: tunnel closed", False)
        )

    def blocked(self) -> bool:
        """Whether an auth fault still blocks the address (its Secret files have not changed)."""
        if self.last_kind not in BLOCKING_KINDS:
            return False
        now = self.fingerprint() if self.fingerprint else None
        if now != self.blocked_since:
            self.last_kind = None
            return False
        return True

    def wait(self) -> tuple[float, str]:
        """(seconds until the next tunnel may be tried, why); (0, "") when it may go now.

        A blocked address answers 1 s at a time: the caller looks again (a cheap stat of the
        Secret files), never sends a request meanwhile.
        """
        if self.blocked():
            return 1.0, f"{self.last_message}; waiting for the proxy Secret to change"
        left = self.retry_at_mono - time.monotonic()
        if left > 0:
            return left, f"{self.last_message}; next try in {left:.1f} s"
        return 0.0, ""

    def to_json(self) -> dict[str, Any]:
        """The proxy's state for /status (no credential in it)."""
        return {
            "proxy": self.proxy,
            "fault": self.last_kind.value if self.last_kind else None,
            "message": self.last_message if self.last_kind else "",
            "lastFaultAt": self.last_fault_wall,
            "faults": dict(self.faults),
            "attempts": dict(self.attempts),
        }
