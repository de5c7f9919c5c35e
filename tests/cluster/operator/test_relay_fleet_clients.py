"""Any pod serves any stream of its quota to the exchanges' own client libraries (issue 12): an
OKX and a Bybit fleet of three pods each, run by the operator on the real API server, read
through the client Service's address (connquota.testing.service_proxy standing in for
kube-proxy, each connection sent to the next pod in turn) by ccxt pro, python-okx, pybit and
cryptofeed, each parsing what arrives with its own parsers. python-okx and cryptofeed accept
only wss://: the quotas serve their consumer endpoints over TLS too (`consumerTLSSecretRef`, a
kubernetes.io/tls Secret the test makes with a test CA).

Each pod holds one connection of two streams (two streams per connection, one connection per
pod), so every client, whichever pod it lands on, reads streams other pods hold upstream,
relayed over the peer links. The mock exchange referees: each stream subscribed upstream
exactly once, no violation.

OKX serves candles on `/ws/v5/business` only: they get a quota of their own whose endpoint is
that path (docs/consumers.md), a two-pod fleet read by a second ccxt client; a candle stream
declared on the public quota is refused at planning (status lists it unserved, naming the
business path) and never subscribed upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import certifi
import pytest
from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import L2_BOOK, TRADES
from cryptofeed.exchanges import OKX as CryptofeedOKX
from cryptofeed.exchanges import Bybit as CryptofeedBybit
from kubernetes import client
from okx.websocket.WsPublicAsync import WsPublicAsync
from pybit import unified_trading

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    get_quota,
    pod_ips,
    pool_body,
    profile_limits,
    quota_body,
    streams_by_pod,
    wait_ready,
)
from connquota.testing.podharness import PodHarness
from connquota.testing.service_proxy import ServiceProxy
from connquota.testing.tlsca import TestCA

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

WATCH_S = 20.0
TLS_SECRET = "gw-tls"

OKX_PUBLIC = [
    "trades:BTC-USDT", "trades:ETH-USDT", "tickers:BTC-USDT", "tickers:ETH-USDT",
    "books:BTC-USDT", "books:ETH-USDT",
]  # fmt: skip
OKX_CANDLES = ["candle1m:BTC-USDT", "candle1H:ETH-USDT", "candle1m:ETH-USDT", "candle1H:BTC-USDT"]
REFUSED = "candle15m:BTC-USDT"
"""A candle channel declared on the public quota: OKX serves it on /ws/v5/business only."""
BYBIT = [
    "publicTrade.BTCUSDT", "publicTrade.ETHUSDT", "tickers.ETHUSDT", "orderbook.50.ETHUSDT",
    "orderbook.200.BTCUSDT", "kline.1.ETHUSDT",
]  # fmt: skip
"""ccxt's and pybit's topics, and cryptofeed's spot book depth (200)."""


def _mock(profile: str) -> MockThread:
    """Two streams per connection; room on the one address for both OKX quotas' connections."""
    return MockThread(
        profile_limits(
            profile,
            concurrentConnections=(10, None),
            connectionAttempts=(10, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        ),
        profile=profile,
    )


@pytest.fixture
def okx_mock() -> Iterator[MockThread]:
    mock = _mock("okx")
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def bybit_mock() -> Iterator[MockThread]:
    mock = _mock("bybit")
    try:
        yield mock
    finally:
        mock.stop()


def _tls_secret(core: client.CoreV1Api, namespace: str, tmp_path: Path) -> Path:
    """A kubernetes.io/tls Secret for the gateways' wss port (a certificate for 127.0.0.1, where
    the Service stand-in listens); returns the CA file clients trust."""
    ca = TestCA.create()
    cert, key = ca.issue(["127.0.0.1", "localhost"])
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": TLS_SECRET},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": (cert + ca.cert_pem).decode(), "tls.key": key.decode()},
        },
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return path


def _fleet(
    api_client: Any,
    namespace: str,
    name: str,
    pool: str,
    exchange: dict[str, Any],
    streams: list[str],
    pods: int,
    *,
    tls: bool = False,
) -> None:
    """A quota whose pods each hold one connection of two streams."""
    body = quota_body(
        namespace,
        name,
        pool,
        exchange,
        streams,
        max_replicas=pods,
        connections_per_pod=1,
        gateway={"consumerTLSSecretRef": {"name": TLS_SECRET}} if tls else None,
    )
    custom_object(api_client).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )


