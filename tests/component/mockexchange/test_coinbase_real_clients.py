"""ccxt's async pro Coinbase client (Advanced Trade WebSocket, public channels) pointed at the
mock exchange by URL only: it subscribes one channel per message in Coinbase's protocol and
parses what the mock sends (market_trades, ticker, l2_data snapshot then updates, heartbeats,
subscriptions) into its unified trades, ticker and order book without error. The mock serves
no Coinbase REST yet: the market list is set on the client (no network)."""

from __future__ import annotations

import asyncio

import ccxt.pro as ccxtpro
import pytest

pytestmark = pytest.mark.slow

WATCH_S = 10.0


def _market(base: str, quote: str) -> dict:
    return {
        "id": f"{base}-{quote}", "symbol": f"{base}/{quote}", "base": base, "quote": quote,
        "baseId": base, "quoteId": quote, "type": "spot", "spot": True, "margin": False,
        "swap": False, "future": False, "option": False, "contract": False, "active": True,
        "precision": {"amount": 1e-8, "price": 0.01}, "limits": {}, "info": {},
    }  # fmt: skip


async def test_ccxt_pro_coinbase_watches_trades_ticker_and_the_book_on_the_mock(
    start_mock,
) -> None:
    mx = await start_mock("coinbase", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    exchange = ccxtpro.coinbase()
    exchange.urls["api"]["ws"] = mx.url + "/"
    exchange.urls["api"]["rest"] = "http://127.0.0.1:9"  # a closed port: nothing leaves
    exchange.set_markets([_market("BTC", "USD"), _market("ETH", "USD")])
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USD"), WATCH_S)
        trade = trades[-1]
        assert trade["symbol"] == "BTC/USD" and trade["price"] > 0 and trade["amount"] > 0
        assert trade["side"] in ("buy", "sell") and trade["timestamp"] is not None
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USD"), WATCH_S)
        assert ticker["symbol"] == "ETH/USD" and ticker["bid"] < ticker["ask"]
        assert None not in (ticker["last"], ticker["high"], ticker["low"], ticker["baseVolume"])
        for _ in range(30):  # the snapshot, then updates merged by ccxt
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USD"), WATCH_S)
        bids, asks = book["bids"], book["asks"]
        assert len(bids) > 10 and len(asks) > 10
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
        assert bids[0][0] < asks[0][0]
    finally:
        await exchange.close()
    assert mx.violations() == []
