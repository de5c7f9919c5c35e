"""Gateways start within the attempt slice, serve every stream, and the mock sees no violation."""

from __future__ import annotations

import pytest
from conftest import DIALECT_PROFILES, Consumer, shrunk, stream_names, wait_for
from gateway_plan_factory import bind_address, pod_plan

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import ConnectionPlan


@pytest.mark.parametrize("profile", DIALECT_PROFILES)
async def test_startup_fills_the_attempt_slice_and_delivers_every_stream(harness, profile):
    # 12 connections against 10 attempts per window: the first window carries the egress check
    # (counted by the gateway, not by the exchange) and 9 connections: 90% of the limit.
    limits = shrunk(profile, connectionAttempts=(10, 40.0))  # 2 s at the test's time scale
    await harness.start_mock(profile, limits)
    gp = harness.gateway_profile()
    streams = stream_names(profile, 24)
    conns = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=streams[i * 2 : i * 2 + 2])
        for i in range(12)
    ]
    plan = pod_plan(gp, conns, addresses=[bind_address(0)], margin_s=0.2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    consumer = Consumer(harness.http, gw.ws_url)
    await harness.wait_live(gw, 0, timeout_s=10)
    await consumer.connect(streams)
    st = await harness.wait_live(gw, len(streams), timeout_s=40)
    assert st["streams"]["desired"] == 24

    async def all_delivered():
        return consumer.streams_seen() >= set(streams)

    await wait_for(all_delivered, 20, "a frame of every stream at the consumer")
    for stream, seqs in consumer.frames.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    await consumer.close()
