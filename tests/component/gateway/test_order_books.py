"""Order books through the gateway (issue 12 §2/§3): every consumer of an OKX or Bybit book
stream, however late it joins, first gets a snapshot, then updates that follow it without a gap
(OKX ``prevSeqId`` chains and checksums, Bybit ``u`` consecutive), on the exchange's own
endpoints and on ``/v1/ws``; its book is the one an early consumer holds at the same update.
Real clients (ccxt pro) build their books from what the gateway sends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from conftest import GW_IP, shrunk, wait_for

from connquota.api.plan import ConnectionPlan
from connquota.exchanges.orderbook import L2Book
from connquota.gateway.books import DEFAULT_MAX_DELTAS
from connquota.testing.gateway_plans import bind_address, pod_plan

RECEIVE_S = 10.0
RATE_HZ = 200
"""Fast enough that the gateway merges its kept updates into a snapshot within seconds."""
WATCH_S = 20.0
OKX_BOOK = "books:BTC-USDT"
BYBIT_BOOK = "orderbook.50.BTCUSDT"


async def _gateway(harness, profile: str, streams: list[str], rate_hz: float = RATE_HZ):
    await harness.start_mock(
        profile, shrunk(profile, connectionAttempts=(10, 20.0)), rate_per_stream_hz=rate_hz
    )
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
    return gw, gw.base_url.replace("http://", "ws://")


class BookReader:
    """A consumer's book, merged from what it reads, with every continuity rule checked:
    the first message is a snapshot; OKX: ``prevSeqId`` is the previous ``seqId`` and every
    checksum matches; Bybit: ``u`` is the previous ``u`` + 1. ``states`` maps each update id to
    the book after it."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.book = L2Book()
        self.last: int | None = None
        self.first_id: int | None = None
        self.states: dict[int, L2Book] = {}

    def feed(self, message: dict[str, Any]) -> None:
        if self.dialect == "okx":
            item = message["data"][0]
            snapshot = message.get("action") == "snapshot"
            bids, asks, update_id = item["bids"], item["asks"], item["seqId"]
            if snapshot:
                assert item["prevSeqId"] == -1
            else:
                assert self.last is not None, "the first message is a snapshot"
                assert item["prevSeqId"] == self.last, "no gap, no duplicate"
        else:
            data = message["data"]
            snapshot = message["type"] == "snapshot"
            bids, asks, update_id = data["b"], data["a"], data["u"]
            if not snapshot:
                assert self.last is not None, "the first message is a snapshot"
                assert update_id == self.last + 1, "no gap, no duplicate"
        if snapshot:
            self.book.clear()
        self.book.apply(bids, asks)
        if self.dialect == "okx":
            assert self.book.okx_checksum() == message["data"][0]["checksum"]
        if self.first_id is None:
            self.first_id = update_id
        self.last = update_id
        self.states[update_id] = L2Book(dict(self.book.bids), dict(self.book.asks))


async def _read_book(ws: aiohttp.ClientWebSocketResponse, reader: BookReader, count: int) -> None:
    """Feed ``count`` book messages (exchange payloads or ``/v1/ws`` envelopes) to ``reader``."""
    fed = 0
    seq = None
    while fed < count:
        msg = await ws.receive(timeout=RECEIVE_S)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        body = json.loads(msg.data)
        if "stream" in body and "seq" in body:  # /v1/ws: consecutive gateway sequence too
            assert seq is None or body["seq"] == seq + 1
            seq = body["seq"]
            body = body["data"]
        if "data" not in body:
            continue  # acks
        reader.feed(body)
        fed += 1


async def _subscribe_native(ws_base: str, http: aiohttp.ClientSession, dialect: str):
    if dialect == "okx":
        ws = await http.ws_connect(f"{ws_base}/ws/v5/public")
        arg = {"channel": "books", "instId": "BTC-USDT"}
        await ws.send_str(json.dumps({"op": "subscribe", "args": [arg]}))
    else:
        ws = await http.ws_connect(f"{ws_base}/v5/public/linear")
        await ws.send_str(json.dumps({"op": "subscribe", "args": [BYBIT_BOOK]}))
    return ws


@pytest.mark.parametrize(("profile", "stream"), [("okx", OKX_BOOK), ("bybit", BYBIT_BOOK)])
async def test_a_late_consumer_gets_a_snapshot_then_every_update_on_both_endpoints(
    harness, profile, stream
):
    gw, ws_base = await _gateway(harness, profile, [stream])
    http = harness.http
    early = BookReader(profile)
    async with await _subscribe_native(ws_base, http, profile) as first:
        # past the bound of kept updates: late joiners get the gateway's merged snapshot
        await _read_book(first, early, DEFAULT_MAX_DELTAS + 100)
        late, tagged = BookReader(profile), BookReader(profile)
        async with (
            await _subscribe_native(ws_base, http, profile) as native,
            http.ws_connect(gw.ws_url) as v1,
        ):
            await v1.send_str(json.dumps({"op": "subscribe", "streams": [stream]}))
            await _read_book(native, late, 60)
            await _read_book(v1, tagged, 60)
            assert late.first_id is not None and early.first_id is not None
            assert late.first_id > early.first_id, "a snapshot merged by the gateway"
            end = max(late.last or 0, tagged.last or 0)
            while (early.last or 0) < end:
                await _read_book(first, early, 1)
        for reader in (late, tagged):
            for update_id, state in reader.states.items():
                assert state == early.states[update_id], f"the same book at {update_id}"
    harness.assert_no_violation()


