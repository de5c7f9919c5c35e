"""`GET /v1/ws`: local consumers subscribe to streams by name and get tagged frames.

Client -> gateway: `{"op":"subscribe","streams":[...]}`, `{"op":"unsubscribe","streams":[...]}`
(an optional `"id"` is echoed; `"lastValue":true` on a subscribe also sends, at once, the newest
message of each stream the gateway has kept, marked `"cached":true`, when the quota keeps them). Gateway -> client: `{"op":"subscribed","streams":[...]}`,
`{"stream":..,"seq":..,"rxMs":..,"data":..}` per message (seq consecutive per stream),
`{"error":{"code":..,"msg":..}}` for bad JSON, unknown ops, unknown streams and oversized
messages (the connection stays open). A consumer too slow for its bounded queue is closed with
1008; on shutdown every consumer is closed with 1012 (service restart: reconnect elsewhere).
With a token file, consumers must send `Authorization: Bearer <token>`.

Data frames reach the socket through one writer task per consumer: it takes every frame
queued since its last write (the hub encoded each once, for all consumers) and writes them
with one call, then waits only while the socket's send buffer is above its high-water mark.
Consumers negotiate no compression (it would re-encode every frame per consumer).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from connquota.gateway.hub import Consumer

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_STREAMS_PER_REQUEST = 10_000
CLOSE_SLOW_CONSUMER = 1008
CLOSE_SERVICE_RESTART = 1012
MAX_WRITE_BYTES = 256 * 1024
"""A writer passes at most about this much to the socket per call."""
SLOW_CLOSE_GRACE_S = 5.0
"""A slow consumer that has not read its close frame after this long is disconnected."""
SHUTDOWN_CLOSE_S = 2.0
"""On shutdown, consumers that do not complete the close handshake in time are dropped."""


LAST_VALUE_OFF = "this quota keeps no last values (spec.gateway.lastValueCache)"


def error_frame(code: str, msg: str, request_id: Any = None) -> str:
    """The error frame a consumer gets for a request the gateway cannot honour."""
    body: dict[str, Any] = {"error": {"code": code, "msg": msg}}
    if request_id is not None:
        body["id"] = request_id
    return json.dumps(body, separators=(",", ":"))


def authorized(request: web.Request, token: str | None) -> bool:
    """Whether the request carries the bearer token (always, when no token is configured)."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(given.encode(), token.encode())


def count_refused(gw: Gateway, endpoint: str, reason: str) -> None:
    """Count a consumer request the gateway refused (metric `consumer_requests_refused_total`):
    `endpoint` is `v1` or `native`, `reason` a short code (never the request's content)."""
    gw.ctx.stats[("consumer_refused", endpoint, reason)] += 1


def refusal(request: web.Request, gw: Gateway, endpoint: str = "v1") -> web.Response | None:
    """The answer to a consumer the gateway does not take now (wrong token, shutting down)."""
    if not authorized(request, gw.consumer_token):
        count_refused(gw, endpoint, "unauthorized")
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    if gw.draining:
        count_refused(gw, endpoint, "shutting_down")
        return web.json_response({"error": "gateway is shutting down"}, status=503)
    return None


async def _refuse(
    gw: Gateway, ws: web.WebSocketResponse, code: str, msg: str, request_id: Any = None
) -> None:
    """Answer a /v1/ws request with an error frame, counted by its code."""
    count_refused(gw, "v1", code)
    await ws.send_str(error_frame(code, msg, request_id))


async def consumer_ws(request: web.Request) -> web.StreamResponse:
    """The consumer WebSocket endpoint."""
    gw: Gateway = request.app["gateway"]
    refused = refusal(request, gw)
    if refused is not None:
        return refused
    ws = web.WebSocketResponse(max_msg_size=4 * MAX_REQUEST_BYTES, heartbeat=30.0, compress=False)
    await ws.prepare(request)
    consumer = gw.hub.add_consumer()

    async def on_text(text: str) -> None:
        await _handle_request(gw, ws, consumer, text)

    async def on_binary() -> None:
        await _refuse(gw, ws, "binary", "send JSON text frames")

    await serve(gw, request, ws, consumer, on_text, on_binary)
    return ws


async def serve(
    gw: Gateway,
    request: web.Request,
    ws: web.WebSocketResponse,
    consumer: Consumer,
    on_text: Callable[[str], Awaitable[None]],
    on_binary: Callable[[], Awaitable[None]],
) -> None:
    """Run one consumer's connection: its writer task sends the hub's frames while requests
    are read and answered here; everything ends and is forgotten when either side closes."""
    hub = gw.hub
    gw.consumer_sockets.add(ws)
    sender = asyncio.create_task(_send_frames(gw, request, ws, consumer))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await on_binary()
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        if not consumer.too_slow:  # a slow consumer's writer is sending the close: let it
            sender.cancel()
        hub.remove_consumer(consumer)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        gw.consumer_sockets.discard(ws)