def _held(api_client: Any, namespace: str, name: str, served: list[str], pods: int) -> None:
    """Every served stream planned once, two on each of `pods` pods, and every pod linked to
    every other."""
    held = streams_by_pod(client.CoreV1Api(api_client), namespace, name)
    assert sorted(s for v in held.values() for s in v) == sorted(served), held
    assert len(held) == pods and all(len(v) == 2 for v in held.values()), held
    wait_for(lambda: _every_pod_linked(api_client, namespace, name, pods), 60, f"{name} linked")


def _linked_peers(ip: str) -> set[str]:
    with urllib.request.urlopen(f"http://{ip}:8080/status", timeout=5) as resp:
        relay = json.loads(resp.read())["relay"]
    return {url for url, link in relay["peers"].items() if link["connected"]}


def _every_pod_linked(api_client: Any, namespace: str, quota: str, count: int) -> bool:
    ips = pod_ips(api_client, namespace, quota)
    if len(ips) != count:
        return False
    return all(
        _linked_peers(ip) == {f"http://{o}:8080" for k, o in ips.items() if k != ordinal}
        for ordinal, ip in ips.items()
    )


def _service(api_client: Any, namespace: str, quota: str, port: int) -> ServiceProxy:
    """The quota's client Service address, each new connection sent to the next ready pod."""
    turn = itertools.count()
    return ServiceProxy(
        api_client,
        namespace,
        f"{quota}-gw",
        port,
        choose=lambda ips: sorted(ips)[next(turn) % len(ips)],
    ).start()


def _upstream(mock: MockThread) -> list[tuple[str, str]]:
    """(path, stream) of every upstream subscription the exchange holds, duplicates kept."""
    return sorted(
        mock.sync(lambda: [(c.path, s) for c in mock.mock.websockets() for s in c.streams])
    )


# --- the client libraries ---------------------------------------------------------------------


async def _ccxt_trades_tickers_books(exchange: Any, symbols: tuple[str, ...]) -> None:
    """ccxt's own parsers: trades, a ticker and an order book (built from its snapshot, then
    updates) of every symbol."""
    for symbol in symbols:
        trades = await asyncio.wait_for(exchange.watch_trades(symbol), WATCH_S)
        assert trades and trades[-1]["symbol"] == symbol and trades[-1]["price"] > 0
        book = await asyncio.wait_for(exchange.watch_order_book(symbol), WATCH_S)
        assert book["symbol"] == symbol and book["bids"] and book["asks"]
        assert book["bids"][0][0] < book["asks"][0][0], book


async def _ccxt_okx(ws_base: str, rest: str) -> None:
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = rest
    exchange.urls["api"]["ws"] = ws_base + "/ws/v5"
    try:
        await _ccxt_trades_tickers_books(exchange, ("BTC/USDT", "ETH/USDT"))
        for symbol in ("BTC/USDT", "ETH/USDT"):
            ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), WATCH_S)
            assert ticker["symbol"] == symbol and ticker["last"] is not None
    finally:
        await exchange.close()


async def _ccxt_okx_candles(ws_base: str, rest: str) -> None:
    """ccxt opens `<ws>/business` for candles: the candles quota's Service."""
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = rest
    exchange.urls["api"]["ws"] = ws_base + "/ws/v5"
    try:
        for symbol in ("BTC/USDT", "ETH/USDT"):
            for timeframe in ("1m", "1h"):
                bars = await asyncio.wait_for(exchange.watch_ohlcv(symbol, timeframe), WATCH_S)
                assert bars and len(bars[-1]) == 6 and bars[-1][4] > 0, (symbol, timeframe, bars)
    finally:
        await exchange.close()


