"""Malformed and hostile consumer frames against a live gateway, for every consumer protocol it
serves (issue 17, "Bad input"): each gets a clear error frame or close code, the gateway stays
up, and a well-behaved `/v1/ws` consumer on the same gateway keeps getting consecutive `seq`.

The cases (`CASES`, per endpoint) are listed in docs/reliability.md ("Bad input").
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import Consumer, base_plan, gateway_metric, shrunk, wait_for

FLOOD = 2000
"""Subscribes sent back to back in the flood case (thousands per second)."""


def _v1_sub(names: list[str]) -> str:
    return json.dumps({"op": "subscribe", "streams": names, "id": 1})


def _binance_sub(names: list[str]) -> str:
    return json.dumps({"method": "SUBSCRIBE", "params": names, "id": 1})


def _okx_sub(names: list[str]) -> str:
    args = [dict(zip(("channel", "instId"), n.split(":", 1), strict=True)) for n in names]
    return json.dumps({"op": "subscribe", "args": args, "id": "1"})


def _bybit_sub(names: list[str]) -> str:
    return json.dumps({"op": "subscribe", "args": names, "req_id": "1"})


def _unknown_stream(profile: str) -> str:
    return {
        "binance-spot": "zzzusdt@trade",
        "okx": "tickers:ZZZ-USDT",
        "bybit": "publicTrade.ZZZUSDT",
    }[profile]


# (profile, path, subscribe builder, frame size cap (text frames above it close with 1009))
ENDPOINTS = [
    ("binance-spot", "/v1/ws", _v1_sub, 256 * 1024),
    ("binance-spot", "/ws", _binance_sub, 64 * 1024),
    ("binance-spot", "/stream", _binance_sub, 64 * 1024),
    ("okx", "/v1/ws", _v1_sub, 256 * 1024),
    ("okx", "/ws/v5/public", _okx_sub, 64 * 1024),
    ("bybit", "/v1/ws", _v1_sub, 256 * 1024),
    ("bybit", "/v5/public/spot", _bybit_sub, 64 * 1024),
]

CASES = [
    "bad JSON",
    "JSON array, not an object",
    "JSON number",
    "deeply nested JSON (30,000 levels)",
    "unknown op",
    "subscribe with wrong types",
    "unknown stream",
    "binary frame",
    "2,000 subscribes back to back",
    "oversized text frame (over the cap)",
    "invalid UTF-8 in a text frame",
]


def is_reply(doc: Any) -> bool:
    """A reply or error frame of any of the served protocols (not a data frame)."""
    if not isinstance(doc, dict) or "stream" in doc or "topic" in doc or "data" in doc:
        return False
    return any(k in doc for k in ("result", "error", "event", "success", "op"))


def is_error(doc: dict) -> bool:
    """An error frame of any of the served protocols, with a message saying why."""
    if isinstance(doc.get("error"), dict):  # /v1/ws and binance
        return bool(doc["error"].get("msg") or doc["error"].get("code"))
    if isinstance(doc.get("error"), str):  # a binary frame on a native endpoint
        return bool(doc["error"])
    if doc.get("event") == "error":  # okx
        return bool(doc.get("msg"))
    if doc.get("success") is False:  # bybit
        return bool(doc.get("ret_msg"))
    return False


async def next_reply(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5) -> dict:
    """The next reply frame (data frames skipped)."""
    while True:
        msg = await ws.receive(timeout=timeout_s)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a reply, got {msg.type}: {msg.data}"
        doc = json.loads(msg.data)
        if is_reply(doc):
            return doc


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout_s: float = 5) -> int | None:
    """Read until the gateway closes the connection; its close code."""
    while True:
        msg = await ws.receive(timeout=timeout_s)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code


async def still_answers(ws: aiohttp.ClientWebSocketResponse, sub: str) -> None:
    """The connection is open and answers a valid subscribe with an ack (after a flood, once
    the endpoint's per-second request budget has room again)."""

    async def acked() -> bool:
        await ws.send_str(sub)
        return not is_error(await next_reply(ws))

    await wait_for(acked, 10, "an ack for a valid subscribe", step_s=0.3)


async def run_cases(
    http: aiohttp.ClientSession,
    url: str,
    sub: Callable[[list[str]], str],
    cap: int,
    name: str,
    unknown: str,
) -> list[str]:
    """Every case of `CASES` against one endpoint; the outcome of each, for the report."""
    outcomes: list[str] = []
    ok_sub = sub([name])

    async def fresh() -> aiohttp.ClientWebSocketResponse:
        return await http.ws_connect(url, max_msg_size=0)

    ws = await fresh()
    for text in ("{not json", "[1, 2]", "42", "[" * 30_000 + "]" * 30_000, '{"op":"dance"}'):
        await ws.send_str(text)
        reply = await next_reply(ws)
        assert is_error(reply), f"{url} {text[:30]!r}: {reply}"
        outcomes.append(f"error frame {str(reply)[:60]}")
    # subscribe with wrong types
    if "/v1/ws" in url:
        bad = json.dumps({"op": "subscribe", "streams": [1, {"a": None}]})
    elif url.endswith(("/ws", "/stream")):
        bad = json.dumps({"method": "SUBSCRIBE", "params": [1, {}], "id": 1})
    else:
        bad = json.dumps({"op": "subscribe", "args": [1, None, {"channel": 5}]})
    await ws.send_str(bad)
    assert is_error(await next_reply(ws)), f"{url}: wrong types accepted"
    outcomes.append("error frame")
    await ws.send_str(sub([unknown]))
    for _ in range(3):  # /v1/ws acks the subscribe (empty) before its unknown_stream error
        reply = await next_reply(ws)
        if is_error(reply):
            break
    assert is_error(reply), f"{url}: an unknown stream was accepted: {reply}"
    outcomes.append("error frame")
    await ws.send_bytes(b"\x00\x01binary")
    assert is_error(await next_reply(ws)), f"{url}: binary frame not answered with an error"
    outcomes.append("error frame")
    await still_answers(ws, ok_sub)
    # a flood: every request gets an answer (acks, or the dialect's too-many-requests error)
    for _ in range(FLOOD):
        await ws.send_str(ok_sub)
    answers = errors = 0
    while answers < FLOOD:
        reply = await next_reply(ws, timeout_s=15)
        answers += 1
        errors += is_error(reply)
    outcomes.append(f"{FLOOD} answers, {errors} too-many-requests errors")
    await still_answers(ws, ok_sub)
    # oversized: above the frame cap the gateway closes with 1009 (message too big)
    await ws.send_str("x" * (cap + 1024))
    code = await closed_with(ws)
    assert code == 1009, f"{url}: oversized frame closed with {code}"
    outcomes.append("close 1009")
    # invalid UTF-8 in a text frame: close 1007 (invalid frame payload data)
    ws = await fresh()
    await ws._writer.send_frame(b'{"op":"\xff\xfe"}', aiohttp.WSMsgType.TEXT)
    code = await closed_with(ws)
    assert code == 1007, f"{url}: invalid UTF-8 closed with {code}"
    outcomes.append("close 1007")
    return outcomes


@pytest.mark.parametrize("profile", ["binance-spot", "okx", "bybit"])
async def test_hostile_consumer_frames_get_clear_answers_and_cost_others_nothing(harness, profile):
    await harness.start_mock(profile, shrunk(profile, connectionAttempts=(50, 40.0)))
    plan, names = base_plan(harness, profile, conns=2, per_conn=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    observer = Consumer(harness.http, gw.ws_url)
    await observer.connect(names)
    await wait_for(lambda: observer.streams_seen() >= set(names), 20, "observer frames")
    base = gw.ws_url.rsplit("/v1/ws", 1)[0]
    cases = 0
    for ep_profile, path, sub, cap in ENDPOINTS:
        if ep_profile != profile:
            continue
        outcomes = await run_cases(
            harness.http, base + path, sub, cap, names[0], _unknown_stream(profile)
        )
        assert len(outcomes) == len(CASES), outcomes
        cases += len(outcomes)
        st = await harness.status(gw)
        assert st is not None and gw.alive(), f"gateway down after {path}"
    print(f"{profile}: {cases} hostile consumer cases")
    # every refusal was counted, by endpoint and reason (never the request's content)
    refused = await gateway_metric(harness, gw, "consumer_requests_refused_total")
    reasons = {
        (endpoint, reason)
        for labels in refused
        for endpoint, reason in [re.findall(r'"([^"]*)"', labels)]
    }
    v1 = {"bad_json", "bad_request", "unknown_op", "unknown_stream", "binary"}
    native = {"invalid_request", "unknown_stream", "binary", "too_many_requests"}
    assert {("v1", r) for r in v1} | {("native", r) for r in native} <= reasons, refused
    # the well-behaved consumer keeps getting consecutive seq on every stream
    seen = {s: len(q) for s, q in observer.frames.items()}
    await wait_for(
        lambda: all(len(observer.frames[s]) > seen[s] + 2 for s in names), 20, "frames after"
    )
    assert observer.close_code is None and not observer.errors, observer.errors
    for stream in names:
        seqs = observer.frames[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: gap {seqs[:50]}"
    st = await harness.status(gw)
    assert st is not None and st["streams"]["live"] == len(names)
    await observer.close()
    assert gw.alive()
    logs = harness.logs()
    assert "Traceback" not in logs and "Error handling request" not in logs, logs[-3000:]
    harness.assert_no_violation()
