"""Deribit API v2 wire format: JSON-RPC 2.0 over ``wss://www.deribit.com/ws/api/v2`` (public
market data, and user channels after ``public/auth``).

Deribit names a subscription with a dot-separated channel that carries the instrument and the
notification interval: ``trades.BTC-PERPETUAL.100ms``, ``ticker.BTC-PERPETUAL.100ms``,
``book.BTC-PERPETUAL.100ms``, ``chart.trades.BTC-PERPETUAL.1`` (1-minute candles). connquota's
stream string is the channel itself; `stream_name` composes it from an instrument and a channel
kind (``trades`` -> ``trades.<instrument>.100ms``; ``trades.raw``, ``chart.trades.5`` name
another interval or resolution).

Every request is ``{"jsonrpc":"2.0","id":N,"method":..,"params":{..}}`` and gets a response with
the same ``id`` and a ``result`` (``public/subscribe``: the channels subscribed; an unknown
channel is left out, not refused) or an ``error`` object ``{"code":..,"message":..}``.
Notifications have no ``id``: ``{"jsonrpc":"2.0","method":"subscription","params":{"channel":..,
"data":..}}``. Heartbeats are opt-in: after ``public/set_heartbeat`` the server sends
``{"method":"heartbeat","params":{"type":"test_request"}}`` and the client must call
``public/test``. Books carry ``change_id`` and, after the snapshot, ``prev_change_id`` (equal to
the previous message's ``change_id`` when nothing was missed).

Private side (same socket): ``public/auth`` with ``grant_type`` ``client_credentials``
(``client_id`` / ``client_secret``), or ``client_signature`` (``client_id``, ``timestamp`` in ms,
``nonce``, ``data`` and ``signature`` = lowercase hex HMAC-SHA256 of the secret over
``timestamp + "\n" + nonce + "\n" + data``, valid 60 s: the secret never leaves the client)
answers ``access_token``, ``expires_in`` (seconds) and ``refresh_token``; ``public/auth`` with
``grant_type`` ``refresh_token`` renews them before expiry.
User channels (``user.orders.<instrument>.<interval>``, ``user.orders.<kind>.<currency>.
<interval>``, ``user.trades.`` likewise, ``user.portfolio.<currency>``) are subscribed with
``private/subscribe`` (same shape as ``public/subscribe``).

Source: exchange-dialects.md section 7 (https://docs.deribit.com/).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    ClientRequest,
    Data,
    Endpoint,
    Error,
    InvalidRequest,
    LoginResult,
    Notice,
    OtherRequest,
    Ping,
    PingRequest,
    Pong,
    RequestId,
    ServerEvent,
    StreamName,
    SubscribeRequest,
    Unknown,
    WireFormatError,
    dumps,
    endpoint_at,
    loads_object,
)

name = "deribit"

ACK_LISTS_ACCEPTED = True
"""A subscribe result lists the channels subscribed; a channel left out was refused."""

PATHS = {"/ws/api/v2": "public"}
"""One socket carries public and private methods (connquota speaks the public ones)."""

INTERVALS = ("100ms", "agg2", "raw")
"""Notification intervals of trades, ticker and book (``raw``: authorised users only)."""
PUBLIC_INTERVALS = ("100ms", "agg2")
DEFAULT_INTERVAL = "100ms"
CHART_RESOLUTIONS = ("1", "3", "5", "10", "15", "30", "60", "120", "180", "360", "720", "1D")
DEFAULT_RESOLUTION = "1"
KINDS = ("trades", "ticker", "book", "chart.trades")
MIN_HEARTBEAT_S = 10
"""``public/set_heartbeat``: "The heartbeat interval in seconds, but not less than 10"."""

PUBLIC_METHODS = frozenset(
    {"public/subscribe", "public/unsubscribe", "public/test", "public/set_heartbeat",
     "public/disable_heartbeat", "public/get_time", "public/hello", "public/unsubscribe_all",
     "public/auth", "private/subscribe", "private/unsubscribe"}
)  # fmt: skip

USER_KINDS = ("user.orders", "user.trades", "user.portfolio")
"""The user (private) channels connquota speaks."""
USER_INSTRUMENT_KINDS = ("future", "option", "spot", "future_combo", "option_combo", "combo",
                         "any")  # fmt: skip
"""``user.orders.<kind>.<currency>.<interval>``: the instrument kinds."""

# error codes (https://docs.deribit.com/articles/errors and JSON-RPC 2.0)
TOO_MANY_REQUESTS = (10028, "too_many_requests")
AUTHORIZATION_REQUIRED = (10000, "authorization_required")
INVALID_CREDENTIALS = (13004, "invalid_credentials")
"""What a wrong client_id / client_secret gets (the older v2 code list; the newer one says
10001, see exchange-dialects.md 7.7)."""
INVALID_TOKEN = (13009, "invalid_token")
TOKEN_REVOKED = (13010, "token_revoked")
TOO_MANY_SESSIONS = (10066, "too_many_concurrent_requests")
"""The mock's answer to a login over the sessions per API key (Deribit documents no code)."""
AUTH_ERROR_CODES = frozenset({"13004", "10001", "13009", "13010", "13011", "10000"})
"""Error codes that say the key, its secret or its token were refused."""
INVALID_PARAMS = (-32602, "Invalid params")
METHOD_NOT_FOUND = (-32601, "Method not found")
PARSE_ERROR = (-32700, "Parse error")
INVALID_REQUEST = (-32600, "Invalid Request")


