"""The demo's world: a loopback egress pool, a quota with thousands of streams, and its plan.

The planner (`connquota.planner.plan_pool`) plans the quota exactly as the operator would. The
plan is then put on the mock exchange's clock: every duration in the pods' profiles and slices
is divided by the time scale (the mock exchange does the same to its own limits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from connquota.api.limits import ExchangeProfile, LimitName
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.api.quota import ExchangeConnectionQuotaSpec
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import effective_profile, get_profile
from connquota.planner import QuotaInput, expand_streams, plan_pool

DEMO_NAMESPACE = "connquota-demo"
DEMO_QUOTA = "market-data"
DEMO_ACCOUNTS = ("acct-1", "acct-2")
MIN_MARGIN_S = 0.1


@dataclass
class DemoWorld:
    """Everything the demo planned: pool, quota, effective profile and the scaled plan."""

    pool: ExchangeEgressPoolSpec
    spec: ExchangeConnectionQuotaSpec
    profile: ExchangeProfile
    """The exchange's profile with the demo's overrides (real durations): what the mock enforces."""
    plan: QuotaPlan
    """The plan with durations on the mock's clock: what the gateways enforce."""
    streams: list[str]
    overrides: list[str]
    """Human descriptions of the limits the demo shrank (shown in the view)."""


SYMBOL_CHANNELS = {
    "binance": ["trade", "aggTrade", "bookTicker"],
    "okx": ["tickers", "trades", "bbo-tbt"],
    "bybit": ["publicTrade", "tickers", "orderbook.1"],
    "kraken": ["trade", "ticker", "book"],
    "deribit": ["trades", "ticker", "book"],
    "coinbase": ["market_trades", "ticker", "level2"],
}

PROFILE_CHANNELS = {
    # USD-M serves trades, mark prices and klines on /market (the profile's endpoint) and books
    # on /public: the demo's quota is one endpoint, so /market channels only.
    "binance-usdm": ["aggTrade", "markPrice@1s", "kline_1m"],
}
"""Channels of a profile whose endpoint serves other channels than its dialect's default."""


def _symbols(dialect: str, count: int) -> list[str]:
    if dialect == "binance":
        return [f"c{i}usdt" for i in range(count)]
    if dialect == "okx":
        return [f"C{i}-USDT" for i in range(count)]
    if dialect == "kraken":
        return [f"C{i}/USD" for i in range(count)]
    if dialect == "deribit":
        return [f"C{i}-PERPETUAL" for i in range(count)]
    if dialect == "coinbase":
        return [f"C{i}-USD" for i in range(count)]
    return [f"C{i}USDT" for i in range(count)]


PROXY_SECRET = "demo-proxy"
"""The Secret name of the demo's proxy credentials (files under the proxy credentials dir)."""


def _address(i: int, proxy_url: str | None) -> dict[str, object]:
    """Loopback address 127.0.0.<i+2>: bound to directly, or the egress of a proxy."""
    public = f"127.0.0.{i + 2}"
    if proxy_url is None:
        return {
            "name": f"lo-{i + 2}",
            "publicAddress": public,
            "mode": "bind",
            "bindAddress": public,
            "node": "demo-node",
        }
    return {
        "name": f"px-{i + 2}",
        "publicAddress": public,
        "mode": "proxy",
        "proxyUrl": proxy_url,
        "proxySecretRef": {"name": PROXY_SECRET},
    }


