"""Heartbeats, maximum connection age and the notices before it, per dialect."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from mockexchange_clients import (
    PUBLIC_PATH,
    client_from,
    handshake,
    receive_text,
    receive_until,
    sample_streams,
    wait_closed,
    wait_until,
)

from connquota.exchanges.dialects import bybit, okx


async def test_binance_client_that_answers_pings_stays_and_a_silent_one_is_dropped_after_the_pong_timeout(
    start_mock,
) -> None:
    # ping every 20 s and pong timeout 60 s at time scale 60: 0.33 s and 1 s
    mx = await start_mock("binance", limits=["messagesPerConnection=50/1"], time_scale=60)
    async with client_from("127.0.0.30") as client:
        # the websockets library answers pings in the background, echoing the payload
        answering = await websockets.connect(
            mx.url + "/ws", local_addr=("127.0.0.30", 0), ping_interval=None
        )
        silent = await client.ws_connect(mx.url + "/ws", autoping=False)
        started = time.monotonic()
        pings = 0
        while not silent.closed and time.monotonic() - started < 5:
            msg = await silent.receive(timeout=5)
            if msg.type.name == "PING":
                pings += 1
                await silent.pong(b"")  # unsolicited empty pongs do not prevent disconnection
        assert silent.close_code == 1000
        assert pings >= 2
        assert 0.9 < time.monotonic() - started < 2.5
        await answering.send('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert json.loads(await asyncio.wait_for(answering.recv(), 3)) == {"result": [], "id": 1}
        await answering.close()
    assert mx.violations() == []


async def test_half_open_client_keeps_counting_against_its_ip_until_the_heartbeat_timeout(
    start_mock,
) -> None:
    mx = await start_mock(
        "binance",
        limits=["concurrentConnections:ip=1", "messagesPerConnection=50/1"],
        time_scale=60,
    )
    async with client_from("127.0.0.31") as client:
        # the client never reads again, so it answers no ping: a half-open connection
        ws = await client.ws_connect(mx.url + "/ws", autoping=False)
        assert len(mx.websockets("127.0.0.31")) == 1
        assert (await handshake(client, mx.url + "/ws"))[0] == 429
        await wait_until(
            lambda: not mx.connections("127.0.0.31"), timeout_s=4, what="pong timeout closes it"
        )
        assert (await handshake(client, mx.url + "/ws"))[0] == 101
        await ws.close()


@pytest.mark.parametrize(("dialect", "time_scale"), [("okx", 30), ("bybit", 600)])
async def test_client_pings_keep_a_connection_and_silence_closes_it(
    start_mock, dialect, time_scale
) -> None:
    # okx: 30 s without data at scale 30 -> 1 s; bybit: 600 s at scale 600 -> 1 s
    mx = await start_mock(dialect, limits=["messagesPerConnection=50/1"], time_scale=time_scale)
    wire = okx if dialect == "okx" else bybit
    async with client_from("127.0.0.32") as client:
        pinging = await client.ws_connect(mx.url + PUBLIC_PATH[dialect])
        silent = await client.ws_connect(mx.url + PUBLIC_PATH[dialect])
        started = time.monotonic()
        silent_closed = asyncio.create_task(wait_closed(silent, timeout_s=4))
        while not silent_closed.done():
            await pinging.send_str(wire.build_ping("1"))
            await receive_text(pinging)
            await asyncio.sleep(0.2)
        assert silent_closed.result() == (4004 if dialect == "okx" else 1000)
        assert 0.9 < time.monotonic() - started < 3
        assert not pinging.closed
        await pinging.close()


async def test_bybit_private_max_active_time_shortens_the_idle_cut(start_mock) -> None:
    mx = await start_mock("bybit", time_scale=60)
    async with client_from("127.0.0.33") as client:
        ws = await client.ws_connect(mx.url + "/v5/private?max_active_time=30s")
        started = time.monotonic()
        await wait_closed(ws, timeout_s=3)
        assert 0.4 < time.monotonic() - started < 1.5  # 30 s at scale 60


async def test_okx_connection_without_a_subscription_is_closed_after_30_seconds(start_mock) -> None:
    mx = await start_mock("okx", time_scale=30, rate_per_stream_hz=20)
    async with client_from("127.0.0.34") as client:
        idle = await client.ws_connect(mx.url + PUBLIC_PATH["okx"])
        fed = await client.ws_connect(mx.url + PUBLIC_PATH["okx"])
        await fed.send_str(okx.build_subscribe(sample_streams("okx", 1), "1"))
        assert await wait_closed(idle, timeout_s=3) == 4004
        # a subscribed connection with data flowing stays open although the client never pings
        for _ in range(30):
            await receive_text(fed)
        assert not fed.closed
        await fed.close()


@pytest.mark.parametrize(
    ("dialect", "path", "notice_of"),
    [
        ("binance", "/stream", lambda m: m.get("stream") == "!serverShutdown"),
        ("binance", "/ws", lambda m: m.get("e") == "serverShutdown"),
        ("okx", "/ws/v5/public", lambda m: m.get("code") == "64008"),
    ],
)
async def test_max_age_closes_the_connection_after_the_documented_notice(
    start_mock, dialect, path, notice_of
) -> None:
    # max age 120 s, notice 5 s before, at scale 60: notice at 1.92 s, close at 2 s
    mx = await start_mock(dialect, limits=["maxConnectionAge=120"], time_scale=60)
    async with client_from("127.0.0.35") as client:
        ws = await client.ws_connect(mx.url + path)
        started = time.monotonic()
        if dialect == "okx":  # keep OKX's 30 s idle rule (0.5 s here) from closing it first
            mx.set_rate(50)
            await ws.send_str(okx.build_subscribe(sample_streams("okx", 1), "1"))
        frames = await receive_until(
            ws, lambda m: isinstance(m, dict) and notice_of(m), timeout_s=4
        )
        assert notice_of(frames[-1])
        noticed = time.monotonic() - started
        code = await wait_closed(ws)
        closed = time.monotonic() - started
    assert 1.5 < noticed <= closed < 3
    assert code in (1001, 4006)


async def test_bybit_max_age_closes_without_a_notice(start_mock) -> None:
    mx = await start_mock("bybit", limits=["maxConnectionAge=60"], time_scale=60)
    async with client_from("127.0.0.36") as client:
        ws = await client.ws_connect(mx.url + "/v5/public/spot")
        assert await wait_closed(ws, timeout_s=3) == 1001
