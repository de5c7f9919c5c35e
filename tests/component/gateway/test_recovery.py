"""Disconnect storms, rate-limit storms, crashes and restarts stay inside the attempt limit."""

from __future__ import annotations

import asyncio
import re
import shutil
import time

import pytest
from conftest import (
    DIALECT_PROFILES,
    GW_IP,
    Consumer,
    attempts_in_window,
    base_plan,
    mock_attempts,
    mock_frames,
    shrunk,
    wait_for,
)

from connquota.api.limits import LimitName, LimitScope

ATTEMPTS = 10
WINDOW_PROFILE_S = 40.0  # 2 s at the test's time scale


def attempt_limits(profile: str, **more):
    return shrunk(profile, connectionAttempts=(ATTEMPTS, WINDOW_PROFILE_S), **more)


async def start_live(harness, profile: str, conns: int = 12, **kw):
    await harness.start_mock(profile, attempt_limits(profile, **kw.pop("limits", {})))
    plan, names = base_plan(harness, profile, conns=conns, **kw)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    return gw, names, plan


async def watch_window_peak(mock, stop: asyncio.Event) -> int:
    peak = 0
    while not stop.is_set():
        peak = max(peak, attempts_in_window(mock))
        await asyncio.sleep(0.02)
    return peak


@pytest.mark.parametrize("profile", DIALECT_PROFILES)
async def test_startup_and_a_mass_disconnect_stay_within_the_attempt_limit_and_deliver_everything(
    harness, profile
):
    # Start-up: 12 connections against 10 attempts per window; the first window carries the
    # egress check (counted by the gateway, not by the exchange) and 9 connections: 90%.
    gw, names, _ = await start_live(harness, profile)
    mock = harness.mock
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)

    async def all_delivered():
        return consumer.streams_seen() >= set(names)

    await wait_for(all_delivered, 20, "a frame of every stream at the consumer")
    # Mass disconnect: every connection dropped at once (no close frame).
    await wait_for(lambda: _true(attempts_in_window(mock) == 0), 10, "the start-up window to pass")
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_window_peak(mock, stop))
    dropped = await mock.disconnect(abrupt=True)
    assert dropped == 12
    await wait_for(lambda: _true(len(mock.websockets(GW_IP)) == 12), 40, "12 connections back")
    await harness.wait_live(gw, len(names), timeout_s=20)
    stop.set()
    assert await watcher >= 0.9 * ATTEMPTS  # this storm itself drove the limit
    before = {s: len(v) for s, v in consumer.frames.items()}

    async def flowing():
        return all(len(consumer.frames.get(s, [])) > before.get(s, 0) for s in names)

    await wait_for(flowing, 20, "every stream flowing again at the consumer")
    for stream, seqs in consumer.frames.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    harness.assert_no_violation()
    await consumer.close()


async def test_nothing_bypasses_the_limiter_counts_at_the_exchange_equal_the_limiters(harness):
    gw, _, _ = await start_live(harness, "binance-spot")
    await harness.mock.disconnect(abrupt=False)
    await harness.wait_live(gw, 24, timeout_s=30)

    async def counts_match():
        # The exchange is read before and after the limiter: whatever it counted before, the
        # limiter granted (nothing bypasses it), and whatever the limiter granted, the exchange
        # had counted by the second read (nothing granted is lost or counted twice). Pongs keep
        # flowing, so the sandwich, not an exact equality at one instant, is what a loaded
        # machine can observe.
        attempts_before, frames_before = mock_attempts(harness.mock), mock_frames(harness.mock)
        st = await harness.status(gw)
        attempts_after, frames_after = mock_attempts(harness.mock), mock_frames(harness.mock)
        counts = st["limiterCounts"]
        granted_attempts = counts["attempts"]["ip/a0"]
        granted_messages = sum(counts["messages"].values())
        assert attempts_before <= granted_attempts and frames_before <= granted_messages
        return granted_attempts <= attempts_after and granted_messages <= frames_after

    await wait_for(counts_match, 15, "the exchange's counts to equal the limiter's", step_s=0.03)
    assert mock_frames(harness.mock) > 24  # subscribes and pongs were counted on both sides
    harness.assert_no_violation()


