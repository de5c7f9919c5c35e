"""Binance USD-M futures through a gateway (issue 15): the gateway opens its upstream
connections on the quota's route (`/market/stream` by default, `/public/stream` for book data),
answers the exchange's 3-minute pings, and serves consumers at `/public/ws` and `/market/ws`
as ccxt's binanceusdm opens them; ccxt parses trades, tickers, candles, mark prices and keeps a
consistent order book (its snapshot from the mock's REST `/fapi/v1/depth`, as a real deployment
fetches it from the exchange)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from conftest import GW_IP, shrunk

from connquota.api.plan import ConnectionPlan
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.testing.gateway_plans import bind_address, pod_plan
from connquota.testing.waiting import wait_until

pytestmark = pytest.mark.slow

WATCH_S = 20.0
MARKET = ["btcusdt@miniTicker", "btcusdt@kline_1m", "btcusdt@markPrice@1s", "!markPrice@arr"]
"""What ccxt's binanceusdm subscribes for watch_ticker (miniTicker), watch_ohlcv and
watch_mark_price (markPrice@1s), plus the market-wide mark prices."""
PUBLIC = ["btcusdt@trade", "btcusdt@depth@100ms", "ethusdt@depth"]


async def _gateway(harness, route: str, streams: list[str], rate_hz: float = 10) -> str:
    """A gateway for a binance-usdm quota whose endpoint is `<route>/stream` on the mock."""
    await harness.start_mock(
        "binance-usdm", shrunk("binance-usdm", connectionAttempts=(10, 20.0)),
        rate_per_stream_hz=rate_hz,
    )  # fmt: skip
    profile = harness.gateway_profile()
    profile = profile.model_copy(update={"endpoint": harness.mock.url + route + "/stream"})
    conns = [ConnectionPlan(id=f"c{i}", address="a0", streams=[s]) for i, s in enumerate(streams)]
    plan = pod_plan(
        profile, conns, addresses=[bind_address(0, harness.egress_check())], margin_s=0.2
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(streams), timeout_s=30)
    return gw.base_url.replace("http://", "ws://")


def _ccxt(harness, ws_base: str) -> Any:
    exchange = ccxtpro.binanceusdm({"options": {"fetchMarkets": {"types": ["linear"]}}})
    exchange.urls["api"]["fapiPublic"] = harness.mock.http_url + "/fapi/v1"  # REST: exchange
    exchange.urls["api"]["ws"]["linear"] = ws_base + "/ws"  # ccxt adds /public or /market
    return exchange


def _upstream(harness) -> list[str]:
    return sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)


async def test_the_gateway_opens_the_market_route_and_serves_futures_streams(harness) -> None:
    ws_base = await _gateway(harness, "/market", MARKET)
    assert {c.path for c in harness.mock.websockets(GW_IP)} == {"/market/stream"}
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_base + "/market/stream?streams=!markPrice@arr")
        msg = await ws.receive(timeout=WATCH_S)
        frame = json.loads(msg.data)
        await ws.close()
    assert frame["stream"] == "!markPrice@arr" and frame["data"][0]["e"] == "markPriceUpdate"
    assert _upstream(harness) == sorted(MARKET)
    # the gateway's SUBSCRIBE ids are unsigned integers, as USD-M requires: none refused
    assert harness.mock.malformed_received == 0
    harness.assert_no_violation()


async def test_ccxt_pro_binanceusdm_watches_ticker_candles_and_mark_price(harness) -> None:
    ws_base = await _gateway(harness, "/market", MARKET)
    exchange = _ccxt(harness, ws_base)
    try:
        ticker = await asyncio.wait_for(exchange.watch_ticker("BTC/USDT:USDT"), WATCH_S)
        assert ticker["symbol"] == "BTC/USDT:USDT" and ticker["last"] is not None
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USDT:USDT", "1m"), WATCH_S)
        assert candles and len(candles[-1]) == 6 and candles[-1][4] > 0
        mark = await asyncio.wait_for(exchange.watch_mark_price("BTC/USDT:USDT"), WATCH_S)
        assert mark["symbol"] == "BTC/USDT:USDT" and mark["markPrice"] > 0
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(MARKET)
    harness.assert_no_violation()


async def test_ccxt_pro_binanceusdm_watches_trades_and_a_consistent_book(harness) -> None:
    ws_base = await _gateway(harness, "/public", PUBLIC)
    exchange = _ccxt(harness, ws_base)
    mock = harness.mock.books.binance("BTCUSDT")
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USDT:USDT"), WATCH_S)
        assert trades and trades[-1]["symbol"] == "BTC/USDT:USDT" and trades[-1]["price"] > 0
        matched = 0
        for _ in range(200):  # bounded: compared whenever ccxt is at the mock's update id
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USDT:USDT"), WATCH_S)
            if book["nonce"] != mock.update_id:
                continue
            assert [list(x) for x in book["bids"]] == [
                [float(p), float(q)] for p, q in mock.top_bids(1000)
            ]
            assert [list(x) for x in book["asks"]] == [
                [float(p), float(q)] for p, q in mock.top_asks(1000)
            ]
            matched += 1
            if matched == 3:
                break
        assert matched == 3, "ccxt's book never reached the mock's update id"
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(PUBLIC)
    harness.assert_no_violation()


async def test_usdm_depth_through_the_gateway_chains_by_pu(harness) -> None:
    ws_base = await _gateway(harness, "/public", PUBLIC, rate_hz=20)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_base + "/public/ws/ethusdt@depth")
        events: list[dict[str, Any]] = []
        while len(events) < 30:
            msg = await ws.receive(timeout=WATCH_S)
            event = json.loads(msg.data)
            if event.get("e") == "depthUpdate":
                events.append(event)
        await ws.close()
    for previous, event in itertools.pairwise(events):
        assert event["pu"] == previous["u"] and event["U"] == previous["u"] + 1
    harness.assert_no_violation()


async def test_the_gateway_answers_usdm_pings_past_the_pong_deadline(harness) -> None:
    """USD-M's server ping every 180 s and pong deadline of 600 s, the mock's time scaled to
    300 (0.6 s and 2 s): the gateway's connection outlives several deadlines, answering every
    ping, with no violation."""
    harness.mock = MockExchange(
        get_profile("binance-usdm"), "127.0.0.1", 0, time_scale=300.0, rate_per_stream_hz=5
    )
    await harness.mock.start()
    profile = harness.gateway_profile()
    conns = [ConnectionPlan(id="c0", address="a0", streams=["btcusdt@aggTrade"])]
    plan = pod_plan(
        profile, conns, addresses=[bind_address(0, harness.egress_check())], margin_s=0.2
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, 1, timeout_s=30)
    [conn] = harness.mock.websockets(GW_IP)
    assert conn.path == "/market/stream"
    await wait_until(
        lambda: time.monotonic() - conn.opened_at > 6.5, 10, "3 pong deadlines", 0.1
    )  # the condition is elapsed time itself: 3 deadlines of 2 s with pings every 0.6 s
    assert harness.mock.websockets(GW_IP) == [conn] and not conn.closing
    assert conn.frames_received >= 9  # pongs (every ping answered) and the subscribe
    assert len(conn.pings) <= 1  # at most the ping in flight is unanswered
    harness.assert_no_violation()
