"""Binance USD-M futures on the mock (issue 15): one test per documented difference from spot
(docs/exchange-dialects.md section 2): its own host and limit domain, the /public and /market
routes (legacy paths retired), futures stream names, unsigned-integer request ids, 10 incoming
messages per second, a server ping every 3 minutes with a 10-minute pong deadline, depth diffs
with `pu` and REST `/fapi/v1/*`."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from mockexchange_clients import client_from, handshake, receive_text, wait_closed

from connquota.api.limits import LimitName
from connquota.exchanges import get_profile
from connquota.exchanges.orderbook import L2Book
from connquota.mockexchange import MockExchange, MockSettings

StartMock = Callable[..., Awaitable[MockExchange]]


@pytest.fixture
async def start_usdm() -> AsyncIterator[StartMock]:
    """``await start_usdm(time_scale=.., rate_per_stream_hz=..)``: a USD-M mock (or spot's with
    ``profile="binance-spot"``), stopped after the test."""
    started: list[MockExchange] = []

    async def start(profile: str = "binance-usdm", **settings: Any) -> MockExchange:
        mx = MockExchange(get_profile(profile), "127.0.0.1", 0, settings=MockSettings(**settings))
        await mx.start()
        started.append(mx)
        return mx

    yield start
    for mx in started:
        await mx.stop()


async def _data(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < count:
        frame = json.loads(await receive_text(ws))
        if "result" not in frame and "error" not in frame:
            out.append(frame)
    return out


def test_usdm_is_its_own_host_and_limit_domain_with_its_own_limits() -> None:
    spot, usdm = get_profile("binance-spot"), get_profile("binance-usdm")
    assert usdm.domain == "fstream.binance.com" != spot.domain  # separate budgets
    assert usdm.endpoint == "wss://fstream.binance.com/market/stream"
    messages = LimitName.MESSAGES_PER_CONNECTION
    assert usdm.limit(messages).value == 10  # type: ignore[union-attr]  (spot: 5)
    assert spot.limit(messages).value == 5  # type: ignore[union-attr]
    assert (usdm.heartbeat.intervalSeconds, usdm.heartbeat.timeoutSeconds) == (180, 600)
    assert (spot.heartbeat.intervalSeconds, spot.heartbeat.timeoutSeconds) == (20, 60)


async def test_market_data_is_served_under_public_and_market_and_legacy_paths_are_retired(
    start_usdm,
) -> None:
    mx = await start_usdm(rate_per_stream_hz=20)
    spot = await start_usdm("binance-spot")
    async with client_from("127.0.0.70") as client:
        assert (await handshake(client, mx.url + "/stream?streams=btcusdt@aggTrade"))[0] == 404
        assert (await handshake(client, mx.url + "/ws/btcusdt@aggTrade"))[0] == 404
        assert (await handshake(client, mx.url + "/market"))[0] == 404
        assert (await handshake(client, spot.url + "/market/stream"))[0] == 404
        market = await client.ws_connect(mx.url + "/market/stream?streams=btcusdt@aggTrade")
        public = await client.ws_connect(mx.url + "/public/ws/btcusdt@depth@100ms")
        [trade] = await _data(market, 1)
        [depth] = await _data(public, 1)
        assert trade["stream"] == "btcusdt@aggTrade" and trade["data"]["e"] == "aggTrade"
        assert "M" not in trade["data"]  # the futures aggTrade has no "M"
        assert depth["e"] == "depthUpdate"
        await market.close()
        await public.close()


async def test_a_stream_on_the_wrong_route_is_acknowledged_and_never_delivers(start_usdm) -> None:
    mx = await start_usdm(rate_per_stream_hz=50)
    async with client_from("127.0.0.71") as client:
        ws = await client.ws_connect(mx.url + "/market/stream")
        await ws.send_str(
            '{"method":"SUBSCRIBE","params":["btcusdt@depth","btcusdt@aggTrade"],"id":1}'
        )
        assert json.loads(await receive_text(ws)) == {"result": None, "id": 1}
        frames = await _data(ws, 30)
        await ws.close()
    assert {f["stream"] for f in frames} == {"btcusdt@aggTrade"}


async def test_futures_stream_names_and_payloads(start_usdm) -> None:
    mx = await start_usdm(rate_per_stream_hz=20)
    streams = ["btcusdt@markPrice", "ethusdt@markPrice@1s", "btcusdt@forceOrder",
               "!markPrice@arr", "!markPrice@arr@1s", "!forceOrder@arr"]  # fmt: skip
    async with client_from("127.0.0.72") as client:
        ws = await client.ws_connect(mx.url + "/market/stream?streams=" + "/".join(streams))
        by_stream: dict[str, Any] = {}
        while len(by_stream) < len(streams):
            frame = json.loads(await receive_text(ws))
            by_stream[frame["stream"]] = frame["data"]
        # spot-only names are refused on USD-M
        for rid, spot_only in enumerate(["btcusdt@avgPrice", "btcusdt@kline_1s",
                                         "btcusdt@ticker_1h"], start=10):  # fmt: skip
            await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": [spot_only], "id": rid}))
            reply = [f for f in await _replies(ws) if f.get("id") == rid]
            assert reply == [{"error": {"code": 2, "msg": "Invalid request: invalid stream"},
                              "id": rid}]  # fmt: skip
        await ws.close()
    mark = by_stream["btcusdt@markPrice"]
    assert set(mark) == {"e", "E", "s", "p", "i", "P", "r", "T"} and mark["e"] == "markPriceUpdate"
    assert by_stream["ethusdt@markPrice@1s"]["s"] == "ETHUSDT"
    liquidation = by_stream["btcusdt@forceOrder"]
    assert liquidation["e"] == "forceOrder" and liquidation["o"]["s"] == "BTCUSDT"
    for name in ("!markPrice@arr", "!markPrice@arr@1s"):
        assert isinstance(by_stream[name], list) and by_stream[name][0]["e"] == "markPriceUpdate"
    assert by_stream["!forceOrder@arr"]["e"] == "forceOrder"
    # and futures-only names are refused on spot
    spot = await start_usdm("binance-spot")
    async with client_from("127.0.0.72") as client:
        ws = await client.ws_connect(spot.url + "/ws")
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@markPrice"],"id":1}')
        assert json.loads(await receive_text(ws))["error"]["code"] == 2
        await ws.close()


async def _replies(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Frames up to and including the next reply (result or error)."""
    out = []
    while True:
        frame = json.loads(await receive_text(ws))
        out.append(frame)
        if "result" in frame or "error" in frame:
            return out


