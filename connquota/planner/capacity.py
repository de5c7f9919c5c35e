"""What a quota may hold: per connection (streams, messages), per address, per account.

Per connection: at most floor(headroom x streamsPerConnection) streams, and no more than the
connection's message budget can subscribe within max(one window, 60 s): floor(headroom x
messages limit) minus the heartbeat reserve, times the streams one subscribe may name
(argsPerSubscribe). The heartbeat reserve is `connquota.api.timing.heartbeat_reserve`.

Per address and account: the quota's share x its own headroom (floor). The concurrent share
caps connections; each pod using an address needs at least one attempt of the attempt share,
so the attempt share caps the number of pods per address (and per account).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from connquota.api import timing
from connquota.api.limits import ExchangeProfile, Limit, LimitName, LimitScope
from connquota.api.plan import CONNECTION_SCOPE_KEY, Slice
from connquota.api.pool import EgressAddress, EgressMode
from connquota.planner.arithmetic import INFINITE, exact
from connquota.planner.shares import QuotaShares

SUBSCRIBE_DEADLINE_S = 60.0
"""A connection's streams must be subscribable within max(this, the message window)."""

MESSAGE_LIMITS = (LimitName.MESSAGES_PER_CONNECTION, LimitName.CONTROL_MESSAGES_PER_CONNECTION)


def heartbeat_reserve(profile: ExchangeProfile, window_s: float | None) -> int:
    """Messages per window the client's own pings/pongs may need (0 when they do not count):
    `connquota.api.timing.heartbeat_reserve` of the profile's heartbeat."""
    return timing.heartbeat_reserve(profile.heartbeat, window_s)


def usable(headroom: Fraction, value: float) -> int:
    """floor(headroom x value), exactly."""
    return math.floor(headroom * exact(value))


@dataclass
class ConnectionCaps:
    """Per-connection capacity and the connection/message-scoped slices every pod gets."""

    streams: int
    reason: str
    slices: list[Slice] = field(default_factory=list)


def connection_caps(profile: ExchangeProfile, headroom: Fraction) -> ConnectionCaps:
    """Streams one connection may carry, why, and the per-connection slices."""
    cap = INFINITE
    reason = "no per-connection stream limit"
    slices: list[Slice] = []
    args = profile.limit(LimitName.ARGS_PER_SUBSCRIBE, LimitScope.MESSAGE)
    args_per_message = INFINITE
    if args is not None:
        args_per_message = max(1, min(math.floor(args.value), usable(headroom, args.value)))
    for limit in sorted(profile.limits, key=lambda x: (x.scope.value, x.name.value)):
        if limit.scope not in (LimitScope.CONNECTION, LimitScope.MESSAGE):
            continue
        value = usable(headroom, limit.value)
        reserve = 0
        if limit.scope == LimitScope.MESSAGE:
            value = max(1, min(math.floor(limit.value), value))
        if limit.name == LimitName.STREAMS_PER_CONNECTION and value < cap:
            cap, reason = (
                value,
                (f"streamsPerConnection {limit.value:g} x headroom {float(headroom):g} = {value}"),
            )
        if limit.name in MESSAGE_LIMITS and limit.is_rate:
            if limit.name == LimitName.MESSAGES_PER_CONNECTION:
                reserve = timing.heartbeat_reserve(profile.heartbeat, limit.windowSeconds, value)
            for_subscribes = value - reserve
            window_s = limit.windowSeconds or 1.0
            windows = max(1, math.floor(max(window_s, SUBSCRIBE_DEADLINE_S) / window_s))
            by_messages = for_subscribes * windows * args_per_message
            by_messages = min(by_messages, INFINITE)
            if by_messages < cap:
                cap, reason = (
                    by_messages,
                    (
                        f"{limit.name.value} {limit.value:g}/{window_s:g}s x headroom "
                        f"{float(headroom):g} minus a heartbeat reserve of {reserve} leaves "
                        f"{for_subscribes} messages per window for subscribes"
                    ),
                )
        burst = None
        if limit.burst is not None:
            # Headroom applies to every part of a limit: a token bucket's burst too (at least 1
            # while the rate allows anything, or the bucket could never send).
            burst = usable(headroom, limit.burst)
            if value > 0:
                burst = max(1, burst)
        slices.append(_slice(limit, CONNECTION_SCOPE_KEY, value, reserve, burst))
    return ConnectionCaps(cap, reason, slices)