# --- streams ------------------------------------------------------------------------------------


def stream_parts(stream: str) -> tuple[str, str, str]:
    """``book.BTC-PERPETUAL.100ms`` -> (``book``, ``BTC-PERPETUAL``, ``100ms``);
    ``chart.trades.BTC-PERPETUAL.1`` -> (``chart.trades``, ``BTC-PERPETUAL``, ``1``).
    WireFormatError when ``stream`` is not a public channel connquota speaks."""
    if stream.startswith("chart.trades."):
        kind, rest = "chart.trades", stream[len("chart.trades.") :]
        allowed: tuple[str, ...] = CHART_RESOLUTIONS
    else:
        kind, _, rest = stream.partition(".")
        allowed = INTERVALS
    instrument, dot, interval = rest.rpartition(".")
    if kind not in KINDS or not dot or not valid_instrument(instrument) or interval not in allowed:
        raise WireFormatError(f"not a Deribit public channel: {stream!r}")
    return kind, instrument, interval


def user_channel_parts(stream: str) -> tuple[str, str]:
    """``user.orders.BTC-PERPETUAL.raw`` -> (``user.orders``, ``BTC-PERPETUAL.raw``);
    ``user.portfolio.btc`` -> (``user.portfolio``, ``btc``). WireFormatError for anything that
    is not a user channel connquota speaks."""
    for kind in USER_KINDS:
        if stream.startswith(kind + "."):
            rest = stream[len(kind) + 1 :]
            parts = rest.split(".")
            if kind == "user.portfolio":
                ok = len(parts) == 1 and parts[0].isalnum()
            elif len(parts) == 2:
                ok = valid_instrument(parts[0]) and parts[1] in INTERVALS
            else:
                ok = (
                    len(parts) == 3
                    and parts[0] in USER_INSTRUMENT_KINDS
                    and parts[1].replace("_", "").isalnum()
                    and parts[2] in INTERVALS
                )
            if ok:
                return kind, rest
    raise WireFormatError(f"not a Deribit user channel: {stream!r}")


def is_user_channel(stream: str) -> bool:
    """Whether ``stream`` is a user (private) channel: ``user.orders.``, ``user.trades.``,
    ``user.portfolio.``."""
    try:
        user_channel_parts(stream)
    except WireFormatError:
        return False
    return True


def stream_name(symbol: str, channel: str) -> str:
    """``BTC-PERPETUAL`` x ``trades`` -> ``trades.BTC-PERPETUAL.100ms``; ``book.agg2`` ->
    ``book.BTC-PERPETUAL.agg2``; ``chart.trades`` -> ``chart.trades.BTC-PERPETUAL.1``."""
    if channel.startswith("chart.trades"):
        resolution = channel[len("chart.trades.") :] or DEFAULT_RESOLUTION
        return f"chart.trades.{symbol}.{resolution}"
    kind, _, interval = channel.partition(".")
    return f"{kind}.{symbol}.{interval or DEFAULT_INTERVAL}"


def parse_stream(stream: str) -> StreamName:
    """``trades.BTC-PERPETUAL.100ms`` -> symbol ``BTC-PERPETUAL``, channel ``trades``."""
    kind, instrument, _ = stream_parts(stream)
    return StreamName(symbol=instrument, channel=kind)


def valid_instrument(instrument: str) -> bool:
    """``BTC-PERPETUAL``, ``ETH-27DEC24``, ``BTC-27DEC24-60000-C``, ``BTC_USDC``: upper-case
    letters, digits, ``-`` and ``_``."""
    return (
        bool(instrument)
        and instrument.upper() == instrument
        and instrument.replace("-", "").replace("_", "").isalnum()
    )


