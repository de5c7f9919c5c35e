"""Per-IP connection limits: attempts counted at TCP accept, concurrency, 429/418, bans."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from mockexchange_clients import (
    DIALECTS,
    PUBLIC_PATH,
    client_from,
    handshake,
    raw_tcp_touch,
    wait_until,
)

from connquota.api.limits import LimitName, LimitScope

ATTEMPTS = LimitName.CONNECTION_ATTEMPTS
CONCURRENT = LimitName.CONCURRENT_CONNECTIONS
IP = LimitScope.IP


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_attempts_up_to_the_limit_pass_and_the_next_gets_429_with_retry_after(
    start_mock, dialect
) -> None:
    mx = await start_mock(dialect, limits=["connectionAttempts:ip=5/30"])
    url = mx.url + PUBLIC_PATH[dialect]
    async with client_from("127.0.0.2") as client:
        statuses = [(await handshake(client, url))[0] for _ in range(5)]
        assert statuses == [101] * 5
        assert mx.violations() == []
        assert mx.peak_fraction(ATTEMPTS, IP, "127.0.0.2") == 1.0
        status, headers = await handshake(client, url)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    (violation,) = mx.violations()
    assert (violation.limit, violation.scope, violation.ip) == (
        "connectionAttempts",
        "ip",
        "127.0.0.2",
    )
    async with client_from("127.0.0.3") as other:
        assert (await handshake(other, url))[0] == 101, "another IP has its own budget"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_tcp_connections_that_never_send_a_request_count_as_attempts(
    start_mock, dialect
) -> None:
    mx = await start_mock(dialect, limits=["connectionAttempts:ip=4/30"])
    for _ in range(3):
        await raw_tcp_touch(mx.host, mx.port, "127.0.0.4")
    await wait_until(lambda: mx.peak(ATTEMPTS, IP, "127.0.0.4") == 3, what="3 raw attempts counted")
    url = mx.url + PUBLIC_PATH[dialect]
    async with client_from("127.0.0.4") as client:
        assert (await handshake(client, url))[0] == 101
        assert (await handshake(client, url))[0] == 429
    assert [v.limit for v in mx.violations()] == ["connectionAttempts"]


async def test_raw_tcp_attempt_over_the_limit_is_a_violation_even_without_a_handshake(
    start_mock,
) -> None:
    mx = await start_mock("binance", limits=["connectionAttempts:ip=2/30"])
    for _ in range(3):
        await raw_tcp_touch(mx.host, mx.port, "127.0.0.5")
    await wait_until(lambda: len(mx.violations()) == 1, what="the third raw attempt is a violation")
    assert mx.peak(ATTEMPTS, IP, "127.0.0.5") == 3


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_concurrent_connections_at_the_limit_pass_and_one_more_gets_429(
    start_mock, dialect
) -> None:
    mx = await start_mock(
        dialect, limits=["concurrentConnections:ip=3", "connectionAttempts:ip=100/30"]
    )
    url = mx.url + PUBLIC_PATH[dialect]
    async with client_from("127.0.0.6") as client:
        open_ws = [await client.ws_connect(url) for _ in range(3)]
        assert mx.peak(CONCURRENT, IP, "127.0.0.6") == 3
        assert (await handshake(client, url))[0] == 429
        assert [v.limit for v in mx.violations()] == ["concurrentConnections"]
        await open_ws.pop().close()
        await wait_until(lambda: len(mx.connections("127.0.0.6")) == 2, what="closed slot freed")
        assert (await handshake(client, url))[0] == 101
        for ws in open_ws:
            await ws.close()


async def test_silent_tcp_connection_holds_a_concurrent_slot_until_the_handshake_timeout(
    start_mock,
) -> None:
    # connectTimeoutSeconds 10 at time scale 10: a silent TCP connection is dropped after 1 s
    mx = await start_mock(
        "okx", limits=["concurrentConnections:ip=2", "connectionAttempts:ip=100/1"], time_scale=10
    )
    silent = [await raw_tcp_touch(mx.host, mx.port, "127.0.0.7", keep_open=True) for _ in range(2)]
    await wait_until(lambda: len(mx.connections("127.0.0.7")) == 2, what="silent sockets tracked")
    url = mx.url + PUBLIC_PATH["okx"]
    async with client_from("127.0.0.7") as client:
        assert (await handshake(client, url))[0] == 429
        await wait_until(
            lambda: not mx.connections("127.0.0.7"), timeout_s=3, what="silent sockets dropped"
        )
        assert (await handshake(client, url))[0] == 101
    for writer in silent:
        writer.close()


async def test_repeated_violations_ban_the_ip_with_418_and_the_ban_expires(start_mock) -> None:
    # window 1 s; ban 60 profile s at time scale 60 = 1 s of wall clock
    mx = await start_mock(
        "binance",
        limits=["connectionAttempts:ip=1/60"],
        time_scale=60,
        ban_after_violations=2,
        ban_s=60.0,
    )
    url = mx.url + PUBLIC_PATH["binance"]
    async with client_from("127.0.0.8") as client:
        assert (await handshake(client, url))[0] == 101
        assert (await handshake(client, url))[0] == 429
        assert (await handshake(client, url))[0] == 429
        status, headers = await handshake(client, url)
        assert status == 418
        assert headers["Retry-After"] == "1"
        assert "127.0.0.8" in mx.bans()
        await wait_until(lambda: "127.0.0.8" not in mx.bans(), timeout_s=3, what="ban expiry")
        await asyncio.sleep(0)  # the attempts window (1 s) ended with the ban
        await wait_until(lambda: mx.stats()["attemptsInWindowPerIp"]["127.0.0.8"] == 0, timeout_s=3)
        assert (await handshake(client, url))[0] == 101


async def test_time_scale_shrinks_the_attempt_window(start_mock) -> None:
    # 300 s window at time scale 300 lasts 1 s of wall clock
    mx = await start_mock("bybit", limits=["connectionAttempts:ip=2/300"], time_scale=300)
    url = mx.url + PUBLIC_PATH["bybit"]
    async with client_from("127.0.0.9") as client:
        assert [(await handshake(client, url))[0] for _ in range(3)] == [101, 101, 429]
        await wait_until(lambda: mx.stats()["attemptsInWindowPerIp"]["127.0.0.9"] == 0, timeout_s=3)
        assert (await handshake(client, url))[0] == 101
    assert mx.stats()["timeScale"] == 300


async def test_admin_api_refuses_the_next_handshakes_and_whoami_reports_the_source(
    start_mock,
) -> None:
    mx = await start_mock("okx", serve_whoami=True)
    url = mx.url + PUBLIC_PATH["okx"]
    async with client_from("127.0.0.10") as client:
        async with client.get(mx.http_url + "/whoami") as response:
            assert (await response.json())["ip"] == "127.0.0.10"
        body = {"count": 2, "status": 418, "retryAfterSeconds": 7}
        async with client.post(
            mx.http_url + "/admin/faults/refuse-handshakes", json=body
        ) as response:
            assert response.status == 200
        first = await handshake(client, url)
        assert first == (418, first[1]) and first[1]["Retry-After"] == "7"
        assert (await handshake(client, url))[0] == 418
        assert (await handshake(client, url))[0] == 101
    assert mx.peak(ATTEMPTS, IP, "127.0.0.10") == 3, "whoami and admin requests are not attempts"


async def test_by_default_the_mock_serves_no_whoami_and_counts_it_as_an_exchange_request(
    start_mock,
) -> None:
    mx = await start_mock("binance")
    async with client_from("127.0.0.11") as client, client.get(mx.http_url + "/whoami") as response:
        assert response.status != 200
    assert mx.peak(ATTEMPTS, IP, "127.0.0.11") == 1, "as on a real exchange, it cost an attempt"


async def test_unknown_paths_are_refused_but_still_counted(start_mock) -> None:
    mx = await start_mock("bybit", limits=["connectionAttempts:ip=10/30"])
    async with client_from("127.0.0.11") as client:
        status, _ = await handshake(client, mx.url + "/v5/public/futures")
    assert status == 404
    assert mx.peak(ATTEMPTS, IP, "127.0.0.11") == 1


async def test_websockets_library_client_counts_like_any_other(start_mock) -> None:
    import websockets

    mx = await start_mock("binance", limits=["connectionAttempts:ip=1/30"])
    url = mx.url + "/ws/btcusdt@trade"
    async with websockets.connect(url, local_addr=("127.0.0.12", 0)) as ws:
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await asyncio.wait_for(ws.recv(), 3) == '{"result":["btcusdt@trade"],"id":3}'
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, local_addr=("127.0.0.12", 0)):
            pass
    assert refused.value.response.status_code == 429


async def test_aiohttp_handshake_error_shape_for_refusals(start_mock) -> None:
    mx = await start_mock("okx")
    mx.refuse_next_handshakes(1, 429, 3)
    async with client_from("127.0.0.13") as client:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(mx.url + PUBLIC_PATH["okx"])
    assert refused.value.status == 429
    assert refused.value.headers["Retry-After"] == "3"


async def test_retry_after_tells_when_the_oldest_attempt_leaves_the_window(start_mock) -> None:
    mx = await start_mock("okx", limits=["connectionAttempts:ip=2/4"])
    url = mx.url + PUBLIC_PATH["okx"]
    async with client_from("127.0.0.14") as client:
        assert (await handshake(client, url))[0] == 101
        assert (await handshake(client, url))[0] == 101
        status, headers = await handshake(client, url)
        assert status == 429 and headers["Retry-After"] == "4"
        await asyncio.sleep(int(headers["Retry-After"]))  # honouring Retry-After is the behaviour
        assert (await handshake(client, url))[0] == 101
