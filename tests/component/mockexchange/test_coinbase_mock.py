"""Coinbase Advanced Trade WebSocket on the mock: one channel per subscribe, ``subscriptions``
acks, ``sequence_num`` per connection, heartbeats only on the ``heartbeats`` channel, complete
payloads, level2 books that merge consistently, and every limit of the coinbase profile one
under / one over (the per-IP message limit shared by every connection on the address)."""

from __future__ import annotations

import json
import time

from mockexchange_clients import client_from, receive_text, receive_until, wait_closed

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import coinbase
from connquota.exchanges.dialects.base import Ack, Data, Notice
from connquota.exchanges.orderbook import L2Book

STREAMS = ["market_trades:BTC-USD", "ticker:BTC-USD", "level2:BTC-USD", "candles:BTC-USD"]


def _is(channel: str):
    return lambda m: isinstance(m, dict) and m.get("channel") == channel


async def test_channels_acks_sequence_num_and_complete_payloads(start_mock) -> None:
    mx = await start_mock("coinbase", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.70") as client:
        ws = await client.ws_connect(mx.url + "/")
        await ws.send_str(coinbase.build_heartbeats_subscribe())
        ack = json.loads(await receive_text(ws))
        assert ack["channel"] == "subscriptions" and ack["sequence_num"] == 0
        assert ack["events"] == [{"subscriptions": {"heartbeats": ["heartbeats"]}}]
        for stream in STREAMS:  # one channel per subscribe message
            await ws.send_str(coinbase.build_subscribe([stream], None))
        frames: list[dict] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            len({f["channel"] for f in frames}) < 5 or len(frames) < 200
        ):
            frames.append(json.loads(await receive_text(ws)))
        await ws.close()
    numbers = [ack["sequence_num"]] + [f["sequence_num"] for f in frames]
    assert numbers == list(range(len(numbers))), "sequence_num counts every message"
    acks = [f for f in frames if f["channel"] == "subscriptions"]
    assert acks[-1]["events"][0]["subscriptions"] == {
        "market_trades": ["BTC-USD"], "ticker": ["BTC-USD"], "level2": ["BTC-USD"],
        "candles": ["BTC-USD"], "heartbeats": ["heartbeats"]}  # fmt: skip
    assert isinstance(coinbase.parse_server_message(json.dumps(acks[-1])), Ack)
    for f in frames:
        assert set(f) == {"channel", "client_id", "timestamp", "sequence_num", "events"}
    by_channel: dict[str, list[dict]] = {}
    for f in frames:
        by_channel.setdefault(f["channel"], []).append(f)
    for channel in ("market_trades", "ticker", "l2_data", "candles"):
        assert by_channel[channel][0]["events"][0]["type"] == "snapshot", channel
        assert by_channel[channel][-1]["events"][0]["type"] == "update", channel
        ev = coinbase.parse_server_message(json.dumps(by_channel[channel][-1]))
        assert isinstance(ev, Data) and ev.stream.endswith(":BTC-USD")
    trade = by_channel["market_trades"][-1]["events"][0]["trades"][0]
    assert set(trade) == {"trade_id", "product_id", "price", "size", "side", "time"}
    ids = [int(f["events"][0]["trades"][0]["trade_id"]) for f in by_channel["market_trades"]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    ticker = by_channel["ticker"][-1]["events"][0]["tickers"][0]
    assert set(ticker) == {
        "type", "product_id", "price", "volume_24_h", "low_24_h", "high_24_h", "low_52_w",
        "high_52_w", "price_percent_chg_24_h", "best_bid", "best_bid_quantity", "best_ask",
        "best_ask_quantity"}  # fmt: skip
    candle = by_channel["candles"][-1]["events"][0]["candles"][0]
    assert set(candle) == {"start", "high", "low", "open", "close", "volume", "product_id"}
    assert int(candle["start"]) % 300 == 0
    # level2: the snapshot then updates merge into a book that never crosses
    book = L2Book()
    for f in by_channel["l2_data"]:
        bids, asks = coinbase.levels_of(f)
        if coinbase.is_snapshot(f):
            book.clear()
            assert len(bids) > 10 and len(asks) > 10
        for side, levels in (("bid", bids), ("offer", asks)):
            for price, qty in levels:
                assert float(qty) > 0 or (price in (book.bids if side == "bid" else book.asks)), (
                    "a level removed that the book did not hold"
                )
        book.apply(bids, asks)
        assert float(book.sorted_bids()[0][0]) < float(book.sorted_asks()[0][0])
    assert len(by_channel["l2_data"]) > 20
    assert mx.violations() == []


async def test_a_late_subscriber_gets_the_same_book_as_one_that_merged_every_update(
    start_mock,
) -> None:
    mx = await start_mock("coinbase", rate_per_stream_hz=50, limits=["messagesPerConnection=50/1"])
    stream = "level2:ETH-USD"
    async with client_from("127.0.0.71") as client:
        first = await client.ws_connect(mx.url + "/")
        await first.send_str(coinbase.build_subscribe([stream], None))
        merged = L2Book()
        for _ in range(40):
            f = json.loads(await receive_text(first))
            if f["channel"] == "l2_data":
                merged.apply(*coinbase.levels_of(f))
        second = await client.ws_connect(mx.url + "/")
        await second.send_str(coinbase.build_subscribe([stream], None))
        snap = await receive_until(second, _is("l2_data"))
        snapshot = L2Book()
        snapshot.apply(*coinbase.levels_of(snap[-1]))
        event_time = snap[-1]["timestamp"]
        while True:  # the first connection up to the same event
            f = json.loads(await receive_text(first))
            if f["channel"] == "l2_data":
                merged.apply(*coinbase.levels_of(f))
                if f["timestamp"] == event_time:
                    break
        assert merged.sorted_bids() == snapshot.sorted_bids()
        assert merged.sorted_asks() == snapshot.sorted_asks()
        await first.close()
        await second.close()
    assert mx.violations() == []


async def test_heartbeats_only_on_the_heartbeats_channel(start_mock) -> None:
    mx = await start_mock("coinbase", rate_per_stream_hz=0.01, time_scale=10)
    async with client_from("127.0.0.72") as client:
        ws = await client.ws_connect(mx.url + "/")
        await ws.send_str(coinbase.build_heartbeats_subscribe())
        await receive_until(ws, _is("subscriptions"))
        counters = []
        while len(counters) < 3:
            frames = await receive_until(ws, _is("heartbeats"), timeout_s=2)
            beat = frames[-1]
            assert isinstance(coinbase.parse_server_message(json.dumps(beat)), Notice)
            counters.append(int(beat["events"][0]["heartbeat_counter"]))
        assert counters == [counters[0], counters[0] + 1, counters[0] + 2]
        await ws.close()
    assert mx.violations() == []


async def test_errors_for_bad_requests_and_private_channels(start_mock) -> None:
    mx = await start_mock("coinbase", limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.73") as client:
        ws = await client.ws_connect(mx.url + "/")
        for bad in ("{", '{"type":"subscribe","product_ids":["BTC-USD"]}',
                    '{"type":"subscribe","channel":"user","product_ids":["BTC-USD"]}',
                    coinbase.build_subscribe(["ticker:btc_usd"], None)):  # fmt: skip
            await ws.send_str(bad)
            reply = json.loads(await receive_text(ws))
            assert reply["type"] == "error" and "sequence_num" not in reply
        assert not ws.closed
        await ws.close()
    assert mx.violations() == []


async def test_per_ip_messages_at_the_limit_pass_and_one_more_on_another_connection_errs(
    start_mock,
) -> None:
    """messagesPerIp 8/s is one budget for every connection on the address: 4 + 4 pass, the
    9th (on either connection) is over."""
    mx = await start_mock("coinbase", limits=["messagesPerIp=8/30", "messagesPerConnection=50/1"])
    async with client_from("127.0.0.74") as client:
        a = await client.ws_connect(mx.url + "/")
        b = await client.ws_connect(mx.url + "/")
        for n in range(4):
            for ws in (a, b):
                await ws.send_str(coinbase.build_subscribe([f"ticker:S{n}-USD"], None))
                await receive_until(ws, _is("subscriptions"))
        assert mx.violations() == []
        await b.send_str(coinbase.build_subscribe(["ticker:S9-USD"], None))
        frames = await receive_until(b, lambda m: isinstance(m, dict) and "type" in m)
        assert frames[-1] == {"type": "error", "message": coinbase.RATE_LIMITED}
        await a.close()
        await b.close()
    assert [v.limit for v in mx.violations()] == ["messagesPerIp"]
    assert mx.peak(LimitName.MESSAGES_PER_IP, LimitScope.IP) == 9


async def test_per_connection_messages_at_the_limit_pass_and_one_more_errs(start_mock) -> None:
    mx = await start_mock("coinbase", limits=["messagesPerConnection=3/30", "messagesPerIp=50/1"])
    async with client_from("127.0.0.75") as client:
        ws = await client.ws_connect(mx.url + "/")
        for n in range(3):
            await ws.send_str(coinbase.build_subscribe([f"ticker:S{n}-USD"], None))
            await receive_until(ws, _is("subscriptions"))
        assert mx.violations() == []
        await ws.send_str(coinbase.build_subscribe(["ticker:S9-USD"], None))
        frames = await receive_until(ws, lambda m: isinstance(m, dict) and "type" in m)
        assert frames[-1]["type"] == "error"
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["messagesPerConnection"]
    assert mx.peak(LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION) == 4


async def test_max_connection_age_closes_at_the_limit(start_mock) -> None:
    mx = await start_mock(
        "coinbase",
        limits=["maxConnectionAge=60", "messagesPerConnection=50/1"],
        time_scale=60,
        rate_per_stream_hz=100,
    )
    async with client_from("127.0.0.76") as client:
        ws = await client.ws_connect(mx.url + "/")
        started = time.monotonic()
        await ws.send_str(coinbase.build_heartbeats_subscribe())
        code = await wait_closed(ws, timeout_s=4)
        closed = time.monotonic() - started
    assert code == 1001
    assert 0.8 < closed < 2.5, "60 s at scale 60"
