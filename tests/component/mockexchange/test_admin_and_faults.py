"""The admin API, metrics, injected faults, wss:// and the command-line server."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import websockets
from mockexchange_clients import (
    client_from,
    handshake,
    raw_tcp_touch,
    receive_text,
    sample_streams,
    wait_closed,
    wait_until,
)

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import binance, okx
from connquota.exchanges.dialects.base import Data
from connquota.testing.tlsca import TestCA


async def test_admin_api_reports_stats_violations_and_peaks_and_resets_them(start_mock) -> None:
    mx = await start_mock("binance", limits=["connectionAttempts:ip=1/30"])
    async with client_from("127.0.0.60") as client:
        assert (await handshake(client, mx.url + "/ws"))[0] == 101
        assert (await handshake(client, mx.url + "/ws"))[0] == 429
        async with client.get(mx.http_url + "/admin/violations") as response:
            (violation,) = await response.json()
        assert violation["limit"] == "connectionAttempts" and violation["ip"] == "127.0.0.60"
        assert violation["action"] == "HTTP 429 on the handshake"
        async with client.get(mx.http_url + "/admin/peaks") as response:
            peaks = {(p["limit"], p["key"]): p for p in await response.json()}
        assert peaks[("connectionAttempts", "127.0.0.60")]["fraction"] == 2.0
        async with client.get(mx.http_url + "/admin/stats") as response:
            stats = await response.json()
        assert stats["dialect"] == "binance" and stats["violations"] == 1
        async with client.get(mx.http_url + "/metrics") as response:
            metrics = await response.text()
        assert 'mockexchange_handshake_refusals_total{status="429"} 1.0' in metrics
        assert 'mockexchange_violations_total{limit="connectionAttempts",scope="ip"} 1.0' in metrics
        async with client.post(mx.http_url + "/admin/reset") as response:
            assert response.status == 200
    assert mx.violations() == [] and mx.peak(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP) == 0


async def test_disconnect_fault_closes_one_ips_connections_cleanly_or_abruptly(start_mock) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=20, limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.61") as a, client_from("127.0.0.62") as b:
        ws_a = await a.ws_connect(mx.url + "/ws/v5/public")
        ws_b = await b.ws_connect(mx.url + "/ws/v5/public")
        async with a.post(
            mx.http_url + "/admin/faults/disconnect", json={"ip": "127.0.0.61"}
        ) as response:
            assert (await response.json()) == {"disconnected": 1}
        assert await wait_closed(ws_a) == 1001
        assert not ws_b.closed
        assert await mx.disconnect("127.0.0.62", abrupt=True) == 1
        assert await wait_closed(ws_b) in (1006, None)


async def test_shutdown_notice_fault_sends_server_shutdown_then_closes(start_mock) -> None:
    mx = await start_mock("binance")
    async with client_from("127.0.0.63") as client:
        ws = await client.ws_connect(mx.url + "/stream")
        assert mx.send_shutdown_notice(close_after_s=0.3) == 1
        notice = json.loads(await receive_text(ws))
        assert notice["stream"] == "!serverShutdown" and notice["data"]["e"] == "serverShutdown"
        assert await wait_closed(ws) == 1001


async def test_silenced_connection_stops_sending_and_reading_but_keeps_the_socket(
    start_mock,
) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=50, limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.64") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/public")
        await ws.send_str(okx.build_subscribe(sample_streams("okx", 1), "1"))
        await receive_text(ws)
        await receive_text(ws)
        (conn,) = mx.websockets("127.0.0.64")
        arrivals: list[tuple[float, str]] = []

        async def read_all() -> None:
            while True:
                text = await receive_text(ws, timeout_s=5)
                arrivals.append((time.monotonic(), text))

        reader = asyncio.create_task(read_all())
        await wait_until(lambda: arrivals, what="data flowing")
        silenced_at = time.monotonic()
        assert mx.go_silent(conn_id=conn.conn_id, duration_s=0.5) == 1
        await ws.send_str("ping")  # not read while the server plays dead
        await wait_until(lambda: any(text == "pong" for _, text in arrivals), timeout_s=3)
        during = [text for at, text in arrivals if silenced_at + 0.05 < at < silenced_at + 0.45]
        assert during == [], "nothing arrives while silent"
        assert len(mx.connections("127.0.0.64")) == 1, "the socket stays open"
        pong_at = next(at for at, text in arrivals if text == "pong")
        assert pong_at - silenced_at >= 0.45, "the ping is read only after the silence"
        reader.cancel()
        await ws.close()


async def test_malformed_frames_fault_sends_broken_json(start_mock) -> None:
    mx = await start_mock("binance")
    async with client_from("127.0.0.65") as client:
        ws = await client.ws_connect(mx.url + "/ws")
        await wait_until(lambda: len(mx.websockets("127.0.0.65")) == 1)
        assert mx.send_malformed(ip="127.0.0.65", count=2) == 1
        frames = [await receive_text(ws), await receive_text(ws)]
        for frame in frames:
            with pytest.raises(json.JSONDecodeError):
                json.loads(frame)
        await ws.close()


async def test_wss_with_a_test_ca_serves_aiohttp_and_websockets_and_counts_tls_less_touches(
    start_mock,
) -> None:
    ca = TestCA.create()
    mx = await start_mock(
        "binance", limits=["connectionAttempts:ip=3/30"], ssl_context=ca.server_context(["127.0.0.1"]),
        rate_per_stream_hz=20,
    )  # fmt: skip
    assert mx.url.startswith("wss://")
    client_ssl = ca.client_context()
    async with client_from("127.0.0.66", ssl=client_ssl) as client:
        ws = await client.ws_connect(mx.url + "/ws/btcusdt@trade")
        event = binance.parse_server_message(await receive_text(ws), "btcusdt@trade")
        assert isinstance(event, Data)
        await ws.close()
    async with websockets.connect(
        mx.url + "/ws", ssl=client_ssl, local_addr=("127.0.0.66", 0)
    ) as ws2:
        await ws2.send(binance.build_list_subscriptions(1))
        assert json.loads(await asyncio.wait_for(ws2.recv(), 3)) == {"result": [], "id": 1}
    await raw_tcp_touch(mx.host, mx.port, "127.0.0.66")  # no TLS handshake at all
    await wait_until(
        lambda: mx.peak(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, "127.0.0.66") == 3
    )
    async with client_from("127.0.0.66", ssl=client_ssl) as client:
        assert (await handshake(client, mx.url + "/ws"))[0] == 429


async def test_untrusted_client_fails_tls_and_the_attempt_still_counts(start_mock) -> None:
    ca = TestCA.create()
    mx = await start_mock("okx", ssl_context=ca.server_context(["127.0.0.1"]))
    async with client_from("127.0.0.67", ssl=ssl.create_default_context()) as client:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.ws_connect(mx.url + "/ws/v5/public")
    await wait_until(
        lambda: mx.peak(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, "127.0.0.67") == 1
    )


async def test_command_line_server_enforces_overridden_limits(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "connquota.cli", "mock-exchange", "--profile", "bybit", "--listen",
         "127.0.0.1:0", "--limit", "connectionAttempts:ip=2/60", "--port-file", str(port_file)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_until(lambda: port_file.exists() and port_file.read_text() != "", timeout_s=20)
        url = f"ws://127.0.0.1:{port_file.read_text()}/v5/public/spot"
        async with client_from("127.0.0.68") as client:
            assert [(await handshake(client, url))[0] for _ in range(3)] == [101, 101, 429]
            async with client.get(
                url.replace("ws://", "http://").replace("/v5/public/spot", "/admin/violations")
            ) as r:
                assert [v["limit"] for v in await r.json()] == ["connectionAttempts"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
