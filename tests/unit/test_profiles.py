"""Built-in exchange profiles: every limit is sourced, scoped, shaped and rated for confidence."""

from __future__ import annotations

import re

import pytest

from connquota.api.limits import Confidence, Limit, LimitName, LimitScope, LimitShape
from connquota.api.quota import BUILTIN_PROFILES, ExchangeConnectionQuotaSpec
from connquota.exchanges import PROFILES, UnknownProfileError, effective_profile, get_profile

REQUIRED = [
    (LimitName.CONNECTION_ATTEMPTS, LimitScope.IP),
    (LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP),
    (LimitName.STREAMS_PER_CONNECTION, LimitScope.CONNECTION),
    (LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION),
    (LimitName.MAX_CONNECTION_AGE, LimitScope.CONNECTION),
]

ALL_LIMITS = [(p.name, limit) for p in PROFILES.values() for limit in p.limits]


def test_every_builtin_profile_name_the_api_accepts_has_a_profile() -> None:
    assert sorted(PROFILES) == sorted(BUILTIN_PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
@pytest.mark.parametrize(("limit", "scope"), REQUIRED)
def test_every_profile_has_the_limits_the_planner_needs(
    name: str, limit: LimitName, scope: LimitScope
) -> None:
    assert get_profile(name).limit(limit, scope) is not None


@pytest.mark.parametrize(("profile", "limit"), ALL_LIMITS, ids=lambda x: str(getattr(x, "name", x)))
def test_every_limit_has_a_source_url_scope_shape_and_confidence(
    profile: str, limit: Limit
) -> None:
    assert limit.source and re.match(r"^https://", limit.source), (profile, limit.name)
    assert limit.scope in LimitScope
    assert limit.shape in LimitShape
    assert limit.confidence in Confidence
    if limit.confidence == Confidence.ASSUMED:
        assert limit.note and "assumed" in limit.note.lower(), (profile, limit.name)


@pytest.mark.parametrize(("profile", "limit"), ALL_LIMITS, ids=lambda x: str(getattr(x, "name", x)))
def test_rate_limits_have_a_window_and_durations_are_in_seconds(profile: str, limit: Limit) -> None:
    if limit.is_rate:
        assert limit.windowSeconds and limit.windowSeconds > 0
    if limit.shape == LimitShape.DURATION:
        assert limit.value >= 60


def test_profile_sources_are_cited_in_a_comment_beside_each_number() -> None:
    import inspect

    from connquota.exchanges.profiles import (
        binance_spot,
        binance_usdm,
        bybit,
        coinbase,
        deribit,
        kraken,
        okx,
    )

    for module in (binance_spot, binance_usdm, bybit, coinbase, deribit, kraken, okx):
        source = inspect.getsource(module)
        comments = [line for line in source.splitlines() if line.strip().startswith("#")]
        assert len(comments) >= len(module.PROFILE.limits), module.__name__


def test_binance_spot_and_usdm_are_separate_limit_domains() -> None:
    assert get_profile("binance-spot").domain != get_profile("binance-usdm").domain


def test_published_figures_match_the_exchange_documentation() -> None:
    spot = get_profile("binance-spot")
    attempts = spot.limit(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    assert (attempts.value, attempts.windowSeconds) == (300, 300)
    assert spot.limit(LimitName.MESSAGES_PER_CONNECTION).value == 5
    assert spot.heartbeat.countsAsMessage
    okx = get_profile("okx")
    assert okx.limit(LimitName.CONNECTION_ATTEMPTS).value == 3
    assert okx.limit(LimitName.CONTROL_MESSAGES_PER_CONNECTION).windowSeconds == 3600
    assert okx.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT).value == 30
    deribit = get_profile("deribit")
    assert deribit.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP).value == 32
    assert deribit.limit(LimitName.CONCURRENT_CONNECTIONS, LimitScope.API_KEY).value == 16
    credits = deribit.limit(LimitName.MESSAGES_PER_ACCOUNT)
    assert (credits.shape, credits.burst) == (LimitShape.TOKEN_BUCKET, 100)


def test_coinbase_conflicting_connection_rates_resolve_to_the_conservative_one() -> None:
    attempts = get_profile("coinbase").limit(LimitName.CONNECTION_ATTEMPTS)
    assert attempts.value == 8 and attempts.windowSeconds == 1
    assert "750" in (attempts.note or "")


