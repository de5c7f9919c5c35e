"""Hand-written PodPlans for gateway tests and benchmarks (the planner is not needed to test
the gateway): shrunk profiles, bind addresses, pod plans, connections."""

from __future__ import annotations

from connquota.api.limits import (
    Dialect,
    ExchangeProfile,
    Heartbeat,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
    LimitShape,
)
from connquota.api.plan import (
    CONNECTION_SCOPE_KEY,
    ConnectionPlan,
    PlanCredential,
    PodPlan,
    QuotaRef,
    Slice,
)
from connquota.api.pool import EgressAddress, EgressCheck, EgressMode

RATE = LimitShape.SLIDING_WINDOW


def small_profile(
    endpoint: str = "ws://127.0.0.1:9",
    dialect: Dialect = Dialect.BINANCE,
    attempts: int = 6,
    attempt_window_s: float = 2.0,
    concurrent: int = 10,
    messages: int = 5,
    message_window_s: float = 1.0,
    connect_timeout_s: float = 1.0,
    dead_timeout_s: float = 1.0,
    direction: HeartbeatDirection = HeartbeatDirection.SERVER_PING,
    heartbeat_interval_s: float = 1.0,
    heartbeat_timeout_s: float = 3.0,
    extra_limits: list[Limit] | None = None,
    name: str = "binance-spot",
) -> ExchangeProfile:
    """A profile with shrunk limits so a test drives them within seconds."""
    limits = [
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=attempts,
            windowSeconds=attempt_window_s,
            scope=LimitScope.IP,
            shape=RATE,
        ),
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=concurrent,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
        ),
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=1024,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
        ),
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=messages,
            windowSeconds=message_window_s,
            scope=LimitScope.CONNECTION,
            shape=RATE,
        ),
        Limit(
            name=LimitName.ARGS_PER_SUBSCRIBE,
            value=50,
            scope=LimitScope.MESSAGE,
            shape=LimitShape.SIZE,
        ),
        *(extra_limits or []),
    ]
    return ExchangeProfile(
        name=name,
        domain="mock.local",
        endpoint=endpoint,
        dialect=dialect,
        limits=limits,
        heartbeat=Heartbeat(
            direction=direction,
            intervalSeconds=heartbeat_interval_s,
            timeoutSeconds=heartbeat_timeout_s,
        ),
        connectTimeoutSeconds=connect_timeout_s,
        deadConnectionTimeoutSeconds=dead_timeout_s,
    )


def bind_address(index: int, check: EgressCheck | None = None) -> EgressAddress:
    """Pool address `a<index>` bound to 127.0.0.<index+2>, verified by `check` (if given)."""
    ip = f"127.0.0.{index + 2}"
    return EgressAddress(
        name=f"a{index}",
        publicAddress=ip,
        mode=EgressMode.BIND,
        bindAddress=ip,
        node="local",
        egressCheck=check,
    )


def pod_plan(
    profile: ExchangeProfile,
    connections: list[ConnectionPlan],
    addresses: list[EgressAddress] | None = None,
    attempt_slice: int | None = None,
    concurrent_slice: int | None = None,
    message_slice: int | None = None,
    reserve: int = 1,
    generation: int = 1,
    ordinal: int = 0,
    margin_s: float = 0.2,
    credentials: list[PlanCredential] | None = None,
    account_slices: list[Slice] | None = None,
) -> PodPlan:
    """A PodPlan giving this pod every budget of `profile` (or the given slices) per address."""
    addresses = addresses or [bind_address(0)]
    slices: list[Slice] = []
    for limit in profile.limits:
        if limit.scope == LimitScope.IP:
            for a in addresses:
                value = int(limit.value)
                if limit.name == LimitName.CONNECTION_ATTEMPTS and attempt_slice is not None:
                    value = attempt_slice
                if limit.name == LimitName.CONCURRENT_CONNECTIONS and concurrent_slice is not None:
                    value = concurrent_slice
                slices.append(
                    Slice(
                        limit=limit.name,
                        scope=limit.scope,
                        key=a.name,
                        value=value,
                        shape=limit.shape,
                        windowSeconds=limit.windowSeconds,
                        burst=limit.burst,
                    )
                )
        elif limit.scope in (LimitScope.CONNECTION, LimitScope.MESSAGE):
            value = int(limit.value)
            if limit.name == LimitName.MESSAGES_PER_CONNECTION and message_slice is not None:
                value = message_slice
            slices.append(
                Slice(
                    limit=limit.name,
                    scope=limit.scope,
                    key=CONNECTION_SCOPE_KEY,
                    value=value,
                    shape=limit.shape,
                    windowSeconds=limit.windowSeconds,
                    burst=limit.burst,
                    reserve=reserve if limit.name == LimitName.MESSAGES_PER_CONNECTION else 0,
                )
            )
    slices.extend(account_slices or [])
    return PodPlan(
        generation=generation,
        quota=QuotaRef(namespace="test", name="q"),
        ordinal=ordinal,
        profile=profile,
        windowMarginSeconds=margin_s,
        addresses=addresses,
        credentials=credentials or [],
        connections=connections,
        slices=slices,
    )


def connections(
    count: int, streams_each: int, address: str = "a0", prefix: str = "c"
) -> list[ConnectionPlan]:
    """`count` ConnectionPlans with `streams_each` distinct Binance-style streams each."""
    return [
        ConnectionPlan(
            id=f"{prefix}{i}",
            address=address,
            streams=[f"sym{i}x{j}usdt@trade" for j in range(streams_each)],
        )
        for i in range(count)
    ]