def path_for(kind: str) -> str:
    """``public`` -> ``/ws/api/v2``."""
    if kind != "public":
        raise WireFormatError(f"Deribit has no {kind!r} WebSocket of its own")
    return "/ws/api/v2"


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path Deribit does not serve."""
    return endpoint_at(PATHS, "Deribit", path)


# --- client side --------------------------------------------------------------------------------


def _request_id(request_id: RequestId) -> int | str:
    """Deribit rejects requests without ``id``: ints and digit strings become ints."""
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return request_id
    if isinstance(request_id, str) and request_id.isdigit():
        return int(request_id)
    return request_id if isinstance(request_id, str) and request_id else 0


def build_request(method: str, params: dict[str, Any], request_id: RequestId) -> str:
    """``{"jsonrpc":"2.0","id":N,"method":..,"params":{..}}``."""
    body = {"jsonrpc": "2.0", "id": _request_id(request_id), "method": method, "params": params}
    return dumps(body)


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``public/subscribe`` with ``params.channels``."""
    if not streams:
        raise WireFormatError("a Deribit subscribe names at least one channel")
    return build_request("public/subscribe", {"channels": list(streams)}, request_id)


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``public/unsubscribe`` with ``params.channels``."""
    return build_request("public/unsubscribe", {"channels": list(streams)}, request_id)


def build_ping(request_id: RequestId = None) -> str | None:
    """``public/test``: what answers ``test_request`` (and a client's own liveness probe)."""
    return build_request("public/test", {}, request_id)


build_ping_reply = build_ping
"""The answer to the server's ``test_request`` (the gateway sends it with a fresh id)."""


def build_set_heartbeat(interval_s: float, request_id: RequestId) -> str:
    """``public/set_heartbeat`` with ``interval`` in seconds (at least 10)."""
    interval = max(MIN_HEARTBEAT_S, int(interval_s))
    return build_request("public/set_heartbeat", {"interval": interval}, request_id)


def build_private_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``private/subscribe`` with ``params.channels`` (public and user channels alike)."""
    if not streams:
        raise WireFormatError("a Deribit subscribe names at least one channel")
    return build_request("private/subscribe", {"channels": list(streams)}, request_id)


def build_private_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``private/unsubscribe`` with ``params.channels``."""
    return build_request("private/unsubscribe", {"channels": list(streams)}, request_id)


def build_login(
    credentials: ApiCredentials, now_ms: int, request_id: RequestId, nonce: str | None = None
) -> str:
    """``public/auth``: the API key is the ``client_id``; with ``grant_type``
    ``client_credentials`` its secret is the ``client_secret`` (``now_ms`` unused), or, when
    ``credentials.signed_auth``, ``client_signature`` signs ``now_ms`` and ``nonce`` (random
    when not given) with it (`client_signature`)."""
    if credentials.signed_auth:
        nonce = nonce if nonce is not None else secrets.token_hex(4)
        params: dict[str, Any] = {
            "grant_type": "client_signature", "client_id": credentials.api_key,
            "timestamp": now_ms, "nonce": nonce, "data": "",
            "signature": client_signature(credentials.secret, now_ms, nonce, ""),
        }  # fmt: skip
    else:
        params = {"grant_type": "client_credentials", "client_id": credentials.api_key,
                  "client_secret": credentials.secret}  # fmt: skip
    return build_request("public/auth", params, request_id)


SIGNATURE_VALIDITY_S = 60.0
"""How long a ``client_signature`` timestamp is valid ("60 seconds since generation")."""


def client_signature(secret: str, timestamp_ms: int, nonce: str, data: str = "") -> str:
    """``HEX_STRING(HMAC-SHA256(ClientSecret, Timestamp + "\n" + Nonce + "\n" + Data))``,
    lowercase (exchange-dialects.md 7.6)."""
    text = f"{timestamp_ms}\n{nonce}\n{data}"
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def build_refresh(refresh_token: str, request_id: RequestId) -> str:
    """``public/auth`` with ``grant_type`` ``refresh_token``: new tokens before expiry."""
    params = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return build_request("public/auth", params, request_id)


def auth_result(result: Any) -> tuple[str, str, float] | None:
    """``(access_token, refresh_token, expires_in seconds)`` of a ``public/auth`` result, or
    None when ``result`` is not one."""
    if not isinstance(result, dict):
        return None
    access, refresh = result.get("access_token"), result.get("refresh_token")
    expires = result.get("expires_in")
    if not isinstance(access, str) or not isinstance(refresh, str):
        return None
    if not isinstance(expires, (int, float)) or isinstance(expires, bool):
        return None
    return access, refresh, float(expires)


def _seq_and_time(kind: str, data: Any) -> tuple[int | None, int | None]:
    """The exchange sequence (book ``change_id``, trades ``trade_seq``) and event time."""
    if isinstance(data, dict):
        ts = data.get("timestamp", data.get("tick"))
        seq = data.get("change_id") if kind == "book" else None
        return (seq if isinstance(seq, int) else None), (ts if isinstance(ts, int) else None)
    if isinstance(data, list) and kind == "trades":
        seqs = [t.get("trade_seq") for t in data if isinstance(t, dict)]
        times = [t.get("timestamp") for t in data if isinstance(t, dict)]
        ints = [s for s in seqs if isinstance(s, int) and not isinstance(s, bool)]
        tints = [t for t in times if isinstance(t, int) and not isinstance(t, bool)]
        return (max(ints) if ints else None), (max(tints) if tints else None)
    return None, None


def continuity(payload: Any) -> tuple[int | None, int] | None:
    """A book notification's (``prev_change_id``, ``change_id``); ``prev`` is None on the
    snapshot. None for anything that is not book data."""
    params = payload.get("params") if isinstance(payload, dict) else None
    data = params.get("data") if isinstance(params, dict) else None
    if not isinstance(data, dict):
        return None
    change = data.get("change_id")
    if not isinstance(change, int) or isinstance(change, bool):
        return None
    prev = data.get("prev_change_id")
    if data.get("type") == "snapshot" or not isinstance(prev, int):
        return None, change
    return prev, change


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from Deribit."""
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    method = obj.get("method")
    params = obj.get("params")
    if method == "subscription" and isinstance(params, dict):
        channel, data = params.get("channel"), params.get("data")
        if not isinstance(channel, str) or data is None:
            return Unknown(text)
        try:
            kind = stream_parts(channel)[0]
        except WireFormatError:
            kind = channel.rpartition(".")[0] if channel.startswith("user.") else ""
            kind = "trades" if kind.startswith("user.trades") else kind.partition(".")[0]
        seq, ts = _seq_and_time(kind, data)
        return Data(channel, seq, ts, obj, text)
    if method == "heartbeat" and isinstance(params, dict):
        if params.get("type") == "test_request":
            return Ping("test_request")
        return Notice("heartbeat")
    request_id = obj.get("id")
    error = obj.get("error")
    if isinstance(error, dict):
        return Error(request_id, str(error.get("code", "")), str(error.get("message", "")), obj)
    if "result" in obj:
        result = obj["result"]
        if isinstance(result, list):
            streams = tuple(c for c in result if isinstance(c, str))
            return Ack(request_id, "subscribe", streams, result)
        if result == "ok":
            return Ack(request_id, "set_heartbeat", (), result)
        if isinstance(result, dict) and "version" in result:
            return Pong(request_id, "public/test")
        if auth_result(result) is not None:
            return LoginResult(True, request_id)
        return Ack(request_id, "result", (), result)
    return Unknown(text)


# --- server side (the mock exchange) ------------------------------------------------------------


def now_us() -> int:
    """Wall-clock microseconds (``usIn`` / ``usOut``)."""
    return int(datetime.now(tz=UTC).timestamp() * 1_000_000)


def build_result(request_id: RequestId, result: Any, us_in: int | None = None) -> str:
    """``{"jsonrpc":"2.0","id":N,"result":..,"usIn":..,"usOut":..,"usDiff":..,
    "testnet":false}``."""
    us_out = now_us()
    us_in = us_in if us_in is not None else us_out
    body = {"jsonrpc": "2.0", "id": request_id, "result": result, "usIn": us_in,
            "usOut": us_out, "usDiff": us_out - us_in, "testnet": False}  # fmt: skip
    return dumps(body)


def build_error(
    request_id: RequestId,
    code: int,
    message: str,
    data: dict[str, Any] | None = None,
    us_in: int | None = None,
) -> str:
    """``{"jsonrpc":"2.0","error":{"code":..,"message":..,"data":{..}},"id":N,"usIn":..}``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    us_out = now_us()
    us_in = us_in if us_in is not None else us_out
    body = {"jsonrpc": "2.0", "error": error, "usIn": us_in, "usOut": us_out,
            "usDiff": us_out - us_in, "testnet": False, "id": request_id}  # fmt: skip
    return dumps(body)


def build_heartbeat(kind: str = "test_request") -> str:
    """``{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}``."""
    return dumps({"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": kind}})


