"""The referee's books: sliding logs, peak use of every limit, violations and IP bans.

This is the mock exchange's own counting code; it shares nothing with the gateway's limiter.
All times are monotonic wall-clock seconds; windows are already scaled to wall-clock seconds.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any

from connquota.api.limits import LimitName, LimitScope


class SlidingLog:
    """Event times in a window of ``window_s``: an event at ``t`` counts during ``[t, t + W)``."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> int:
        """Record an event at ``now``; return the count in the window ending at ``now``."""
        self._times.append(now)
        return self.count(now)

    def count(self, now: float) -> int:
        """Events in the window ending at ``now``."""
        horizon = now - self.window_s
        times = self._times
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)


class SortedLog:
    """Like SlidingLog, but events may arrive late (an attempt classified after its accept)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._times: list[float] = []

    def insert(self, at: float, now: float) -> int:
        """Record an event that happened at ``at``; return the largest count of any window that
        contains it (what the exchange would have counted at its worst moment)."""
        self._prune(now)
        bisect.insort(self._times, at)
        times = self._times
        worst = 0
        start = bisect.bisect_left(times, at)
        end = bisect.bisect_left(times, at + self.window_s)
        for i in range(start, end):
            low = bisect.bisect_right(times, times[i] - self.window_s)
            worst = max(worst, i + 1 - low)
        return worst

    def count(self, now: float, extra: list[float] | None = None) -> int:
        """Events in the window ending at ``now`` (plus ``extra`` times not yet recorded)."""
        self._prune(now)
        horizon = now - self.window_s
        pending = sum(1 for t in extra or () if t > horizon)
        return len(self._times) - bisect.bisect_right(self._times, horizon) + pending

    def wait_s(self, now: float, limit: float) -> float:
        """Seconds until one more event fits under ``limit`` (0 when it fits now)."""
        self._prune(now)
        horizon = now - self.window_s
        in_window = self._times[bisect.bisect_right(self._times, horizon) :]
        excess = len(in_window) - int(limit) + 1
        if excess <= 0:
            return 0.0
        return in_window[min(excess, len(in_window)) - 1] + self.window_s - now

    def _prune(self, now: float) -> None:
        # keep two windows: late inserts compare against the window before them
        horizon = now - 2 * self.window_s
        cut = bisect.bisect_right(self._times, horizon)
        if cut:
            del self._times[:cut]


@dataclass(frozen=True)
class Violation:
    """One limit exceeded: when, which limit, by whom, and what the mock did about it."""

    wall_time: float
    limit: str
    scope: str
    value: float
    limit_value: float
    ip: str
    account: str | None = None
    conn_id: str | None = None
    action: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass
class Ban:
    """An IP ban: HTTP 418 until ``until`` (monotonic)."""

    ip: str
    until: float
    reason: str


PeakKey = tuple[LimitName, LimitScope, str]


@dataclass
class Ledger:
    """Peaks, violations and bans of one mock exchange instance."""

    violation_memory_s: float
    ban_after_violations: int
    ban_s: float
    peaks: dict[PeakKey, float] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    bans: dict[str, Ban] = field(default_factory=dict)
    _penalties: dict[str, deque[float]] = field(default_factory=lambda: defaultdict(deque))

    def observe(self, name: LimitName, scope: LimitScope, key: str, value: float) -> None:
        """Remember ``value`` as the use of a limit now; keeps the maximum ever seen."""
        peak_key = (name, scope, key)
        if value > self.peaks.get(peak_key, 0.0):
            self.peaks[peak_key] = value

    def peak(self, name: LimitName, scope: LimitScope, key: str | None = None) -> float:
        """Peak use of a limit for one key (IP, account, connection id), or the max of all."""
        if key is not None:
            return self.peaks.get((name, scope, key), 0.0)
        values = [v for (n, s, _), v in self.peaks.items() if n == name and s == scope]
        return max(values, default=0.0)

    def record(self, violation: Violation, now: float, penalised: bool = True) -> Ban | None:
        """Record a violation; when the IP has been penalised often enough, ban it."""
        self.violations.append(violation)
        if not penalised:
            return None
        history = self._penalties[violation.ip]
        history.append(now)
        while history and history[0] <= now - self.violation_memory_s:
            history.popleft()
        if len(history) >= self.ban_after_violations and violation.ip not in self.active_bans(now):
            history.clear()
            return self.ban(
                violation.ip, now, self.ban_s, f"repeated violations ({violation.limit})"
            )
        return None

    def ban(self, ip: str, now: float, duration_s: float, reason: str) -> Ban:
        """Ban ``ip`` for ``duration_s`` wall-clock seconds."""
        ban = Ban(ip=ip, until=now + duration_s, reason=reason)
        self.bans[ip] = ban
        return ban

    def active_bans(self, now: float) -> dict[str, Ban]:
        """Bans that have not expired; expired ones are forgotten."""
        for ip in [ip for ip, ban in self.bans.items() if ban.until <= now]:
            del self.bans[ip]
        return self.bans

    def reset(self) -> None:
        """Forget peaks, violations, penalties and bans."""
        self.peaks.clear()
        self.violations.clear()
        self.bans.clear()
        self._penalties.clear()


def wall_now() -> float:
    """Wall-clock seconds (for timestamps people read)."""
    return time.time()
