"""Deribit JSON-RPC through the gateway (issue 15): every public channel reaches consumers over
/v1/ws with consecutive sequence numbers; heartbeats are set up and every test_request is
answered; a book whose change_id chain breaks is detected, dropped and resubscribed; channels
left out of a result, error objects and broken frames are counted and dropped without ending
the session."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
from conftest import GW_IP, gateway_metric, shrunk, wait_for

from connquota.api.plan import ConnectionPlan
from connquota.exchanges.dialects import deribit
from connquota.testing.gateway_plans import bind_address, pod_plan

RATE_HZ = 50
STREAMS = ["trades.BTC-PERPETUAL.100ms", "ticker.BTC-PERPETUAL.100ms", "book.BTC-PERPETUAL.100ms",
           "chart.trades.BTC-PERPETUAL.1", "trades.ETH-PERPETUAL.100ms",
           "book.ETH-PERPETUAL.100ms"]  # fmt: skip


async def _gateway(harness, streams: list[list[str]], rate_hz: float = RATE_HZ):
    await harness.start_mock(
        "deribit", shrunk("deribit", connectionAttempts=(10, 20.0)), rate_per_stream_hz=rate_hz
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
    """A /v1/ws consumer keeping every frame's seq and Deribit data per stream."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.data: dict[str, list[Any]] = {}

    def take(self, text: str) -> None:
        doc = json.loads(text)
        stream = doc.get("stream")
        if stream is None:
            return
        self.seqs.setdefault(stream, []).append(int(doc["seq"]))
        message = doc["data"]
        assert message["jsonrpc"] == "2.0" and message["method"] == "subscription"
        assert message["params"]["channel"] == stream
        self.data.setdefault(stream, []).append(message["params"]["data"])


async def _read(ws: aiohttp.ClientWebSocketResponse, reader: Reader, done) -> None:
    while not done():
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        reader.take(msg.data)


async def test_every_channel_reaches_consumers_with_consecutive_seq_and_heartbeats(harness):
    gw = await _gateway(harness, [STREAMS[:4], STREAMS[4:]])
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    ws_url = gw.base_url.replace("http://", "ws://") + "/v1/ws"
    reader = Reader()
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": STREAMS}))
        await _read(ws, reader, lambda: all(len(reader.seqs.get(s, [])) >= 40 for s in STREAMS))
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    for stream in ("book.BTC-PERPETUAL.100ms", "book.ETH-PERPETUAL.100ms"):
        changes = [d for d in reader.data[stream] if d["type"] == "change"]
        for prev, message in itertools.pairwise(changes):
            assert message["prev_change_id"] == prev["change_id"], f"{stream} chain broken"
    trades = [d[0]["trade_seq"] for d in reader.data["trades.BTC-PERPETUAL.100ms"]]
    assert trades == list(range(trades[0], trades[0] + len(trades)))
    # A consumer that joins a book late gets the gateway's replay first (the snapshot, then
    # the changes since), then live changes that chain on without a gap.
    late = Reader()
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": [STREAMS[2]]}))
        await _read(ws, late, lambda: len(late.data.get(STREAMS[2], [])) >= 30)
    book = late.data[STREAMS[2]]
    assert book[0]["type"] == "snapshot" and len(book[0]["bids"]) > 5
    for prev, message in itertools.pairwise(book):
        assert message["type"] == "change" and message["prev_change_id"] == prev["change_id"]
    # public/set_heartbeat was sent and every test_request answered: 30 s at scale 20 is
    # 1.5 s, an unanswered one closes the connection after 3 s

    async def heartbeats_answered():
        heartbeat_on = [c for c in harness.mock.websockets(GW_IP) if c.session.heartbeat_s]
        sent = await gateway_metric(harness, gw, "messages_out_total")
        # 2 set_heartbeat + at least 2 public/test answers per connection
        return len(heartbeat_on) == 2 and sent.get('{kind="heartbeat"}', 0) >= 6

    await wait_for(heartbeats_answered, 20, "several test_requests answered")
    assert await gateway_metric(harness, gw, "reconnects_total") == {}, "no session ended"
    harness.assert_no_violation()


