"""Exchange client libraries the project does not write read their streams through a gateway
(issue 12 §2): each is pointed at the gateway's consumer port as a user would (its base URL),
subscribes in the exchange's own protocol, and parses what arrives with its own parsers.

REST calls a library makes first (Binance's exchangeInfo for ccxt's market list) go to the
mock exchange's REST endpoints, as a real deployment sends them to the exchange itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any

import ccxt.pro as ccxtpro
import certifi
import pytest
from binance_common.configuration import ConfigurationWebSocketStreams
from binance_sdk_spot import spot
from client_libs import bounded_in_daemon_thread, pybit_client
from conftest import GW_IP, shrunk
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import CANDLES, SPOT, TICKER, TRADES
from cryptofeed.exchanges import OKX as CryptofeedOKX
from cryptofeed.exchanges import Binance as CryptofeedBinance
from cryptofeed.exchanges import Bybit as CryptofeedBybit
from okx.websocket.WsPublicAsync import WsPublicAsync

from connquota.api.plan import ConnectionPlan
from connquota.demo.processes import free_port
from connquota.testing.gateway_plans import bind_address, pod_plan
from connquota.testing.tlsca import TestCA

pytestmark = pytest.mark.slow

WATCH_S = 20.0


async def _gateway(
    harness,
    profile: str,
    streams: list[str],
    args: list[str] | None = None,
    endpoint_path: str | None = None,
):
    """One gateway holding `streams`, one per connection (`endpoint_path`: the quota's
    endpoint on another path of the exchange's host, as a quota's endpoint override)."""
    await harness.start_mock(
        profile, shrunk(profile, connectionAttempts=(10, 20.0)), rate_per_stream_hz=10
    )
    conns = [ConnectionPlan(id=f"c{i}", address="a0", streams=[s]) for i, s in enumerate(streams)]
    effective = harness.gateway_profile()
    if endpoint_path is not None:
        effective = effective.model_copy(update={"endpoint": harness.mock.url + endpoint_path})
    plan = pod_plan(
        effective,
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
    )
    gw = harness.gateway(harness.write_plan(plan), args=args or [])
    gw.start()
    await harness.wait_live(gw, len(streams), timeout_s=30)
    return gw, gw.base_url.replace("http://", "ws://")


async def _btc_trades_and_eth_ticker(exchange: Any) -> None:
    """ccxt's watch_trades and watch_ticker, parsed by ccxt itself."""
    trades = await asyncio.wait_for(exchange.watch_trades("BTC/USDT"), WATCH_S)
    assert trades and trades[-1]["symbol"] == "BTC/USDT" and trades[-1]["price"] > 0
    ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USDT"), WATCH_S)
    assert ticker["symbol"] == "ETH/USDT" and ticker["last"] is not None


async def _tls_gateway(harness, tmp_path, profile: str, streams: list[str]):
    """A gateway also serving TLS (a test CA's certificate files); returns (TLS port, CA)."""
    ca = TestCA.create()
    files = ca.write(tmp_path / "tls")
    tls_port = free_port()
    args = ["--tls-cert-file", str(files["cert"]), "--tls-key-file", str(files["key"]),
            "--tls-port", str(tls_port)]  # fmt: skip
    gw, _ = await _gateway(harness, profile, streams, args)
    return gw, tls_port, files["ca"]


def _upstream(harness) -> list[str]:
    """Every upstream subscription the exchange holds from the gateway (duplicates kept)."""
    return sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)


BINANCE_STREAMS = ["btcusdt@trade", "ethusdt@miniTicker", "btcusdt@kline_1m", "ethusdt@trade"]
"""What the clients below subscribe to (ccxt's watch_ticker reads the miniTicker stream)."""


async def test_ccxt_pro_binance_watches_trades_tickers_and_candles_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "binance-spot", BINANCE_STREAMS)
    exchange = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = harness.mock.http_url + "/api/v3"
    exchange.urls["api"]["ws"]["spot"] = ws_base + "/ws"
    try:
        await _btc_trades_and_eth_ticker(exchange)
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USDT", "1m"), WATCH_S)
        assert candles and len(candles[-1]) == 6 and candles[-1][4] > 0
        # a symbol outside the quota: Binance's own error, which ccxt raises
        with pytest.raises(Exception, match="invalid stream"):
            await asyncio.wait_for(exchange.watch_trades("SOL/USDT"), WATCH_S)
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(BINANCE_STREAMS)
    harness.assert_no_violation()


