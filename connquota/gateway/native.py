"""Exchange-compatible consumer endpoints: the exchange's own public market-data WebSocket
protocol, served at the root of the consumer port, so that an existing client (an exchange
library, an official SDK, a bot) only changes its base URL to the gateway's Service.

A quota has one exchange, so the paths never collide; the dialect is the one of the plan the
gateway enforces:

- binance: `/ws`, `/ws/<stream>[/<stream>...]` (any path under `/ws/`: ccxt opens `/ws/<n>`
  and subscribes afterwards), `/stream?streams=a/b`; `SUBSCRIBE`, `UNSUBSCRIBE`,
  `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`/`GET_PROPERTY combined` with `{"result":..,"id":..}`
  acks and `{"error":{"code":<int>,"msg":..},"id":..}` errors; raw payloads, or the combined
  wrapper `{"stream":..,"data":..}`; server pings every 20 s;
- okx: `/ws/v5/public` and `/ws/v5/business`; `{"op":"subscribe","args":[..]}` with one
  `event` ack per argument and `event: error` frames; the text `ping` answered `pong`;
- bybit: `/v5/public/<category>`; `op: subscribe` with the category's `success` ack shape;
  `{"op":"ping"}` answered in the category's pong shape.
- kraken: `/v2` (WebSocket v2 public market data); `method: subscribe` with one answer per
  symbol (`success: true` with `result`, or `success: false` with `error` and `symbol`),
  `method: ping` answered `pong`; book streams open with their snapshot.
- deribit: `/ws/api/v2` (JSON-RPC 2.0 public market data); `public/subscribe` and
  `public/unsubscribe` whose `result` lists the channels subscribed (a channel this pod does not
  serve is left out, as Deribit leaves out an unknown one), `public/test`,
  `public/set_heartbeat` and `public/disable_heartbeat` acknowledged (liveness is the
  WebSocket's own ping), `public/get_time`, `public/hello`; JSON-RPC error objects otherwise.
  A book opens with the gateway's replay (snapshot, then the changes since).
- coinbase: `/` (Advanced Trade public market data); `{"type":"subscribe","product_ids":[..],
  "channel":..}` one channel per message, answered by a `subscriptions` message listing what the
  connection holds; `heartbeats` acknowledged (liveness is the WebSocket's own ping: no
  heartbeat messages are generated); a product this pod does not serve refuses the message with
  Coinbase's error frame. Payloads keep the upstream connection's `sequence_num` (it numbers
  that connection's messages, not the consumer's: a consumer must not read gaps from it).

Every payload is the exchange's message as the upstream session received it (re-encoded
compactly, never altered). A stream this pod does not serve gets the exchange's own error for
an invalid stream and is never opened upstream: consumers never cause upstream traffic, so no
consumer-side frame counts against an exchange limit. Consumer requests are bounded: at most
`MAX_REQUEST_BYTES` per frame (larger closes with 1009), `MAX_STREAMS` per connection and
`MAX_REQUESTS_PER_S` requests per second (more get the dialect's "too many requests" error).
Private endpoints (logins, user data) are not served here: they belong to the quota's private
connections.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connquota.api.limits import Dialect
from connquota.exchanges import dialects
from connquota.exchanges.dialects import binance, bybit, coinbase, deribit, kraken, okx
from connquota.exchanges.dialects.base import (
    ClientRequest,
    Endpoint,
    InvalidRequest,
    LoginRequest,
    OtherRequest,
    PingRequest,
    SubscribeRequest,
    WireFormatError,
)
from connquota.gateway.consumers import count_refused, refusal, serve
from connquota.gateway.hub import FMT_COMBINED, FMT_PAYLOAD, Consumer

if TYPE_CHECKING:
    from connquota.gateway.app import Gateway

MAX_REQUEST_BYTES = 64 * 1024
MAX_STREAMS = 1024
"""Streams one native consumer connection may hold (Binance's own per-connection figure)."""
MAX_REQUESTS_PER_S = 10
PING_INTERVAL_S = binance.SERVER_PING_INTERVAL_S
INVALID_STREAM = "Invalid request: invalid stream"
TOO_MANY_PARAMS = "Invalid request: too many parameters"
TOO_MANY_REQUESTS = f"Too many requests: at most {MAX_REQUESTS_PER_S} per second per connection"
NOT_SERVED = "login and private data are not served on connquota's market-data endpoint"

PATHS = ("/ws", "/ws/{tail:.*}", "/stream", "/v5/{tail:.*}", "/v2", "/", "/public/{tail:.*}",
         "/market/{tail:.*}")  # fmt: skip
"""Routes at the consumer port's root; the plan's dialect decides which of them exist
(``/public/..`` and ``/market/..``: Binance USD-M's routes, as ccxt's binanceusdm opens them)."""


class NativeSession:
    """One consumer connection in the exchange's protocol: parses its requests, changes its
    subscriptions in the hub, and returns the exchange's answers (text frames)."""

    wire: Any = None

    def __init__(self, gw: Gateway, endpoint: Endpoint, consumer: Consumer) -> None:
        self.gw = gw
        self.endpoint = endpoint
        self.consumer = consumer
        self.conn_id = secrets.token_hex(4)
        self._recent: deque[float] = deque()

    @classmethod
    def handshake_error(cls, endpoint: Endpoint, servable: Callable[[str], bool]) -> str | None:
        """Why the connection URL itself is refused (HTTP 400), or None."""
        return None

    def answer(self, text: str) -> list[str]:
        """The frames answering one client text frame."""
        request = self.wire.parse_client_message(text)
        if self._too_frequent() and not isinstance(request, PingRequest):
            count_refused(self.gw, "native", "too_many_requests")
            return [self.too_many(request)]
        if isinstance(request, InvalidRequest):
            count_refused(self.gw, "native", "invalid_request")
            return [request.reply.replace("{conn_id}", self.conn_id)]
        return self.handle(request)

    def handle(self, request: ClientRequest) -> list[str]:
        raise NotImplementedError

    def too_many(self, request: ClientRequest) -> str:
        raise NotImplementedError

    def _too_frequent(self) -> bool:
        now = time.monotonic()
        recent = self._recent
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= MAX_REQUESTS_PER_S:
            return True
        recent.append(now)
        return False

    # -- the hub --------------------------------------------------------------------------

    def unknown(self, streams: list[str]) -> list[str]:
        """The streams of `streams` this pod does not serve."""
        servable = self.gw.hub.servable
        unknown = [s for s in streams if not servable(s)]
        if unknown:
            count_refused(self.gw, "native", "unknown_stream")
        return unknown

    def over_cap(self, streams: list[str]) -> bool:
        over = len(self.consumer.streams | set(streams)) > MAX_STREAMS
        if over:
            count_refused(self.gw, "native", "too_many_streams")
        return over

    def subscribe(self, streams: list[str]) -> None:
        self.gw.hub.subscribe(self.consumer, streams)

    def unsubscribe(self, streams: list[str]) -> None:
        self.gw.hub.unsubscribe(self.consumer, streams)


class BinanceSession(NativeSession):
    """Binance spot and USD-M market streams."""

    wire = binance

    @classmethod
    def handshake_error(cls, endpoint: Endpoint, servable: Callable[[str], bool]) -> str | None:
        streams = endpoint.initial_streams
        if not all(map(servable, streams)):
            return binance.build_error(2, INVALID_STREAM, None)
        if len(set(streams)) > MAX_STREAMS:
            return binance.build_error(2, TOO_MANY_PARAMS, None)
        return None

    def too_many(self, request: ClientRequest) -> str:
        return binance.build_error(-1003, TOO_MANY_REQUESTS, _request_id(request))

    def handle(self, request: ClientRequest) -> list[str]:
        rid = _request_id(request)
        if isinstance(request, SubscribeRequest):
            streams = list(dict.fromkeys(request.streams))
            if request.unsubscribe:
                self.unsubscribe(streams)
            elif self.unknown(streams):
                return [binance.build_error(2, INVALID_STREAM, rid)]
            elif self.over_cap(streams):
                return [binance.build_error(2, TOO_MANY_PARAMS, rid)]
            else:
                self.subscribe(streams)
            return [binance.build_ack(rid)]
        if isinstance(request, OtherRequest):
            if request.method == "LIST_SUBSCRIPTIONS":
                return [binance.build_ack(rid, sorted(self.consumer.streams))]
            if request.method == "SET_PROPERTY":
                self.consumer.fmt = FMT_COMBINED if request.params[1] else FMT_PAYLOAD
                return [binance.build_ack(rid)]
            if request.method == "GET_PROPERTY":
                return [binance.build_ack(rid, self.consumer.fmt == FMT_COMBINED)]
        return []


class OkxSession(NativeSession):
    """OKX public and business channels."""

    wire = okx

    def too_many(self, request: ClientRequest) -> str:
        return okx.build_error("60014", self.conn_id, _request_id(request))

    def handle(self, request: ClientRequest) -> list[str]:
        rid = _request_id(request)
        if isinstance(request, PingRequest):
            return [okx.PONG_TEXT]
        if isinstance(request, LoginRequest):
            return [okx.build_error("60012", self.conn_id, rid, NOT_SERVED)]
        if not isinstance(request, SubscribeRequest):
            return []
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            self.unsubscribe(streams)
            return [okx.build_ack("unsubscribe", s, self.conn_id, rid) for s in streams]
        unknown = set(self.unknown(streams))
        served = [s for s in streams if s not in unknown]
        if self.over_cap(served):
            return [okx.build_error("60012", self.conn_id, rid, TOO_MANY_PARAMS)]
        self.subscribe(served)
        out = [okx.build_error("60018", self.conn_id, rid, okx.describe_arg(s)) for s in streams
               if s in unknown]  # fmt: skip
        return out + [okx.build_ack("subscribe", s, self.conn_id, rid) for s in served]


class BybitSession(NativeSession):
    """Bybit public categories (spot, linear, inverse, option, spread)."""

    wire = bybit

    def _result(self, op: str, rid: Any, ok: bool, msg: str | None = None,
                topics: tuple[str, ...] = ()) -> str:  # fmt: skip
        return bybit.build_op_result(self.endpoint.kind, op, self.conn_id, rid, ok, msg, topics)

    def too_many(self, request: ClientRequest) -> str:
        op = "unsubscribe" if getattr(request, "unsubscribe", False) else "subscribe"
        return self._result(op, _request_id(request), False, "error:too many requests")

    def handle(self, request: ClientRequest) -> list[str]:
        rid = _request_id(request)
        if isinstance(request, PingRequest):
            now_ms = int(time.time() * 1000)
            return [bybit.build_pong(self.endpoint.kind, self.conn_id, rid, now_ms)]
        if isinstance(request, LoginRequest):
            return [self._result("auth", rid, False, NOT_SERVED)]
        if not isinstance(request, SubscribeRequest):
            return []
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            missing = [s for s in streams if s not in self.consumer.streams]
            if missing:
                msg = f"error:not subscribed,topic:{missing[0]}"
                return [self._result("unsubscribe", rid, False, msg, tuple(missing))]
            self.unsubscribe(streams)
            return [self._result("unsubscribe", rid, True, topics=tuple(streams))]
        unknown = self.unknown(streams)
        if unknown:
            msg = bybit.handler_not_found(unknown[0])
            return [self._result("subscribe", rid, False, msg, (unknown[0],))]
        if self.over_cap(streams):
            return [self._result("subscribe", rid, False, "error:too many topics")]
        self.subscribe(streams)
        return [self._result("subscribe", rid, True, topics=tuple(streams))]


class KrakenSession(NativeSession):
    """Kraken spot WebSocket v2 public channels."""

    wire = kraken

    def too_many(self, request: ClientRequest) -> str:
        return kraken.MSG_RATE_ERROR

    def handle(self, request: ClientRequest) -> list[str]:
        rid = _request_id(request)
        if isinstance(request, PingRequest):
            return [kraken.build_pong(rid)]
        if isinstance(request, OtherRequest):  # private channels (token) are not served here
            return [kraken.build_error(request.method, NOT_SERVED, rid)]
        if not isinstance(request, SubscribeRequest):
            return []
        streams = list(dict.fromkeys(request.streams))
        time_in = kraken.now_rfc3339()
        if request.unsubscribe:
            held = [s for s in streams if s in self.consumer.streams]
            self.unsubscribe(held)
            return [
                kraken.build_ack("unsubscribe", s, rid, time_in=time_in)
                if s in held
                else kraken.build_error(
                    "unsubscribe", kraken.NOT_SUBSCRIBED, rid, kraken.parse_stream(s).symbol
                )
                for s in streams
            ]
        unknown = set(self.unknown(streams))
        served = [s for s in streams if s not in unknown]
        if self.over_cap(served):
            return [kraken.build_error("subscribe", TOO_MANY_PARAMS, rid, time_in=time_in)]
        out = []
        for stream in streams:  # one answer per symbol, in the request's order
            if stream in unknown:
                symbol = kraken.parse_stream(stream).symbol
                error = f"{kraken.UNSUPPORTED_PAIR} {symbol}"
                out.append(kraken.build_error("subscribe", error, rid, symbol, time_in))
            else:
                out.append(kraken.build_ack("subscribe", stream, rid, True, time_in))
        self.subscribe(served)
        return out


class DeribitSession(NativeSession):
    """Deribit API v2 public channels over JSON-RPC 2.0."""

    wire = deribit

    def too_many(self, request: ClientRequest) -> str:
        return deribit.build_error(_request_id(request), *deribit.TOO_MANY_REQUESTS)

    def handle(self, request: ClientRequest) -> list[str]:
        rid = _request_id(request)
        if isinstance(request, PingRequest):
            return [deribit.build_result(rid, {"version": DERIBIT_VERSION})]
        if isinstance(request, OtherRequest):
            if request.method in ("public/set_heartbeat", "public/disable_heartbeat"):
                return [deribit.build_result(rid, "ok")]
            if request.method == "public/get_time":
                return [deribit.build_result(rid, int(time.time() * 1000))]
            if request.method == "public/hello":
                return [deribit.build_result(rid, {"version": DERIBIT_VERSION})]
            if request.method == "public/unsubscribe_all":
                self.unsubscribe(list(self.consumer.streams))
                return [deribit.build_result(rid, "ok")]
            data = {"reason": NOT_SERVED}
            return [deribit.build_error(rid, *deribit.AUTHORIZATION_REQUIRED, data)]
        if not isinstance(request, SubscribeRequest):
            return []
        channels = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            held = [c for c in channels if c in self.consumer.streams]
            self.unsubscribe(held)
            return [deribit.build_result(rid, held)]
        unknown = set(self.unknown(channels))
        served = [c for c in channels if c not in unknown]
        if self.over_cap(served):
            data = {"reason": TOO_MANY_PARAMS, "param": "channels"}
            return [deribit.build_error(rid, *deribit.INVALID_PARAMS, data)]
        self.subscribe(served)
        return [deribit.build_result(rid, served)]


class CoinbaseSession(NativeSession):
    """Coinbase Advanced Trade public channels."""

    wire = coinbase

    def __init__(self, gw: Gateway, endpoint: Endpoint, consumer: Consumer) -> None:
        super().__init__(gw, endpoint, consumer)
        self.heartbeats = False

    def too_many(self, request: ClientRequest) -> str:
        return coinbase.build_error(coinbase.RATE_LIMITED)

    def _subscriptions(self) -> str:
        subs: dict[str, list[str]] = {}
        for stream in sorted(self.consumer.streams):
            name = coinbase.parse_stream(stream)
            subs.setdefault(name.channel, []).append(name.symbol)
        if self.heartbeats:
            subs[coinbase.HEARTBEATS] = [coinbase.HEARTBEATS]
        return coinbase.build_subscriptions(subs)

    def handle(self, request: ClientRequest) -> list[str]:
        if isinstance(request, OtherRequest):  # heartbeats, status, a whole-channel unsubscribe
            channel = str(request.params)
            if channel == coinbase.HEARTBEATS:
                self.heartbeats = request.method == "subscribe"
            elif request.method == "unsubscribe":
                prefix = channel + ":"
                self.unsubscribe([s for s in self.consumer.streams if s.startswith(prefix)])
            return [self._subscriptions()]
        if not isinstance(request, SubscribeRequest):
            return []
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            self.unsubscribe([s for s in streams if s in self.consumer.streams])
            return [self._subscriptions()]
        unknown = self.unknown(streams)
        if unknown:
            product = coinbase.parse_stream(unknown[0]).symbol
            return [coinbase.build_error(coinbase.FAILED, f"{coinbase.UNKNOWN_PRODUCT} {product}")]
        if self.over_cap(streams):
            return [coinbase.build_error(coinbase.FAILED, TOO_MANY_PARAMS)]
        self.subscribe(streams)
        return [self._subscriptions()]


DERIBIT_VERSION = "1.2.26"
"""What ``public/test`` and ``public/hello`` answer on the gateway's Deribit endpoint."""


SESSIONS: dict[Dialect, type[NativeSession]] = {
    Dialect.BINANCE: BinanceSession,
    Dialect.OKX: OkxSession,
    Dialect.BYBIT: BybitSession,
    Dialect.KRAKEN: KrakenSession,
    Dialect.DERIBIT: DeribitSession,
    Dialect.COINBASE: CoinbaseSession,
}


def _request_id(request: ClientRequest) -> Any:
    return getattr(request, "request_id", None)


def _text_error(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message)


async def native_ws(request: web.Request) -> web.StreamResponse:
    """A consumer speaking the exchange's own protocol (see the module text)."""
    gw: Gateway = request.app["gateway"]
    plan = gw.fleet.plan
    if plan is None:
        return web.json_response({"error": "no plan applied yet"}, status=503)
    session_type = SESSIONS.get(plan.profile.dialect)
    if session_type is None:
        return _text_error(404, f"no {plan.profile.dialect.value} endpoint is served here")
    try:
        endpoint = dialects.wire_format(plan.profile.dialect).parse_endpoint(
            request.path, request.query_string
        )
    except WireFormatError as exc:
        count_refused(gw, "native", "bad_url")
        return _text_error(404, str(exc))
    # OKX's /business carries public channels (candles, trades-all) beside private ones.
    if (endpoint.private and endpoint.kind != "business") or endpoint.kind == "api":
        count_refused(gw, "native", "not_served")
        return _text_error(404, f"{request.path}: {NOT_SERVED}")
    refused = refusal(request, gw, "native")
    if refused is not None:
        return refused
    bad = session_type.handshake_error(endpoint, gw.hub.servable)
    if bad is not None:
        count_refused(gw, "native", "bad_url")
        return _text_error(400, bad)
    ws = web.WebSocketResponse(
        max_msg_size=MAX_REQUEST_BYTES, heartbeat=PING_INTERVAL_S, compress=False
    )
    await ws.prepare(request)
    consumer = gw.hub.add_consumer(FMT_COMBINED if endpoint.combined else FMT_PAYLOAD)
    session = session_type(gw, endpoint, consumer)
    if endpoint.initial_streams:
        session.subscribe(list(dict.fromkeys(endpoint.initial_streams)))

    async def on_text(text: str) -> None:
        for frame in session.answer(text):
            await ws.send_str(frame)

    async def on_binary() -> None:
        count_refused(gw, "native", "binary")
        await ws.send_str(json.dumps({"error": "send text frames"}))

    await serve(gw, request, ws, consumer, on_text, on_binary)
    return ws