async def _handle_request(
    gw: Gateway, ws: web.WebSocketResponse, consumer: Consumer, text: str
) -> None:
    if len(text) > MAX_REQUEST_BYTES:
        await _refuse(gw, ws, "too_large", f"requests are at most {MAX_REQUEST_BYTES} bytes")
        return
    try:
        req = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        await _refuse(gw, ws, "bad_json", "the request is not JSON")
        return
    if not isinstance(req, dict):
        await _refuse(gw, ws, "bad_request", "the request must be a JSON object")
        return
    request_id = req.get("id")
    op = req.get("op")
    streams = req.get("streams")
    if op not in ("subscribe", "unsubscribe"):
        await _refuse(gw, ws, "unknown_op", f"unknown op {str(op)[:40]!r}", request_id)
        return
    if (
        not isinstance(streams, list)
        or not all(isinstance(s, str) for s in streams)
        or len(streams) > MAX_STREAMS_PER_REQUEST
    ):
        await _refuse(gw, ws, "bad_request", "streams must be a list of stream names", request_id)
        return
    if op == "subscribe":
        accepted, unknown = gw.hub.subscribe(consumer, streams)
        reply: dict[str, Any] = {"op": "subscribed", "streams": accepted}
        if request_id is not None:
            reply["id"] = request_id
        await ws.send_str(json.dumps(reply, separators=(",", ":")))
        if req.get("lastValue") is True:
            if gw.hub.last_values is None:
                await _refuse(gw, ws, "last_value_off", LAST_VALUE_OFF, request_id)
            else:
                gw.hub.replay_last(consumer, accepted)
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            await _refuse(
                gw,
                ws,
                "unknown_stream",
                f"{len(unknown)} streams not served here: {shown}",
                request_id,
            )
    else:
        done = gw.hub.unsubscribe(consumer, streams)
        reply = {"op": "unsubscribed", "streams": done}
        if request_id is not None:
            reply["id"] = request_id
        await ws.send_str(json.dumps(reply, separators=(",", ":")))


async def _send_frames(
    gw: Gateway, request: web.Request, ws: web.WebSocketResponse, consumer: Consumer
) -> None:
    """The consumer's writer: queued frames to the socket, a batch per write, flow-controlled.
    While idle with a writable socket it lends the consumer a direct write (`Consumer.offer`
    writes a frame in the step that published it: no queue, no wake-up of this task)."""
    transport = request.transport
    protocol = request.protocol
    delivery = gw.delivery_seconds

    def direct(frame: bytes) -> bool:
        if ws.closed or transport is None or transport.is_closing() or protocol.writing_paused:
            consumer.direct = None
            return False  # queued instead: this task sees the socket's state when it wakes
        transport.write(frame)
        delivery.observe_immediate()
        if protocol.writing_paused:  # over the high-water mark: the next frames queue
            consumer.direct = None
        return True

    try:
        while True:
            if (
                not consumer.frames
                and transport is not None
                and not transport.is_closing()
                and not protocol.writing_paused
            ):
                consumer.direct = direct
            try:
                await consumer.wait()
            finally:
                consumer.direct = None
            if consumer.too_slow:
                await _close_slow(gw, request, ws, consumer)
                return
            if consumer.stopped or ws.closed or transport is None or transport.is_closing():
                return
            since = consumer.since
            batch = consumer.take(MAX_WRITE_BYTES)
            transport.write(batch[0] if len(batch) == 1 else b"".join(batch))
            # The oldest frame of the write; frames left behind a backlog keep the older time,
            # so the figure is an upper bound for them (docs/observability.md).
            delivery.observe(time.monotonic() - since)
            if protocol.writing_paused:  # the send buffer is over its high-water mark
                await _writable_or_alarm(request, consumer)
    except (ConnectionError, RuntimeError):
        return


async def _writable_or_alarm(request: web.Request, consumer: Consumer) -> None:
    """Wait until the socket takes data again, or the consumer overflowed or left.

    The drain is never cancelled (it waits on a future the connection shares with aiohttp's
    own writes); left pending, it ends when the socket drains or the connection is lost."""
    drained = asyncio.ensure_future(request.writer.drain())
    drained.add_done_callback(_consume_outcome)
    await asyncio.wait([drained, consumer.alarm()], return_when=asyncio.FIRST_COMPLETED)


def _consume_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()  # a lost connection: the writer sees the closed transport next


async def _close_slow(
    gw: Gateway, request: web.Request, ws: web.WebSocketResponse, consumer: Consumer
) -> None:
    gw.slow_consumers += 1
    log.warning(
        "closing consumer %d: its queue of %d frames overflowed",
        consumer.id,
        consumer.max_frames,
        extra={**gw.ctx.log_extra, "consumer": str(consumer.id)},
    )
    # A consumer that stopped reading never takes its close frame: disconnect it after a grace.
    asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE_S, _abort_if_open, request.protocol)
    reason = f"too slow: more than {consumer.max_frames} frames queued".encode()
    await ws.close(code=CLOSE_SLOW_CONSUMER, message=reason[:120], drain=False)


def _abort_if_open(protocol: Any) -> None:
    transport = protocol.transport  # None once the connection is gone
    if transport is not None:
        transport.abort()


async def close_all(gw: Gateway) -> None:
    """Tell every consumer to reconnect elsewhere (close code 1012), all at once, bounded."""

    async def close_one(ws: web.WebSocketResponse) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_SERVICE_RESTART, message=b"gateway restarting")

    tasks = [asyncio.create_task(close_one(ws)) for ws in list(gw.consumer_sockets)]
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_CLOSE_S)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=SHUTDOWN_CLOSE_S)
