"""OKX `GET /api/v5/market/books` and Bybit `GET /v5/market/orderbook` on the mock (issue 15):
the REST snapshot reads the book the mock's stream pushes (OKX `books`: ``seqId`` is the last
push's and the next update's ``prevSeqId``; Bybit ``orderbook.<depth>``: ``u``/``seq`` the last
push's), so a book built from a REST snapshot and the stream's later pushes, as each exchange
documents, equals the mock's book; ccxt's REST ``fetch_order_book`` and ccxt pro's
``watch_order_book`` read the same book."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import ccxt.async_support as ccxt_async
import ccxt.pro as ccxtpro
import pytest
from mockexchange_clients import client_from, receive_text

from connquota.exchanges.orderbook import L2Book, Level
from connquota.mockexchange import MockExchange

WATCH_S = 20.0


async def _pushes(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < count:
        frame = json.loads(await receive_text(ws))
        if "data" in frame:
            got.append(frame)
    return got


def _floats(levels: list[Level]) -> list[list[float]]:
    return [[float(level[0]), float(level[1])] for level in levels]


def _price_sizes(levels: list[list[float]]) -> list[list[float]]:
    """ccxt's levels without what it keeps after price and size (OKX: the third field)."""
    return [level[:2] for level in levels]


async def test_okx_rest_snapshot_and_books_updates_rebuild_the_mocks_book(start_mock) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=50)
    stream = "books:BTC-USDT"
    async with client_from("127.0.0.150") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/public")
        arg = {"channel": "books", "instId": "BTC-USDT"}
        await ws.send_str(json.dumps({"op": "subscribe", "args": [arg]}))
        buffered = await _pushes(ws, 3)
        assert buffered[0]["action"] == "snapshot"
        async with client.get(f"{mx.http_url}/api/v5/market/books?instId=BTC-USDT&sz=400") as r:
            assert r.status == 200
            body = await r.json()
        assert body["code"] == "0" and body["msg"] == "" and len(body["data"]) == 1
        snapshot = body["data"][0]
        assert set(snapshot) == {"asks", "bids", "ts", "seqId"}
        assert all(len(level) == 4 and level[2] == "0" for level in snapshot["asks"])
        # OKX's procedure: drop updates up to the snapshot's seqId; the first applied update's
        # prevSeqId is the snapshot's seqId, each later one's the previous seqId
        book = L2Book()
        book.apply(snapshot["bids"], snapshot["asks"])
        last = snapshot["seqId"]
        while buffered[-1]["data"][0]["seqId"] <= last:
            buffered += await _pushes(ws, 1)
        updates = [f["data"][0] for f in buffered if f["data"][0]["seqId"] > last]
        updates += [f["data"][0] for f in await _pushes(ws, 40)]
        for update in updates:
            assert update["prevSeqId"] == last, (update["prevSeqId"], last)
            book.apply(update["bids"], update["asks"])
            assert book.okx_checksum() == update["checksum"]
            last = update["seqId"]
        mock = mx.books.books[stream]
        while mock.seq != last:  # the mock is at most a few pushes ahead
            update = (await _pushes(ws, 1))[0]["data"][0]
            assert update["prevSeqId"] == last
            book.apply(update["bids"], update["asks"])
            last = update["seqId"]
        assert book.bids == mock.book.bids and book.asks == mock.book.asks
        assert len(book.bids) > 10 and len(book.asks) > 10
        await ws.close()


