"""Binance order books on the mock (issue 12 §3): one book per symbol behind the diff depth
streams (`<symbol>@depth`, `<symbol>@depth@100ms`), the partial book streams
(`<symbol>@depth5|10|20[@100ms]`) and REST `GET /api/v3/depth`, numbered so that Binance's
"How to manage a local order book correctly" procedure rebuilds the mock's book exactly."""

from __future__ import annotations

import itertools
import json
from typing import Any

import aiohttp
from mockexchange_clients import client_from, receive_text

from connquota.exchanges.orderbook import L2Book

SPOT_DIFF_FIELDS = {"e", "E", "s", "U", "u", "b", "a"}
"""Every field of spot's documented Diff. Depth Stream event (web-socket-streams.md)."""


async def _events(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    return [json.loads(await receive_text(ws)) for _ in range(count)]


def _apply(book: L2Book, event: dict[str, Any]) -> None:
    book.apply(event["b"], event["a"])


async def _local_book(mx, client, stream: str, symbol: str) -> tuple[L2Book, int, Any]:
    """Binance's documented procedure: open the stream, buffer events and note the first U,
    fetch the REST snapshot (again while its lastUpdateId < that U), drop buffered events
    with u <= lastUpdateId, check the first left has U <= lastUpdateId + 1 <= u, set the book
    to the snapshot and apply every buffered event. Returns (book, its update id, the ws)."""
    ws = await client.ws_connect(mx.url + "/ws/" + stream)
    buffered = await _events(ws, 3)
    first_u = buffered[0]["U"]
    for _ in range(50):  # bounded: the snapshot is at or after the first buffered event
        async with client.get(f"{mx.http_url}/api/v3/depth?symbol={symbol}&limit=5000") as r:
            assert r.status == 200
            snapshot = await r.json()
        if snapshot["lastUpdateId"] >= first_u:
            break
        buffered += await _events(ws, 1)
    else:
        raise AssertionError("no REST snapshot at or after the first buffered event")
    last_id = snapshot["lastUpdateId"]
    while buffered[-1]["u"] <= last_id:
        buffered += await _events(ws, 1)
    kept = [e for e in buffered if e["u"] > last_id]
    assert kept[0]["U"] <= last_id + 1 <= kept[0]["u"]
    book = L2Book()
    book.apply(snapshot["bids"], snapshot["asks"])
    for event in kept:
        assert event["U"] == last_id + 1, "every event's U follows the previous u"
        _apply(book, event)
        last_id = event["u"]
    return book, last_id, ws


async def test_a_book_built_by_binances_procedure_equals_the_mocks_book(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=50)
    async with client_from("127.0.0.60") as client:
        book, last_id, ws = await _local_book(mx, client, "btcusdt@depth@100ms", "BTCUSDT")
        for event in await _events(ws, 60):
            assert set(event) == SPOT_DIFF_FIELDS and event["s"] == "BTCUSDT"
            assert event["e"] == "depthUpdate" and event["U"] == last_id + 1
            assert event["u"] >= event["U"]
            _apply(book, event)
            last_id = event["u"]
        mock = mx.books.binance("BTCUSDT")
        # in-process: no await between the last event read and this comparison, and the
        # mock's book moved to this event's u at most (nothing else moves BTCUSDT)
        while mock.update_id != last_id:
            event = json.loads(await receive_text(ws))
            assert event["U"] == last_id + 1
            _apply(book, event)
            last_id = event["u"]
        assert book.bids == mock.book.bids and book.asks == mock.book.asks
        assert len(book.bids) > 50 and len(book.asks) > 50
        best_bid, best_ask = book.sorted_bids(1)[0][0], book.sorted_asks(1)[0][0]
        assert float(best_bid) < float(best_ask)
        await ws.close()


async def test_depth_and_depth_100ms_share_one_book_and_each_numbers_without_gaps(
    start_mock,
) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=40)
    async with client_from("127.0.0.61") as client:
        ws = await client.ws_connect(mx.url + "/stream?streams=ethusdt@depth/ethusdt@depth@100ms")
        by_stream: dict[str, list[dict[str, Any]]] = {
            "ethusdt@depth": [],
            "ethusdt@depth@100ms": [],
        }
        while min(len(v) for v in by_stream.values()) < 30:
            frame = json.loads(await receive_text(ws))
            by_stream[frame["stream"]].append(frame["data"])
        await ws.close()
    for events in by_stream.values():
        for previous, event in itertools.pairwise(events):
            assert event["U"] == previous["u"] + 1
    # one book: the update ids of the two streams interleave over one numbering
    ids = {u for events in by_stream.values() for e in events for u in (e["U"], e["u"])}
    assert max(ids) - min(ids) < 10 * sum(len(v) for v in by_stream.values())


async def test_partial_book_streams_carry_the_top_levels_with_last_update_id(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=40)
    async with client_from("127.0.0.62") as client:
        for stream, levels in (("solusdt@depth5", 5), ("solusdt@depth10@100ms", 10),
                               ("solusdt@depth20", 20)):  # fmt: skip
            ws = await client.ws_connect(mx.url + "/ws/" + stream)
            events = await _events(ws, 5)
            await ws.close()
            ids = [e["lastUpdateId"] for e in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            for event in events:
                assert set(event) == {"lastUpdateId", "bids", "asks"}
                assert len(event["bids"]) == levels and len(event["asks"]) == levels
                bids = [float(p) for p, _ in event["bids"]]
                asks = [float(p) for p, _ in event["asks"]]
                assert bids == sorted(bids, reverse=True) and asks == sorted(asks)
                assert bids[0] < asks[0]
        # the REST snapshot reads the same book: its top levels are a push's when nothing
        # moved the book between the two (bounded retries: the pump runs during the request)
        mock = mx.books.binance("SOLUSDT")
        ws = await client.ws_connect(mx.url + "/ws/solusdt@depth20")
        for _ in range(20):
            event = json.loads(await receive_text(ws))
            if event["lastUpdateId"] != mock.update_id:
                continue
            async with client.get(f"{mx.http_url}/api/v3/depth?symbol=SOLUSDT&limit=20") as r:
                snapshot = await r.json()
            if snapshot["lastUpdateId"] == event["lastUpdateId"]:
                assert snapshot["bids"] == event["bids"] and snapshot["asks"] == event["asks"]
                break
        else:
            raise AssertionError("no push matched a REST snapshot at the same lastUpdateId")
        await ws.close()


async def test_rest_depth_validates_symbol_and_limit_as_binance_does(start_mock) -> None:
    mx = await start_mock("binance")
    async with client_from("127.0.0.63") as client:
        async with client.get(f"{mx.http_url}/api/v3/depth") as r:
            assert r.status == 400 and (await r.json())["code"] == -1102
        async with client.get(f"{mx.http_url}/api/v3/depth?symbol=NOPE") as r:
            assert r.status == 400 and (await r.json())["code"] == -1121
        async with client.get(f"{mx.http_url}/api/v3/depth?symbol=BTCUSDT") as r:
            body = await r.json()
        assert set(body) == {"lastUpdateId", "bids", "asks"}
        assert len(body["bids"]) == 100 and len(body["asks"]) == 100  # default limit 100
        async with client.get(f"{mx.http_url}/api/v3/depth?symbol=BTCUSDT&limit=7") as r:
            body = await r.json()
        assert len(body["bids"]) == 7 and len(body["asks"]) == 7