async def test_request_ids_are_unsigned_integers_on_usdm_only(start_usdm) -> None:
    mx = await start_usdm()
    spot = await start_usdm("binance-spot")
    unsigned = {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned "
                          "integer"}, "id": None}  # fmt: skip
    async with client_from("127.0.0.73") as client:
        ws = await client.ws_connect(mx.url + "/market/ws")
        for rid in ('"abc"', "-1", "null"):
            await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{rid}}}')
            assert json.loads(await receive_text(ws)) == unsigned
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":7}')
        assert json.loads(await receive_text(ws)) == {"result": [], "id": 7}
        await ws.close()
        ws = await client.ws_connect(spot.url + "/ws")
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":"abc"}')
        assert json.loads(await receive_text(ws)) == {"result": [], "id": "abc"}
        await ws.close()


async def test_ten_incoming_messages_per_second_then_the_connection_is_closed(start_usdm) -> None:
    mx = await start_usdm()
    async with client_from("127.0.0.74") as client:
        ws = await client.ws_connect(mx.url + "/market/ws")
        for rid in range(10):  # 10 within a second: all answered (spot would close at 6)
            await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{rid}}}')
        for rid in range(10):
            assert json.loads(await receive_text(ws)) == {"result": [], "id": rid}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":10}')
        assert await wait_closed(ws) == 1008
    [violation] = mx.violations()
    assert violation.to_json()["limit"] == "messagesPerConnection"


async def test_server_pings_every_3_minutes_and_drops_after_10_without_pong(start_usdm) -> None:
    scale = 600.0  # 180 s -> 0.3 s, 600 s -> 1 s
    mx = await start_usdm(time_scale=scale)
    async with client_from("127.0.0.75") as client:
        ws = await client.ws_connect(mx.url + "/market/ws", autoping=False)
        started = time.monotonic()
        pings: list[float] = []
        while not ws.closed and time.monotonic() - started < 5:
            msg = await ws.receive(timeout=5)
            if msg.type == aiohttp.WSMsgType.PING:
                pings.append(time.monotonic())
        lived = time.monotonic() - started
        assert ws.close_code == 1000 and 0.9 < lived < 2.0  # 600 s / 600 without a pong
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert gaps and all(0.25 < g < 0.45 for g in gaps)  # 180 s / 600
        assert 0.25 < pings[0] - started < 0.45
        # answered pings keep a connection well past the pong deadline
        kept = await client.ws_connect(mx.url + "/market/ws", autoping=True)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            await kept.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
            assert json.loads(await receive_text(kept)) == {"result": [], "id": 1}
            await asyncio.sleep(0.2)
        assert not kept.closed
        await kept.close()


