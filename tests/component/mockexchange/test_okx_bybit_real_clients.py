"""ccxt pro reads the mock's OKX tickers and Bybit klines directly and finds in them what it
reads from the exchange: best bid/ask with sizes and the 24 h range (OKX), bars with prices
(Bybit)."""

from __future__ import annotations

import asyncio

import ccxt.pro as ccxtpro
import pytest

pytestmark = pytest.mark.slow

WATCH_S = 20.0


async def test_ccxt_pro_okx_watch_ticker_has_bid_ask_and_the_24h_range(start_mock) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=10)
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = mx.http_url
    exchange.urls["api"]["ws"] = mx.url + "/ws/v5"
    try:
        ticker = await asyncio.wait_for(exchange.watch_ticker("BTC/USDT"), WATCH_S)
    finally:
        await exchange.close()
    assert ticker["symbol"] == "BTC/USDT"
    assert ticker["bid"] <= ticker["last"] <= ticker["ask"], ticker
    assert ticker["bid"] < ticker["ask"], ticker
    assert ticker["bidVolume"] > 0 and ticker["askVolume"] > 0
    assert ticker["low"] <= ticker["bid"] and ticker["ask"] <= ticker["high"]
    assert ticker["open"] > 0 and ticker["baseVolume"] > 0 and ticker["quoteVolume"] > 0


async def test_ccxt_pro_bybit_watch_ohlcv_has_prices(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=10)
    exchange = ccxtpro.bybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = mx.http_url
    exchange.urls["api"]["ws"]["public"]["spot"] = mx.url + "/v5/public/spot"
    try:
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USDT", "5m"), WATCH_S)
    finally:
        await exchange.close()
    start, open_, high, low, close, volume = candles[-1]
    assert start % 300_000 == 0
    assert None not in (open_, high, low, close, volume), candles
    assert low <= min(open_, close) and max(open_, close) <= high and volume > 0