def build_notification(channel: str, data: Any) -> str:
    """``{"jsonrpc":"2.0","method":"subscription","params":{"channel":..,"data":..}}``."""
    body = {"jsonrpc": "2.0", "method": "subscription",
            "params": {"channel": channel, "data": data}}  # fmt: skip
    return dumps(body)


def _invalid(
    request_id: RequestId, code: tuple[int, str], reason: str, param: str = ""
) -> InvalidRequest:
    data = {"reason": reason, "param": param} if param else {"reason": reason}
    reply = build_error(request_id, code[0], code[1], data)
    return InvalidRequest(request_id, str(code[0]), code[1], reply)


def parse_client_message(text: str) -> ClientRequest:
    """Classify a client frame (the mock's side)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return _invalid(None, PARSE_ERROR, "invalid JSON")
    if isinstance(obj, list):
        return _invalid(None, INVALID_REQUEST, "batch requests are not supported")
    if not isinstance(obj, dict):
        return _invalid(None, INVALID_REQUEST, "not a JSON-RPC request")
    request_id = obj.get("id")
    method = obj.get("method")
    if request_id is None or isinstance(request_id, (bool, dict, list, float)):
        return _invalid(None, INVALID_REQUEST, "requests without id are rejected", "id")
    if not isinstance(method, str) or not method:
        return _invalid(request_id, INVALID_REQUEST, "method missing", "method")
    if method.startswith("/api/v2/"):
        method = method[len("/api/v2/") :]
    params = obj.get("params", {})
    if not isinstance(params, dict):
        return _invalid(request_id, INVALID_PARAMS, "only named params are accepted", "params")
    if method == "public/test":
        return PingRequest(request_id)
    if method in ("public/subscribe", "public/unsubscribe"):
        channels = params.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            return _invalid(request_id, INVALID_PARAMS, "value must be a list", "channels")
        unsubscribe = method == "public/unsubscribe"
        return SubscribeRequest(request_id, tuple(channels), unsubscribe=unsubscribe)
    if method in PUBLIC_METHODS:
        return OtherRequest(request_id, method, params)
    return _invalid(request_id, METHOD_NOT_FOUND, f"unknown method {method}")


def _price(seq: int) -> float:
    return 42000 + (seq % 200) / 2


def build_trades(stream: str, seq: int, event_time_ms: int) -> str:
    """One ``trades`` notification: a list of one trade with every documented field
    (``trade_seq`` = seq: "The sequence number of the trade within instrument")."""
    _, instrument, _ = stream_parts(stream)
    price = _price(seq)
    amount = float(10 * (1 + seq % 50))
    trade = {"trade_seq": seq, "trade_id": str(100_000_000 + seq), "timestamp": event_time_ms,
             "tick_direction": seq % 4, "price": price, "mark_price": round(price + 0.12, 2),
             "instrument_name": instrument, "index_price": round(price - 0.35, 2),
             "direction": "buy" if seq % 2 else "sell", "amount": amount,
             "contracts": amount / 10}  # fmt: skip
    return build_notification(stream, [trade])


def build_ticker(stream: str, seq: int, event_time_ms: int) -> str:
    """One ``ticker`` notification with the fields of Deribit's ticker channel."""
    _, instrument, _ = stream_parts(stream)
    last = _price(seq)
    data = {"timestamp": event_time_ms, "stats": {"volume_usd": 1_234_567_890.0,
            "volume": 28_850.5, "price_change": round((last - 41900) / 419, 4), "low": 41700.0,
            "high": 42300.0}, "state": "open", "settlement_price": 41950.12,
            "open_interest": 1_020_345_670, "min_price": round(last * 0.97, 1),
            "max_price": round(last * 1.03, 1), "mark_price": round(last + 0.12, 2),
            "last_price": last, "interest_value": 0.0, "instrument_name": instrument,
            "index_price": round(last - 0.35, 2), "funding_8h": 0.00001234,
            "estimated_delivery_price": round(last - 0.35, 2), "current_funding": 0.0,
            "best_bid_price": last - 0.5, "best_bid_amount": 12_340.0,
            "best_ask_price": last + 0.5, "best_ask_amount": 5_670.0}  # fmt: skip
    return build_notification(stream, data)