async def test_the_official_binance_sdk_streams_trades_through_the_gateway(harness):

    _, ws_base = await _gateway(harness, "binance-spot", BINANCE_STREAMS)
    client = spot.Spot(config_ws_streams=ConfigurationWebSocketStreams(stream_url=ws_base))
    connection = await client.websocket_streams.create_connection()
    got: list[Any] = []
    arrived = asyncio.Event()

    def on_trade(event: Any) -> None:
        got.append(event)
        arrived.set()

    try:
        stream = await connection.trade(symbol="ethusdt")
        stream.on("message", on_trade)
        await asyncio.wait_for(arrived.wait(), WATCH_S)
    finally:
        await connection.close_connection(close_session=True)
    trade = got[0]
    assert trade.s == "ETHUSDT" and trade.e == "trade" and float(trade.p) > 0
    assert _upstream(harness) == sorted(BINANCE_STREAMS)
    harness.assert_no_violation()


OKX_STREAMS = ["trades:BTC-USDT", "tickers:ETH-USDT"]


async def test_ccxt_pro_okx_watches_trades_and_tickers_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "okx", OKX_STREAMS)
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = harness.mock.http_url
    exchange.urls["api"]["ws"] = ws_base + "/ws/v5"
    try:
        await _btc_trades_and_eth_ticker(exchange)
        with pytest.raises(Exception, match="60018"):
            await asyncio.wait_for(exchange.watch_trades("SOL/USDT"), WATCH_S)
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(OKX_STREAMS)
    harness.assert_no_violation()


OKX_CANDLE_STREAMS = ["candle1m:BTC-USDT", "candle1H:ETH-USDT"]


async def test_ccxt_pro_okx_watches_candles_through_a_quota_on_okxs_business_endpoint(harness):
    """OKX serves candles on `/ws/v5/business` only: a quota whose endpoint is that path holds
    them upstream there, and ccxt, which opens `<ws>/business` for candles, reads them."""
    _, ws_base = await _gateway(harness, "okx", OKX_CANDLE_STREAMS, endpoint_path="/ws/v5/business")
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = harness.mock.http_url
    exchange.urls["api"]["ws"] = ws_base + "/ws/v5"
    try:
        for symbol, timeframe in (("BTC/USDT", "1m"), ("ETH/USDT", "1h")):
            candles = await asyncio.wait_for(exchange.watch_ohlcv(symbol, timeframe), WATCH_S)
            assert candles and len(candles[-1]) == 6 and candles[-1][4] > 0, (symbol, candles)
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(OKX_CANDLE_STREAMS)
    assert {c.path for c in harness.mock.websockets(GW_IP)} == {"/ws/v5/business"}
    harness.assert_no_violation()


async def test_python_okx_reads_trades_over_wss_from_the_gateways_tls_listener(
    harness, tmp_path, monkeypatch
):
    """python-okx accepts only wss:// URLs: the gateway serves its consumer endpoints over TLS
    too, with a certificate from files (a kubernetes.io/tls Secret's tls.crt and tls.key)."""
    gw, tls_port, ca = await _tls_gateway(harness, tmp_path, "okx", OKX_STREAMS)
    # python-okx trusts certifi's bundle only: trust the cluster's CA the same way
    monkeypatch.setattr(certifi, "where", lambda: str(ca))
    client = WsPublicAsync(url=f"wss://127.0.0.1:{tls_port}/ws/v5/public")
    got: list[dict] = []
    trade = asyncio.Event()

    def on_message(text: str) -> None:
        message = json.loads(text)
        got.append(message)
        if message.get("data"):
            trade.set()

    await client.connect()
    consume = asyncio.create_task(client.consume())
    try:
        await client.subscribe([{"channel": "trades", "instId": "BTC-USDT"}], on_message)
        await asyncio.wait_for(trade.wait(), WATCH_S)
    finally:
        await client.factory.close()
        consume.cancel()
        with contextlib.suppress(BaseException):
            await consume
    acks = [m for m in got if m.get("event") == "subscribe"]
    assert acks and acks[0]["arg"] == {"channel": "trades", "instId": "BTC-USDT"}
    data = next(m for m in got if m.get("data"))
    assert data["arg"]["instId"] == "BTC-USDT" and data["data"][0]["instId"] == "BTC-USDT"
    # the plain listener serves the same endpoints
    async with harness.http.ws_connect(gw.base_url.replace("http", "ws") + "/ws/v5/public") as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=WATCH_S)).data == "pong"
    assert _upstream(harness) == sorted(OKX_STREAMS)
    harness.assert_no_violation()