async def _python_okx(wss_address: str) -> None:
    """python-okx over wss: every public stream of the quota; books start with a snapshot."""
    ws = WsPublicAsync(url=f"wss://{wss_address}/ws/v5/public")
    got: dict[str, list[dict[str, Any]]] = {s: [] for s in OKX_PUBLIC}
    every = asyncio.Event()

    def on_message(text: str) -> None:
        message = json.loads(text)
        arg = message.get("arg") or {}
        stream = f"{arg.get('channel')}:{arg.get('instId')}"
        if message.get("data") and stream in got:
            got[stream].append(message)
            if all(got.values()):
                every.set()

    await ws.connect()
    consume = asyncio.create_task(ws.consume())
    try:
        args = [{"channel": s.partition(":")[0], "instId": s.partition(":")[2]} for s in OKX_PUBLIC]
        await ws.subscribe(args, on_message)
        await asyncio.wait_for(every.wait(), WATCH_S)
    finally:
        await ws.factory.close()
        consume.cancel()
        with contextlib.suppress(BaseException):
            await consume
    for stream, messages in got.items():
        first = messages[0]
        if stream.startswith("books:"):  # a snapshot first, then updates
            assert first["action"] == "snapshot" and first["data"][0]["bids"], first
        else:
            assert first["data"][0]["instId"] == stream.partition(":")[2], first


async def _cryptofeed(feed_class: Any, subscription: dict[str, list[str]]) -> dict[str, list[Any]]:
    """Run a cryptofeed feed until every channel delivered every symbol of `subscription`."""
    got: dict[str, list[Any]] = {channel: [] for channel in subscription}
    every = asyncio.Event()

    def on(channel: str) -> Any:
        async def callback(item: Any, _receipt: float) -> None:
            got[channel].append(item)
            if all({x.symbol for x in got[c]} >= set(subscription[c]) for c in subscription):
                every.set()

        return callback

    # The symbol list is read with a blocking HTTP call: out of the event loop.
    feed = await asyncio.to_thread(
        feed_class,
        subscription=subscription,
        callbacks={channel: on(channel) for channel in subscription},
    )
    handler = FeedHandler(config={"log": {"disabled": True}})
    handler.add_feed(feed)
    handler.run(start_loop=False, install_signal_handlers=False)
    try:
        await asyncio.wait_for(every.wait(), WATCH_S)
    except TimeoutError:
        seen = {c: sorted({x.symbol for x in v}) for c, v in got.items()}
        pytest.fail(f"{feed_class.__name__} within {WATCH_S}s: {subscription}, got {seen}")
    finally:
        await handler.stop_async()
    return got


async def _cryptofeed_okx(wss_address: str, rest: str) -> None:
    class GatewayOKX(CryptofeedOKX):  # type: ignore[misc]
        websocket_endpoints = [
            WebsocketEndpoint(
                f"wss://{wss_address}/ws/v5/public",
                channel_filter=("books", "trades", "tickers"),
                options={"compression": None},
            )
        ]
        # cryptofeed's parser wants several instrument lists (the mock lists spot only)
        routes = [f"/api/v5/public/instruments?instType={kind}" for kind in ("SPOT", "SWAP")]
        rest_endpoints = [RestEndpoint(rest, routes=Routes(routes))]

    # Not TICKER: cryptofeed reads bidPx/askPx, which the mock's tickers push leaves out.
    symbols = ["BTC-USDT", "ETH-USDT"]
    got = await _cryptofeed(GatewayOKX, {TRADES: symbols, L2_BOOK: symbols})
    assert all(t.exchange == "OKX" and t.price > 0 for t in got[TRADES])
    book = got[L2_BOOK][-1].book
    assert book.bids.index(0)[0] < book.asks.index(0)[0]


async def _ccxt_bybit(ws_base: str, rest: str) -> None:
    exchange = ccxtpro.bybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = rest
    exchange.urls["api"]["ws"]["public"]["spot"] = ws_base + "/v5/public/spot"
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USDT"), WATCH_S)
        assert trades and trades[-1]["symbol"] == "BTC/USDT" and trades[-1]["price"] > 0
        await _ccxt_trades_tickers_books(exchange, ("ETH/USDT",))
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USDT"), WATCH_S)
        assert ticker["symbol"] == "ETH/USDT" and ticker["last"] is not None
        # the mock's kline push carries the bar's start only (no prices): ccxt's bar of it
        bars = await asyncio.wait_for(exchange.watch_ohlcv("ETH/USDT", "1m"), WATCH_S)
        assert bars and len(bars[-1]) == 6 and bars[-1][0] > 0
    finally:
        await exchange.close()


