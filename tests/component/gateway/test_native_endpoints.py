"""The gateway speaks each exchange's own market-data protocol to its consumers (issue 12 §2):
paths, requests, acks, errors, payload wrapping and pings as the exchange documents them, and
never an upstream subscription a consumer asked for outside the plan."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from conftest import GW_IP, base_plan, shrunk, wait_for

RECEIVE_S = 10.0


async def _json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=RECEIVE_S)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def _until(ws: aiohttp.ClientWebSocketResponse, match, what: str, frames: int = 200) -> Any:
    """The first frame `match` accepts, reading at most `frames` frames."""
    for _ in range(frames):
        msg = await ws.receive(timeout=RECEIVE_S)
        assert msg.type == aiohttp.WSMsgType.TEXT, (what, msg)
        body = msg.data if msg.data in ("pong", "ping") else json.loads(msg.data)
        if match(body):
            return body
    raise AssertionError(f"no {what} in {frames} frames")


async def _served(harness, profile: str, conns: int = 2, per_conn: int = 2):
    # a short attempt window: the gateway's fresh start waits one window before its first SYN
    await harness.start_mock(
        profile, shrunk(profile, connectionAttempts=(10, 20.0)), rate_per_stream_hz=10
    )
    plan, names = base_plan(harness, profile, conns=conns, per_conn=per_conn)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    return gw, names


def _upstream(harness) -> set[str]:
    return {s for c in harness.mock.websockets(GW_IP) for s in c.streams}


async def test_binance_raw_combined_and_subscribe_requests_as_binance_serves_them(harness):
    gw, names = await _served(harness, "binance-spot")
    a, b, c, _ = names
    ws_base = gw.base_url.replace("http://", "ws://")
    http = harness.http
    # /ws/<stream>: raw payloads, the event itself
    async with http.ws_connect(f"{ws_base}/ws/{a}") as ws:
        event = await _json(ws)
        assert event["e"] == "trade" and event["s"] == a.split("@")[0].upper()
    # /stream?streams=a/b: the combined wrapper
    async with http.ws_connect(f"{ws_base}/stream?streams={a}/{b}") as ws:
        seen = set()
        while seen != {a, b}:
            frame = await _json(ws)
            assert set(frame) == {"stream", "data"} and frame["data"]["e"] == "trade"
            seen.add(frame["stream"])
    # /ws/<n> (what ccxt opens), then the documented requests
    async with http.ws_connect(f"{ws_base}/ws/7") as ws:
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": [a, c], "id": 1}))
        assert await _until(ws, lambda m: m.get("id") == 1, "ack") == {"result": None, "id": 1}
        await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 2}))
        listed = await _until(ws, lambda m: m.get("id") == 2, "list")
        assert listed == {"result": sorted([a, c]), "id": 2}
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["zzzusdt@trade"], "id": 3}))
        error = await _until(ws, lambda m: m.get("id") == 3, "error")
        assert error == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 3}
        assert isinstance(error["error"]["code"], int)  # ccxt parses it with int()
        await ws.send_str(json.dumps({"method": "SET_PROPERTY", "params": ["combined", True],
                                      "id": 4}))  # fmt: skip
        await _until(ws, lambda m: m.get("id") == 4, "set-property ack")
        wrapped = await _until(ws, lambda m: "stream" in m, "a combined frame")
        assert wrapped["stream"] in (a, c) and wrapped["data"]["e"] == "trade"
        await ws.send_str(json.dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": 5}))
        assert await _until(ws, lambda m: m.get("id") == 5, "get") == {"result": True, "id": 5}
        await ws.send_str(json.dumps({"method": "UNSUBSCRIBE", "params": [a, c], "id": 6}))
        assert await _until(ws, lambda m: m.get("id") == 6, "unsub") == {"result": None, "id": 6}
        await ws.send_str("{not json")
        bad = await _until(ws, lambda m: "error" in m, "a bad-JSON error")
        assert bad["error"]["code"] == 3
        # bounded: the 11th request within a second gets Binance's too-many-requests code
        for i in range(12):
            await ws.send_str(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 100 + i}))
        limited = await _until(ws, lambda m: m.get("error", {}).get("code") == -1003, "limit")
        assert "per second" in limited["error"]["msg"]
    # a stream outside the plan in the URL: refused at the handshake, as Binance does
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{ws_base}/ws/zzzusdt@trade")
    assert refused.value.status == 400
    # consumers never change what the exchange sees
    assert _upstream(harness) == set(names)
    harness.assert_no_violation()


async def test_okx_public_channels_acks_errors_and_text_pings(harness):
    gw, names = await _served(harness, "okx")
    channel, inst = names[0].split(":")
    ws_base = gw.base_url.replace("http://", "ws://")
    async with harness.http.ws_connect(f"{ws_base}/ws/v5/public") as ws:
        await ws.send_str("ping")
        assert await _until(ws, lambda m: m == "pong", "pong") == "pong"
        args = [{"channel": channel, "instId": inst}, {"channel": "tickers", "instId": "ZZZ-USDT"}]
        await ws.send_str(json.dumps({"id": "42", "op": "subscribe", "args": args}))
        error = await _until(ws, lambda m: m.get("event") == "error", "error")
        assert error["code"] == "60018" and "ZZZ-USDT" in error["msg"] and error["id"] == "42"
        ack = await _until(ws, lambda m: m.get("event") == "subscribe", "ack")
        assert ack["arg"] == args[0] and ack["id"] == "42" and ack["connId"]
        data = await _until(ws, lambda m: "data" in m, "data")
        assert data["arg"]["instId"] == inst and isinstance(data["data"], list)
        await ws.send_str(json.dumps({"op": "unsubscribe", "args": args[:1]}))
        assert (await _until(ws, lambda m: m.get("event") == "unsubscribe", "unsub"))["arg"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await harness.http.ws_connect(f"{ws_base}/ws/v5/private")
    assert refused.value.status == 404
    assert _upstream(harness) == set(names)
    harness.assert_no_violation()


async def test_bybit_public_category_acks_errors_and_json_pings(harness):
    gw, names = await _served(harness, "bybit")
    ws_base = gw.base_url.replace("http://", "ws://")
    async with harness.http.ws_connect(f"{ws_base}/v5/public/spot") as ws:
        await ws.send_str(json.dumps({"req_id": "p1", "op": "ping"}))
        pong = await _until(ws, lambda m: m.get("ret_msg") == "pong", "pong")
        assert pong["success"] is True and pong["req_id"] == "p1"
        await ws.send_str(json.dumps({"req_id": "s1", "op": "subscribe", "args": names[:2]}))
        ack = await _until(ws, lambda m: m.get("req_id") == "s1", "ack")
        assert ack["success"] is True and ack["op"] == "subscribe"
        data = await _until(ws, lambda m: "topic" in m, "data")
        assert data["topic"] in names[:2] and data["data"]
        args = ["publicTrade.ZZZUSDT"]
        await ws.send_str(json.dumps({"req_id": "s2", "op": "subscribe", "args": args}))
        error = await _until(ws, lambda m: m.get("req_id") == "s2", "error")
        assert error["success"] is False
        assert error["ret_msg"] == "error:handler not found,topic:publicTrade.ZZZUSDT"
    assert _upstream(harness) == set(names)
    harness.assert_no_violation()


async def test_a_consumer_on_the_exchange_protocol_and_one_on_v1_get_the_same_messages(harness):
    gw, names = await _served(harness, "binance-spot", conns=1, per_conn=1)
    (name,) = names
    ws_base = gw.base_url.replace("http://", "ws://")
    async with (
        harness.http.ws_connect(f"{ws_base}/ws/{name}") as native,
        harness.http.ws_connect(gw.ws_url) as tagged,
    ):
        await tagged.send_str(json.dumps({"op": "subscribe", "streams": [name]}))
        await _until(tagged, lambda m: m.get("op") == "subscribed", "subscribed")
        first = await _until(tagged, lambda m: "seq" in m, "a tagged frame")
        # the native consumer sees the same payload bytes, untagged
        event = await _until(native, lambda m: m.get("t") == first["data"]["t"], "that trade")
        assert event == first["data"]

    async def no_consumers():
        st = await harness.status(gw)
        return st["consumers"] == 0

    await wait_for(no_consumers, 10, "both consumers forgotten")
