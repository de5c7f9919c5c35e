"""Binance spot on the mock: stream host (``/ws``, ``/stream``) and the WebSocket API."""

from __future__ import annotations

import hmac

from aiohttp import web

from connquota.api.limits import LimitName
from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    LoginRequest,
    OtherRequest,
    PingRequest,
    SubscribeRequest,
)
from connquota.mockexchange.sessions.base import DialectSession, wall_ms

TOO_MANY_PARAMS = "Invalid request: too many parameters"


class BinanceSession(DialectSession):
    """Binance spot: one session per connection; ``combined`` may change with SET_PROPERTY."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.combined = self.endpoint.combined
        self.api = self.endpoint.kind == "api"
        self.subscription_id: int | None = None
        self.next_subscription_id = 0

    @property
    def variant(self) -> str:
        if self.api:
            return f"api:{self.subscription_id}"
        return "combined" if self.combined else "raw"

    def handshake_error(self) -> web.Response | None:
        streams = self.endpoint.initial_streams
        if not all(binance.is_valid_stream(s) for s in streams):
            return web.Response(
                status=400, text=binance.build_error(2, "Invalid request: invalid stream", None)
            )
        if self.mx.over_stream_limit(self.conn, len(set(streams)), "handshake refused (HTTP 400)"):
            return web.Response(status=400, text=binance.build_error(2, TOO_MANY_PARAMS, None))
        return None

    async def on_open(self) -> None:
        if self.endpoint.initial_streams:
            self.mx.subscribe(self.conn, list(self.endpoint.initial_streams))

    async def on_text(self, text: str) -> None:
        if self.api:
            await self._on_api_text(text)
            return
        request = binance.parse_client_message(text)
        if isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply)
        elif isinstance(request, SubscribeRequest):
            self._on_subscribe(request)
        elif isinstance(request, OtherRequest):
            self._on_other(request)

    def _on_subscribe(self, request: SubscribeRequest) -> None:
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            self.mx.unsubscribe(self.conn, streams)
            self.send(binance.build_ack(request.request_id))
            return
        if self.mx.over_args_limit(self.conn, len(streams), "error code 2 (too many parameters)"):
            self.send(binance.build_error(2, TOO_MANY_PARAMS, request.request_id))
            return
        new = len(self.conn.streams | set(streams))
        if self.mx.over_stream_limit(self.conn, new, "error code 2 (too many parameters)"):
            self.send(binance.build_error(2, TOO_MANY_PARAMS, request.request_id))
            return
        self.mx.subscribe(self.conn, streams)
        self.send(binance.build_ack(request.request_id))

    def _on_other(self, request: OtherRequest) -> None:
        if request.method == "LIST_SUBSCRIPTIONS":
            self.send(binance.build_ack(request.request_id, sorted(self.conn.streams)))
        elif request.method == "SET_PROPERTY":
            self.combined = bool(request.params[1])
            self.send(binance.build_ack(request.request_id))
        elif request.method == "GET_PROPERTY":
            self.send(binance.build_ack(request.request_id, self.combined))

    async def _on_api_text(self, text: str) -> None:
        request = binance.parse_api_message(text)
        if isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply)
        elif isinstance(request, PingRequest):
            self.send(binance.build_api_response(request.request_id, {}))
        elif isinstance(request, LoginRequest):
            self._on_signed(request)
        elif isinstance(request, OtherRequest):
            if request.method == "userDataStream.subscribe":
                if self.conn.account is None:
                    msg = "Invalid API-key, IP, or permissions for action."
                    self.send(binance.build_api_error(request.request_id, 401, -2015, msg))
                    return
                self._subscribe_user_data(request.request_id)
            elif request.method == "userDataStream.unsubscribe":
                self.mx.unsubscribe(self.conn, list(self.conn.streams))
                self.subscription_id = None
                self.send(binance.build_api_response(request.request_id, {}))
            else:
                self.send(binance.build_api_response(request.request_id, {"apiKey": None}))

    def _on_signed(self, request: LoginRequest) -> None:
        rid = request.request_id
        fields = dict(request.fields)
        method = fields.pop("method")
        account = self.mx.settings.account_for_key(request.api_key)
        if account is None:
            msg = "Invalid API-key, IP, or permissions for action."
            self.send(binance.build_api_error(rid, 401, -2015, msg))
            return
        expected = binance.hmac_signature(account.secret, fields)
        if not hmac.compare_digest(expected, str(fields.get("signature", "")).lower()):
            self.send(
                binance.build_api_error(rid, 400, -1022, "Signature for this request is not valid.")
            )
            return
        now = wall_ms()
        try:
            timestamp = int(fields["timestamp"])
            recv_window = int(fields.get("recvWindow", 5000))
        except (TypeError, ValueError):
            timestamp, recv_window = -1, 0
        if timestamp > 10**14:  # microseconds
            timestamp //= 1000
        if not (timestamp < now + 1000 and now - timestamp <= min(recv_window, 60000)):
            msg = "Timestamp for this request is outside of the recvWindow."
            self.send(binance.build_api_error(rid, 400, -1021, msg))
            return
        if self.conn.account is None:
            refused = self.mx.login(self.conn, account.account, "error -1034 (HTTP 429)")
            if refused is not None:
                msg = f"Too many concurrent connections; current limit is '{refused}'."
                self.send(binance.build_api_error(rid, 429, -1034, msg))
                return
        if method == "session.logon":
            connected = int(self.mx.wall_ms_of(self.conn.opened_at))
            self.send(binance.build_logon_result(rid, request.api_key, now, connected, now))
        else:
            self._subscribe_user_data(rid)

    def _subscribe_user_data(self, request_id: object) -> None:
        if self.subscription_id is None:
            self.subscription_id = self.next_subscription_id
            self.next_subscription_id += 1
            self.mx.subscribe(self.conn, [f"userData:{self.conn.account}"])
        result = {"subscriptionId": self.subscription_id}
        self.send(binance.build_api_response(request_id, result))  # type: ignore[arg-type]

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if stream.startswith("userData:"):
            return binance.build_user_data_event(self.subscription_id or 0, seq, event_time_ms)
        return binance.build_data(stream, seq, event_time_ms, self.combined)

    def notice(self) -> str | None:
        return binance.build_shutdown_notice(wall_ms(), self.combined, api=self.api)

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        # "A connection that goes beyond the limit will be disconnected"
        await self.mx.close_conn(self.conn, 1008, "Too many messages")
        return True