def _pybit_client(url: str) -> Any:
    """pybit's public WebSocket at `url`, with pybit's two races with a fast server tolerated
    (docs/consumers.md): the ack before its req_id is stored (as in
    tests/component/gateway/client_libs.py), and a topic's first message (an order book's
    snapshot, which the gateway sends at once) before its callback is stored."""

    class GatewayWebSocket(unified_trading.WebSocket):  # type: ignore[misc]
        def _connect(self, _url: str) -> None:
            super()._connect(url)

        def _process_subscription_message(self, message: dict[str, Any]) -> None:
            if message.get("req_id") in self.subscriptions:
                super()._process_subscription_message(message)

        def _get_callback(self, topic: str) -> Any:
            deadline = time.monotonic() + 2.0
            while topic not in self.callback_directory and time.monotonic() < deadline:
                time.sleep(0.001)  # the subscribing thread stores it right after its send
            return super()._get_callback(topic)

    return GatewayWebSocket(testnet=False, channel_type="spot")


def _bounded(call: Any, timeout_s: float) -> None:
    """Run a blocking library call in a daemon thread for at most `timeout_s` (pybit waits for
    its connection without a bound), raising what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"{call} did not return within {timeout_s} s"
    if errors:
        raise errors[0]


def _pybit(ws_base: str) -> None:
    """pybit: every topic of the quota, in pybit's callbacks (blocking: run it `_bounded`)."""
    got: dict[str, list[dict[str, Any]]] = {t: [] for t in BYBIT}
    every = threading.Event()

    def on_message(message: dict[str, Any]) -> None:
        got.setdefault(message["topic"], []).append(message)
        if all(got[t] for t in BYBIT):
            every.set()

    ws = _pybit_client(ws_base + "/v5/public/spot")
    try:
        ws.trade_stream(["BTCUSDT", "ETHUSDT"], on_message)
        ws.ticker_stream("ETHUSDT", on_message)
        ws.orderbook_stream(50, "ETHUSDT", on_message)
        ws.orderbook_stream(200, "BTCUSDT", on_message)
        ws.kline_stream(1, "ETHUSDT", on_message)
        assert every.wait(WATCH_S), {t: len(v) for t, v in got.items()}
    finally:
        exit_thread = threading.Thread(target=ws.exit, daemon=True)
        exit_thread.start()
        exit_thread.join(10)
    assert got["orderbook.50.ETHUSDT"][0]["type"] == "snapshot"
    assert got["publicTrade.BTCUSDT"][0]["data"][0]["s"] == "BTCUSDT"


async def _cryptofeed_bybit(wss_address: str, rest: str) -> None:
    class GatewayBybit(CryptofeedBybit):  # type: ignore[misc]
        websocket_endpoints = [
            WebsocketEndpoint(
                f"wss://{wss_address}/v5/public/spot",
                instrument_filter=("TYPE", ("spot",)),
                channel_filter=("", "publicTrade", "kline"),
                options={"compression": None},
            )
        ]
        # cryptofeed's parser wants several instrument lists (the mock lists spot only)
        routes = [
            f"/v5/market/instruments-info?&category={kind}&status=Trading&limit=1000"
            for kind in ("linear", "spot")
        ]
        rest_endpoints = [RestEndpoint(rest, routes=Routes(routes))]

    # Not CANDLES: cryptofeed reads the bar's prices, which the mock's kline push leaves out.
    got = await _cryptofeed(GatewayBybit, {TRADES: ["BTC-USDT", "ETH-USDT"], L2_BOOK: ["BTC-USDT"]})
    assert all(t.exchange == "BYBIT" and t.price > 0 for t in got[TRADES])
    book = got[L2_BOOK][-1].book
    assert book.bids.index(0)[0] < book.asks.index(0)[0]


# --- the tests ----------------------------------------------------------------------------------


