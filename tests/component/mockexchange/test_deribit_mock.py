"""Deribit JSON-RPC on the mock: results listing the channels subscribed, opt-in test_request
heartbeats, complete payloads, books whose change_ids chain, JSON-RPC errors, and the credit
bucket (token bucket with burst) one under / one over."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from mockexchange_clients import client_from, receive_text, receive_until, wait_closed

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import deribit
from connquota.exchanges.dialects.base import Data
from connquota.exchanges.orderbook import L2Book

PATH = "/ws/api/v2"
LOOSE = ["messagesPerConnection=500/1"]
TRADE_FIELDS = {"trade_seq", "trade_id", "timestamp", "tick_direction", "price", "mark_price",
                "instrument_name", "index_price", "direction", "amount", "contracts"}  # fmt: skip
TICKER_FIELDS = {"timestamp", "stats", "state", "settlement_price", "open_interest",
                 "min_price", "max_price", "mark_price", "last_price", "interest_value",
                 "instrument_name", "index_price", "funding_8h", "estimated_delivery_price",
                 "current_funding", "best_bid_price", "best_bid_amount", "best_ask_price",
                 "best_ask_amount"}  # fmt: skip
CHART_FIELDS = {"volume", "tick", "open", "low", "high", "cost", "close"}


def _answer(rid: int):
    return lambda m: isinstance(m, dict) and m.get("id") == rid


async def test_results_list_the_channels_subscribed_and_errors_are_json_rpc(start_mock) -> None:
    mx = await start_mock("deribit", limits=LOOSE, rate_per_stream_hz=0.01)
    async with client_from("127.0.0.60") as client:
        ws = await client.ws_connect(mx.url + PATH)
        channels = ["trades.BTC-PERPETUAL.100ms", "book.BTC-PERPETUAL.raw", "nope.X", "ticker.ETH-PERPETUAL.agg2"]  # fmt: skip
        await ws.send_str(deribit.build_subscribe(channels, 4235))
        reply = (await receive_until(ws, _answer(4235)))[-1]
        assert reply["jsonrpc"] == "2.0" and {"usIn", "usOut", "usDiff"} <= set(reply)
        # an unknown channel (and raw, for authorised users only) is left out, not refused
        assert reply["result"] == ["trades.BTC-PERPETUAL.100ms", "ticker.ETH-PERPETUAL.agg2"]
        await ws.send_str(deribit.build_unsubscribe(["trades.BTC-PERPETUAL.100ms", "x"], 2))
        assert (await receive_until(ws, _answer(2)))[-1]["result"] == ["trades.BTC-PERPETUAL.100ms"]
        await ws.send_str(deribit.build_ping(3))
        assert (await receive_until(ws, _answer(3)))[-1]["result"] == {"version": "1.2.26"}
        bad = '{"jsonrpc":"2.0","id":5,"method":"public/subscribe","params":{"channels":"x"}}'
        await ws.send_str(bad)
        error = (await receive_until(ws, _answer(5)))[-1]["error"]
        assert error == {"code": -32602, "message": "Invalid params",
                         "data": {"reason": "value must be a list", "param": "channels"}}  # fmt: skip
        await ws.send_str('{"jsonrpc":"2.0","method":"public/test"}')  # no id: rejected
        no_id = await receive_until(ws, lambda m: isinstance(m, dict) and "error" in m)
        assert no_id[-1]["error"]["code"] == -32600 and no_id[-1]["id"] is None
        await ws.send_str(deribit.build_set_heartbeat(30, 6).replace('"interval":30', '"interval":5'))  # fmt: skip
        assert (await receive_until(ws, _answer(6)))[-1]["error"]["code"] == -32602
        assert not ws.closed, "refused requests keep the connection"
        await ws.close()
    assert mx.violations() == []


async def test_heartbeats_are_opt_in_and_an_unanswered_test_request_closes(start_mock) -> None:
    # 30 s interval, 60 s timeout at scale 30: 1 s and 2 s
    mx = await start_mock("deribit", limits=LOOSE, time_scale=30, rate_per_stream_hz=0.01)
    async with client_from("127.0.0.61") as client:
        ws = await client.ws_connect(mx.url + PATH)
        await ws.send_str(deribit.build_set_heartbeat(30, 1))
        assert (await receive_until(ws, _answer(1)))[-1]["result"] == "ok"
        for n in range(3):  # answered: the connection stays
            frames = await receive_until(ws, lambda m: m.get("method") == "heartbeat", 3)
            assert frames[-1] == json.loads(deribit.build_heartbeat("test_request"))
            await ws.send_str(deribit.build_ping(10 + n))
            await receive_until(ws, _answer(10 + n))
        await receive_until(ws, lambda m: m.get("method") == "heartbeat", 3)
        assert await wait_closed(ws, timeout_s=5) == 1000  # not answered
        quiet = await client.ws_connect(mx.url + PATH)  # no set_heartbeat: never asked
        try:
            await asyncio.wait_for(receive_text(quiet, 2.5), 3)
            raise AssertionError("a frame without heartbeats set")
        except TimeoutError:
            pass
        assert not quiet.closed
        await quiet.close()
    assert mx.violations() == []


async def test_every_channel_carries_its_documented_fields_and_books_chain(start_mock) -> None:
    mx = await start_mock("deribit", limits=LOOSE, rate_per_stream_hz=40)
    streams = ["trades.BTC-PERPETUAL.100ms", "ticker.BTC-PERPETUAL.100ms",
               "chart.trades.BTC-PERPETUAL.1", "book.BTC-PERPETUAL.100ms"]  # fmt: skip
    seen: dict[str, list[dict]] = {}
    async with client_from("127.0.0.62") as client:
        ws = await client.ws_connect(mx.url + PATH)
        await ws.send_str(deribit.build_subscribe(streams, 1))
        while any(len(seen.get(s, [])) < 40 for s in streams):
            event = deribit.parse_server_message(await receive_text(ws))
            if isinstance(event, Data):
                seen.setdefault(event.stream, []).append(event.payload["params"]["data"])
        await ws.close()
    for trade_list in seen["trades.BTC-PERPETUAL.100ms"]:
        (trade,) = trade_list
        assert set(trade) >= TRADE_FIELDS and trade["instrument_name"] == "BTC-PERPETUAL"
    seqs = [t[0]["trade_seq"] for t in seen["trades.BTC-PERPETUAL.100ms"]]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "trade_seq is consecutive"
    for ticker in seen["ticker.BTC-PERPETUAL.100ms"]:
        assert set(ticker) >= TICKER_FIELDS and ticker["best_bid_price"] < ticker["best_ask_price"]
    for candle in seen["chart.trades.BTC-PERPETUAL.1"]:
        assert set(candle) >= CHART_FIELDS and candle["tick"] % 60_000 == 0
        assert candle["low"] <= min(candle["open"], candle["close"]) <= candle["high"]
    books = seen["book.BTC-PERPETUAL.100ms"]
    assert books[0]["type"] == "snapshot" and "prev_change_id" not in books[0]
    assert {b["type"] for b in books[1:]} == {"change"}
    book = L2Book()
    for prev, message in itertools.pairwise(books):
        assert message["prev_change_id"] == prev["change_id"], "no message missed"
    for message in books:
        for side, levels in (("bids", message["bids"]), ("asks", message["asks"])):
            assert all(a in ("new", "change", "delete") for a, _, _ in levels)
            entries = [[str(p), "0" if a == "delete" else str(q)] for a, p, q in levels]
            book.apply(entries, []) if side == "bids" else book.apply([], entries)
        bids, asks = book.sorted_bids(), book.sorted_asks()
        assert float(bids[0][0]) < float(asks[0][0]), "the book never crosses"


async def test_credits_a_burst_passes_and_beyond_it_10028_closes_the_session(start_mock) -> None:
    # 500 credits a request, 50,000 at most, 10,000 a second: 100 at once, 20 a second after
    mx = await start_mock("deribit", limits=LOOSE)
    async with client_from("127.0.0.63") as client:
        conns = [await client.ws_connect(mx.url + PATH) for _ in range(2)]
        for n in range(100):
            await conns[n % 2].send_str(deribit.build_ping(n))
        answers = []
        for ws in conns:
            for _ in range(50):
                answers.append(json.loads(await receive_text(ws)))
        assert all("result" in a for a in answers), "the burst passes"
        assert mx.violations() == []
        for n in range(100, 120):  # 20 more at once: more than 1 s of refill
            await conns[0].send_str(deribit.build_ping(n))
        frames = await receive_until(conns[0], lambda m: "error" in m, timeout_s=3)
        assert frames[-1]["error"] == {"code": 10028, "message": "too_many_requests"}
        assert await wait_closed(conns[0]) == 1000, "the session is terminated"
        for ws in conns:
            await ws.close()
    assert {v.limit for v in mx.violations()} == {"messagesPerAccount"}
    assert mx.peak(LimitName.MESSAGES_PER_ACCOUNT, mx.violations()[0].scope) > 100


async def test_a_broken_frame_gets_a_parse_error(start_mock) -> None:
    mx = await start_mock("deribit", limits=LOOSE)
    async with client_from("127.0.0.64") as client:
        ws = await client.ws_connect(mx.url + PATH)
        await ws.send_str("{broken")
        reply = json.loads(await receive_text(ws))
        assert reply["error"]["code"] == -32700
        await ws.send_bytes(b"\x00\x01")
        assert json.loads(await receive_text(ws))["error"]["code"] == -32700
        assert not ws.closed
        await ws.close()
    assert mx.malformed_received == 2


async def test_message_rate_at_the_limit_passes_and_one_more_gets_10028(start_mock) -> None:
    mx = await start_mock("deribit", limits=["messagesPerConnection=3/30"])
    async with client_from("127.0.0.65") as client:
        ws = await client.ws_connect(mx.url + PATH)
        for n in range(3):
            await ws.send_str(deribit.build_ping(n))
            assert json.loads(await receive_text(ws))["result"] == {"version": "1.2.26"}
        assert mx.violations() == []
        await ws.send_str(deribit.build_ping(4))
        reply = json.loads(await receive_text(ws))
        assert reply["error"] == {"code": 10028, "message": "too_many_requests"}
        assert await wait_closed(ws) == 1000, "the session is terminated"
    assert [v.limit for v in mx.violations()] == ["messagesPerConnection"]
    assert mx.peak(LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION) == 4


async def test_max_connection_age_closes_at_the_limit(start_mock) -> None:
    mx = await start_mock("deribit", limits=["maxConnectionAge=60", *LOOSE], time_scale=60)
    async with client_from("127.0.0.66") as client:
        ws = await client.ws_connect(mx.url + PATH)
        started = time.monotonic()
        await ws.send_str(deribit.build_subscribe(["trades.BTC-PERPETUAL.100ms"], 1))
        code = await wait_closed(ws, timeout_s=4)
        closed = time.monotonic() - started
    assert code == 1001
    assert 0.8 < closed < 2.5, "60 s at scale 60"