BYBIT_STREAMS = ["publicTrade.BTCUSDT", "tickers.ETHUSDT"]


async def test_pybit_streams_public_trades_and_tickers_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "bybit", BYBIT_STREAMS)
    url = ws_base + "/v5/public/spot"

    got: dict[str, list[dict]] = {"publicTrade": [], "tickers": []}
    both = threading.Event()

    def on(kind: str):
        def callback(message: dict) -> None:
            got[kind].append(message)
            if all(got.values()):
                both.set()

        return callback

    ws = await asyncio.to_thread(pybit_client, url)
    try:
        await asyncio.to_thread(ws.trade_stream, "BTCUSDT", on("publicTrade"))
        await asyncio.to_thread(ws.ticker_stream, "ETHUSDT", on("tickers"))
        assert await asyncio.to_thread(both.wait, WATCH_S), got
    finally:
        bounded_in_daemon_thread(ws.exit, 10.0)
    assert got["publicTrade"][0]["topic"] == "publicTrade.BTCUSDT"
    assert got["tickers"][0]["topic"] == "tickers.ETHUSDT"
    assert _upstream(harness) == sorted(BYBIT_STREAMS)
    harness.assert_no_violation()


BYBIT_CCXT_STREAMS = ["publicTrade.BTCUSDT", "tickers.ETHUSDT", "kline.1.BTCUSDT"]


async def test_ccxt_pro_bybit_watches_trades_tickers_and_candles_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "bybit", BYBIT_CCXT_STREAMS)
    exchange = ccxtpro.bybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = harness.mock.http_url
    exchange.urls["api"]["ws"]["public"]["spot"] = ws_base + "/v5/public/spot"
    try:
        await _btc_trades_and_eth_ticker(exchange)
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USDT", "1m"), WATCH_S)
        assert candles and len(candles[-1]) == 6
        with pytest.raises(Exception, match="handler not found"):
            await asyncio.wait_for(exchange.watch_trades("SOL/USDT"), WATCH_S)
    finally:
        await exchange.close()
    assert _upstream(harness) == sorted(BYBIT_CCXT_STREAMS)
    harness.assert_no_violation()


async def test_cryptofeed_binance_trades_over_wss_through_the_gateway(
    harness, tmp_path, monkeypatch
):
    """cryptofeed accepts only wss:// and opens `/stream?streams=...` (the combined endpoint)
    after reading the market list from exchangeInfo; its Binance feed takes the gateway's TLS
    address as its endpoint."""
    streams = [*BINANCE_STREAMS, "btcusdt@aggTrade"]  # cryptofeed's TRADES channel
    _, tls_port, ca = await _tls_gateway(harness, tmp_path, "binance-spot", streams)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the default context trusts it
    rest = harness.mock.http_url

    class GatewayBinance(CryptofeedBinance):
        websocket_endpoints = [WebsocketEndpoint(f"wss://127.0.0.1:{tls_port}")]
        rest_endpoints = [
            RestEndpoint(rest, routes=Routes("/api/v3/exchangeInfo", l2book="/api/v3/depth"))
        ]

    got: list[Any] = []
    arrived = asyncio.Event()

    async def on_trade(trade: Any, _receipt: float) -> None:
        got.append(trade)
        arrived.set()

    # The symbol list is read with a blocking HTTP call: out of the loop the mock runs on.
    feed = await asyncio.to_thread(
        GatewayBinance, symbols=["BTC-USDT"], channels=[TRADES], callbacks={TRADES: on_trade}
    )
    handler = FeedHandler(config={"log": {"disabled": True}})
    handler.add_feed(feed)
    handler.run(start_loop=False, install_signal_handlers=False)
    try:
        await asyncio.wait_for(arrived.wait(), WATCH_S)
    finally:
        await handler.stop_async()
    assert got[0].symbol == "BTC-USDT" and got[0].exchange == "BINANCE" and got[0].price > 0
    assert _upstream(harness) == sorted(streams)
    harness.assert_no_violation()


