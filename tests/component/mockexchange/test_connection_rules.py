"""Per-connection limits (messages, control requests, streams, args) and malformed requests."""

from __future__ import annotations

import json

import aiohttp
import pytest
from mockexchange_clients import (
    DIALECTS,
    PUBLIC_PATH,
    WIRE,
    client_from,
    receive_text,
    receive_until,
    sample_streams,
    wait_closed,
)

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import binance, bybit, okx

CONNECTION = LimitScope.CONNECTION


async def test_binance_five_messages_per_second_including_pings_and_pongs_pass_the_sixth_disconnects(
    start_mock,
) -> None:
    mx = await start_mock("binance", limits=["messagesPerConnection=5/1"])
    async with client_from("127.0.0.20") as client:
        ws = await client.ws_connect(mx.url + "/ws", autoping=False)
        await ws.ping(b"a")
        await ws.ping(b"b")
        await ws.pong(b"")
        await ws.send_str(binance.build_list_subscriptions(1))
        await ws.send_str(binance.build_subscribe(["btcusdt@trade"], 2))
        replies = await receive_until(ws, lambda m: isinstance(m, dict) and m.get("id") == 2)
        assert {"result": [], "id": 1} in replies
        assert mx.violations() == []
        assert mx.peak(LimitName.MESSAGES_PER_CONNECTION, CONNECTION) == 5
        await ws.ping(b"c")
        assert await wait_closed(ws) == 1008
    (violation,) = mx.violations()
    assert violation.limit == "messagesPerConnection" and violation.value == 6


async def test_binance_repeated_disconnects_for_message_rate_ban_the_ip(start_mock) -> None:
    mx = await start_mock("binance", limits=["messagesPerConnection=1/1"], ban_after_violations=2)
    async with client_from("127.0.0.21") as client:
        for _ in range(2):
            ws = await client.ws_connect(mx.url + "/ws", autoping=False)
            await ws.send_str(binance.build_list_subscriptions(1))
            await ws.send_str(binance.build_list_subscriptions(2))
            assert await wait_closed(ws) == 1008
        with pytest.raises(aiohttp.WSServerHandshakeError) as banned:
            await client.ws_connect(mx.url + "/ws")
    assert banned.value.status == 418


async def test_okx_control_requests_up_to_the_limit_are_acked_and_the_next_gets_60014(
    start_mock,
) -> None:
    mx = await start_mock(
        "okx", limits=["controlMessagesPerConnection=4/3600", "messagesPerConnection=50/1"]
    )
    async with client_from("127.0.0.22") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/public")
        for n, stream in enumerate(sample_streams("okx", 4)):
            await ws.send_str(okx.build_subscribe([stream], f"r{n}"))
            ack = json.loads(await receive_text(ws))
            assert ack["event"] == "subscribe" and ack["id"] == f"r{n}"
        await ws.send_str("ping")
        assert await receive_until(ws, lambda m: m == "pong")
        assert mx.violations() == []
        assert mx.peak_fraction(LimitName.CONTROL_MESSAGES_PER_CONNECTION, CONNECTION) == 1.0
        await ws.send_str(okx.build_unsubscribe(sample_streams("okx", 1), "r9"))
        error = (
            await receive_until(ws, lambda m: isinstance(m, dict) and m.get("event") == "error")
        )[-1]
        assert error["code"] == "60014" and error["msg"] == "Requests too frequent"
        assert not ws.closed, "OKX answers with an error and keeps the connection"
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["controlMessagesPerConnection"]


@pytest.mark.parametrize("dialect", ["okx", "bybit"])
async def test_message_rate_over_the_limit_gets_an_error_reply(start_mock, dialect) -> None:
    mx = await start_mock(dialect, limits=["messagesPerConnection=3/30"])
    wire = WIRE[dialect]
    async with client_from("127.0.0.23") as client:
        ws = await client.ws_connect(mx.url + PUBLIC_PATH[dialect])
        for n in range(3):
            await ws.send_str(wire.build_ping(f"{n}"))
            await receive_text(ws)
        assert mx.violations() == []
        await ws.send_str(wire.build_ping("4"))
        reply = json.loads(await receive_text(ws))
        assert reply.get("code") == "60014" or reply.get("success") is False
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["messagesPerConnection"]