async def test_bybit_rest_snapshot_and_deltas_rebuild_the_mocks_book(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=50)
    stream = "orderbook.50.BTCUSDT"
    async with client_from("127.0.0.151") as client:
        ws = await client.ws_connect(mx.url + "/v5/public/spot")
        await ws.send_str(json.dumps({"op": "subscribe", "args": [stream]}))
        buffered = await _pushes(ws, 3)
        assert buffered[0]["type"] == "snapshot"
        url = f"{mx.http_url}/v5/market/orderbook?category=spot&symbol=BTCUSDT&limit=50"
        async with client.get(url) as r:
            assert r.status == 200
            body = await r.json()
        assert set(body) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
        assert body["retCode"] == 0 and body["retMsg"] == "OK" and body["retExtInfo"] == {}
        snapshot = body["result"]
        assert set(snapshot) == {"s", "b", "a", "ts", "u", "seq", "cts"}
        assert snapshot["s"] == "BTCUSDT"
        # Bybit's procedure: the snapshot, then every delta whose u is above the snapshot's
        book = L2Book()
        book.apply(snapshot["b"], snapshot["a"])
        last = snapshot["u"]
        while buffered[-1]["data"]["u"] <= last:
            buffered += await _pushes(ws, 1)
        deltas = [f for f in buffered if f["data"]["u"] > last] + await _pushes(ws, 40)
        for delta in deltas:
            assert delta["type"] == "delta" and delta["data"]["u"] == last + 1
            book.apply(delta["data"]["b"], delta["data"]["a"])
            last = delta["data"]["u"]
        mock = mx.books.books[stream]
        while mock.seq != last:
            delta = (await _pushes(ws, 1))[0]
            assert delta["data"]["u"] == last + 1
            book.apply(delta["data"]["b"], delta["data"]["a"])
            last = delta["data"]["u"]
        assert book.bids == mock.book.bids and book.asks == mock.book.asks
        assert len(book.bids) > 10 and len(book.asks) > 10
        await ws.close()


async def test_rest_books_validate_their_parameters(start_mock) -> None:
    okx_mx = await start_mock("okx")
    bybit_mx = await start_mock("bybit")
    async with client_from("127.0.0.152") as client:
        async with client.get(f"{okx_mx.http_url}/api/v5/market/books") as r:
            assert (await r.json())["code"] == "50014"
        async with client.get(f"{okx_mx.http_url}/api/v5/market/books?instId=BTC-USDT") as r:
            body = await r.json()
        assert len(body["data"][0]["bids"]) == 1 and len(body["data"][0]["asks"]) == 1  # sz 1
        base = f"{bybit_mx.http_url}/v5/market/orderbook"
        async with client.get(f"{base}?category=spot&symbol=BTCUSDT&limit=201") as r:
            assert (await r.json())["retCode"] == 10001
        async with client.get(f"{base}?category=nope&symbol=BTCUSDT") as r:
            assert (await r.json())["retCode"] == 10001
        async with client.get(f"{base}?category=spot&symbol=BTCUSDT") as r:
            result = (await r.json())["result"]
        assert len(result["b"]) == 1 and len(result["a"]) == 1  # spot's default limit 1
        assert float(result["b"][0][0]) < float(result["a"][0][0])


def _ccxt_urls(exchange: Any, mx: MockExchange, dialect: str) -> None:
    if dialect == "okx":
        exchange.urls["api"]["rest"] = mx.http_url
        if "ws" in exchange.urls["api"]:
            exchange.urls["api"]["ws"] = mx.url + "/ws/v5"
        return
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = mx.http_url
    if "ws" in exchange.urls["api"]:
        exchange.urls["api"]["ws"]["public"]["spot"] = mx.url + "/v5/public/spot"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dialect", "stream"), [("okx", "books:BTC-USDT"), ("bybit", "orderbook.50.BTCUSDT")]
)
async def test_ccxt_fetch_order_book_reads_the_mocks_rest_book(start_mock, dialect, stream) -> None:
    mx = await start_mock(dialect)
    options = {"options": {"fetchMarkets": {"types": ["spot"]}}}
    exchange = getattr(ccxt_async, dialect)(options)
    _ccxt_urls(exchange, mx, dialect)
    try:
        ob = await asyncio.wait_for(exchange.fetch_order_book("BTC/USDT", 50), WATCH_S)
    finally:
        await exchange.close()
    # nobody subscribed: the book stands still, ccxt's copy is the mock's
    mock = mx.books.books[stream]
    assert ob["symbol"] == "BTC/USDT"
    assert _price_sizes(ob["bids"]) == _floats(mock.book.sorted_bids(50))
    assert _price_sizes(ob["asks"]) == _floats(mock.book.sorted_asks(50))
    assert ob["timestamp"] is not None and ob["timestamp"] > 0  # the response's ts
    assert ob["bids"][0][0] < ob["asks"][0][0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dialect", "stream"), [("okx", "books:BTC-USDT"), ("bybit", "orderbook.50.BTCUSDT")]
)
async def test_ccxt_pro_watch_order_book_holds_the_mocks_book(start_mock, dialect, stream) -> None:
    mx = await start_mock(dialect, rate_per_stream_hz=5)
    options = {"options": {"fetchMarkets": {"types": ["spot"]}}}
    exchange = getattr(ccxtpro, dialect)(options)
    _ccxt_urls(exchange, mx, dialect)
    try:
        for _ in range(20):  # the mock may move between ccxt's update and this check
            ob = await asyncio.wait_for(exchange.watch_order_book("BTC/USDT"), WATCH_S)
            mock = mx.books.books[stream]
            bids, asks = _price_sizes(ob["bids"]), _price_sizes(ob["asks"])
            if bids == _floats(mock.book.sorted_bids()) and asks == _floats(
                mock.book.sorted_asks()
            ):
                break
        else:
            raise AssertionError("ccxt pro's book never equalled the mock's")
    finally:
        await exchange.close()
    assert len(ob["bids"]) > 10 and ob["bids"][0][0] < ob["asks"][0][0]