async def test_a_book_change_id_gap_is_detected_dropped_and_resubscribed(harness):
    gw = await _gateway(harness, [["book.BTC-PERPETUAL.100ms"]], rate_hz=20)
    await harness.wait_live(gw, 1, timeout_s=30)
    mock = harness.mock

    async def flowing():
        return (await gateway_metric(harness, gw, "messages_in_total")).get("", 0) >= 5

    await wait_for(flowing, 10, "the book's first messages at the gateway")
    # A change whose prev_change_id is not the last change_id: messages were missed.
    bogus = deribit.build_book("book.BTC-PERPETUAL.100ms", "change", 10**9 + 7, 10**9,
                               [["new", 1.0, 1.0]], [], 0)  # fmt: skip
    for conn in mock.websockets(GW_IP):
        conn.send_later(bogus)

    async def detected():
        found = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
        return found.get('{reason="book-gap"}', 0) >= 1

    await wait_for(detected, 10, "the gateway to count the gap")
    assert "prev_change_id 1000000000 after change_id" in harness.logs()
    # resubscribed: a fresh snapshot, then changes that chain again reach a consumer
    reader = Reader()
    ws_url = gw.base_url.replace("http://", "ws://") + "/v1/ws"
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": ["book.BTC-PERPETUAL.100ms"]}))
        await _read(ws, reader, lambda: len(reader.data.get("book.BTC-PERPETUAL.100ms", [])) >= 20)
    data = reader.data["book.BTC-PERPETUAL.100ms"]
    assert all(d["change_id"] != 10**9 + 7 for d in data), "the broken change never reaches"
    seqs = reader.seqs["book.BTC-PERPETUAL.100ms"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    st = await harness.status(gw)
    assert st["streams"]["live"] == 1, "the session goes on"
    assert await gateway_metric(harness, gw, "reconnects_total") == {}
    harness.assert_no_violation()


async def test_left_out_channels_errors_and_broken_frames_are_counted_and_dropped(harness):
    streams = ["trades.BTC-PERPETUAL.100ms", "trades.BTC-PERPETUAL.raw", "ticker.ETH-PERPETUAL.100ms"]  # fmt: skip
    gw = await _gateway(harness, [streams])
    await harness.wait_live(gw, 2, timeout_s=30)
    mock = harness.mock
    assert mock.send_malformed(ip=GW_IP, count=3) == 1
    for conn in mock.websockets(GW_IP):
        conn.send_later(deribit.build_error(None, *deribit.TOO_MANY_REQUESTS))
        conn.send_later('{"jsonrpc":"2.0","method":"subscription","params":{"data":1}}')
        conn.send_later("[1, 2, 3]")

    async def counted():
        found = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
        # the raw channel left out of the result and the error object; 3 broken JSON frames,
        # a notification without a channel and a JSON array
        return (
            found.get('{reason="error"}', 0) >= 2 and found.get('{reason="unrecognised"}', 0) >= 5
        )

    await wait_for(counted, 10, "the gateway to count every dropped frame")
    reader = Reader()
    ws_url = gw.base_url.replace("http://", "ws://") + "/v1/ws"
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": streams[::2]}))
        await _read(
            ws, reader, lambda: all(len(reader.seqs.get(s, [])) >= 20 for s in streams[::2])
        )
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    assert await gateway_metric(harness, gw, "reconnects_total") == {}, "no session ended"
    st = await harness.status(gw)
    assert st["streams"]["live"] == 2
    harness.assert_no_violation()


async def test_deribit_clients_use_the_gateways_native_endpoint(harness):
    """A Deribit client changes only its URL to the gateway's `/ws/api/v2`: results list the
    channels served (one this pod does not serve is left out and never opened upstream),
    public/test answers, and ccxt's async pro Deribit client parses trades, ticker and candles
    through it."""
    served = ["trades.BTC-PERPETUAL.100ms", "ticker.BTC-PERPETUAL.100ms",
              "chart.trades.BTC-PERPETUAL.1"]  # fmt: skip
    gw = await _gateway(harness, [served])
    await harness.wait_live(gw, 3, timeout_s=30)
    url = gw.base_url.replace("http://", "ws://") + "/ws/api/v2"
    async with harness.http.ws_connect(url) as ws:
        await ws.send_str(deribit.build_ping(5))
        assert json.loads(await ws.receive_str(timeout=5))["result"] == {"version": "1.2.26"}
        await ws.send_str(deribit.build_subscribe([served[0], "trades.SOL-PERPETUAL.100ms"], 6))
        answer = json.loads(await ws.receive_str(timeout=5))
        assert answer["id"] == 6 and answer["result"] == [served[0]]
        first = deribit.parse_server_message(await ws.receive_str(timeout=5))
        assert first.stream == served[0]
        await ws.send_str('{"jsonrpc":"2.0","id":7,"method":"private/subscribe","params":{}}')
        while True:
            frame = json.loads(await ws.receive_str(timeout=5))
            if frame.get("id") == 7:
                break
        assert frame["error"]["code"] == 10000
    upstream = {s for c in harness.mock.websockets(GW_IP) for s in c.streams}
    assert upstream == set(served), "the unserved channel is never opened upstream"
    exchange = ccxtpro.deribit()
    exchange.urls["api"]["ws"] = url
    exchange.urls["api"]["rest"] = "http://127.0.0.1:9"  # a closed port: nothing leaves
    exchange.set_markets([MARKET])
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USD:BTC"), 10)
        assert trades[-1]["symbol"] == "BTC/USD:BTC" and trades[-1]["price"] > 0
        ticker = await asyncio.wait_for(exchange.watch_ticker("BTC/USD:BTC"), 10)
        assert ticker["bid"] < ticker["ask"]
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USD:BTC", "1m"), 10)
        assert candles[-1][0] % 60_000 == 0
    finally:
        await exchange.close()
    harness.assert_no_violation()


async def test_max_age_rotation_is_make_before_break_without_a_gap_in_trade_seq(harness):
    max_age_profile_s = 100.0  # 5 s at the test's time scale
    limits = shrunk(
        "deribit", connectionAttempts=(10, 40.0), maxConnectionAge=(max_age_profile_s, None)
    )
    await harness.start_mock("deribit", limits, rate_per_stream_hz=20.0)
    profile = harness.gateway_profile().model_copy(update={"connectTimeoutSeconds": 0.1})
    names = [f"trades.R{i}-PERPETUAL.100ms" for i in range(6)]
    names += ["book.R0-PERPETUAL.100ms", "book.R1-PERPETUAL.100ms"]
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
    await ws.close()
    for stream, seqs in reader.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
    for stream in names[:6]:  # Deribit's own trade_seq: no gap and no duplicate
        ids = [d[0]["trade_seq"] for d in reader.data[stream]]
        assert ids == list(range(ids[0], ids[0] + len(ids))), stream
    for stream in names[6:]:  # every change follows the message before it
        for prev, message in itertools.pairwise(reader.data[stream]):
            if message["type"] == "change":
                assert message["prev_change_id"] == prev["change_id"], stream
    assert await gateway_metric(harness, gw, "exchange_frames_dropped_total") in ({}, {
        '{reason="book-gap"}': 0.0})  # fmt: skip
    closes = harness.mock.metrics.registry.get_sample_value
    assert not any(
        (closes("mockexchange_server_closes_total", {"code": str(code)}) or 0)
        for code in (1000, 1001, 1006, 1008)
    ), "the exchange had to close a connection for its age"
    harness.assert_no_violation()


MARKET = {
    "id": "BTC-PERPETUAL", "symbol": "BTC/USD:BTC", "base": "BTC", "quote": "USD", "settle": "BTC",
    "baseId": "BTC", "quoteId": "USD", "settleId": "BTC", "type": "swap", "spot": False,
    "margin": False, "swap": True, "future": False, "option": False, "contract": True,
    "linear": False, "inverse": True, "active": True, "contractSize": 10.0,
    "precision": {"amount": 10.0, "price": 0.5}, "limits": {}, "info": {},
}  # fmt: skip