async def _run_cryptofeed(feed_class: type, channel: str, symbol: str) -> Any:
    """The first ``channel`` callback of a cryptofeed feed of ``symbol`` (its market list read
    out of the loop: cryptofeed reads it with a blocking HTTP call)."""
    got: list[Any] = []
    arrived = asyncio.Event()

    async def on_event(event: Any, _receipt: float) -> None:
        got.append(event)
        arrived.set()

    feed = await asyncio.to_thread(
        feed_class, symbols=[symbol], channels=[channel], callbacks={channel: on_event}
    )
    handler = FeedHandler(config={"log": {"disabled": True}})
    handler.add_feed(feed)
    handler.run(start_loop=False, install_signal_handlers=False)
    try:
        await asyncio.wait_for(arrived.wait(), WATCH_S)
    finally:
        await handler.stop_async()
    return got[0]


async def test_cryptofeed_okx_ticker_over_wss_through_the_gateway(harness, tmp_path, monkeypatch):
    """cryptofeed's OKX feed reads the instruments over REST from the mock (spot only there)
    and its TICKER channel (``tickers``) from the gateway's TLS listener."""
    streams = ["tickers:BTC-USDT"]
    _, tls_port, ca = await _tls_gateway(harness, tmp_path, "okx", streams)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    rest = harness.mock.http_url

    class GatewayOKX(CryptofeedOKX):
        websocket_endpoints = [
            WebsocketEndpoint(
                f"wss://127.0.0.1:{tls_port}/ws/v5/public",
                channel_filter=(CryptofeedOKX.websocket_channels[TICKER],),
                options={"compression": None},
            )
        ]
        # cryptofeed's own routes (the mock lists spot instruments only)
        rest_endpoints = [RestEndpoint(rest, routes=CryptofeedOKX.rest_endpoints[0].routes)]

    ticker = await _run_cryptofeed(GatewayOKX, TICKER, "BTC-USDT")
    assert ticker.symbol == "BTC-USDT" and ticker.exchange == "OKX"
    assert 0 < ticker.bid < ticker.ask
    assert ticker.raw["instId"] == "BTC-USDT" and float(ticker.raw["last"]) > 0
    assert _upstream(harness) == streams
    harness.assert_no_violation()


async def test_cryptofeed_bybit_candles_over_wss_through_the_gateway(
    harness, tmp_path, monkeypatch
):
    """cryptofeed's Bybit feed reads spot instruments over REST from the mock and its CANDLES
    channel (``kline.1.<symbol>`` for 1m, closed bars only) from the gateway's TLS listener."""
    streams = ["kline.1.BTCUSDT"]
    _, tls_port, ca = await _tls_gateway(harness, tmp_path, "bybit", streams)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    rest = harness.mock.http_url

    class GatewayBybit(CryptofeedBybit):
        websocket_endpoints = [
            WebsocketEndpoint(
                f"wss://127.0.0.1:{tls_port}/v5/public/spot",
                instrument_filter=("TYPE", (SPOT,)),
                channel_filter=(CryptofeedBybit.websocket_channels[CANDLES],),
                options={"compression": None},
            )
        ]
        rest_endpoints = [RestEndpoint(rest, routes=CryptofeedBybit.rest_endpoints[0].routes)]

    candle = await _run_cryptofeed(GatewayBybit, CANDLES, "BTC-USDT")
    assert candle.symbol == "BTC-USDT" and candle.exchange == "BYBIT"
    # cryptofeed's Bybit parser passes `confirm` where its Candle takes `trades` (and None as
    # `closed`): the bar's confirm is read from the raw entry it keeps
    assert candle.interval == "1m" and candle.raw["confirm"] is True
    assert candle.stop - candle.start == 59_999  # Bybit's start/end in ms, kept as sent
    assert candle.low <= min(candle.open, candle.close) <= max(candle.open, candle.close)
    assert max(candle.open, candle.close) <= candle.high and candle.volume > 0
    assert _upstream(harness) == streams
    harness.assert_no_violation()