async def test_depth_diffs_chain_by_pu_and_rest_fapi_depth_rebuilds_the_book(start_usdm) -> None:
    mx = await start_usdm(rate_per_stream_hz=40)
    async with client_from("127.0.0.76") as client:
        async with client.get(f"{mx.http_url}/fapi/v1/depth?symbol=BTCUSDT&limit=7") as r:
            assert r.status == 400 and (await r.json())["code"] == -1100  # not a valid limit
        ws = await client.ws_connect(mx.url + "/public/ws/btcusdt@depth@500ms")
        buffered = await _data(ws, 3)
        async with client.get(f"{mx.http_url}/fapi/v1/depth?symbol=BTCUSDT&limit=1000") as r:
            snapshot = await r.json()
        assert {"lastUpdateId", "E", "T", "bids", "asks"} == set(snapshot)
        last_id = snapshot["lastUpdateId"]
        assert last_id >= buffered[0]["U"]
        # USD-M: drop events with u < lastUpdateId; the first has U <= lastUpdateId <= u;
        # then each event's pu is the previous event's u
        while buffered[-1]["u"] < last_id:
            buffered += await _data(ws, 1)
        kept = [e for e in buffered if e["u"] >= last_id]
        assert kept[0]["U"] <= last_id + 1 and kept[0]["u"] >= last_id
        book = L2Book()
        book.apply(snapshot["bids"], snapshot["asks"])
        events = kept + await _data(ws, 40)
        previous = None
        for event in events:
            assert set(event) == {"e", "E", "T", "s", "U", "u", "pu", "b", "a"}
            if previous is not None:
                assert event["pu"] == previous["u"] and event["U"] == previous["u"] + 1
            if event["u"] > last_id:
                book.apply(event["b"], event["a"])
            previous = event
        mock = mx.books.binance("BTCUSDT")
        while mock.update_id != previous["u"]:
            event = json.loads(await receive_text(ws))
            assert event["pu"] == previous["u"]
            book.apply(event["b"], event["a"])
            previous = event
        assert book.bids == mock.book.bids and book.asks == mock.book.asks
        # partial depth on USD-M is depthUpdate-shaped, with pu
        partial = await client.ws_connect(mx.url + "/public/ws/ethusdt@depth5@100ms")
        [top] = await _data(partial, 1)
        assert top["e"] == "depthUpdate" and "pu" in top and len(top["b"]) == len(top["a"]) == 5
        await partial.close()
        await ws.close()
        async with client.get(f"{mx.http_url}/fapi/v1/exchangeInfo") as r:
            info = await r.json()
        assert info["futuresType"] == "U_MARGINED"
        assert {"BTCUSDT", "ETHUSDT"} <= {s["symbol"] for s in info["symbols"]}
        async with client.get(f"{mx.http_url}/fapi/v1/time") as r:
            assert abs((await r.json())["serverTime"] - time.time() * 1000) < 5000


def test_the_dialect_names_the_route_that_serves_a_channel() -> None:
    """`binance.endpoint_refusal`, for the planner's endpoint rules: what the mock does on the
    wrong route (acknowledged, no data) said before a stream is placed."""
    from connquota.exchanges.dialects import binance

    assert binance.channel_of("btcusdt@depth@100ms") == "depth@100ms"
    assert binance.channel_of("!markPrice@arr") == "!markPrice@arr"
    assert binance.endpoint_refusal("/market/stream", "aggTrade") is None
    assert binance.endpoint_refusal("/public/stream", "depth@100ms") is None
    assert binance.endpoint_refusal("/public/stream", "bookTicker") is None
    assert binance.endpoint_refusal("/stream", "depth") is None  # spot: no routes
    reason = binance.endpoint_refusal("/market/stream", "depth@100ms")
    assert reason is not None and "/public" in reason
    reason = binance.endpoint_refusal("/public/stream", "!markPrice@arr")
    assert reason is not None and "/market" in reason
