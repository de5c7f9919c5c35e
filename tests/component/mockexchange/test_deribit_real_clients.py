"""ccxt's async pro Deribit client pointed at the mock exchange by URL only (its market list set
on the client: the mock serves no Deribit REST): it subscribes in Deribit's JSON-RPC protocol and
parses what the mock sends into its unified trades, ticker, candles and order book without
error."""

from __future__ import annotations

import asyncio

import ccxt.pro as ccxtpro
import pytest

pytestmark = pytest.mark.slow

WATCH_S = 10.0
MARKET = {
    "id": "BTC-PERPETUAL", "symbol": "BTC/USD:BTC", "base": "BTC", "quote": "USD", "settle": "BTC",
    "baseId": "BTC", "quoteId": "USD", "settleId": "BTC", "type": "swap", "spot": False,
    "margin": False, "swap": True, "future": False, "option": False, "contract": True,
    "linear": False, "inverse": True, "active": True, "contractSize": 10.0,
    "precision": {"amount": 10.0, "price": 0.5}, "limits": {}, "info": {},
}  # fmt: skip


async def test_ccxt_pro_deribit_watches_trades_ticker_candles_and_the_book_on_the_mock(
    start_mock,
) -> None:
    mx = await start_mock("deribit", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    exchange = ccxtpro.deribit()
    exchange.urls["api"]["ws"] = mx.url + "/ws/api/v2"
    exchange.urls["api"]["rest"] = "http://127.0.0.1:9"  # a closed port: nothing leaves
    exchange.set_markets([MARKET])
    symbol = "BTC/USD:BTC"
    try:
        trades = await asyncio.wait_for(exchange.watch_trades(symbol), WATCH_S)
        trade = trades[-1]
        assert trade["symbol"] == symbol and trade["price"] > 0 and trade["amount"] > 0
        assert trade["side"] in ("buy", "sell") and trade["timestamp"] is not None
        ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), WATCH_S)
        assert ticker["symbol"] == symbol and ticker["bid"] < ticker["ask"]
        assert None not in (ticker["last"], ticker["high"], ticker["low"])
        candles = await asyncio.wait_for(exchange.watch_ohlcv(symbol, "1m"), WATCH_S)
        start, open_, high, low, close, volume = candles[-1]
        assert start % 60_000 == 0 and low <= min(open_, close) <= max(open_, close) <= high
        assert volume > 0
        for _ in range(30):  # the snapshot, then changes merged by ccxt
            book = await asyncio.wait_for(exchange.watch_order_book(symbol), WATCH_S)
        bids, asks = book["bids"], book["asks"]
        assert len(bids) > 5 and len(asks) > 5
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0][0] < asks[0][0]
    finally:
        await exchange.close()
    assert mx.violations() == []
