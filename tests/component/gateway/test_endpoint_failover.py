"""Failover to a profile's alternate endpoint (issue 15, secondary endpoints), with two mock
exchanges as two endpoints of one limit domain: the gateway moves to the alternate when the
primary is unreachable or answers 5xx, never on a 429, and comes back make-before-break when
the primary recovers. Every attempt at either endpoint comes out of the same limiter slice:
the two referees' counts add up to the gateway's own, and stay within the shrunk limit."""

from __future__ import annotations

import time

from conftest import GW_IP, TIME_SCALE, Consumer, mock_attempts, shrunk, stream_names, wait_for

from connquota.api.limits import AlternateEndpoint
from connquota.api.plan import ConnectionPlan
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.testing.gateway_plans import bind_address, pod_plan

PROFILE = "binance-spot"
ATTEMPTS = 10
WINDOW_PROFILE_S = 40.0  # 2 s at the test's time scale
CONNS = 4
LIMITS = shrunk(PROFILE, connectionAttempts=(ATTEMPTS, WINDOW_PROFILE_S))


async def _true(value: bool) -> bool:
    return value


async def start_alternate(port: int = 0, first_seq: int = 1000) -> MockExchange:
    """A second mock exchange: the alternate endpoint (or the primary, restarted)."""
    mock = MockExchange(
        get_profile(PROFILE), "127.0.0.1", port, time_scale=TIME_SCALE, limits=LIMITS
    )
    # Two instances of the mock are two markets; a real exchange's endpoints carry the same
    # trade ids. Start the restarted primary's ids above the alternate's so the gateway's
    # duplicate check (by trade id) sees the primary's messages as new, as it would.
    mock.feeds.first_seq = first_seq
    await mock.start()
    return mock


async def start_fleet(harness):
    """Primary (the harness's mock), alternate, and one gateway of 4 connections x 2 streams
    whose profile lists the alternate; every connection live on the primary."""
    primary = await harness.start_mock(PROFILE, LIMITS)
    alternate = await start_alternate()
    profile = harness.gateway_profile().model_copy(
        update={"alternateEndpoints": [AlternateEndpoint(url=alternate.url)]}
    )
    names = stream_names(PROFILE, CONNS * 2)
    conns = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=names[2 * i : 2 * i + 2])
        for i in range(CONNS)
    ]
    plan = pod_plan(
        profile, conns, addresses=[bind_address(0, harness.egress_check())], margin_s=0.2
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    assert len(primary.websockets(GW_IP)) == CONNS
    assert alternate.websockets(GW_IP) == []
    return primary, alternate, gw, names


async def gateway_attempts(harness, gw) -> int:
    st = await harness.status(gw)
    assert st is not None
    return sum(n for key, n in st["limiterCounts"]["attempts"].items() if key.startswith("ip/"))


async def test_unreachable_primary_fails_over_and_comes_back_make_before_break(harness):
    primary, alternate, gw, names = await start_fleet(harness)
    try:
        consumer = Consumer(harness.http, gw.ws_url)
        await consumer.connect(names)
        await wait_for(
            lambda: _true(consumer.streams_seen() >= set(names)), 20, "every stream flowing"
        )
        port, attempts_before = primary.port, mock_attempts(primary)

        # The primary goes away: every connection drops and its port refuses connections.
        await primary.stop()
        await wait_for(
            lambda: _true(len(alternate.websockets(GW_IP)) == CONNS),
            40,
            "every connection on the alternate endpoint",
        )
        await harness.wait_live(gw, len(names), timeout_s=20)
        st = await harness.status(gw)
        assert st is not None
        endpoints = st["upstreamEndpoints"]
        assert [e["primary"] for e in endpoints] == [True, False]
        assert endpoints[0]["failuresInARow"] >= 1
        assert "unreachable" in endpoints[0]["lastError"], endpoints
        flowing = {s: len(consumer.frames.get(s, [])) for s in names}
        await wait_for(
            lambda: _true(all(len(consumer.frames[s]) > flowing[s] for s in names)),
            20,
            "every stream flowing from the alternate",
        )

        # The primary comes back on the same port (its trade ids above the alternate's).
        harness.mock = primary = await start_alternate(port, first_seq=10_000_000)
        returning_at = time.monotonic()
        live_during_return: list[int] = []

        async def back_on_the_primary() -> bool:
            status = await harness.status(gw)
            if status is not None:
                live_during_return.append(status["streams"]["live"])
            return len(primary.websockets(GW_IP)) == CONNS and not alternate.websockets(GW_IP)

        await wait_for(back_on_the_primary, 60, "every connection back on the primary")
        # Make-before-break: no stream went down while connections moved back.
        assert min(live_during_return) == len(names), live_during_return
        assert time.monotonic() - returning_at < 60
        returned = {s: len(consumer.frames[s]) for s in names}
        await wait_for(
            lambda: _true(all(len(consumer.frames[s]) > returned[s] for s in names)),
            20,
            "every stream flowing from the primary again",
        )
        for stream in names:  # the gateway's numbering: consecutive through both moves
            seqs = consumer.frames[stream]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream

        # One limit domain: every attempt at either endpoint came out of the gateway's slice,
        # and neither referee saw the shrunk attempt limit broken.
        total = attempts_before + mock_attempts(primary) + mock_attempts(alternate)
        assert total <= await gateway_attempts(harness, gw)
        harness.assert_no_violation()
        assert alternate.violations() == []
        await consumer.close()
    finally:
        await alternate.stop()


async def test_a_5xx_handshake_fails_over_but_a_429_does_not(harness):
    primary, alternate, gw, names = await start_fleet(harness)
    try:
        # 429 on every handshake for a while: the address is throttled, not the endpoint
        # broken; the gateway waits (quarantine) and never turns to the alternate.
        primary.refuse_next_handshakes(3, 429, retry_after_s=1.0)
        await primary.disconnect(abrupt=True)
        await wait_for(
            lambda: _true(len(primary.websockets(GW_IP)) == CONNS),
            40,
            "every connection back on the primary after the 429s",
        )
        assert mock_attempts(alternate) == 0
        st = await harness.status(gw)
        assert st is not None and st["upstreamEndpoints"][0]["failuresInARow"] == 0

        # 503 on every handshake: the endpoint is broken; the connections move.
        primary.refuse_next_handshakes(1000, 503)
        await primary.disconnect(abrupt=True)
        await wait_for(
            lambda: _true(len(alternate.websockets(GW_IP)) == CONNS),
            40,
            "every connection on the alternate after the 503s",
        )
        await harness.wait_live(gw, len(names), timeout_s=20)
        st = await harness.status(gw)
        assert st is not None
        assert st["upstreamEndpoints"][0]["lastError"] == "handshake answered 503"
        harness.assert_no_violation()
        assert alternate.violations() == []
    finally:
        await alternate.stop()


async def test_no_alternates_means_no_endpoint_status(harness):
    """A profile without alternates (every endpoint override): one URL, nothing to report."""
    await harness.start_mock(PROFILE, LIMITS)
    names = stream_names(PROFILE, 2)
    plan = pod_plan(
        harness.gateway_profile(),
        [ConnectionPlan(id="c0", address="a0", streams=names)],
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    st = await harness.wait_live(gw, len(names), timeout_s=40)
    assert st["upstreamEndpoints"] == []
