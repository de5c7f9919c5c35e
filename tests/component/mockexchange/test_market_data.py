"""Market data: gapless sequence numbers per stream, shared across connections, stalls, rates."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from mockexchange_clients import (
    DIALECTS,
    PUBLIC_PATH,
    WIRE,
    client_from,
    receive_text,
    sample_streams,
)

from connquota.exchanges.dialects.base import Data, Error


async def _collect(ws, wire, count: int) -> dict[str, list[Data]]:
    by_stream: dict[str, list[Data]] = {}
    while sum(len(v) for v in by_stream.values()) < count:
        event = wire.parse_server_message(await receive_text(ws))
        if isinstance(event, Data):
            by_stream.setdefault(event.stream, []).append(event)
    return by_stream


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_sequence_numbers_are_gapless_per_stream_with_event_times_in_ms(
    start_mock, dialect
) -> None:
    mx = await start_mock(dialect, rate_per_stream_hz=200, limits=["messagesPerConnection=50/1"])
    wire = WIRE[dialect]
    streams = sample_streams(dialect, 3)
    async with client_from("127.0.0.40") as client:
        ws = await client.ws_connect(
            mx.url + ("/ws" if dialect == "binance" else PUBLIC_PATH[dialect])
        )
        await ws.send_str(wire.build_subscribe(streams, 1))
        by_stream = await _collect(ws, wire, 300)
        await ws.close()
    assert set(by_stream) == set(streams)
    now_ms = time.time() * 1000
    for events in by_stream.values():
        seqs = [e.seq for e in events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert all(now_ms - 5000 < e.event_time_ms <= now_ms for e in events)


async def test_two_connections_on_one_stream_see_the_same_sequence_numbers(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=100)
    stream = "btcusdt@depth@100ms"
    async with client_from("127.0.0.41") as client:
        first = await client.ws_connect(mx.url + "/ws/" + stream)
        second = await client.ws_connect(mx.url + "/stream?streams=" + stream)
        wire = WIRE["binance"]
        a = [wire.parse_server_message(await receive_text(first), stream) for _ in range(40)]
        b = [wire.parse_server_message(await receive_text(second)) for _ in range(40)]
        await first.close()
        await second.close()
    overlap = {e.seq for e in a} & {e.seq for e in b}
    assert len(overlap) >= 20
    assert {e.seq: e.payload for e in a if e.seq in overlap} == {
        e.seq: e.payload for e in b if e.seq in overlap
    }


async def test_a_stream_that_nobody_listens_to_keeps_advancing_so_a_resubscribe_shows_the_gap(
    start_mock,
) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=100, limits=["messagesPerConnection=50/1"])
    wire = WIRE["okx"]
    stream = "trades:BTC-USDT"
    async with client_from("127.0.0.42") as client:
        ws = await client.ws_connect(mx.url + PUBLIC_PATH["okx"])
        await ws.send_str(wire.build_subscribe([stream], 1))
        before = (await _collect(ws, wire, 5))[stream][-1].seq
        await ws.send_str(wire.build_unsubscribe([stream], 2))
        await asyncio.sleep(0.3)  # the gap being measured, not a wait for a condition
        await ws.send_str(wire.build_subscribe([stream], 3))
        events = []
        while len(events) < 40:
            event = wire.parse_server_message(await receive_text(ws))
            if isinstance(event, Data):
                events.append(event)
        await ws.close()
    after = [e.seq for e in events if e.seq > before + 5]
    assert after and after[0] >= before + 20, "about 30 events happened while unsubscribed"


@pytest.mark.serial  # wall-clock bounds of 0.5-0.6 s: flaky beside 5 other workers
async def test_a_stalled_stream_sends_nothing_then_resumes_without_a_gap(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=100, limits=["messagesPerConnection=50/1"])
    wire = WIRE["bybit"]
    stream = "orderbook.50.BTCUSDT"
    async with client_from("127.0.0.43") as client:
        ws = await client.ws_connect(mx.url + PUBLIC_PATH["bybit"])
        await ws.send_str(wire.build_subscribe([stream], 1))
        await _collect(ws, wire, 5)
        mx.stall_stream(stream, 0.6)
        stalled_at = time.monotonic()
        seqs, times = [], []
        while len(seqs) < 30:
            event = wire.parse_server_message(await receive_text(ws))
            if isinstance(event, Data):
                seqs.append(event.seq)
                times.append(time.monotonic())
        await ws.close()
    assert seqs == list(range(seqs[0], seqs[0] + 30))
    assert times[0] - stalled_at > 0.5, "the stall is visible as silence"
    assert times[-1] - times[0] < 0.6, "then events flow at the normal rate again"


async def test_data_rate_is_configurable_at_runtime(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=10)
    async with websockets.connect(mx.url + "/ws/btcusdt@trade", local_addr=("127.0.0.44", 0)) as ws:
        await asyncio.wait_for(ws.recv(), 3)
        mx.set_rate(500)
        started = time.monotonic()
        for _ in range(100):
            await asyncio.wait_for(ws.recv(), 3)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0, (
        "100 messages at 500/s arrive well within 2 s (at 10/s they would take 10 s)"
    )


async def test_okx_candles_live_on_business_and_public_channels_are_refused_there(
    start_mock,
) -> None:
    """OKX's documented split: candles on `/ws/v5/business` only (60018 on `/public`), and
    `/business` refuses public channels with 64002."""
    mx = await start_mock("okx", rate_per_stream_hz=100)
    wire = WIRE["okx"]
    async with client_from("127.0.0.44") as client:
        business = await client.ws_connect(mx.url + "/ws/v5/business")
        await business.send_str(wire.build_subscribe(["candle1m:BTC-USDT"], 1))
        candles = await _collect(business, wire, 3)
        assert set(candles) == {"candle1m:BTC-USDT"}
        await business.send_str(wire.build_subscribe(["tickers:BTC-USDT"], 2))
        refused = await _first_error(business, wire)
        assert refused.code == "64002"
        await business.close()
        public = await client.ws_connect(mx.url + PUBLIC_PATH["okx"])
        await public.send_str(wire.build_subscribe(["candle1m:BTC-USDT"], 3))
        assert (await _first_error(public, wire)).code == "60018"
        await public.close()


async def _first_error(ws, wire) -> Error:
    for _ in range(1000):
        event = wire.parse_server_message(await receive_text(ws))
        if isinstance(event, Error):
            return event
    raise AssertionError("no error frame in 1000 messages")
