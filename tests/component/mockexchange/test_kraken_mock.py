"""Kraken spot WebSocket v2 on the mock: acks per symbol, pings, heartbeats, complete payloads,
books whose checksum verifies, and every limit of the kraken profile one under / one over."""

from __future__ import annotations

import json
import time

from mockexchange_clients import client_from, receive_text, receive_until, wait_closed

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import kraken
from connquota.exchanges.dialects.base import Ack, Data, Error, Notice, Pong
from connquota.exchanges.orderbook import L2Book

CONNECTION = LimitScope.CONNECTION
TRADE_FIELDS = {"symbol", "side", "price", "qty", "ord_type", "trade_id", "timestamp"}
TICKER_FIELDS = {"symbol", "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low",
                 "high", "change", "change_pct"}  # fmt: skip
OHLC_FIELDS = {"symbol", "open", "high", "low", "close", "trades", "volume", "vwap",
               "interval_begin", "interval", "timestamp"}  # fmt: skip


def _is(kind: str):
    return lambda m: isinstance(m, dict) and m.get("channel") == kind


async def test_status_on_connect_ping_pong_and_an_ack_per_symbol(start_mock) -> None:
    mx = await start_mock("kraken", limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.50") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        status = json.loads(await receive_text(ws))
        assert status["channel"] == "status" and status["type"] == "update"
        assert set(status["data"][0]) == {"api_version", "connection_id", "system", "version"}
        assert status["data"][0]["system"] == "online"
        await ws.send_str(kraken.build_ping(101))
        pong = json.loads(await receive_text(ws))
        assert pong["method"] == "pong" and pong["req_id"] == 101
        assert {"time_in", "time_out"} <= set(pong)
        assert isinstance(kraken.parse_server_message(json.dumps(pong)), Pong)
        await ws.send_str(kraken.build_subscribe(["ticker:BTC/USD", "ticker:XBT-USD"], 7))
        frames = await receive_until(
            ws, lambda m: isinstance(m, dict) and m.get("req_id") == 7 and "error" in m
        )
        acks = [kraken.parse_server_message(json.dumps(f)) for f in frames if "method" in f]
        assert [a.streams for a in acks if isinstance(a, Ack)] == [("ticker:BTC/USD",)]
        (error,) = [a for a in acks if isinstance(a, Error)]
        assert error.request_id == 7 and error.raw["symbol"] == "XBT-USD"
        assert error.msg == "Currency pair not supported XBT-USD"
        await ws.send_str(kraken.build_unsubscribe(["ticker:BTC/USD", "ticker:ETH/USD"], 8))
        frames = await receive_until(ws, lambda m: isinstance(m, dict) and "error" in m)
        answers = [f for f in frames if f.get("req_id") == 8]
        assert answers[0]["result"] == {"channel": "ticker", "symbol": "BTC/USD"}
        assert answers[-1]["success"] is False and answers[-1]["symbol"] == "ETH/USD"
        await ws.send_str('{"method":"subscribe","params":{"channel":"book","symbol":["A/B"],'
                          '"depth":7},"req_id":9}')  # fmt: skip
        bad = await receive_until(ws, lambda m: isinstance(m, dict) and m.get("req_id") == 9)
        assert bad[-1]["success"] is False and bad[-1]["error"] == kraken.MALFORMED
        assert not ws.closed, "a refused request keeps the connection"
        await ws.close()
    assert mx.violations() == []


async def test_heartbeat_once_a_second_without_other_updates_once_subscribed(start_mock) -> None:
    mx = await start_mock("kraken", rate_per_stream_hz=0.01, time_scale=10)
    async with client_from("127.0.0.51") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        await ws.send_str(kraken.build_subscribe(["trade:BTC/USD"], 1))
        started = time.monotonic()
        beats = []
        while len(beats) < 3:
            frames = await receive_until(ws, _is("heartbeat"), timeout_s=2)
            beats.append(time.monotonic())
            assert frames[-1] == {"channel": "heartbeat"}
            assert isinstance(kraken.parse_server_message(kraken.HEARTBEAT), Notice)
        assert beats[-1] - started < 1.5, "1 s at scale 10: about one heartbeat per 0.1 s"
        await ws.close()


async def test_every_channel_carries_its_documented_fields(start_mock) -> None:
    mx = await start_mock("kraken", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    streams = ["trade:BTC/USD", "ticker:BTC/USD", "ohlc.5:BTC/USD"]
    async with client_from("127.0.0.52") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        for n, stream in enumerate(streams):
            await ws.send_str(kraken.build_subscribe([stream], n + 1))
        seen: dict[str, list[dict]] = {}
        while any(len(seen.get(s, [])) < 3 for s in streams):
            event = kraken.parse_server_message(await receive_text(ws))
            if isinstance(event, Data):
                seen.setdefault(event.stream, []).append(event.payload)
        await ws.close()
    for stream, fields in zip(streams, (TRADE_FIELDS, TICKER_FIELDS, OHLC_FIELDS), strict=True):
        first, *rest = seen[stream]
        assert first["type"] == "snapshot" and {m["type"] for m in rest} == {"update"}
        for message in seen[stream]:
            (item,) = message["data"]
            assert fields <= set(item), f"{stream}: {fields - set(item)} missing"
            assert item["symbol"] == "BTC/USD"
            assert kraken.parse_time_ms(item["timestamp"]) is not None
    trades = [m["data"][0]["trade_id"] for m in seen["trade:BTC/USD"]]
    assert trades == list(range(trades[0], trades[0] + len(trades))), "trade_id is sequential"
    candle = seen["ohlc.5:BTC/USD"][-1]["data"][0]
    assert candle["interval"] == 5
    begin = kraken.parse_time_ms(candle["interval_begin"])
    assert begin is not None and begin % 300_000 == 0
    assert candle["low"] <= min(candle["open"], candle["close"]) <= candle["high"]


async def _merged_book(ws, stream: str, updates: int) -> tuple[L2Book, int]:
    """Merge the snapshot and ``updates`` updates as Kraken documents it, checking every
    checksum against the merged top 10 of each side."""
    book, checked, depth = L2Book(), 0, kraken.stream_parts(stream)[2]
    while checked <= updates:
        text = await receive_text(ws)
        message = kraken.loads_exact(text)
        if message.get("channel") != "book":
            continue
        (item,) = message["data"]
        if message["type"] == "snapshot":
            assert checked == 0, "one snapshot, first"
            book.clear()
        book.apply(kraken.levels_of(item["bids"]), kraken.levels_of(item["asks"]))
        assert len(book.bids) <= depth and len(book.asks) <= depth
        bids, asks = book.sorted_bids(), book.sorted_asks()
        assert float(bids[0][0]) < float(asks[0][0]), "the book never crosses"
        assert kraken.book_checksum(bids, asks) == int(item["checksum"])
        checked += 1
    return book, checked


async def test_books_open_with_a_snapshot_and_every_update_checksum_verifies(start_mock) -> None:
    mx = await start_mock("kraken", rate_per_stream_hz=50, limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.53") as client:
        for stream in ("book:BTC/USD", "book.25:ETH/USD"):
            ws = await client.ws_connect(mx.url + "/v2")
            await ws.send_str(kraken.build_subscribe([stream], 1))
            ack = await receive_until(ws, lambda m: isinstance(m, dict) and "result" in m)
            assert ack[-1]["result"]["depth"] == kraken.stream_parts(stream)[2]
            _, checked = await _merged_book(ws, stream, 60)
            assert checked == 61
            await ws.close()


async def test_the_documented_checksum_example() -> None:
    # https://docs.kraken.com/api/docs/guides/spot-ws-book-v2 (docs/exchange-dialects.md 6.4)
    bids = [["45283.5", "0.10000000"], ["45283.4", "1.54582015"], ["45282.1", "0.10000000"],
            ["45281.0", "0.10000000"], ["45280.3", "1.54592586"], ["45279.0", "0.07990000"],
            ["45277.6", "0.03310103"], ["45277.5", "0.30000000"], ["45277.3", "1.54602737"],
            ["45276.6", "0.15445238"]]  # fmt: skip
    asks = [["45285.2", "0.00100000"], ["45286.4", "1.54571953"], ["45286.6", "1.54571109"],
            ["45289.6", "1.54560911"], ["45290.2", "0.15890660"], ["45291.8", "1.54553491"],
            ["45294.7", "0.04454749"], ["45296.1", "0.35380000"], ["45297.5", "0.09945542"],
            ["45299.5", "0.18772827"]]  # fmt: skip
    assert kraken.checksum_string(bids, asks[:1])[:12] == "452852100000"
    assert kraken.book_checksum(bids, asks) == 3310070434
    corrupted = [["45283.5", "0.20000000"], *bids[1:]]
    assert kraken.book_checksum(corrupted, asks) != 3310070434


async def test_message_rate_at_the_limit_passes_and_one_more_gets_exceeded_msg_rate(
    start_mock,
) -> None:
    mx = await start_mock("kraken", limits=["messagesPerConnection=3/30"])
    async with client_from("127.0.0.54") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        await receive_until(ws, _is("status"))
        for n in range(3):
            await ws.send_str(kraken.build_ping(n))
            assert json.loads(await receive_text(ws))["method"] == "pong"
        assert mx.violations() == []
        await ws.send_str(kraken.build_ping(4))
        reply = json.loads(await receive_text(ws))
        assert reply == {"Error": "Exceeded msg rate"}
        assert isinstance(kraken.parse_server_message(json.dumps(reply)), Error)
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["messagesPerConnection"]
    assert mx.peak(LimitName.MESSAGES_PER_CONNECTION, CONNECTION) == 4


async def test_max_connection_age_closes_at_the_limit(start_mock) -> None:
    mx = await start_mock(
        "kraken",
        limits=["maxConnectionAge=60", "messagesPerConnection=50/1"],
        time_scale=60,
        rate_per_stream_hz=100,  # data keeps the scaled idle rule (10 s: 0.17 s) from closing it
    )
    async with client_from("127.0.0.55") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        started = time.monotonic()
        await ws.send_str(kraken.build_subscribe(["trade:BTC/USD"], 1))
        code = await wait_closed(ws, timeout_s=4)
        closed = time.monotonic() - started
    assert code == 1001
    assert 0.8 < closed < 2.5, "60 s at scale 60"


async def test_public_rest_lists_assets_and_pairs_in_krakens_envelope(start_mock) -> None:
    mx = await start_mock("kraken", limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.56") as client:
        ws = await client.ws_connect(mx.url + "/v2")
        await ws.send_str(kraken.build_subscribe(["trade:DOT/USD"], 1))
        await receive_until(ws, lambda m: isinstance(m, dict) and "result" in m)
        async with client.get(mx.http_url + "/0/public/AssetPairs") as resp:
            pairs = await resp.json()
        async with client.get(mx.http_url + "/0/public/AssetPairs?pair=XBTUSD") as resp:
            one = await resp.json()
        async with client.get(mx.http_url + "/0/public/AssetPairs?pair=NOPE") as resp:
            unknown = await resp.json()
        async with client.get(mx.http_url + "/0/public/Assets") as resp:
            assets = await resp.json()
        async with client.get(mx.http_url + "/0/public/Time") as resp:
            now = await resp.json()
        await ws.close()
    assert pairs["error"] == []
    btc = pairs["result"]["XXBTZUSD"]
    assert (btc["altname"], btc["wsname"], btc["base"], btc["quote"]) == (
        "XBTUSD",
        "XBT/USD",
        "XXBT",
        "ZUSD",
    )
    assert {"lot_decimals", "pair_decimals", "fees", "fees_maker", "ordermin", "costmin",
            "tick_size", "status"} <= set(btc)  # fmt: skip
    assert "DOTUSD" in pairs["result"], "a pair some connection subscribed to is listed"
    assert list(one["result"]) == ["XXBTZUSD"]
    assert unknown == {"error": ["EQuery:Unknown asset pair"], "result": {}}
    assert assets["result"]["XXBT"]["altname"] == "XBT"
    assert abs(now["result"]["unixtime"] - time.time()) < 5
    assert mx.violations() == []
