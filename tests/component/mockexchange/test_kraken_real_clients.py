"""ccxt's async pro Kraken client (WebSocket v2 for public data) pointed at the mock exchange
by URL only: it loads the market list from the mock's REST (``/0/public/Assets`` and
``/0/public/AssetPairs``), subscribes in Kraken's protocol and parses what the mock sends into
its unified trades, ticker, candles and order book without error."""

from __future__ import annotations

import asyncio

import ccxt.pro as ccxtpro
import pytest

pytestmark = pytest.mark.slow

WATCH_S = 10.0


async def test_ccxt_pro_kraken_watches_trades_ticker_candles_and_the_book_on_the_mock(
    start_mock,
) -> None:
    mx = await start_mock("kraken", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    exchange = ccxtpro.kraken()
    exchange.urls["api"]["ws"]["publicV2"] = mx.url + "/v2"
    exchange.urls["api"]["public"] = mx.http_url
    exchange.urls["api"]["private"] = "http://127.0.0.1:9"  # a closed port: nothing leaves
    markets = await asyncio.wait_for(exchange.load_markets(), WATCH_S)
    assert {"BTC/USD", "ETH/USD", "ETH/BTC"} <= set(markets)
    assert markets["BTC/USD"]["id"] == "XXBTZUSD" and markets["BTC/USD"]["active"]
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USD"), WATCH_S)
        trade = trades[-1]
        assert trade["symbol"] == "BTC/USD" and trade["price"] > 0 and trade["amount"] > 0
        assert trade["side"] in ("buy", "sell") and trade["timestamp"] is not None
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USD"), WATCH_S)
        assert ticker["symbol"] == "ETH/USD" and ticker["bid"] < ticker["ask"]
        assert None not in (ticker["last"], ticker["high"], ticker["low"], ticker["baseVolume"])
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USD", "5m"), WATCH_S)
        start, open_, high, low, close, volume = candles[-1]
        assert start % 300_000 == 0 and low <= min(open_, close) <= max(open_, close) <= high
        assert volume > 0
        for _ in range(30):  # the snapshot, then updates merged by ccxt
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USD", 25), WATCH_S)
        bids, asks = book["bids"], book["asks"]
        assert 10 < len(bids) <= 25 and 10 < len(asks) <= 25
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0][0] < asks[0][0]
    finally:
        await exchange.close()
    assert mx.violations() == []
