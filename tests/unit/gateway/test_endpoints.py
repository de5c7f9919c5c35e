"""Choosing among a profile's endpoints (`connquota/gateway/endpoints.py`) and the URLs an
upstream connection may open (`protocol.connect_urls`)."""

from __future__ import annotations

from connquota.api.limits import AlternateEndpoint
from connquota.exchanges import get_profile
from connquota.gateway.endpoints import BACKOFF_BASE_S, BACKOFF_CAP_S, EndpointChooser
from connquota.gateway.protocol import connect_urls


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_binance_spot_lists_its_published_alternates_for_public_connections_only() -> None:
    profile = get_profile("binance-spot")
    assert connect_urls(profile) == [
        "wss://stream.binance.com:9443/stream",
        "wss://stream.binance.com:443/stream",
        "wss://data-stream.binance.vision/stream",
    ]
    assert connect_urls(profile, private=True) == ["wss://ws-api.binance.com:443/ws-api/v3"]


def test_an_endpoint_override_drops_the_exchanges_alternates_unless_given() -> None:
    profile = get_profile("binance-spot")
    assert connect_urls(profile.with_endpoint("ws://127.0.0.1:9000")) == [
        "ws://127.0.0.1:9000/stream"
    ]
    alt = AlternateEndpoint(url="ws://127.0.0.1:9001")
    assert connect_urls(profile.with_endpoint("ws://127.0.0.1:9000", [alt])) == [
        "ws://127.0.0.1:9000/stream",
        "ws://127.0.0.1:9001/stream",
    ]


def test_the_primary_until_it_fails_then_the_next_with_a_doubling_backoff() -> None:
    clock = Clock()
    chooser = EndpointChooser(["p", "a1", "a2"], clock)
    assert chooser.pick() == "p"
    chooser.failed("p", "unreachable")
    assert chooser.pick() == "a1"
    chooser.failed("p", "unreachable")  # an attempt that started before: same outage
    assert chooser.endpoints[0].failures == 1
    chooser.failed("a1", "handshake answered 503")
    assert chooser.pick() == "a2"
    clock.now += BACKOFF_BASE_S
    assert chooser.pick() == "p"  # its backoff has passed: tried again first
    chooser.failed("p", "unreachable")
    assert chooser.endpoints[0].down_until == clock.now + 2 * BACKOFF_BASE_S
    for _ in range(10):
        clock.now = chooser.endpoints[0].down_until
        chooser.failed("p", "unreachable")
    assert chooser.endpoints[0].down_until - clock.now == BACKOFF_CAP_S


def test_every_endpoint_down_picks_the_one_back_first() -> None:
    clock = Clock()
    chooser = EndpointChooser(["p", "a1"], clock)
    chooser.failed("p", "x")
    clock.now += 1
    chooser.failed("a1", "x")
    assert chooser.pick() == "p"


def test_coming_back_one_connection_first_then_all_once_the_primary_answers() -> None:
    clock = Clock()
    chooser = EndpointChooser(["p", "a1"], clock)
    chooser.failed("p", "unreachable")
    assert not chooser.should_return("a1")  # still in its backoff
    assert not chooser.should_return("p")
    clock.now += BACKOFF_BASE_S
    assert chooser.should_return("a1")  # one connection goes to find out
    assert not chooser.should_return("a1")  # the others wait for its answer
    chooser.failed("p", "unreachable")  # it failed: the claim ends with the new backoff
    clock.now += 2 * BACKOFF_BASE_S
    assert chooser.should_return("a1")
    chooser.opened("p")
    assert chooser.should_return("a1") and chooser.should_return("a1")  # everyone follows
    status = chooser.status()
    assert status[0] == {
        "url": "p",
        "primary": True,
        "down": False,
        "downForSeconds": 0.0,
        "failuresInARow": 0,
        "lastError": "",
    }
