"""Consumers are isolated: each message is encoded once for all of them, a consumer that stops
reading never delays the others, and one whose queue overflows is closed with 1008.

The consumer endpoint runs on a real aiohttp server on loopback, fed by a real `StreamHub`;
consumers are real aiohttp WebSocket clients.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from connquota.gateway.consumers import CLOSE_SLOW_CONSUMER
from connquota.gateway.http import build_app
from connquota.gateway.hub import SLOW_CONSUMER_CLOSE, StreamHub
from connquota.gateway.metrics import delivery_histogram
from connquota.testing.waiting import wait_until

STREAM = "btcusdt@trade"
SOURCE = object()  # the upstream session that holds the stream


class Endpoint:
    """The consumer endpoint of a gateway (no upstream): a hub behind `GET /v1/ws`."""

    def __init__(self, queue_frames: int) -> None:
        self.hub = StreamHub(queue_frames=queue_frames, policy=SLOW_CONSUMER_CLOSE)
        self.hub.set_known([STREAM])
        self.hub.claim(STREAM, SOURCE)
        self.gw = SimpleNamespace(
            hub=self.hub,
            consumer_token=None,
            draining=False,
            consumer_sockets=set(),
            slow_consumers=0,
            delivery_seconds=delivery_histogram(),
            ctx=SimpleNamespace(log_extra={"quota": "q", "pod": "p-0"}),
        )
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(build_app(self.gw), access_log=None)  # type: ignore[arg-type]
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/v1/ws"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    ep = Endpoint(queue_frames=20)
    await ep.start()
    yield ep
    await ep.stop()


def small_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket with a tiny kernel receive buffer: a non-reader stalls quickly."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def subscribed(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    """A consumer subscribed to STREAM (the gateway acknowledged it)."""
    ws = await http.ws_connect(url)
    await ws.send_str(json.dumps({"op": "subscribe", "streams": [STREAM]}))
    reply = await ws.receive_json(timeout=5)
    assert reply == {"op": "subscribed", "streams": [STREAM]}
    return ws


async def next_data(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def test_every_subscriber_gets_the_same_frame_encoded_once():
    hub = StreamHub()
    hub.set_known([STREAM])
    a, b = hub.add_consumer(), hub.add_consumer()
    hub.subscribe(a, [STREAM])
    hub.subscribe(b, [STREAM])
    hub.publish(STREAM, {"E": 1, "p": "0.1"}, SOURCE)
    assert a.frames[0] is b.frames[0]
    doc = json.loads(a.queued_texts()[0])
    assert doc["stream"] == STREAM and doc["seq"] == 1 and doc["data"] == {"E": 1, "p": "0.1"}


async def test_payloads_across_the_frame_length_boundaries_arrive_intact():
    # Frames of up to 125 bytes, up to 65535 and beyond have different length headers;
    # about 60 bytes of each frame are the envelope, so these pads cross both boundaries.
    pads = [*range(40, 100), *range(65_440, 65_520, 4), 300_000]
    endpoint = Endpoint(queue_frames=len(pads))
    await endpoint.start()
    try:
        async with aiohttp.ClientSession() as http:
            ws = await subscribed(http, endpoint.url)
            for i, size in enumerate(pads):
                endpoint.hub.publish(STREAM, {"i": i, "pad": "x" * size}, SOURCE)
            got = [await next_data(ws) for _ in pads]
            assert [d["seq"] for d in got] == list(range(1, len(pads) + 1))
            assert [len(d["data"]["pad"]) for d in got] == pads
            await ws.close()
    finally:
        await endpoint.stop()


async def test_a_consumer_that_stops_reading_delays_no_one_and_is_closed_with_1008(endpoint):
    pad = "x" * 16_384
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=connector) as stalled_http,
    ):
        fast = await subscribed(http, endpoint.url)
        stalled = await subscribed(stalled_http, endpoint.url)  # never reads from here on
        sent = 0
        # 2000 frames of 16 KiB (32 MiB) is far more than every buffer between the gateway
        # and a client that does not read; the fast consumer takes each one as it is sent.
        while endpoint.gw.slow_consumers == 0 and sent < 2000:
            endpoint.hub.publish(STREAM, {"i": sent, "pad": pad}, SOURCE)
            sent += 1
            doc = await next_data(fast)
            assert (doc["seq"], doc["data"]["i"]) == (sent, sent - 1)
        assert endpoint.gw.slow_consumers == 1, "the stalled consumer's queue never overflowed"

        # The fast consumer still gets every frame after the stalled one was let go.
        endpoint.hub.publish(STREAM, {"i": sent, "pad": ""}, SOURCE)
        doc = await next_data(fast)
        assert doc["seq"] == sent + 1 and not fast.closed

        # The stalled consumer, reading again, finds what was on the wire, then a clear close.
        seqs = []
        while True:
            msg = await stalled.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            seqs.append(json.loads(msg.data)["seq"])
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == CLOSE_SLOW_CONSUMER and "too slow" in msg.extra
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < sent
        await wait_until(lambda: len(endpoint.hub.consumers) == 1, 5, "the slow consumer to go")
        await fast.close()
