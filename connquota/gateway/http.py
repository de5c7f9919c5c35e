"""The gateway's HTTP server: consumers, metrics, probes and status.

- `GET /v1/ws`: consumers (see `consumers`);
- `GET /v1/peer`: the quota's other pods, relaying this pod's streams (see `peers`, `relay`);
- `GET /ws...`, `/stream`, `/v5/...`: consumers in the exchange's own protocol (see `native`);
- `GET /metrics`: Prometheus text (see `metrics`);
- `GET /healthz`: 200 while the event loop makes progress (lag under `max_loop_lag_s`); the
  body also shows the age of the last upstream data (informational: a quiet market is not a
  reason to restart, and restarts cost attempts);
- `GET /readyz`: 200 when the gateway can serve consumers (a plan is applied and it is not
  shutting down), 503 otherwise;
- `GET /status`: JSON of the plan, connections, slices in use, quarantines (no secrets).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from connquota.gateway.consumers import consumer_ws
from connquota.gateway.metrics import render
from connquota.gateway.native import PATHS, native_ws
from connquota.gateway.peers import peer_ws

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway


def build_app(gw: Gateway) -> web.Application:
    """The aiohttp application serving every endpoint of the gateway."""
    app = web.Application()
    app["gateway"] = gw
    app.router.add_get("/v1/ws", consumer_ws)
    app.router.add_get("/v1/peer", peer_ws)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/status", _status)
    for path in PATHS:
        app.router.add_get(path, native_ws)
    return app


async def _metrics(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    body = render(gw.registry)
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


async def _healthz(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    healthy = gw.loop_lag_s < gw.settings.max_loop_lag_s
    body = {"healthy": healthy, "eventLoopLagSeconds": round(gw.loop_lag_s, 4)}
    age = gw.last_upstream_data_age_s()
    if age is not None:
        body["lastUpstreamDataAgeSeconds"] = round(age, 3)
    return web.json_response(body, status=200 if healthy else 503)


async def _readyz(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    ready = gw.ready()
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _status(request: web.Request) -> web.Response:
    gw: Gateway = request.app["gateway"]
    return web.json_response(gw.status())