@pytest.mark.slow
async def test_ccxt_pro_okx_watches_the_order_book_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "okx", [OKX_BOOK], rate_hz=20)
    exchange = ccxtpro.okx({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["rest"] = harness.mock.http_url
    exchange.urls["api"]["ws"] = ws_base + "/ws/v5"
    try:
        await _ccxt_book_moves(exchange)
    finally:
        await exchange.close()
    assert sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams) == [OKX_BOOK]
    harness.assert_no_violation()


@pytest.mark.slow
async def test_ccxt_pro_bybit_watches_the_order_book_through_the_gateway(harness):
    _, ws_base = await _gateway(harness, "bybit", [BYBIT_BOOK], rate_hz=20)
    exchange = ccxtpro.bybit({"options": {"fetchMarkets": {"types": ["spot"]}}})
    for kind in ("spot", "public"):
        exchange.urls["api"][kind] = harness.mock.http_url
    exchange.urls["api"]["ws"]["public"]["spot"] = ws_base + "/v5/public/spot"
    try:
        await _ccxt_book_moves(exchange)
    finally:
        await exchange.close()
    assert sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams) == [BYBIT_BOOK]
    harness.assert_no_violation()


async def _ccxt_book_moves(exchange: Any) -> None:
    """ccxt builds the book (OKX: only from a snapshot, then updates whose prevSeqId chains,
    else it raises InvalidNonce) and it moves, best bid below best ask."""
    first = await asyncio.wait_for(exchange.watch_order_book("BTC/USDT"), WATCH_S)
    start = first["nonce"]
    book = first
    for _ in range(20):
        book = await asyncio.wait_for(exchange.watch_order_book("BTC/USDT"), WATCH_S)
        bids, asks = book["bids"], book["asks"]
        assert bids and asks and bids[0][0] < asks[0][0]
        assert [b[0] for b in bids] == sorted((b[0] for b in bids), reverse=True)
        assert [a[0] for a in asks] == sorted(a[0] for a in asks)
        assert all(level[1] > 0 for level in bids + asks), "levels of size 0 were removed"
    assert book["symbol"] == "BTC/USDT" and (start is None or book["nonce"] > start)


@pytest.mark.slow
async def test_a_relayed_book_starts_with_a_snapshot_each_time_a_consumer_wants_it(
    harness, tmp_path
):
    await harness.start_mock(
        "okx", shrunk("okx", connectionAttempts=(20, 20.0)), rate_per_stream_hz=RATE_HZ
    )
    token = tmp_path / "peer-token"
    token.write_text("peer-token-0123456789abcdef\n")
    held = [[OKX_BOOK], ["tickers:ETH-USDT"]]
    gateways = []
    for ordinal, streams in enumerate(held):
        conns = [ConnectionPlan(id=f"p{ordinal}", address="a0", streams=streams)]
        plan = pod_plan(harness.gateway_profile(), conns,
                        addresses=[bind_address(0, harness.egress_check())], margin_s=0.2,
                        ordinal=ordinal)  # fmt: skip
        path = harness.write_plan(plan, f"plan-{ordinal}.json")
        gateways.append(harness.gateway(path, ordinal=ordinal, state=f"state-{ordinal}"))
    for gw in gateways:
        peers = [a for other in gateways if other is not gw for a in ("--peer", other.base_url)]
        gw.extra_args += ["--peer-token-file", str(token), *peers]
        gw.start()
    for gw, streams in zip(gateways, held, strict=True):
        await harness.wait_live(gw, len(streams), timeout_s=30)
    relaying = gateways[1]

    async def announced() -> bool:
        st = await harness.status(relaying)
        peers = (st or {}).get("relay", {}).get("peers", {})
        return bool(peers.get(gateways[0].base_url, {}).get("holds"))

    await wait_for(announced, 20, "pod 1's link to pod 0 up with its announcement")
    ws_base = relaying.base_url.replace("http://", "ws://")
    for _ in range(2):  # the second time, the relayed book was forgotten and starts over
        reader = BookReader("okx")
        async with await _subscribe_native(ws_base, harness.http, "okx") as ws:
            await _read_book(ws, reader, DEFAULT_MAX_DELTAS + 50)
    assert sorted(s for c in harness.mock.websockets(GW_IP) for s in c.streams) == sorted(
        s for streams in held for s in streams
    )
    harness.assert_no_violation()