def _clamped(last: str | None, bid: str, ask: str) -> str:
    """The ticker's last the mock documents: the latest trade's price within the best bid and
    ask, else the nearer of them (the best bid when nothing traded)."""
    if last is None or float(last) < float(bid):
        return bid
    return ask if float(last) > float(ask) else last


@pytest.mark.parametrize("dialect", ["okx", "bybit"])
async def test_tickers_and_trades_are_priced_from_the_book(start_mock, dialect) -> None:
    """One connection subscribes to the book, the trades and the tickers of an instrument: every
    ticker's best bid/ask (with sizes) is the book's as last pushed, every trade is at the best
    ask (buy) or bid (sell), and the ticker's last is the latest trade's price."""
    mx = await start_mock(dialect, rate_per_stream_hz=40)
    if dialect == "okx":
        url = mx.url + "/ws/v5/public"
        args: list[Any] = [{"channel": c, "instId": "ETH-USDT"}
                           for c in ("books", "trades", "tickers")]  # fmt: skip
    else:
        url = mx.url + "/v5/public/spot"
        args = ["orderbook.50.ETHUSDT", "publicTrade.ETHUSDT", "tickers.ETHUSDT"]
    book = L2Book()
    last: str | None = None
    tickers = trades = 0
    async with client_from("127.0.0.153" if dialect == "okx" else "127.0.0.154") as client:
        ws = await client.ws_connect(url)
        await ws.send_str(json.dumps({"op": "subscribe", "args": args}))
        while tickers < 30 or trades < 30:
            frame = (await _pushes(ws, 1))[0]
            if dialect == "okx":
                channel, item = frame["arg"]["channel"], frame["data"][0]
                if channel == "books":
                    book.apply(item["bids"], item["asks"])
                    continue
                bid, ask = book.sorted_bids(1)[0], book.sorted_asks(1)[0]
                if channel == "trades":
                    assert item["px"] == (ask[0] if item["side"] == "buy" else bid[0])
                    last, trades = item["px"], trades + 1
                    continue
                assert [item["bidPx"], item["bidSz"]] == bid[:2]
                assert [item["askPx"], item["askSz"]] == ask[:2]
                assert item["last"] == _clamped(last, bid[0], ask[0])
                assert float(item["low24h"]) <= float(item["bidPx"])
                assert float(item["askPx"]) <= float(item["high24h"])
                tickers += 1
                continue
            topic, data = frame["topic"], frame["data"]
            if topic.startswith("orderbook"):
                book.apply(data["b"], data["a"])
                continue
            bid, ask = book.sorted_bids(1)[0], book.sorted_asks(1)[0]
            if topic.startswith("publicTrade"):
                trade = data[0]
                assert trade["p"] == (ask[0] if trade["S"] == "Buy" else bid[0])
                last, trades = trade["p"], trades + 1
                continue
            assert data["lastPrice"] == _clamped(last, bid[0], ask[0])
            assert float(data["lowPrice24h"]) <= float(bid[0])
            assert float(ask[0]) <= float(data["highPrice24h"])
            tickers += 1
        await ws.close()
    assert last is not None