def build_world(
    profile_name: str,
    streams: int,
    gateways: int,
    addresses: int,
    time_scale: float,
    endpoint: str,
    attempts_per_address: int,
    echo_url: str | None = None,
    proxy_urls: list[str] | None = None,
) -> DemoWorld:
    """Plan a quota of `streams` streams over `addresses` loopback addresses and `gateways` pods.

    With `proxy_urls` (one per address) each address is a proxy whose outgoing connections
    leave from 127.0.0.<i+2>; otherwise the gateways bind 127.0.0.<i+2> themselves.

    The attempt limit is shrunk to `attempts_per_address` per window so that a mass disconnect
    of the demo's connections drives it past 90%; the streams per connection are capped so
    the streams spread over enough connections (published values are far larger).
    """
    base = get_profile(profile_name)
    dialect = base.dialect.value
    channels = PROFILE_CHANNELS.get(profile_name, SYMBOL_CHANNELS[dialect])
    symbols = _symbols(dialect, math.ceil(streams / len(channels)))
    attempts = base.limit(LimitName.CONNECTION_ATTEMPTS)
    per_conn_limit = base.limit(LimitName.STREAMS_PER_CONNECTION)
    assert attempts is not None and per_conn_limit is not None
    attempts_per_address = int(min(attempts_per_address, attempts.value))
    # Enough connections per address that a mass disconnect needs more attempts than a window
    # has, and enough to carry every stream.
    conns_per_address = max(
        4,
        math.ceil(attempts_per_address * 1.25),
        math.ceil(streams / (addresses * per_conn_limit.value)),
    )
    total_conns = conns_per_address * addresses
    per_conn = max(1, math.ceil(streams / total_conns))
    overrides = [
        attempts.model_copy(update={"value": attempts_per_address}),
        per_conn_limit.model_copy(update={"value": min(per_conn, per_conn_limit.value)}),
    ]
    notes = [
        f"connectionAttempts {attempts.value:g} -> {attempts_per_address} per "
        f"{attempts.windowSeconds:g} s per IP",
        f"streamsPerConnection {per_conn_limit.value:g} -> {overrides[1].value:g}",
    ]
    pool = ExchangeEgressPoolSpec.model_validate(
        {
            "addresses": [
                _address(i, proxy_urls[i] if proxy_urls else None) for i in range(addresses)
            ],
            # Verified through an IP-echo service (never the exchange), as a real pool would be.
            "egressCheck": (
                {"method": "url", "url": echo_url}
                if echo_url
                else {"method": "none", "reason": "the demo runs on loopback addresses"}
            ),
        }
    )
    spec = ExchangeConnectionQuotaSpec.model_validate(
        {
            "exchange": profile_name,
            "endpoint": endpoint,
            "egressPoolRef": {"name": "loopback"},
            "headroom": 1.0,
            "limits": [o.model_dump(mode="json", exclude_none=True) for o in overrides],
            "credentials": [
                {"name": f"key-{n}", "secretRef": {"name": f"demo-key-{n}"}, "accountId": acct}
                for n, acct in enumerate(DEMO_ACCOUNTS, start=1)
            ],
            "streamSets": [{"symbols": symbols, "channels": channels}],
            "gateway": {
                "connectionsPerPod": math.ceil(total_conns / gateways),
                "minReplicas": gateways,
                "maxReplicas": gateways,
            },
        }
    )
    profile = effective_profile(spec)
    quota = QuotaInput(DEMO_NAMESPACE, DEMO_QUOTA, spec, profile)
    desired = expand_streams(spec, profile.dialect)[:streams]
    pool_plan = plan_pool(pool, [quota], {quota.key: desired}, {quota.key: 1})
    plan = scale_plan(pool_plan.plans[quota.key], time_scale, endpoint)
    return DemoWorld(pool, spec, profile, plan, [d.name for d in desired], notes)


def scale_plan(plan: QuotaPlan, time_scale: float, endpoint: str) -> QuotaPlan:
    """`plan` on the mock's clock: profile durations, slice windows and margins divided."""
    pods = []
    for pod in plan.pods:
        slices = [
            s.model_copy(update={"windowSeconds": s.windowSeconds / time_scale})
            if s.windowSeconds is not None
            else s
            for s in pod.slices
        ]
        pods.append(
            pod.model_copy(
                update={
                    "profile": scaled_profile(pod.profile, time_scale, endpoint),
                    "slices": slices,
                    "windowMarginSeconds": max(MIN_MARGIN_S, pod.windowMarginSeconds / time_scale),
                }
            )
        )
    return plan.model_copy(update={"pods": pods})
