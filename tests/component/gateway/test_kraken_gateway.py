"""Kraken spot WebSocket v2 through the gateway (issue 15): every public channel reaches
consumers over /v1/ws with consecutive sequence numbers; books open with a snapshot and every
checksum verifies; a corrupted book is detected by its checksum; refused symbols, error frames
and broken frames from the exchange are counted and dropped without ending the session."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
from conftest import GW_IP, TIME_SCALE, gateway_metric, shrunk, wait_for

from connquota.api.plan import ConnectionPlan
from connquota.exchanges.dialects import kraken
from connquota.exchanges.orderbook import L2Book
from connquota.testing.gateway_plans import bind_address, pod_plan

RATE_HZ = 50
STREAMS = ["trade:BTC/USD", "ticker:BTC/USD", "book.25:BTC/USD", "ohlc.5:BTC/USD",
           "trade:ETH/USD", "book:ETH/USD"]  # fmt: skip


async def _gateway(
    harness, streams: list[list[str]], rate_hz: float = RATE_HZ, time_scale: float = TIME_SCALE
):
    await harness.start_mock(
        "kraken",
        shrunk("kraken", connectionAttempts=(10, 20.0)),
        time_scale=time_scale,
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
    """A /v1/ws consumer keeping every frame's seq and exact payload per stream, merging book
    streams and checking each checksum."""

    def __init__(self) -> None:
        self.seqs: dict[str, list[int]] = {}
        self.payloads: dict[str, list[dict[str, Any]]] = {}
        self.books: dict[str, L2Book] = {}
        self.checked: dict[str, int] = {}
        self.bad_checksums: list[tuple[str, int, int]] = []

    def take(self, text: str) -> None:
        doc = kraken.loads_exact(text)
        stream = doc.get("stream")
        if stream is None:
            return
        self.seqs.setdefault(stream, []).append(int(doc["seq"]))
        message = doc["data"]
        self.payloads.setdefault(stream, []).append(message)
        if message.get("channel") != "book":
            return
        (item,) = message["data"]
        book = self.books.setdefault(stream, L2Book())
        if message["type"] == "snapshot":
            book.clear()
        else:
            assert stream in self.checked, f"{stream}: an update before any snapshot"
        book.apply(kraken.levels_of(item["bids"]), kraken.levels_of(item["asks"]))
        got = kraken.book_checksum(book.sorted_bids(), book.sorted_asks())
        if got != int(item["checksum"]):
            self.bad_checksums.append((stream, got, int(item["checksum"])))
        self.checked[stream] = self.checked.get(stream, 0) + 1


async def _read(ws: aiohttp.ClientWebSocketResponse, reader: Reader, done) -> None:
    while not done():
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        reader.take(msg.data)


async def test_every_channel_reaches_consumers_with_consecutive_seq_and_books_verify(harness):
    # Two connections, several channels each: one subscribe request per channel and parameter.
    gw = await _gateway(harness, [STREAMS[:4], STREAMS[4:]])
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    ws_url = gw.base_url.replace("http://", "ws://") + "/v1/ws"
    early = Reader()
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": STREAMS}))
        await _read(ws, early, lambda: all(len(early.seqs.get(s, [])) >= 40 for s in STREAMS))
    for stream, seqs in early.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in {stream}"
    assert early.bad_checksums == []
    assert early.checked["book.25:BTC/USD"] >= 40 and early.checked["book:ETH/USD"] >= 40
    first = early.payloads["book.25:BTC/USD"][0]
    assert first["type"] == "snapshot" and len(first["data"][0]["bids"]) > 10, "depth 25"
    candle = early.payloads["ohlc.5:BTC/USD"][-1]["data"][0]
    assert candle["interval"] == "5"  # (numbers kept as text by the exact reader)
    trades = [int(p["data"][0]["trade_id"]) for p in early.payloads["trade:BTC/USD"][1:]]
    assert trades == list(range(trades[0], trades[0] + len(trades)))
    # A consumer that joins late gets the book's snapshot first, then updates that verify.
    late = Reader()
    async with harness.http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"op": "subscribe", "streams": ["book.25:BTC/USD"]}))
        await _read(ws, late, lambda: late.checked.get("book.25:BTC/USD", 0) >= 30)
    assert late.payloads["book.25:BTC/USD"][0]["type"] == "snapshot"
    assert late.bad_checksums == []
    assert await gateway_metric(harness, gw, "book_checksum_mismatches_total") == {"": 0.0}
    harness.assert_no_violation()


async def test_a_corrupted_book_is_detected_by_its_checksum(harness):
    gw = await _gateway(harness, [["book:BTC/USD"]], rate_hz=20)
    await harness.wait_live(gw, 1, timeout_s=30)
    mock = harness.mock

    async def snapshot_in():  # the book's snapshot and a few updates reached the gateway
        return (await gateway_metric(harness, gw, "messages_in_total")).get("", 0) >= 5

    await wait_for(snapshot_in, 10, "the book's first messages at the gateway")
    # An update whose checksum is not that of the book it leaves: the gateway's merged book
    # disagrees (as after a lost or altered update).
    bogus = kraken.build_book("book:BTC/USD", [], [["999999.99", "1.00000000"]], 12345, 0)
    for conn in mock.websockets(GW_IP):
        conn.send_later(bogus)

    async def detected():
        found = await gateway_metric(harness, gw, "book_checksum_mismatches_total")
        return found.get("", 0) >= 1

    await wait_for(detected, 10, "the gateway to count the checksum mismatch")
    assert "order book book:BTC/USD: checksum 12345 from the exchange" in harness.logs()
    st = await harness.status(gw)
    assert st["streams"]["live"] == 1, "the session goes on; the next snapshot starts over"
    harness.assert_no_violation()


async def test_refused_symbols_error_and_broken_frames_are_counted_and_dropped(harness):
    streams = ["trade:BTC/USD", "trade:not-a-pair", "trade:ETH/USD"]
    gw = await _gateway(harness, [streams])
    await harness.wait_live(gw, 2, timeout_s=30)
    mock = harness.mock
    assert mock.send_malformed(ip=GW_IP, count=3) == 1
    for conn in mock.websockets(GW_IP):
        conn.send_later(kraken.MSG_RATE_ERROR)
        conn.send_later('{"channel":"trade","type":"update","data":[{"price":1}]}')
        conn.send_later("[1, 2, 3]")

    async def counted():
        found = await gateway_metric(harness, gw, "exchange_frames_dropped_total")
        # the refused symbol's error ack and the message-rate error; 3 broken JSON frames, a
        # trade without a symbol and a JSON array
        return (
            found.get('{reason="error"}', 0) >= 2 and found.get('{reason="unrecognised"}', 0) >= 5
        )

    await wait_for(counted, 10, "the gateway to count every dropped frame")
    consumer_url = gw.base_url.replace("http://", "ws://") + "/v1/ws"
    reader = Reader()
    async with harness.http.ws_connect(consumer_url) as ws:
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


async def test_kraken_clients_use_the_gateways_native_v2_endpoint(harness):
    """A Kraken client changes only its URL to the gateway's `/v2`: per-symbol answers (a
    symbol this pod does not serve gets Kraken's error and is never opened upstream), ping and
    pong, and ccxt's async pro Kraken client parses trades, ticker, candles and the book."""
    gw = await _gateway(harness, [STREAMS[:4], ["ticker:ETH/USD"]])
    await harness.wait_live(gw, 5, timeout_s=30)
    v2 = gw.base_url.replace("http://", "ws://") + "/v2"
    async with harness.http.ws_connect(v2) as ws:
        await ws.send_str(kraken.build_ping(5))
        assert json.loads(await ws.receive_str(timeout=5))["method"] == "pong"
        await ws.send_str(kraken.build_subscribe(["trade:BTC/USD", "trade:SOL/USD"], 6))
        ack = json.loads(await ws.receive_str(timeout=5))
        refused = json.loads(await ws.receive_str(timeout=5))
        assert ack["success"] is True and ack["result"]["symbol"] == "BTC/USD"
        assert refused["success"] is False and refused["symbol"] == "SOL/USD"
        first = kraken.parse_server_message(await ws.receive_str(timeout=5))
        assert first.stream == "trade:BTC/USD"
    exchange = ccxtpro.kraken()
    exchange.urls["api"]["ws"]["publicV2"] = v2
    exchange.urls["api"]["public"] = harness.mock.http_url  # the market list, as from Kraken
    exchange.urls["api"]["private"] = "http://127.0.0.1:9"
    try:
        trades = await asyncio.wait_for(exchange.watch_trades("BTC/USD"), 10)
        assert trades[-1]["symbol"] == "BTC/USD" and trades[-1]["price"] > 0
        ticker = await asyncio.wait_for(exchange.watch_ticker("ETH/USD"), 10)
        assert ticker["symbol"] == "ETH/USD" and ticker["last"] is not None
        candles = await asyncio.wait_for(exchange.watch_ohlcv("BTC/USD", "5m"), 10)
        assert candles[-1][0] % 300_000 == 0
        for _ in range(20):
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USD", 25), 10)
        assert 10 < len(book["bids"]) <= 25 and book["bids"][0][0] < book["asks"][0][0]
    finally:
        await exchange.close()
    upstream = sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)
    assert upstream == sorted([*STREAMS[:4], "ticker:ETH/USD"]), "consumers opened nothing"
    harness.assert_no_violation()


