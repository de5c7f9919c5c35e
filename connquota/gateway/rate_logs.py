"""The limiter's bookkeeping primitives: sliding logs of events, concurrent slots, and the
sliding-log rule that keeps within any rate slice (sliding window, token bucket, spacing)."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from connquota.api.limits import LimitShape
from connquota.api.plan import Slice

INF = math.inf
MAX_WAIT_STEP_S = 5.0
"""Waiters re-check at least this often even when nothing notifies them."""


class SlidingLog:
    """Events that each stay counted until their own expiry; at most `capacity` at once."""

    def __init__(self, capacity: int, hold_s: float) -> None:
        self.capacity = capacity
        self.hold_s = hold_s
        self._expiries: list[float] = []

    def _prune(self, now: float) -> None:
        cut = bisect.bisect_right(self._expiries, now)
        if cut:
            del self._expiries[:cut]

    def live(self, now: float) -> int:
        """Events still counted at `now`."""
        self._prune(now)
        return len(self._expiries)

    def wait_s(self, now: float, capacity: int | None = None) -> float:
        """Seconds until one more event fits under `capacity` (default: the log's own)."""
        cap = self.capacity if capacity is None else capacity
        if cap <= 0:
            return INF
        self._prune(now)
        excess = len(self._expiries) - cap
        if excess < 0:
            return 0.0
        return self._expiries[excess] - now

    def record(self, now: float, hold_s: float | None = None) -> float:
        """Count one event at `now`; returns its expiry."""
        expiry = now + (self.hold_s if hold_s is None else hold_s)
        bisect.insort(self._expiries, expiry)
        return expiry

    def seed(self, expiry: float) -> None:
        """Count an event recorded earlier (e.g. reloaded from the state file)."""
        bisect.insort(self._expiries, expiry)

    def expiries(self) -> list[float]:
        """The expiries of the counted events, oldest first."""
        return list(self._expiries)


class ConcurrentSlots:
    """Things at once: live connections plus dead ones the exchange still counts."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active: set[str] = set()
        self._dead: list[float] = []

    def used(self, now: float) -> int:
        """Slots in use at `now`."""
        cut = bisect.bisect_right(self._dead, now)
        if cut:
            del self._dead[:cut]
        return len(self.active) + len(self._dead)

    def wait_s(self, now: float) -> float:
        """Seconds until a slot frees by itself (INF: only a release frees one)."""
        if self.capacity <= 0:
            return INF
        excess = self.used(now) - self.capacity
        if excess < 0:
            return 0.0
        if excess < len(self._dead) and len(self.active) < self.capacity:
            return self._dead[excess] - now
        return INF

    def release(self, conn_id: str, now: float, hold_s: float) -> None:
        """Free `conn_id`'s slot, after `hold_s` seconds if it ended uncleanly."""
        if conn_id in self.active:
            self.active.discard(conn_id)
            if hold_s > 0:
                bisect.insort(self._dead, now + hold_s)


@dataclass(frozen=True)
class RateRule:
    """A rate slice turned into a sliding log: `capacity` events each held `hold_s`."""

    capacity: int
    hold_s: float
    window_s: float
    reserve: int = 0


def rate_rule(s: Slice, margin_s: float, extra_hold_s: float = 0.0) -> RateRule:
    """The sliding log that keeps within slice `s` (any rate shape), conservatively.

    A token bucket (refill `value` per W, at most `burst`) is kept with min(value, burst)
    events per W; minimum spacing with one event per W/value.
    """
    window_s = float(s.windowSeconds or 0.0)
    value = int(s.value)
    if s.shape == LimitShape.MIN_SPACING:
        spacing = window_s / value if value > 0 else INF
        return RateRule(1 if value > 0 else 0, extra_hold_s + spacing + margin_s, spacing)
    if s.shape == LimitShape.TOKEN_BUCKET and s.burst is not None:
        value = min(value, int(s.burst))
    return RateRule(value, extra_hold_s + window_s + margin_s, window_s, min(s.reserve, value))
