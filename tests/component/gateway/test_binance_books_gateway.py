"""Binance order books through a gateway (issue 12 §3): Binance's diff depth streams carry no
snapshot, so a consumer combines them with a REST snapshot fetched from the exchange itself
(docs/consumers.md). The gateway's part is that a consumer joining a `@depth` stream late gets
every diff from its join on, none dropped (each event's U is the previous u + 1), and that real
clients (ccxt pro, Binance's own SDK) parse the stream and keep a consistent book."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from binance_common.configuration import ConfigurationWebSocketStreams
from binance_sdk_spot import spot
from binance_sdk_spot.websocket_streams.models.enums import DiffBookDepthUpdateSpeedEnum
from conftest import GW_IP, shrunk

from connquota.api.plan import ConnectionPlan
from connquota.testing.gateway_plans import bind_address, pod_plan

pytestmark = pytest.mark.slow

WATCH_S = 20.0
STREAMS = ["btcusdt@depth@100ms", "ethusdt@depth", "btcusdt@trade"]


async def _gateway(harness, streams: list[str], rate_hz: float = 20):
    await harness.start_mock(
        "binance-spot", shrunk("binance-spot", connectionAttempts=(10, 20.0)),
        rate_per_stream_hz=rate_hz,
    )  # fmt: skip
    conns = [ConnectionPlan(id=f"c{i}", address="a0", streams=[s]) for i, s in enumerate(streams)]
    plan = pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(streams), timeout_s=30)
    return gw.base_url.replace("http://", "ws://")


async def _diffs(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < count:
        msg = await ws.receive(timeout=WATCH_S)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if "data" in frame:
            out.append(frame["data"])
    return out


def _chained(events: list[dict[str, Any]]) -> bool:
    return all(b["U"] == a["u"] + 1 for a, b in itertools.pairwise(events))


async def test_a_late_depth_consumer_gets_every_diff_from_its_join_on(harness) -> None:
    ws_base = await _gateway(harness, STREAMS)
    url = ws_base + "/stream?streams=btcusdt@depth@100ms"
    async with aiohttp.ClientSession() as http:
        early = await http.ws_connect(url)
        first = await _diffs(early, 20)
        late = await http.ws_connect(url)
        late_events = await _diffs(late, 40)
        early_events = first + await _diffs(early, 60)
        await early.close()
        await late.close()
    assert _chained(early_events), "a diff was dropped for the early consumer"
    assert _chained(late_events), "a diff was dropped for the late consumer"
    assert late_events[0]["U"] > first[0]["u"]  # the late one starts at its join, no replay
    # the late consumer's diffs are the early one's, from its first on
    by_u = {e["u"]: e for e in early_events}
    assert all(by_u[e["u"]] == e for e in late_events if e["u"] in by_u)
    assert sum(e["u"] in by_u for e in late_events) >= 30
    harness.assert_no_violation()


async def test_ccxt_pro_binance_keeps_a_consistent_order_book_through_the_gateway(harness) -> None:
    ws_base = await _gateway(harness, STREAMS, rate_hz=10)
    exchange = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = harness.mock.http_url + "/api/v3"  # REST: the exchange
    exchange.urls["api"]["ws"]["spot"] = ws_base + "/ws"
    mock = harness.mock.books.binance("BTCUSDT")
    try:
        matched = 0
        for _ in range(200):  # bounded: the book is compared whenever ccxt is at the mock's id
            book = await asyncio.wait_for(exchange.watch_order_book("BTC/USDT"), WATCH_S)
            if book["nonce"] != mock.update_id:
                continue
            bids = [[float(p), float(q)] for p, q in mock.top_bids(1000)]
            asks = [[float(p), float(q)] for p, q in mock.top_asks(1000)]
            assert [list(x) for x in book["bids"]] == bids
            assert [list(x) for x in book["asks"]] == asks
            matched += 1
            if matched == 3:
                break
        assert matched == 3, "ccxt's book never reached the mock's update id"
    finally:
        await exchange.close()
    upstream = sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams)
    assert upstream == sorted(STREAMS)  # ccxt's subscription was served by the gateway's
    harness.assert_no_violation()


async def test_the_official_binance_sdk_parses_the_diff_depth_stream_through_the_gateway(
    harness,
) -> None:
    ws_base = await _gateway(harness, STREAMS)
    client = spot.Spot(config_ws_streams=ConfigurationWebSocketStreams(stream_url=ws_base))
    connection = await client.websocket_streams.create_connection()
    got: list[Any] = []
    enough = asyncio.Event()

    def on_diff(event: Any) -> None:
        got.append(event)
        if len(got) >= 5:
            enough.set()

    try:
        stream = await connection.diff_book_depth(
            symbol="btcusdt", update_speed=DiffBookDepthUpdateSpeedEnum.UPDATE_SPEED_100ms
        )
        stream.on("message", on_diff)
        await asyncio.wait_for(enough.wait(), WATCH_S)
    finally:
        await connection.close_connection(close_session=True)
    for a, b in itertools.pairwise(got):
        assert a.u + 1 == b.U
    event = got[-1]
    assert event.e == "depthUpdate" and event.s == "BTCUSDT" and event.E > 0
    assert event.b is not None and event.a is not None
    assert all(float(level[0]) > 0 for level in [*event.b, *event.a])
    harness.assert_no_violation()


async def test_market_wide_arrays_are_forwarded_whole(harness) -> None:
    ws_base = await _gateway(harness, ["!miniTicker@arr", "btcusdt@bookTicker"])
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(ws_base + "/stream?streams=!miniTicker@arr/btcusdt@bookTicker")
        frames: dict[str, list[Any]] = {"!miniTicker@arr": [], "btcusdt@bookTicker": []}
        while min(len(v) for v in frames.values()) < 5:
            msg = await ws.receive(timeout=WATCH_S)
            frame = json.loads(msg.data)
            frames[frame["stream"]].append(frame["data"])
        await ws.close()
    for minis in frames["!miniTicker@arr"]:
        assert isinstance(minis, list) and minis and minis[0]["e"] == "24hrMiniTicker"
    updates = [b["u"] for b in frames["btcusdt@bookTicker"]]
    assert updates == sorted(updates) and len(set(updates)) == len(updates)
    harness.assert_no_violation()