async def test_binance_streams_in_the_url_over_the_limit_are_refused_with_400(start_mock) -> None:
    mx = await start_mock("binance", limits=["streamsPerConnection=3"])
    async with client_from("127.0.0.24") as client:
        ok = await client.ws_connect(
            mx.url + binance.combined_stream_path(sample_streams("binance", 3))
        )
        await ok.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(
                mx.url + binance.combined_stream_path(sample_streams("binance", 4))
            )
    assert refused.value.status == 400
    assert mx.peak(LimitName.STREAMS_PER_CONNECTION, CONNECTION) == 4


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_streams_per_connection_at_the_limit_pass_and_one_more_is_refused(
    start_mock, dialect
) -> None:
    mx = await start_mock(dialect, limits=["streamsPerConnection=3", "messagesPerConnection=50/1"])
    wire = WIRE[dialect]
    path = "/ws" if dialect == "binance" else PUBLIC_PATH[dialect]
    async with client_from("127.0.0.25") as client:
        ws = await client.ws_connect(mx.url + path)
        await ws.send_str(wire.build_subscribe(sample_streams(dialect, 3), 1))
        await receive_text(ws)
        assert mx.violations() == []
        await ws.send_str(wire.build_subscribe(sample_streams(dialect, 1, start=3), 2))
        if dialect == "okx":
            assert await wait_closed(ws) == 4009
        elif dialect == "kraken":  # status, then one ack per symbol, then the error ack
            frames = await receive_until(ws, lambda m: isinstance(m, dict) and "error" in m)
            assert frames[-1]["success"] is False and frames[-1]["req_id"] == 2
            assert frames[-1]["symbol"] == "SYM3/USD"
        elif dialect == "coinbase":  # the subscriptions ack, snapshots, then an error frame
            frames = await receive_until(ws, lambda m: isinstance(m, dict) and "type" in m)
            assert frames[-1]["type"] == "error" and not ws.closed
        elif dialect == "deribit":  # a JSON-RPC error answers the request; the socket stays
            reply = json.loads(await receive_text(ws))
            assert reply["error"]["code"] == -32602 and reply["id"] == 2
            assert not ws.closed
        else:
            reply = json.loads(await receive_text(ws))
            assert reply.get("error", {}).get("code") == 2 or reply.get("success") is False
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["streamsPerConnection"]
    assert mx.peak(LimitName.STREAMS_PER_CONNECTION, CONNECTION) == 4


async def test_bybit_spot_takes_ten_args_per_subscribe_and_refuses_eleven(start_mock) -> None:
    mx = await start_mock("bybit", limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.26") as client:
        ws = await client.ws_connect(mx.url + "/v5/public/spot")
        await ws.send_str(bybit.build_subscribe(sample_streams("bybit", 10), "ten"))
        ack = json.loads(await receive_text(ws))
        assert ack == {
            "success": True,
            "ret_msg": "subscribe",
            "conn_id": ack["conn_id"],
            "req_id": "ten",
            "op": "subscribe",
        }
        await ws.send_str(bybit.build_subscribe(sample_streams("bybit", 11, start=10), "eleven"))
        refused = json.loads(await receive_text(ws))
        assert refused["success"] is False and refused["req_id"] == "eleven"
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["argsPerSubscribe"]
    assert mx.peak(LimitName.ARGS_PER_SUBSCRIBE, LimitScope.MESSAGE) == 11


@pytest.mark.parametrize(
    ("dialect", "frame", "expect"),
    [
        (
            "binance",
            "{not json",
            {
                "error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"},
                "id": None,
            },
        ),
        (
            "binance",
            '{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":4}',
            {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4},
        ),
        (
            "okx",
            '{"op":"subscribbe","args":[]}',
            {"event": "error", "code": "60019", "msg": "Invalid op: subscribbe"},
        ),
        (
            "okx",
            '{"op":"subscribe","args":[{"channel":"nope","instId":"BTC-USDT"}]}',
            {"event": "error", "code": "60018"},
        ),
        ("bybit", "garbage", {"success": False, "ret_msg": "error:request body format error"}),
        (
            "bybit",
            '{"op":"subscribe","args":["dcp.future"],"req_id":"x"}',
            {"success": False, "ret_msg": "error:handler not found,topic:dcp.future"},
        ),
    ],
)
async def test_malformed_requests_get_the_documented_error_and_the_connection_survives(
    start_mock, dialect, frame, expect
) -> None:
    mx = await start_mock(dialect, limits=["messagesPerConnection=50/1"])
    wire = WIRE[dialect]
    path = "/ws" if dialect == "binance" else PUBLIC_PATH[dialect]
    async with client_from("127.0.0.27") as client:
        ws = await client.ws_connect(mx.url + path)
        await ws.send_str(frame)
        reply = json.loads(await receive_text(ws))
        assert {k: reply.get(k) for k in expect} == expect
        await ws.send_bytes(b"\xff\xfe binary")
        await receive_text(ws)
        await ws.send_str(wire.build_subscribe(sample_streams(dialect, 1), 7))
        ack = json.loads(await receive_text(ws))
        assert (
            "error" not in ack and ack.get("success", True) is True and ack.get("event") != "error"
        )
        await ws.close()
    assert mx.violations() == []
    assert mx.malformed_received >= 1


async def test_okx_subscribe_payload_at_the_byte_limit_passes_and_one_byte_more_gets_60012(
    start_mock,
) -> None:
    streams = sample_streams("okx", 3)
    size = len(json.dumps([okx.stream_to_arg(s) for s in streams], separators=(",", ":")).encode())
    mx = await start_mock(
        "okx", limits=[f"subscribePayloadBytes={size}", "messagesPerConnection=50/1"]
    )
    longer = [*streams[:2], streams[2].replace("SYM2", "SYM20")]  # one byte more
    async with client_from("127.0.0.28") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/public")
        await ws.send_str(okx.build_subscribe(streams, "ok"))
        acks = [json.loads(await receive_text(ws)) for _ in range(3)]
        assert [a["event"] for a in acks] == ["subscribe"] * 3
        await ws.send_str(okx.build_subscribe(longer, "big"))
        error = json.loads(await receive_text(ws))
        assert (error["event"], error["code"], error["id"]) == ("error", "60012", "big")
        await ws.close()
    assert [v.limit for v in mx.violations()] == ["subscribePayloadBytes"]
    assert mx.peak(LimitName.SUBSCRIBE_PAYLOAD_BYTES, LimitScope.MESSAGE) == size + 1