def test_unknown_profile_error_lists_the_known_names() -> None:
    with pytest.raises(UnknownProfileError) as info:
        get_profile("binance")
    for name in PROFILES:
        assert name in str(info.value)


def _spec(**fields: object) -> ExchangeConnectionQuotaSpec:
    return ExchangeConnectionQuotaSpec.model_validate({"egressPoolRef": {"name": "pool"}, **fields})


def test_effective_profile_applies_endpoint_and_limit_overrides() -> None:
    spec = _spec(
        exchange="binance-spot",
        endpoint="ws://127.0.0.1:9000",
        limits=[
            {
                "name": "connectionAttempts",
                "value": 10,
                "windowSeconds": 60,
                "scope": "ip",
                "shape": "slidingWindow",
            }
        ],
    )
    profile = effective_profile(spec)
    assert profile.endpoint == "ws://127.0.0.1:9000"
    assert profile.limit(LimitName.CONNECTION_ATTEMPTS).value == 10
    assert profile.limit(LimitName.STREAMS_PER_CONNECTION).value == 1024
    assert get_profile("binance-spot").endpoint.startswith("wss://stream.binance.com")


def test_an_endpoint_override_moves_the_private_endpoint_to_the_same_host() -> None:
    assert get_profile("binance-spot").privateEndpoint == "wss://ws-api.binance.com:443/ws-api/v3"
    profile = effective_profile(_spec(exchange="binance-spot", endpoint="ws://127.0.0.1:9000"))
    assert profile.privateEndpoint == "ws://127.0.0.1:9000/ws-api/v3"
    assert effective_profile(_spec(exchange="okx")).privateEndpoint is None


def test_effective_profile_of_a_custom_exchange_uses_its_own_limits() -> None:
    limits = [
        {"name": n, "value": 10, "scope": s, "shape": "concurrent"}
        for n, s in [("concurrentConnections", "ip"), ("streamsPerConnection", "connection")]
    ] + [
        {
            "name": "connectionAttempts",
            "value": 5,
            "windowSeconds": 1,
            "scope": "ip",
            "shape": "slidingWindow",
        },
        {
            "name": "messagesPerConnection",
            "value": 5,
            "windowSeconds": 1,
            "scope": "connection",
            "shape": "slidingWindow",
        },
        {"name": "maxConnectionAge", "value": 3600, "scope": "connection", "shape": "duration"},
    ]
    spec = _spec(
        exchange="custom",
        custom={
            "endpoint": "wss://ex.example/ws",
            "dialect": "okx",
            "domain": "ex.example",
            "limits": limits,
        },
    )
    profile = effective_profile(spec)
    assert profile.domain == "ex.example"
    assert profile.heartbeat == get_profile("okx").heartbeat
    assert profile.limit(LimitName.MAX_CONNECTION_AGE).value == 3600


def test_profiles_command_prints_a_row_per_limit(capsys: pytest.CaptureFixture[str]) -> None:
    from connquota.cli import main

    assert main(["profiles"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "PROFILE",
        "LIMIT",
        "VALUE",
        "WINDOW",
        "SCOPE",
        "SHAPE",
        "CONFIDENCE",
    ]
    blank = lines.index("")
    assert blank == 1 + len(ALL_LIMITS)
    assert any(line.split()[:3] == ["okx", "connectionAttempts", "3"] for line in lines)
    endpoints = [line.split() for line in lines[blank + 1 :]]
    assert endpoints[0] == ["PROFILE", "ENDPOINT", "ROLE", "LIMIT", "DOMAIN"]
    assert ["binance-spot", "wss://stream.binance.com:443", "alternate", "stream.binance.com"] in (
        endpoints
    )
    assert sum(row[2] == "primary" for row in endpoints[1:]) == len(PROFILES)


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_profiles_command_machine_formats_round_trip_to_profiles(
    fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from connquota.api.limits import ExchangeProfile
    from connquota.cli import main

    assert main(["profiles", "-o", fmt, "--profile", "deribit"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert [ExchangeProfile.model_validate(p) for p in data] == [get_profile("deribit")]


def test_profiles_command_rejects_an_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    from connquota.cli import main

    assert main(["profiles", "--profile", "nope"]) == 2
    assert "binance-spot" in capsys.readouterr().err
