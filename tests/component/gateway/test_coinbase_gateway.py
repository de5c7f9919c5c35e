"""Coinbase Advanced Trade WebSocket through the gateway (issue 15): every public channel
reaches consumers over /v1/ws with consecutive sequence numbers, one channel per subscribe and
the heartbeats channel upstream; the per-IP message limit driven to >= 90% with 0 violations;
a ``sequence_num`` gap is detected and counted; error frames and broken frames from the
exchange are counted and dropped without ending the session."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
from conftest import GW_IP, gateway_metric, shrunk, wait_for

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import ConnectionPlan
from connquota.exchanges.dialects import coinbase
from connquota.exchanges.orderbook import L2Book
from connquota.testing.gateway_plans import bind_address, pod_plan

RATE_HZ = 50
STREAMS = ["market_trades:BTC-USD", "ticker:BTC-USD", "level2:BTC-USD", "candles:BTC-USD",
           "market_trades:ETH-USD", "level2:ETH-USD"]  # fmt: skip


async def _gateway(harness, streams: list[list[str]], rate_hz: float = RATE_HZ, **limits: Any):
    await harness.start_mock(
        "coinbase",
        shrunk("coinbase", **{"connectionAttempts": (10, 20.0), **limits}),
        rate_per_stream_hz=rate_hz,
    )
    conns = [ConnectionPlan(id=f"c{i}", address="a0", streams=s) for i, s in enumerate(streams)]
    plan = pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    return gw


class Reader:
    """A /v1/ws consumer keeping every frame's seq and payload per stream, merging level2."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.payloads: dict[str, list[dict[str, Any]]] = {}
        self.books: dict[str, L2Book] = {}

    def take(self, text: str) -> None:
        doc = json.loads(text)
        stream = doc.get("stream")
        if stream is None:
            return
        self.seqs.setdefault(stream, []).append(int(doc["seq"]))
        message = doc["data"]
        self.payloads.setdefault(stream, []).append(message)
        if message.get("channel") != "l2_data":
            return
        book = self.books.setdefault(stream, L2Book())
        if coinbase.is_snapshot(message):
            book.clear()
        book.apply(*coinbase.levels_of(message))
        bids, asks = book.sorted_bids(), book.sorted_asks()
        assert bids and asks and float(bids[0][0]) < float(asks[0][0]), f"{stream} crossed"


async def _read(ws: aiohttp.ClientWebSocketResponse, reader: Reader, done) -> None:
    while not done():
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        reader.take(msg.data)


def _market(base: str, quote: str) -> dict:
    """A ccxt market entry (the mock serves no Coinbase REST: markets are set on the client)."""
    return {
        "id": f"{base}-{quote}", "symbol": f"{base}/{quote}", "base": base, "quote": quote,
        "baseId": base, "quoteId": quote, "type": "spot", "spot": True, "margin": False,
        "swap": False, "future": False, "option": False, "contract": False, "active": True,
        "precision": {"amount": 1e-8, "price": 0.01}, "limits": {}, "info": {},
    }  # fmt: skip


def _sessions(harness) -> list[Any]:
    return [c.session for c in harness.mock.websockets(GW_IP)]