async def test_429_then_418_storm_quarantines_the_address_without_a_tight_retry_loop(harness):
    gw, names, _ = await start_live(harness, "binance-spot")
    mock = harness.mock
    mock.refuse_next_handshakes(3, 429, retry_after_s=1.0)
    mock.refuse_next_handshakes(2, 418, retry_after_s=2.0)
    before = mock_attempts(mock)

    async def recovered():
        st = await harness.status(gw)
        return st["streams"]["live"] == len(names) and len(mock.websockets(GW_IP)) == 12

    await mock.disconnect(abrupt=False)
    await wait_for(recovered, 60, "recovery after the storm", step_s=0.05)
    # Both answers quarantined the address (counted: a 418's longer quarantine replaces the
    # 429's on the same address, so sampling /status could miss the first).
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        metrics = await resp.text()
    for status in (429, 418):
        found = re.search(
            rf'connquota_gateway_rate_limited_total{{status="{status}"}} (\S+)', metrics
        )
        assert found and float(found.group(1)) >= 1, f"no quarantine after a {status}"
    refused = mock.metrics.registry.get_sample_value
    assert refused("mockexchange_handshake_refusals_total", {"status": "429"}) == 3
    assert refused("mockexchange_handshake_refusals_total", {"status": "418"}) == 2
    # Each refusal quarantines the address at once: only attempts already in flight also get
    # refused; the rest wait. 12 reconnects + 5 refusals, never a retry loop.
    assert mock_attempts(mock) - before <= 12 + 5
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)


async def test_sigkill_and_restart_with_the_state_file_waits_for_the_earlier_attempts(harness):
    await harness.start_mock("binance-spot", attempt_limits("binance-spot"))
    plan, names = base_plan(harness, "binance-spot")
    path = harness.write_plan(plan)
    gw = harness.gateway(path)
    gw.start()
    mock = harness.mock
    await wait_for(lambda: _true(attempts_in_window(mock) >= 9), 20, "the start-up burst")
    await gw.kill()  # while the burst is still in the window
    again = harness.gateway(path)
    again.start()
    await harness.wait_live(again, len(names), timeout_s=40)
    st = await harness.status(again)
    assert st["attemptLog"].endswith("still in their window")
    harness.assert_no_violation()  # a restart that forgot the burst would have exceeded
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)


async def test_restart_with_the_state_wiped_waits_one_full_window_before_the_first_attempt(
    harness,
):
    gw, names, _ = await start_live(harness, "binance-spot")
    await gw.kill()
    shutil.rmtree(gw.state_dir)
    mock = harness.mock
    await wait_for(lambda: _true(not mock.connections(GW_IP)), 10, "the killed connections gone")
    again = harness.gateway(gw.plan_path)
    t0 = time.monotonic()
    again.start()
    await wait_for(lambda: _true(bool(mock.connections(GW_IP))), 20, "the first new attempt", 0.01)
    assert time.monotonic() - t0 >= WINDOW_PROFILE_S / 20.0  # one whole window, at least
    await harness.wait_live(again, len(names), timeout_s=30)
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)


async def test_a_second_process_for_the_same_ordinal_waits_for_the_lock(harness):
    first, names, _ = await start_live(harness, "binance-spot")
    mock = harness.mock
    second = harness.gateway(first.plan_path)
    second.start()

    async def second_waiting():
        st = await harness.status(second)
        return st if st and not st["leaseHeld"] else None

    st = await wait_for(second_waiting, 10, "the second process to report it waits")
    assert "lock" in st["lease"]
    deadline = time.monotonic() + 2 * WINDOW_PROFILE_S / 20.0
    while time.monotonic() < deadline:  # observe: the second one opens nothing meanwhile
        assert len(mock.connections(GW_IP)) <= 12
        st = await harness.status(second)
        assert sum(st["limiterCounts"]["attempts"].values()) == 0
        await asyncio.sleep(0.1)
    assert await first.stop() == 0
    await harness.wait_live(second, len(names), timeout_s=30)
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)


@pytest.mark.parametrize("profile", ["binance-spot", "okx"])
async def test_a_silent_half_open_connection_is_detected_and_replaced(harness, profile):
    gw, names, _ = await start_live(harness, profile)
    mock = harness.mock
    await wait_for(lambda: _true(attempts_in_window(mock) == 0), 10, "the start-up window to pass")
    assert mock.go_silent(ip=GW_IP, duration_s=8.0) == 12

    async def replaced():
        live = [c for c in mock.websockets(GW_IP) if not c.silent(time.monotonic())]
        return len(live) == 12

    await wait_for(replaced, 40, "12 fresh connections beside the silent ones")
    await harness.wait_live(gw, len(names), timeout_s=20)
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        text = await resp.text()
    assert 'connquota_gateway_reconnects_total{reason="stale"}' in text
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    await mock.disconnect(abrupt=True)  # end the silent sockets before the mock stops


async def _true(value: bool) -> bool:
    return value