ARGS_CHARACTER_OVERHEAD = 3
"""Characters a stream name costs beyond its own in a JSON args array: two quotes, a comma."""


def args_characters_cap(
    profile: ExchangeProfile, headroom: Fraction, longest_name: int
) -> tuple[int, str] | None:
    """Streams per connection the profile's `argsCharactersPerConnection` allows when every
    name is as long as the quota's longest (conservative: one cap for every connection, so a
    connection never goes over whichever names it gets), and why; None without that limit."""
    limit = profile.limit(LimitName.ARGS_CHARACTERS_PER_CONNECTION, LimitScope.CONNECTION)
    if limit is None:
        return None
    budget = usable(headroom, limit.value)
    per_stream = longest_name + ARGS_CHARACTER_OVERHEAD
    cap = budget // per_stream
    reason = (
        f"argsCharactersPerConnection {limit.value:g} x headroom {float(headroom):g} = {budget} "
        f"characters, {per_stream} per stream (the longest name + {ARGS_CHARACTER_OVERHEAD})"
    )
    return cap, reason


def _slice(limit: Limit, key: str, value: int, reserve: int, burst: int | None) -> Slice:
    return Slice.model_construct(
        limit=limit.name,
        scope=limit.scope,
        key=key,
        value=value,
        shape=limit.shape,
        windowSeconds=limit.windowSeconds,
        burst=burst,
        reserve=reserve,
    )


def placement_group(address: EgressAddress) -> str:
    """Pods use addresses of one group only: podLabel = one address, bind = one node."""
    if address.mode == EgressMode.POD_LABEL:
        return f"label:{address.name}"
    if address.mode == EgressMode.BIND:
        return f"node:{address.node}"
    return "proxy"


@dataclass
class Room:
    """What a quota may hold on one address or account (after its own headroom)."""

    key: str
    index: int
    group: str = ""
    usable: bool = True
    reason: str = ""
    max_connections: int = INFINITE
    max_pods: int = INFINITE
    units: dict[LimitName, int] = field(default_factory=dict)
    """floor(headroom x share) of every shared limit on this key."""


def rooms(
    shares: QuotaShares,
    profile: ExchangeProfile,
    headroom: Fraction,
    scope: LimitScope,
    keys: list[str],
    groups: list[str] | None = None,
) -> list[Room]:
    """The quota's room on each address name (ip scope) or account id (account scope)."""
    out = []
    for i, key in enumerate(keys):
        room = Room(key=key, index=i, group=groups[i] if groups else "")
        what = {LimitScope.IP: "address", LimitScope.API_KEY: "API key"}.get(scope, "account")
        if not shares.admitted:
            room.usable, room.reason = False, "the pool does not admit the quota's namespace"
        for (name, lscope), pooled in sorted(shares.limits.items()):
            if lscope != scope:
                continue
            share = shares.get(scope, key, name) or 0
            units = math.floor(headroom * share)
            room.units[name] = units
            if name == LimitName.CONCURRENT_CONNECTIONS:
                room.max_connections = min(room.max_connections, units)
            elif name == LimitName.CONNECTION_ATTEMPTS:
                room.max_pods = min(room.max_pods, units)
            elif name == LimitName.MESSAGES_PER_IP:
                need = heartbeat_reserve(profile, pooled.window_s)
                if need:
                    room.max_connections = min(room.max_connections, units // need)
            if units <= 0 and room.usable:
                room.usable = False
                room.reason = (
                    f"{what} {key}: the quota's {name.value} share x headroom is 0 (share {share})"
                )
        if room.usable and room.max_connections <= 0:
            room.usable, room.reason = False, f"{what} {key}: no connection fits its shares"
        out.append(room)
    return out