async def test_every_channel_reaches_consumers_with_consecutive_seq(harness):
    gw = await _gateway(harness, [STREAMS[:4], STREAMS[4:]])
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    for session in _sessions(harness):
        assert session.heartbeats, "every connection subscribed to the heartbeats channel"
    reader = Reader()
    async with harness.http.ws_connect(gw.ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": STREAMS}))
        await _read(ws, reader, lambda: all(len(reader.seqs.get(s, [])) >= 40 for s in STREAMS))
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    first = reader.payloads["level2:BTC-USD"][0]
    assert first["channel"] == "l2_data" and coinbase.is_snapshot(first)
    trades = [
        int(p["events"][0]["trades"][0]["trade_id"])
        for p in reader.payloads["market_trades:BTC-USD"]
    ]
    assert trades == list(range(trades[0], trades[0] + len(trades)))
    candle = reader.payloads["candles:BTC-USD"][-1]["events"][0]["candles"][0]
    assert int(candle["start"]) % 300 == 0
    # A consumer that joins late gets the gateway's level2 snapshot first, then the updates.
    late = Reader()
    async with harness.http.ws_connect(gw.ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": ["level2:BTC-USD"]}))
        await _read(ws, late, lambda: len(late.seqs.get("level2:BTC-USD", [])) >= 30)
    assert coinbase.is_snapshot(late.payloads["level2:BTC-USD"][0])
    dropped = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
    assert dropped.get('{reason="sequence-gap"}', 0) == 0, "sequence_num consecutive"
    harness.assert_no_violation()


async def test_start_up_and_a_mass_disconnect_keep_the_per_ip_message_limit(harness):
    """12 connections need 24 messages (heartbeats and one subscribe each) against 10 per IP
    per window: the gateway paces them over the address's shared budget, >= 90%, 0 violations,
    at start-up and again after every connection is dropped at once."""
    streams = [[f"ticker:M{i}-USD"] for i in range(12)]
    gw = await _gateway(
        harness,
        streams,
        rate_hz=20,
        messagesPerIp=(10, 4.0),
        connectionAttempts=(12, 1.0),
    )
    await harness.wait_live(gw, 12, timeout_s=40)
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.MESSAGES_PER_IP, LimitScope.IP)
    dropped = await harness.mock.disconnect(abrupt=True)
    assert dropped == 12
    await wait_for(
        lambda: _true(len(harness.mock.websockets(GW_IP)) == 12), 40, "12 connections back"
    )
    await harness.wait_live(gw, 12, timeout_s=40)
    harness.assert_no_violation()


async def _true(value: bool) -> bool:
    return value


async def test_a_sequence_num_gap_is_detected_and_counted(harness):
    gw = await _gateway(harness, [["market_trades:BTC-USD"]], rate_hz=20)
    await harness.wait_live(gw, 1, timeout_s=30)
    (session,) = _sessions(harness)
    session.skip_sequence(3)  # the exchange lost three messages of this connection

    async def counted():
        found = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
        return found.get('{reason="sequence-gap"}', 0) >= 3

    await wait_for(counted, 10, "the gateway to count the sequence_num gap")
    assert "3 messages lost or out of order" in harness.logs()
    st = await harness.status(gw)
    assert st["streams"]["live"] == 1, "the session goes on"
    assert await gateway_metric(harness, gw, "reconnects_total") == {}
    harness.assert_no_violation()


async def test_refused_products_error_and_broken_frames_are_counted_and_dropped(harness):
    # one channel per subscribe: the refused product takes only its own channel's message
    streams = ["market_trades:BTC-USD", "candles:not-a-product", "ticker:ETH-USD"]
    gw = await _gateway(harness, [streams])
    await harness.wait_live(gw, 2, timeout_s=30)
    mock = harness.mock
    assert mock.send_malformed(ip=GW_IP, count=3) == 1
    for conn in mock.websockets(GW_IP):
        conn.send_later(coinbase.build_error("rate limit exceeded"))
        conn.send_later('{"channel":"market_trades","events":[{"type":"update","trades":[]}]}')
        conn.send_later("[1, 2, 3]")

    async def counted():
        found = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
        # the refused product's error and the injected error; 3 broken JSON frames, trades
        # without a product and a JSON array
        return (
            found.get('{reason="error"}', 0) >= 2 and found.get('{reason="unrecognised"}', 0) >= 5
        )

    await wait_for(counted, 10, "the gateway to count every dropped frame")
    reader = Reader()
    live = streams[::2]
    async with harness.http.ws_connect(gw.ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": live}))
        await _read(ws, reader, lambda: all(len(reader.seqs.get(s, [])) >= 20 for s in live))
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    assert await gateway_metric(harness, gw, "reconnects_total") == {}, "no session ended"
    dropped = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
    assert dropped.get('{reason="sequence-gap"}', 0) == 0, "error frames carry no sequence_num"
    st = await harness.status(gw)
    assert st["streams"]["live"] == 2
    harness.assert_no_violation()


async def test_coinbase_clients_use_the_gateways_native_endpoint(harness):
    """A Coinbase client changes only its URL to the gateway's `/`: one channel per subscribe
    answered by `subscriptions`, heartbeats acknowledged, a product this pod does not serve
    gets Coinbase's error frame and is never opened upstream; ccxt's async pro Coinbase client
    parses trades, the ticker and the level2 book through it."""
    gw = await _gateway(harness, [STREAMS[:4], ["ticker:ETH-USD"]])
    await harness.wait_live(gw, 5, timeout_s=30)
    root = gw.base_url.replace("http://", "ws://") + "/"
    async with harness.http.ws_connect(root) as ws:
        await ws.send_str(coinbase.build_heartbeats_subscribe())
        ack = json.loads(await ws.receive_str(timeout=5))
        assert ack["events"][0]["subscriptions"] == {"heartbeats": ["heartbeats"]}
        await ws.send_str(coinbase.build_subscribe(["market_trades:SOL-USD"], None))
        refused = json.loads(await ws.receive_str(timeout=5))
        assert refused["type"] == "error" and "SOL-USD" in refused["reason"]
        await ws.send_str(coinbase.build_subscribe(["market_trades:BTC-USD"], None))
        ack = json.loads(await ws.receive_str(timeout=5))
        assert ack["events"][0]["subscriptions"]["market_trades"] == ["BTC-USD"]
        first = coinbase.parse_server_message(await ws.receive_str(timeout=5))
        assert first.stream == "market_trades:BTC-USD"
    exchange = ccxtpro.coinbase()
    exchange.urls["api"]["ws"] = root
    exchange.urls["api"]["rest"] = "http://127.0.0.1:9"
    exchange.set_markets([_market("BTC", "USD"), _market("ETH", "USD")])
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USD"), 10)
        assert trades[-1]["symbol"] == "BTC/USD" and trades[-1]["price"] > 0
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USD"), 10)
        assert ticker["symbol"] == "ETH/USD" and ticker["last"] is not None
        for _ in range(20):
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USD"), 10)
        assert len(book["bids"]) > 10 and book["bids"][0][0] < book["asks"][0][0]
    finally:
        await exchange.close()
    upstream = sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)
    assert upstream == sorted([*STREAMS[:4], "ticker:ETH-USD"]), "consumers opened nothing"
    harness.assert_no_violation()


async def test_max_age_rotation_is_make_before_break_without_a_gap_in_trade_ids(harness):
    max_age_profile_s = 100.0  # 5 s at the test's time scale
    limits = shrunk(
        "coinbase", connectionAttempts=(10, 40.0), maxConnectionAge=(max_age_profile_s, None)
    )
    await harness.start_mock("coinbase", limits, rate_per_stream_hz=20.0)
    profile = harness.gateway_profile().model_copy(update={"connectTimeoutSeconds": 0.1})
    names = [f"market_trades:R{i}-USD" for i in range(6)] + ["level2:R0-USD", "level2:R1-USD"]
    conns = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=names[i * 2 : i * 2 + 2]) for i in range(4)
    ]
    plan = pod_plan(
        profile, conns, addresses=[bind_address(0, harness.egress_check())], margin_s=0.2
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    reader = Reader()
    ws = await harness.http.ws_connect(gw.ws_url)
    await ws.send_str(json.dumps({"op": "subscribe", "streams": names}))

    async def rotated():
        while True:  # drain what arrived, then ask the gateway
            try:
                msg = await ws.receive(timeout=0.01)
            except TimeoutError:
                break
            reader.take(msg.data)
        st = await harness.status(gw)
        return all(c["sessionsOpened"] >= 2 for c in st["connections"])

    await wait_for(rotated, 30, "every connection rotated", step_s=0.02)
    # The books across the switch: with the feeds stopped, the consumer's merged level2 books
    # equal the exchange's.
    harness.mock.set_rate(0.0001)
    while True:
        try:
            msg = await ws.receive(timeout=0.5)
        except TimeoutError:
            break
        reader.take(msg.data)
    await ws.close()
    for stream in names[6:]:
        exchange_book = harness.mock.books.book(stream, 40, okx_levels=False).book
        assert reader.books[stream].sorted_bids() == exchange_book.sorted_bids(), stream
        assert reader.books[stream].sorted_asks() == exchange_book.sorted_asks(), stream
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
    for stream in names[:6]:  # Coinbase's trade ids: no gap and no duplicate across the switch
        ids = [int(p["events"][0]["trades"][0]["trade_id"]) for p in reader.payloads[stream]]
        assert ids == list(range(ids[0], ids[0] + len(ids))), stream
    closes = harness.mock.metrics.registry.get_sample_value
    assert not any(
        (closes("mockexchange_server_closes_total", {"code": str(code)}) or 0)
        for code in (1000, 1001, 1006, 1008)
    ), "the exchange had to close a connection for its age"
    dropped = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
    assert dropped.get('{reason="sequence-gap"}', 0) == 0, "each connection numbers its own"
    harness.assert_no_violation()
