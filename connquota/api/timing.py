"""The limit formulas every part of connquota must agree on, each defined once.

The planner (slices, recovery bounds, the ledger's releases), the operator (when a slice may
move) and the gateway (its attempt log and message reserve) all apply these; none keeps a
formula of its own. The independent checker (`connquota.testing.checker`) keeps its own copy
written from the design, and a unit test fails when the two disagree.

Times are seconds; `window_s` is a limit's window (`Limit.windowSeconds`).
"""

from __future__ import annotations

import math

from connquota.api.limits import Heartbeat, HeartbeatDirection, LimitName

WINDOW_MARGIN_S = 1.0
"""Added to every rate window, by the gateways (their attempt and message logs) and by the
operator (before a rate slice given up by one pod may be used by another): it covers clock
skew between the exchange, the gateway and the operator and the delivery of an attempt or
message still in flight when it was counted. One value for all of them: a gateway that keeps
a shorter memory than the operator assumes would let a moved slice be used twice."""

SYN_GRACE_S = 0.25
"""Added to every attempt's hold: a gateway records an attempt (and persists it) just before
its SYN leaves, so the hold measured from the record must cover the time until the SYN."""


def attempt_hold_s(
    window_s: float, connect_timeout_s: float, margin_s: float = WINDOW_MARGIN_S
) -> float:
    """How long one connection attempt counts against an attempt limit of window `window_s`.

    The design: an attempt counts from its first SYN whatever follows, and the exchange may
    count it as late as the end of the connect (TCP, TLS, proxy, upgrade: at most
    `connect_timeout_s`), so it stays in the window until `t_syn + connect timeout + window +
    margin`; measured from the gateway's record before the SYN, plus `SYN_GRACE_S`."""
    return SYN_GRACE_S + connect_timeout_s + window_s + margin_s


def rate_memory_s(limit: LimitName | str, window_s: float, connect_timeout_s: float) -> float:
    """How long after its last use a rate slice still counts at the exchange, before the
    margin: a window, and for connection attempts also the connect timeout and the SYN grace
    (see `attempt_hold_s`). A slice a pod gave up may be used elsewhere only this long plus
    `WINDOW_MARGIN_S` after the pod acknowledged giving it up."""
    if LimitName(limit) == LimitName.CONNECTION_ATTEMPTS:
        return attempt_hold_s(window_s, connect_timeout_s, margin_s=0.0)
    return window_s


def heartbeat_reserve(
    heartbeat: Heartbeat, window_s: float | None, capacity: int | None = None
) -> int:
    """Messages per window of a message limit kept for the client's own pings or pongs.

    Exchanges that count every inbound message (Binance: pings and pongs included) would drop
    a connection whose subscribes used the whole slice and left no room for the next
    heartbeat: a heartbeat is due every `intervalSeconds`, so a window holds
    `ceil(window / interval)` of them (at least 1; 1 for a limit without a window). None when
    the client's heartbeats are not counted (`countsAsMessage` false) or the exchange sends
    heartbeats the client never answers. At most `capacity` (the slice's value)."""
    if not heartbeat.countsAsMessage or heartbeat.direction == HeartbeatDirection.SERVER_HEARTBEAT:
        return 0
    need = 1 if window_s is None else max(1, math.ceil(window_s / heartbeat.intervalSeconds))
    return need if capacity is None else max(0, min(capacity, need))


MIN_MESSAGE_MARGIN_S = 0.05
"""The least margin a message window keeps when the plan's margin allows it."""


def message_margin_s(plan_margin_s: float, window_s: float | None) -> float:
    """The margin a gateway adds to a per-connection message window.

    The plan's margin, but at most a quarter of the window (and at least 50 ms when the plan's
    margin allows it: delivery jitter on the way). Message slices are per connection and never
    move between pods, so no operator-side memory depends on this margin; a full second on a
    1-second message window would halve the connection's usable rate."""
    if not window_s or window_s <= 0:
        return plan_margin_s
    return min(plan_margin_s, max(0.25 * window_s, MIN_MESSAGE_MARGIN_S))


def recovery_s(connections: int, attempts_per_window: int, hold_s: float) -> float:
    """How long reopening `connections` takes at `attempts_per_window` attempts, each holding
    its place for `hold_s` (`attempt_hold_s`): ceil(N / R) holds; infinite when R is 0."""
    if connections <= 0:
        return 0.0
    if attempts_per_window <= 0:
        return math.inf
    return math.ceil(connections / attempts_per_window) * hold_s


__all__ = [
    "MIN_MESSAGE_MARGIN_S",
    "SYN_GRACE_S",
    "WINDOW_MARGIN_S",
    "attempt_hold_s",
    "heartbeat_reserve",
    "rate_memory_s",
    "recovery_s",
]