def build_chart(stream: str, seq: int, event_time_ms: int) -> str:
    """One ``chart.trades`` notification: the candle the event falls in (``tick`` = its start
    in ms; open, high, low, close, volume, cost)."""
    _, _, resolution = stream_parts(stream)
    bar_ms = 86_400_000 if resolution == "1D" else int(resolution) * 60_000
    tick = event_time_ms - event_time_ms % bar_ms
    close = _price(seq)
    volume = round(0.5 * (1 + seq % 40), 4)
    data = {"volume": volume, "tick": tick, "open": 42000.0, "low": min(42000.0, close),
            "high": max(42010.0, close), "cost": round(volume * close, 2),
            "close": close}  # fmt: skip
    return build_notification(stream, data)


def build_book(
    stream: str,
    kind: str,
    change_id: int,
    prev_change_id: int | None,
    bids: list[list[Any]],
    asks: list[list[Any]],
    event_time_ms: int,
) -> str:
    """One ``book`` notification: ``type`` ``snapshot`` (levels ``["new", price, amount]``, no
    ``prev_change_id``) or ``change`` (``["new"|"change"|"delete", price, amount]``)."""
    _, instrument, _ = stream_parts(stream)
    data: dict[str, Any] = {"type": kind, "timestamp": event_time_ms}
    if prev_change_id is not None and kind != "snapshot":
        data["prev_change_id"] = prev_change_id
    data.update({"instrument_name": instrument, "change_id": change_id, "bids": bids,
                 "asks": asks})  # fmt: skip
    return build_notification(stream, data)