def test_okx_fleets_serve_every_stream_through_any_pod_to_ccxt_python_okx_and_cryptofeed(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    okx_mock: MockThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = client.CoreV1Api(api_client)
    ca = _tls_secret(core, namespace, tmp_path)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    custom_object(api_client).create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool)
    )
    domain = f"{pool}.okx.test"
    public = okx_mock.quota_exchange(domain, "/ws/v5/public")
    business = okx_mock.quota_exchange(domain, "/ws/v5/business")
    _fleet(api_client, namespace, "okx", pool, public, [*OKX_PUBLIC, REFUSED], 3, tls=True)
    _fleet(api_client, namespace, "okx-candles", pool, business, OKX_CANDLES, 2)
    log = operator_process.log
    wait_ready(api_client, namespace, "okx", 150, log)
    wait_ready(api_client, namespace, "okx-candles", 150, log)
    _held(api_client, namespace, "okx", OKX_PUBLIC, 3)
    _held(api_client, namespace, "okx-candles", OKX_CANDLES, 2)

    # The candle stream on the public quota: refused at planning, with the path that serves it.
    status = (get_quota(api_client, namespace, "okx") or {})["status"]
    assert [u["stream"] for u in status["unserved"]] == [REFUSED], status["unserved"]
    assert "OKX serves candle15m on /ws/v5/business only" in status["unserved"][0]["reason"]

    rest = okx_mock.mock.http_url
    monkeypatch.setattr(certifi, "where", lambda: str(ca))  # python-okx trusts certifi's bundle
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # cryptofeed: the default context
    http = _service(api_client, namespace, "okx", 8080)
    wss = _service(api_client, namespace, "okx", 8443)
    candles = _service(api_client, namespace, "okx-candles", 8080)
    try:
        for _ in range(3):  # one connection per client: each pod in turn
            asyncio.run(_ccxt_okx(f"ws://{http.address}", rest))
        for _ in range(2):
            asyncio.run(_ccxt_okx_candles(f"ws://{candles.address}", rest))
        asyncio.run(_python_okx(wss.address))
        asyncio.run(_cryptofeed_okx(wss.address, rest))
    finally:
        for proxy in (http, wss, candles):
            proxy.stop()
    okx_ips = set(pod_ips(api_client, namespace, "okx").values())
    assert set(http.picked) == okx_ips, http.picked
    assert set(wss.picked) <= okx_ips and sum(wss.picked.values()) >= 2, wss.picked
    assert set(candles.picked) == set(pod_ips(api_client, namespace, "okx-candles").values())

    # Each stream subscribed upstream exactly once, on the path that serves it; the refused
    # candle stream never.
    assert _upstream(okx_mock) == sorted(
        [("/ws/v5/public", s) for s in OKX_PUBLIC] + [("/ws/v5/business", s) for s in OKX_CANDLES]
    )
    ever = okx_mock.sync(lambda: set(okx_mock.mock.feeds.feeds))  # every stream ever subscribed
    assert ever == {*OKX_PUBLIC, *OKX_CANDLES}, ever
    okx_mock.assert_no_violation()


def test_a_bybit_fleet_serves_every_stream_through_any_pod_to_ccxt_pybit_and_cryptofeed(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    bybit_mock: MockThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    core = client.CoreV1Api(api_client)
    ca = _tls_secret(core, namespace, tmp_path)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    custom_object(api_client).create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool)
    )
    exchange = bybit_mock.quota_exchange(f"{pool}.bybit.test", "/v5/public/spot")
    _fleet(api_client, namespace, "bybit", pool, exchange, BYBIT, 3, tls=True)
    wait_ready(api_client, namespace, "bybit", 150, operator_process.log)
    _held(api_client, namespace, "bybit", BYBIT, 3)

    rest = bybit_mock.mock.http_url
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    http = _service(api_client, namespace, "bybit", 8080)
    wss = _service(api_client, namespace, "bybit", 8443)
    try:
        for _ in range(3):
            asyncio.run(_ccxt_bybit(f"ws://{http.address}", rest))
            _bounded(lambda: _pybit(f"ws://{http.address}"), WATCH_S + 20)
        asyncio.run(_cryptofeed_bybit(wss.address, rest))
    finally:
        for proxy in (http, wss):
            proxy.stop()
    assert set(http.picked) == set(pod_ips(api_client, namespace, "bybit").values())
    assert sum(wss.picked.values()) >= 1, wss.picked
    assert _upstream(bybit_mock) == sorted(("/v5/public/spot", s) for s in BYBIT)
    bybit_mock.assert_no_violation()