async def test_max_age_rotation_is_make_before_break_without_a_gap_in_trade_ids(harness):
    max_age_profile_s = 100.0  # 5 s at the test's time scale
    limits = shrunk(
        "kraken", connectionAttempts=(10, 40.0), maxConnectionAge=(max_age_profile_s, None)
    )
    await harness.start_mock("kraken", limits, rate_per_stream_hz=20.0)
    profile = harness.gateway_profile().model_copy(update={"connectTimeoutSeconds": 0.1})
    names = [f"trade:R{i}/USD" for i in range(6)] + ["book:R0/USD", "book:R1/USD"]
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
    # Kraken's own trade ids: no gap and no duplicate across the switch.
    for stream in names[:6]:
        ids = [int(p["data"][0]["trade_id"]) for p in reader.payloads[stream]]
        assert ids == list(range(ids[0], ids[0] + len(ids))), stream
    assert reader.bad_checksums == [], "the books stay consistent across the switch"
    closes = harness.mock.metrics.registry.get_sample_value
    assert not any(
        (closes("mockexchange_server_closes_total", {"code": str(code)}) or 0)
        for code in (1000, 1001, 1006, 1008)
    ), "the exchange had to close a connection for its age"
    harness.assert_no_violation()


async def test_a_connection_without_a_subscription_pings_when_quiet_and_stays_open(harness):
    """Kraken starts heartbeats with the first subscription: a connection whose only symbol is
    refused gets none, so the gateway pings it after half the heartbeat timeout of quiet (the
    mock, like Kraken, closes a connection idle for the timeout)."""
    # Scale 4, not 20: the mock closes after 2.5 s idle and the gateway pings after 1.25 s
    # quiet, a margin a loaded CI machine's event loops keep (at scale 20 it was 0.25 s).
    gw = await _gateway(harness, [["trade:not-a-pair"], ["trade:BTC/USD"]], time_scale=4)
    await harness.wait_live(gw, 1, timeout_s=30)
    mock = harness.mock
    opened = {c.conn_id for c in mock.websockets(GW_IP)}

    async def pinged():
        frames = [c.frames_received for c in mock.websockets(GW_IP)]
        return len(frames) == 2 and max(frames) >= 5  # the subscribe, then pings

    # 4 pings take about 5 s, each well inside the mock's 2.5 s idle deadline
    await wait_for(pinged, 20, "pings on the quiet connection")
    assert {c.conn_id for c in mock.websockets(GW_IP)} == opened, "nothing was reopened"
    assert await gateway_metric(harness, gw, "reconnects_total") == {}
    harness.assert_no_violation()
