"""Real exchange client libraries read, through one pod of a three-pod fleet, streams that the
other two pods hold (issue 12): OKX and Bybit fleets relaying to each other, ccxt pro and
pybit pointed at pod 0 by URL only, every message parsed by the library itself, each stream
subscribed upstream exactly once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from client_libs import bounded_in_daemon_thread, pybit_client
from relay_fleet import start_fleet, upstream_streams

pytestmark = pytest.mark.slow

WATCH_S = 20.0

OKX_HELD = [
    ["trades:BTC-USDT", "tickers:BTC-USDT"],
    ["trades:ETH-USDT", "tickers:ETH-USDT"],
    ["books:BTC-USDT", "books:ETH-USDT"],
]
BYBIT_HELD = [
    ["publicTrade.BTCUSDT", "tickers.BTCUSDT"],
    ["publicTrade.ETHUSDT", "tickers.ETHUSDT"],
    ["kline.1.ETHUSDT", "orderbook.50.ETHUSDT"],
]


def _ws_base(gateway: Any) -> str:
    return gateway.base_url.replace("http://", "ws://")


async def _trades_tickers_and_book(exchange: Any, book_symbol: str) -> None:
    """ccxt's own parsers: trades and tickers of both symbols, one order book (from its
    snapshot; ccxt checks OKX's checksums)."""
    for symbol in ("BTC/USDT", "ETH/USDT"):
        trades = await asyncio.wait_for(exchange.watch_trades(symbol), WATCH_S)
        assert trades and trades[-1]["symbol"] == symbol and trades[-1]["price"] > 0
        ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), WATCH_S)
        assert ticker["symbol"] == symbol and ticker["last"] is not None
    book = await asyncio.wait_for(exchange.watch_order_book(book_symbol), WATCH_S)
    assert book["bids"] and book["asks"] and book["bids"][0][0] < book["asks"][0][0]


async def test_ccxt_pro_okx_reads_every_pods_streams_through_pod_0(harness, tmp_path):
    gateways = await start_fleet(harness, tmp_path, OKX_HELD, profile="okx")
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = harness.mock.http_url
    exchange.urls["api"]["ws"] = _ws_base(gateways[0]) + "/ws/v5"
    try:
        await _trades_tickers_and_book(exchange, "ETH/USDT")
    finally:
        await exchange.close()
    assert upstream_streams(harness) == sorted(s for held in OKX_HELD for s in held)
    harness.assert_no_violation()


async def test_ccxt_pro_bybit_reads_every_pods_streams_through_pod_0(harness, tmp_path):
    gateways = await start_fleet(harness, tmp_path, BYBIT_HELD, profile="bybit")
    exchange = ccxtpro.bybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = harness.mock.http_url
    exchange.urls["api"]["ws"]["public"]["spot"] = _ws_base(gateways[0]) + "/v5/public/spot"
    try:
        await _trades_tickers_and_book(exchange, "ETH/USDT")
        candles = await asyncio.wait_for(exchange.watch_ohlcv("ETH/USDT", "1m"), WATCH_S)
        assert candles and len(candles[-1]) == 6
    finally:
        await exchange.close()
    assert upstream_streams(harness) == sorted(s for held in BYBIT_HELD for s in held)
    harness.assert_no_violation()


async def test_pybit_reads_every_pods_streams_through_pod_0(harness, tmp_path):
    gateways = await start_fleet(harness, tmp_path, BYBIT_HELD, profile="bybit")
    url = _ws_base(gateways[0]) + "/v5/public/spot"
    topics = ["publicTrade.BTCUSDT", "publicTrade.ETHUSDT", "tickers.ETHUSDT"]
    got: dict[str, list[dict]] = {t: [] for t in topics}
    every = threading.Event()

    def on_message(message: dict) -> None:
        got.setdefault(message["topic"], []).append(message)
        if all(got[t] for t in topics):
            every.set()

    ws = await asyncio.to_thread(pybit_client, url)
    try:
        await asyncio.to_thread(ws.trade_stream, ["BTCUSDT", "ETHUSDT"], on_message)
        await asyncio.to_thread(ws.ticker_stream, "ETHUSDT", on_message)
        assert await asyncio.to_thread(every.wait, WATCH_S), {t: len(v) for t, v in got.items()}
    finally:
        bounded_in_daemon_thread(ws.exit, 10.0)
    assert got["publicTrade.ETHUSDT"][0]["data"][0]["s"] == "ETHUSDT"
    assert upstream_streams(harness) == sorted(s for held in BYBIT_HELD for s in held)
    harness.assert_no_violation()
