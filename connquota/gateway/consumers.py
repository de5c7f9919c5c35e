"""`GET /v1/ws`: local consumers subscribe to streams by name and get tagged frames.

Client -> gateway: `{"op":"subscribe","streams":[...]}`, `{"op":"unsubscribe","streams":[...]}`
(an optional `"id"` is echoed). Gateway -> client: `{"op":"subscribed","streams":[...]}`,
`{"stream":..,"seq":..,"rxMs":..,"data":..}` per message (seq consecutive per stream),
`{"error":{"code":..,"msg":..}}` for bad JSON, unknown ops, unknown streams and oversized
messages (the connection stays open). A consumer too slow for its bounded queue is closed with
1008; on shutdown every consumer is closed with 1012 (service restart: reconnect elsewhere).
With a token file, consumers must send `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 * 1024
MAX_STREAMS_PER_REQUEST = 10_000
CLOSE_SLOW_CONSUMER = 1008
CLOSE_SERVICE_RESTART = 1012


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


async def consumer_ws(request: web.Request) -> web.StreamResponse:
    """The consumer WebSocket endpoint."""
    gw: Gateway = request.app["gateway"]
    if not authorized(request, gw.consumer_token):
        return web.json_response({"error": "missing or wrong bearer token"}, status=401)
    if gw.draining:
        return web.json_response({"error": "gateway is shutting down"}, status=503)
    ws = web.WebSocketResponse(max_msg_size=4 * MAX_REQUEST_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    hub = gw.hub
    consumer = hub.add_consumer()
    gw.consumer_sockets.add(ws)
    sender = asyncio.create_task(_send_frames(gw, ws, consumer))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _handle_request(gw, ws, consumer, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_str(error_frame("binary", "send JSON text frames"))
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        hub.remove_consumer(consumer)
        gw.consumer_sockets.discard(ws)
    return ws


async def _handle_request(gw: Gateway, ws: web.WebSocketResponse, consumer: Any, text: str) -> None:
    if len(text) > MAX_REQUEST_BYTES:
        await ws.send_str(
            error_frame("too_large", f"requests are at most {MAX_REQUEST_BYTES} bytes")
        )
        return
    try:
        req = json.loads(text)
    except ValueError:
        await ws.send_str(error_frame("bad_json", "the request is not JSON"))
        return
    if not isinstance(req, dict):
        await ws.send_str(error_frame("bad_request", "the request must be a JSON object"))
        return
    request_id = req.get("id")
    op = req.get("op")
    streams = req.get("streams")
    if op not in ("subscribe", "unsubscribe"):
        await ws.send_str(error_frame("unknown_op", f"unknown op {str(op)[:40]!r}", request_id))
        return
    if (
        not isinstance(streams, list)
        or not all(isinstance(s, str) for s in streams)
        or len(streams) > MAX_STREAMS_PER_REQUEST
    ):
        await ws.send_str(
            error_frame("bad_request", "streams must be a list of stream names", request_id)
        )
        return
    if op == "subscribe":
        accepted, unknown = gw.hub.subscribe(consumer, streams)
        reply: dict[str, Any] = {"op": "subscribed", "streams": accepted}
        if request_id is not None:
            reply["id"] = request_id
        await ws.send_str(json.dumps(reply, separators=(",", ":")))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            await ws.send_str(
                error_frame(
                    "unknown_stream", f"{len(unknown)} streams not served here: {shown}", request_id
                )
            )
    else:
        done = gw.hub.unsubscribe(consumer, streams)
        reply = {"op": "unsubscribed", "streams": done}
        if request_id is not None:
            reply["id"] = request_id
        await ws.send_str(json.dumps(reply, separators=(",", ":")))


async def _send_frames(gw: Gateway, ws: web.WebSocketResponse, consumer: Any) -> None:
    queue = consumer.queue
    while not ws.closed:
        getter = asyncio.ensure_future(queue.get())
        waker = asyncio.ensure_future(consumer.wakeup.wait())
        await asyncio.wait([getter, waker], return_when=asyncio.FIRST_COMPLETED)
        waker.cancel()
        if consumer.too_slow:
            getter.cancel()
            gw.slow_consumers += 1
            log.warning("closing a consumer that fell %d frames behind", queue.maxsize)
            await ws.close(code=CLOSE_SLOW_CONSUMER, message=b"too slow")
            return
        frame = await getter
        await ws.send_str(frame)


async def close_all(gw: Gateway) -> None:
    """Tell every consumer to reconnect elsewhere (close code 1012)."""
    for ws in list(gw.consumer_sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=CLOSE_SERVICE_RESTART, message=b"gateway restarting")
