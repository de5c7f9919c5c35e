"""The admin API under ``/admin/`` (JSON): observation, reset and fault injection.

GET  /admin/stats                      limits, connections per IP, peaks, bans, counters
GET  /admin/violations                 every violation recorded
GET  /admin/peaks                      peak use of every limit per IP / account / connection
GET  /admin/connections[?ip=]          open connections
POST /admin/reset                      forget peaks, violations, bans, attempt logs
POST /admin/faults/disconnect          {"ip"?: str, "abrupt"?: bool, "code"?: int}
POST /admin/faults/shutdown-notice     {"ip"?: str, "closeAfterSeconds"?: float (profile s)}
POST /admin/faults/revoke-key          {"apiKey": str} the key stops working; its sessions hear so
POST /admin/faults/refuse-handshakes   {"count": int, "status"?: 429|418, "retryAfterSeconds"?: float}
POST /admin/faults/ban                 {"ip": str, "seconds": float (profile s)}
POST /admin/faults/stall               {"stream": str, "seconds": float (wall-clock)}
POST /admin/faults/silence             {"connId"?: str, "ip"?: str, "seconds"?: float (wall-clock)}
POST /admin/faults/malformed           {"connId"?: str, "ip"?: str, "count"?: int}
POST /admin/limits                     {"limits": [Limit, ...]} enforce these instead of the profile's
POST /admin/rate                       {"ratePerStreamHz"?: float, "privateRateHz"?: float}
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from connquota.api.limits import Limit

if TYPE_CHECKING:
    from connquota.mockexchange.server import MockExchange


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"expected a JSON object: {exc}") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return data


def add_admin_routes(app: web.Application, mx: MockExchange) -> None:
    """Register the admin API on ``app``."""

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(mx.stats())

    async def violations(_: web.Request) -> web.Response:
        return web.json_response([v.to_json() for v in mx.violations()])

    async def peaks(_: web.Request) -> web.Response:
        return web.json_response(mx.peaks_json())

    async def connections(request: web.Request) -> web.Response:
        now = time.monotonic()
        ip = request.query.get("ip")
        return web.json_response([c.summary(now) for c in mx.connections(ip)])

    async def reset(_: web.Request) -> web.Response:
        mx.reset()
        return web.json_response({"reset": True})

    async def disconnect(request: web.Request) -> web.Response:
        body = await _body(request)
        count = await mx.disconnect(
            body.get("ip"), bool(body.get("abrupt", False)), int(body.get("code", 1001))
        )
        return web.json_response({"disconnected": count})

    async def revoke_key(request: web.Request) -> web.Response:
        body = await _body(request)
        count = mx.revoke_key(str(body["apiKey"]))
        return web.json_response({"sessions": count})

    async def shutdown_notice(request: web.Request) -> web.Response:
        body = await _body(request)
        count = mx.send_shutdown_notice(body.get("ip"), body.get("closeAfterSeconds"))
        return web.json_response({"notified": count})

    async def refuse(request: web.Request) -> web.Response:
        body = await _body(request)
        status = int(body.get("status", 429))
        if status not in (429, 418, 403, 503):
            raise web.HTTPBadRequest(text="status must be 429, 418, 403 or 503")
        ip = body.get("ip")
        mx.refuse_next_handshakes(
            int(body.get("count", 1)),
            status,
            float(body.get("retryAfterSeconds", 1)),
            None if ip is None else str(ip),
        )
        return web.json_response({"queued": int(body.get("count", 1)), "status": status})

    async def ban(request: web.Request) -> web.Response:
        body = await _body(request)
        if "ip" not in body:
            raise web.HTTPBadRequest(text="ip is required")
        seconds = float(body.get("seconds", mx.settings.ban_s))
        mx.ledger.ban(str(body["ip"]), time.monotonic(), mx.settings.scaled_s(seconds), "admin API")
        return web.json_response(
            {"banned": body["ip"], "wallSeconds": mx.settings.scaled_s(seconds)}
        )

    async def stall(request: web.Request) -> web.Response:
        body = await _body(request)
        if "stream" not in body:
            raise web.HTTPBadRequest(text="stream is required")
        mx.stall_stream(str(body["stream"]), float(body.get("seconds", 5)))
        return web.json_response({"stalled": body["stream"]})

    async def silence(request: web.Request) -> web.Response:
        body = await _body(request)
        count = mx.go_silent(body.get("connId"), body.get("ip"), float(body.get("seconds", 3600)))
        return web.json_response({"silenced": count})

    async def malformed(request: web.Request) -> web.Response:
        body = await _body(request)
        count = mx.send_malformed(body.get("connId"), body.get("ip"), int(body.get("count", 1)))
        return web.json_response({"connections": count})

    async def limits(request: web.Request) -> web.Response:
        body = await _body(request)
        try:
            new = [Limit.model_validate(raw) for raw in body.get("limits") or []]
        except ValidationError as exc:
            raise web.HTTPBadRequest(text=f"limits: {exc}") from None
        mx.set_limits(new)
        return web.json_response({"limits": [lim.to_wire() for lim in mx.profile.limits]})

    async def rate(request: web.Request) -> web.Response:
        body = await _body(request)
        if "ratePerStreamHz" in body:
            mx.set_rate(float(body["ratePerStreamHz"]))
        if "privateRateHz" in body:
            mx.set_private_rate(float(body["privateRateHz"]))
        return web.json_response(
            {"ratePerStreamHz": mx.feeds.rate_hz, "privateRateHz": mx.feeds.private_rate_hz}
        )

    app.router.add_get("/admin/stats", stats)
    app.router.add_get("/admin/violations", violations)
    app.router.add_get("/admin/peaks", peaks)
    app.router.add_get("/admin/connections", connections)
    app.router.add_post("/admin/reset", reset)
    app.router.add_post("/admin/faults/disconnect", disconnect)
    app.router.add_post("/admin/faults/shutdown-notice", shutdown_notice)
    app.router.add_post("/admin/faults/revoke-key", revoke_key)
    app.router.add_post("/admin/faults/refuse-handshakes", refuse)
    app.router.add_post("/admin/faults/ban", ban)
    app.router.add_post("/admin/faults/stall", stall)
    app.router.add_post("/admin/faults/silence", silence)
    app.router.add_post("/admin/faults/malformed", malformed)
    app.router.add_post("/admin/rate", rate)
    app.router.add_post("/admin/limits", limits)
