"""`GET /v1/peer`: the streams this pod holds upstream, for the other pods of its quota.

Another gateway pod of the same quota (its `relay.PeerLink`) opens one WebSocket here and
multiplexes every stream it relays over it. The peer must send `Authorization: Bearer <peer
token>` (the quota's peer Secret, mounted in its gateway pods only): a consumer cannot pose as
a peer. Without a peer token configured the endpoint does not exist (404).

Gateway -> peer: `{"op":"have","reset":true,"streams":[...]}` on connect, then
`{"op":"have","add":[...],"remove":[...]}` whenever this pod's plan changes what it holds;
`{"op":"subscribed","streams":[...]}`, errors as on `/v1/ws`, and data frames
`{"stream":..,"seq":..,"useq":..,"data":..}` (`useq`: the exchange's own sequence, when the
dialect has one). Peer -> gateway: `{"op":"subscribe"|"unsubscribe","streams":[...]}` (`"lastValue":true`: the
newest kept message of each, at once).

A peer subscribes only streams this pod holds (never ones it relays itself: no loops, and no
stream is ever subscribed upstream because of relaying). A peer link is a consumer like any
other here: bounded queue, closed with 1008 when it falls behind.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connquota.gateway.consumers import authorized, error_frame, serve
from connquota.gateway.hub import FMT_PEER

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway

MAX_PEER_REQUEST_BYTES = 16 * 1024 * 1024
"""A subscribe may name every stream a pod holds."""


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


async def peer_ws(request: web.Request) -> web.StreamResponse:
    """A peer pod relaying this pod's streams."""
    gw: Gateway = request.app["gateway"]
    if not gw.peer_token:
        raise web.HTTPNotFound(text="relay is not enabled on this gateway")
    if not authorized(request, gw.peer_token):
        return web.json_response({"error": "missing or wrong peer token"}, status=401)
    if gw.draining:
        return web.json_response({"error": "gateway is shutting down"}, status=503)
    ws = web.WebSocketResponse(max_msg_size=MAX_PEER_REQUEST_BYTES, heartbeat=15.0, compress=False)
    await ws.prepare(request)
    hub = gw.hub
    consumer = hub.add_consumer(FMT_PEER)
    pending: list[str] = []
    flushing: set[asyncio.Task[None]] = set()

    def on_known_change(added: list[str], removed: list[str]) -> None:
        pending.append(_dumps({"op": "have", "add": added, "remove": removed}))
        if len(pending) == 1:
            flushing.add(asyncio.get_running_loop().create_task(_flush(ws, pending)))
            for task in [t for t in flushing if t.done()]:
                flushing.discard(task)

    await ws.send_str(_dumps({"op": "have", "reset": True, "streams": sorted(hub.known)}))
    hub.known_listeners.add(on_known_change)

    async def on_text(text: str) -> None:
        await _handle(gw, ws, consumer, text)

    async def on_binary() -> None:
        await ws.send_str(error_frame("binary", "send JSON text frames"))

    try:
        await serve(gw, request, ws, consumer, on_text, on_binary)
    finally:
        hub.known_listeners.discard(on_known_change)
    return ws


async def _flush(ws: web.WebSocketResponse, pending: list[str]) -> None:
    while pending:
        text = pending[0]
        if not ws.closed:
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                pending.clear()
                return
        pending.pop(0)


async def _handle(gw: Gateway, ws: web.WebSocketResponse, consumer: Any, text: str) -> None:
    try:
        req = json.loads(text)
    except ValueError:
        await ws.send_str(error_frame("bad_json", "the request is not JSON"))
        return
    op = req.get("op") if isinstance(req, dict) else None
    streams = req.get("streams") if isinstance(req, dict) else None
    if op not in ("subscribe", "unsubscribe") or not isinstance(streams, list):
        await ws.send_str(error_frame("bad_request", "subscribe or unsubscribe a stream list"))
        return
    names = [s for s in streams if isinstance(s, str)]
    if op == "unsubscribe":
        done = gw.hub.unsubscribe(consumer, names)
        await ws.send_str(_dumps({"op": "unsubscribed", "streams": done}))
        return
    accepted, unknown = gw.hub.subscribe(consumer, names, own_only=True)
    await ws.send_str(_dumps({"op": "subscribed", "streams": accepted}))
    if req.get("lastValue") is True:
        gw.hub.replay_last(consumer, accepted)
    if unknown:
        error = {"code": "not_held", "msg": "not held by this pod"}
        await ws.send_str(_dumps({"error": error, "streams": unknown}))