def build_data(stream: str, seq: int, event_time_ms: int) -> str:
    """One notification of a non-book channel (books: `build_book` from the mock's book)."""
    kind = stream_parts(stream)[0]
    if kind == "trades":
        return build_trades(stream, seq, event_time_ms)
    if kind == "ticker":
        return build_ticker(stream, seq, event_time_ms)
    if kind == "chart.trades":
        return build_chart(stream, seq, event_time_ms)
    raise WireFormatError(f"no data builder for {stream!r}")


def build_auth_result(
    request_id: RequestId, access: str, refresh: str, expires_in_s: int, us_in: int | None = None
) -> str:
    """The ``public/auth`` result: tokens, ``expires_in`` (s), ``scope``, ``token_type``."""
    result = {"access_token": access, "expires_in": expires_in_s, "refresh_token": refresh,
              "scope": "connection mainaccount", "enabled_features": [],
              "token_type": "bearer"}  # fmt: skip
    return build_result(request_id, result, us_in)


def build_user_data(stream: str, seq: int, event_time_ms: int) -> str:
    """One notification of a user channel: ``user.orders`` an order (a list of one unless the
    interval is ``raw``), ``user.trades`` a list of one trade (``trade_seq`` = seq),
    ``user.portfolio`` the currency's portfolio."""
    kind, rest = user_channel_parts(stream)
    parts = rest.split(".")
    instrument = parts[0] if len(parts) == 2 else "BTC-PERPETUAL"
    price = _price(seq)
    data: Any
    if kind == "user.portfolio":
        data = {"currency": parts[0].upper(), "equity": 10.0 + seq % 7, "balance": 10.0,
                "available_funds": 9.5, "margin_balance": 10.0, "initial_margin": 0.4,
                "maintenance_margin": 0.2, "total_pl": round((seq % 11) * 0.01, 2),
                "session_upl": 0.0, "delta_total": 0.0}  # fmt: skip
    elif kind == "user.orders":
        data = {"order_id": str(seq), "order_state": "open" if seq % 3 else "filled",
                "instrument_name": instrument, "direction": "buy" if seq % 2 else "sell",
                "price": price, "amount": 10.0, "filled_amount": 0.0 if seq % 3 else 10.0,
                "order_type": "limit", "time_in_force": "good_til_cancelled",
                "post_only": False, "reduce_only": False, "label": "", "api": True,
                "creation_timestamp": event_time_ms,
                "last_update_timestamp": event_time_ms}  # fmt: skip
        if parts[-1] != "raw":
            data = [data]
    else:
        data = [{"trade_seq": seq, "trade_id": str(200_000_000 + seq), "timestamp": event_time_ms,
                 "instrument_name": instrument, "order_id": str(seq), "price": price,
                 "amount": 10.0, "direction": "buy" if seq % 2 else "sell", "fee": 0.0,
                 "fee_currency": "BTC", "state": "filled", "liquidity": "M"}]  # fmt: skip
    return build_notification(stream, data)
