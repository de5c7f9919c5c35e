"""Builders of pools, profiles and quotas for planner tests (small, explicit limits)."""

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
from connquota.api.pool import EgressAddress, EgressMode, ExchangeEgressPoolSpec
from connquota.api.quota import (
    Credential,
    ExchangeConnectionQuotaSpec,
    GatewaySpec,
    SecretKeyRef,
    StreamSpec,
)
from connquota.planner.inputs import DesiredStream, QuotaInput

N = LimitName
S = LimitScope


def limit(
    name: LimitName,
    scope: LimitScope,
    value: float,
    window_s: float | None = None,
    shape: LimitShape | None = None,
) -> Limit:
    """A limit; rate shape when a window is given, else concurrent (or size for messages)."""
    if shape is None:
        if window_s is not None:
            shape = LimitShape.SLIDING_WINDOW
        elif scope == S.MESSAGE:
            shape = LimitShape.SIZE
        elif name == N.MAX_CONNECTION_AGE:
            shape = LimitShape.DURATION
        else:
            shape = LimitShape.CONCURRENT
    return Limit(name=name, scope=scope, value=value, shape=shape, windowSeconds=window_s)


def profile(
    domain: str = "stream.example.com",
    attempts: float = 300,
    attempts_window_s: float = 300,
    concurrent_ip: float | None = 300,
    streams_per_connection: float = 100,
    messages_per_connection: float = 10,
    args_per_subscribe: float | None = None,
    concurrent_account: float | None = None,
    extra: list[Limit] | None = None,
) -> ExchangeProfile:
    """A Binance-like profile with small, test-friendly limits."""
    limits = [
        limit(N.CONNECTION_ATTEMPTS, S.IP, attempts, attempts_window_s),
        limit(N.STREAMS_PER_CONNECTION, S.CONNECTION, streams_per_connection),
        limit(N.MESSAGES_PER_CONNECTION, S.CONNECTION, messages_per_connection, 1.0),
        limit(N.MAX_CONNECTION_AGE, S.CONNECTION, 86400),
    ]
    if concurrent_ip is not None:
        limits.append(limit(N.CONCURRENT_CONNECTIONS, S.IP, concurrent_ip))
    if concurrent_account is not None:
        limits.append(limit(N.CONCURRENT_CONNECTIONS, S.ACCOUNT, concurrent_account))
    if args_per_subscribe is not None:
        limits.append(limit(N.ARGS_PER_SUBSCRIBE, S.MESSAGE, args_per_subscribe))
    limits.extend(extra or [])
    return ExchangeProfile(
        name="test-exchange",
        domain=domain,
        endpoint="ws://127.0.0.1:9000",
        dialect=Dialect.BINANCE,
        limits=limits,
        heartbeat=Heartbeat(
            direction=HeartbeatDirection.SERVER_PING, intervalSeconds=20, timeoutSeconds=60
        ),
    )


def address(i: int, mode: EgressMode = EgressMode.PROXY, node: str | None = None) -> EgressAddress:
    """Pool address number i (name a{i}, public 198.51.100.{i+1})."""
    kw: dict = {}
    if mode == EgressMode.BIND:
        kw = {"bindAddress": f"127.0.0.{i + 2}", "node": node or f"node-{i}"}
    elif mode == EgressMode.PROXY:
        kw = {"proxyUrl": f"http://127.0.0.1:{3128 + i}"}
    else:
        kw = {"podLabel": f"egress-{i}"}
    return EgressAddress(name=f"a{i}", publicAddress=f"198.51.100.{i + 1}", mode=mode, **kw)


def pool(
    n: int = 1,
    mode: EgressMode = EgressMode.PROXY,
    reserved: float = 0.0,
    domain: str = "stream.example.com",
    allowed: list[dict] | None = None,
) -> ExchangeEgressPoolSpec:
    """A pool of n addresses."""
    return ExchangeEgressPoolSpec.model_validate(
        {
            "addresses": [address(i, mode).model_dump(exclude_none=True) for i in range(n)],
            "reserved": [{"domain": domain, "fraction": reserved}] if reserved else [],
            **({"allowedNamespaces": allowed} if allowed is not None else {}),
        }
    )


def credential(name: str, account: str | None = None) -> Credential:
    """A credential counted by `account` (default: acct-<name>)."""
    return Credential(
        name=name,
        secretRef=SecretKeyRef(name=f"{name}-secret"),
        accountId=account or f"acct-{name}",
    )


def spec(
    streams: int | list[str] = 0,
    headroom: float = 0.8,
    connections_per_pod: int = 50,
    min_replicas: int = 1,
    max_replicas: int = 10,
    credentials: list[Credential] | None = None,
    shares: list[dict] | None = None,
) -> ExchangeConnectionQuotaSpec:
    """A quota spec with `streams` explicit streams (s0000, s0001, ... when a count)."""
    names = [f"s{i:04d}" for i in range(streams)] if isinstance(streams, int) else streams
    return ExchangeConnectionQuotaSpec(
        exchange="binance-spot",
        headroom=headroom,
        egressPoolRef={"name": "pool"},
        credentials=credentials or [],
        shares=shares or [],
        streams=[StreamSpec(name=n) for n in names],
        gateway=GatewaySpec(
            connectionsPerPod=connections_per_pod,
            minReplicas=min_replicas,
            maxReplicas=max_replicas,
        ),
    )


def quota(
    name: str = "q",
    namespace: str = "team",
    prof: ExchangeProfile | None = None,
    **kw,
) -> QuotaInput:
    """A QuotaInput with a test profile."""
    return QuotaInput(namespace=namespace, name=name, spec=spec(**kw), profile=prof or profile())


def streams(n: int, prefix: str = "s", priority: int = 0, credential: str | None = None):
    """n desired streams named <prefix>0000..."""
    return [DesiredStream(f"{prefix}{i:04d}", priority, credential) for i in range(n)]


def plan_one(q: QuotaInput, p, desired=None, previous=None, generation: int = 1, others=()):
    """Plan quota `q` on pool `p` (with `others` sharing the pool)."""
    from connquota.planner.plan import PlanRequest, plan_quota
    from connquota.planner.shares import divide_budgets
    from connquota.planner.streams import expand_streams

    shares = divide_budgets(p, [q, *others])
    desired = expand_streams(q.spec, q.profile.dialect) if desired is None else desired
    req = PlanRequest(
        q.ref, q.spec, q.profile, p, shares.quotas[q.key], desired, generation, previous
    )
    return plan_quota(req)


def connections(plan) -> dict[str, tuple]:
    """id -> (ordinal, address, credential, streams) of every connection."""
    return {
        c.id: (pod.ordinal, c.address, c.credential, tuple(c.streams))
        for pod in plan.pods
        for c in pod.connections
    }


def placement(plan) -> dict[str, str]:
    """stream -> connection id."""
    return {s: c.id for pod in plan.pods for c in pod.connections for s in c.streams}


def opened(before, after) -> set[str]:
    """Connection ids in `after` that `before` did not have (each one is a new attempt)."""
    return set(connections(after)) - set(connections(before))


def independent_budgets(p, quotas) -> dict[tuple, int]:
    """Budgets computed by hand from the rule (min value x (1 - reserved)), for the checker."""
    import math
    from fractions import Fraction

    out: dict[tuple, int] = {}
    for q in quotas:
        keep = 1 - Fraction(repr(p.reserved_fraction(q.profile.domain)))
        for lim in q.profile.limits:
            if lim.scope.value not in ("ip", "account") or lim.shape.value in ("size", "duration"):
                continue
            if lim.scope.value == "ip":
                keys = [a.publicAddress for a in p.addresses]
            else:
                keys = [c.accountId for c in q.spec.credentials]
            for k in keys:
                key = (q.profile.domain, lim.scope.value, k, lim.name.value)
                value = math.floor(Fraction(repr(lim.value)) * keep)
                out[key] = min(out.get(key, value), value)
    return out
