"""Kraken spot WebSocket v2 wire format: ``wss://ws.kraken.com/v2`` (public market data).

Kraken names a subscription with a channel, a symbol list and the channel's parameters
(``{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"],"depth":25}}``) and
acknowledges every symbol separately. connquota's stream string for one channel x symbol is
``<channel>:<symbol>`` (``trade:BTC/USD``, ``ticker:BTC/USD``, ``book:BTC/USD``,
``ohlc:BTC/USD``), the same spelling as OKX's ``<channel>:<instId>``; a parameter other than the
channel's default is written after a dot: ``book.25:BTC/USD`` (depth 25; ``book:`` is Kraken's
default depth 10) and ``ohlc.5:BTC/USD`` (5-minute candles; ``ohlc:`` is the default 1 minute).
Every stream of one subscribe request shares its channel and parameters (one request per
``subscribe_group``).

The server sends ``{"channel":"heartbeat"}`` about once a second without other updates once a
channel is subscribed; a client may send ``{"method":"ping","req_id":N}`` (answer ``pong``).
Books carry a CRC32 ``checksum`` of the top 10 levels of each side after every snapshot and
update (`book_checksum`). Prices and quantities are JSON numbers: the checksum is computed from
their text as sent, so books are read with a decimal-preserving parser (`loads_exact`).

Private data (``wss://ws-auth.kraken.com/v2``): the channels ``executions`` and ``balances``
(connquota's stream strings are the bare channel names), each subscribed with a ``token`` in
its params. The token comes from the REST call ``POST /0/private/GetWebSocketsToken`` (form
body ``nonce=<ms>``, headers ``API-Key`` and ``API-Sign`` = base64 HMAC-SHA512, keyed with the
base64-decoded secret, of the URL path + SHA-256(nonce + body): `api_sign`); it "should be used
within 15 minutes of creation, but it does not expire once a successful Websockets connection
and private subscription has been made and is maintained". Private data messages carry a
``sequence`` number.

Source: exchange-dialects.md section 6 (https://docs.kraken.com/api/docs/websocket-v2/).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import zlib
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
    Notice,
    OtherRequest,
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

name = "kraken"

PING_WHEN_QUIET = True
"""Heartbeats start with the first subscription ("Any, for example a ping, request can be used
to keep the connection alive"): a client pings a connection that has been quiet."""
PER_SYMBOL_ACKS = True
"""Every symbol of a subscribe request gets its own acknowledgement or error (same ``req_id``)."""

PATHS = {"/v2": "public"}
"""Paths served (``wss://ws.kraken.com/v2``; private data is ``wss://ws-auth.kraken.com/v2``)."""

PUBLIC_CHANNELS = frozenset({"trade", "ticker", "book", "ohlc"})
"""Public market-data channels connquota subscribes (``instrument``, ``level3`` not yet)."""
PRIVATE_CHANNELS = frozenset({"executions", "balances"})
"""Token-authenticated channels (stream strings: the channel names themselves)."""
TOKEN_PATH = "/0/private/GetWebSocketsToken"
"""The REST call that issues WebSocket tokens."""
TOKEN_TTL_S = 900
"""A token "should be used within 15 minutes of creation" (``expires`` in the answer)."""
REST_HOSTS = {"ws-auth.kraken.com": "api.kraken.com", "beta-ws-auth.kraken.com": "api.kraken.com"}
"""The REST host of a private WebSocket host (any other host, e.g. a mock, serves both)."""
INVALID_KEY = "EAPI:Invalid key"
INVALID_SIGNATURE = "EAPI:Invalid signature"
INVALID_NONCE = "EAPI:Invalid nonce"
INVALID_SESSION = "ESession:Invalid session"
"""The mock's error for a private subscribe with an unknown, expired or revoked token (the
exact text Kraken sends was not found in the sources: exchange-dialects.md 6.6)."""
AUTH_ERRORS = (INVALID_KEY, INVALID_SIGNATURE, INVALID_SESSION, "EGeneral:Permission denied")
"""Errors that mean the key or its token was refused."""

BOOK_DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_BOOK_DEPTH = 10
OHLC_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
DEFAULT_OHLC_INTERVAL = 1
CHECKSUM_LEVELS = 10
""""The checksum is only calculated for the top 10 price levels of the book regardless of the
subscription depth." """

_PARAM = {"book": ("depth", BOOK_DEPTHS, DEFAULT_BOOK_DEPTH),
          "ohlc": ("interval", OHLC_INTERVALS, DEFAULT_OHLC_INTERVAL)}  # fmt: skip
"""channel -> (parameter name, allowed values, default)."""

HEARTBEAT = '{"channel":"heartbeat"}'
MSG_RATE_ERROR = '{"Error":"Exceeded msg rate"}'
"""What Kraken answers a client over the (undocumented, dynamic) message rate [S]."""

MALFORMED = "EGeneral:Invalid arguments"
UNSUPPORTED_PAIR = "Currency pair not supported"
NOT_SUBSCRIBED = "Subscription Not Found"
UNKNOWN_METHOD = "Method not found"


# --- streams ------------------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``BTC/USD`` x ``ticker`` -> ``ticker:BTC/USD`` (``channel`` may be ``book.25``)."""
    return f"{channel}:{symbol}"


def stream_parts(stream: str) -> tuple[str, str, int | None]:
    """``book.25:BTC/USD`` -> (``book``, ``BTC/USD``, 25); the parameter is None for channels
    without one and the default when not written. WireFormatError when malformed."""
    head, sep, symbol = stream.partition(":")
    channel, dot, param = head.partition(".")
    if not sep or not channel or not symbol or ":" in symbol:
        raise WireFormatError(f"not a Kraken stream string: {stream!r}")
    spec = _PARAM.get(channel)
    if spec is None:
        if dot:
            raise WireFormatError(f"Kraken channel {channel!r} takes no parameter: {stream!r}")
        return channel, symbol, None
    _, allowed, default = spec
    if not dot:
        return channel, symbol, default
    if not param.isdigit() or int(param) not in allowed:
        raise WireFormatError(f"not a Kraken {spec[0]} in {stream!r} (one of {allowed})")
    return channel, symbol, int(param)


def compose(channel: str, symbol: str, param: int | None = None) -> str:
    """The canonical stream string (the default parameter is not written)."""
    spec = _PARAM.get(channel)
    if spec is None or param is None or param == spec[2]:
        return f"{channel}:{symbol}"
    return f"{channel}.{param}:{symbol}"


def parse_stream(stream: str) -> StreamName:
    """``trade:BTC/USD`` -> symbol ``BTC/USD``, channel ``trade`` (``book.25`` -> ``book``)."""
    channel, symbol, _ = stream_parts(stream)
    return StreamName(symbol=symbol, channel=channel)


def subscribe_group(stream: str) -> str:
    """Streams that can share one subscribe request: same channel and parameter."""
    return stream.partition(":")[0]


def valid_symbol(symbol: str) -> bool:
    """``BASE/QUOTE`` of letters and digits (``BTC/USD``, ``MATIC/GBP``)."""
    base, slash, quote = symbol.partition("/")
    return bool(slash) and base.isalnum() and quote.isalnum() and symbol.upper() == symbol


def path_for(kind: str) -> str:
    """``public`` -> ``/v2``."""
    if kind != "public":
        raise WireFormatError(f"Kraken has no {kind!r} WebSocket on this host")
    return "/v2"


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path Kraken does not serve."""
    return endpoint_at(PATHS, "Kraken", path)


def resolve_stream(stream: str, wanted: set[str] | frozenset[str]) -> str:
    """The subscribed stream a data message belongs to: book data does not say its depth, so
    ``book:BTC/USD`` is the ``book.N:BTC/USD`` the connection subscribed."""
    if stream in wanted or not stream.startswith("book:"):
        return stream
    symbol = stream[5:]
    for depth in BOOK_DEPTHS[1:]:
        candidate = f"book.{depth}:{symbol}"
        if candidate in wanted:
            return candidate
    return stream


# --- time ---------------------------------------------------------------------------------------


def rfc3339(ms: int | float) -> str:
    """Epoch milliseconds as Kraken writes times: ``2023-09-25T07:48:36.925533Z``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time_ms(value: Any) -> int | None:
    """Epoch milliseconds of an RFC3339 time (nanosecond digits are cut); None if unreadable."""
    if not isinstance(value, str) or len(value) < 20 or not value.endswith("Z"):
        return None
    head, dot, frac = value[:-1].partition(".")
    try:
        dt = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    micros = int((frac + "000000")[:6]) if dot and frac.isdigit() else 0
    return int(dt.timestamp() * 1000) + micros // 1000


# --- client side --------------------------------------------------------------------------------


def _request_id(request_id: RequestId) -> int | None:
    """Kraken's ``req_id`` is an integer: ints and digit strings pass, others are left out."""
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return request_id
    if isinstance(request_id, str) and request_id.isdigit():
        return int(request_id)
    return None


def _params(streams: list[str]) -> dict[str, Any]:
    if not streams:
        raise WireFormatError("a Kraken subscribe names at least one symbol")
    parts = [stream_parts(s) for s in streams]
    channel, _, param = parts[0]
    if any(p[0] != channel or p[2] != param for p in parts):
        raise WireFormatError("one Kraken subscribe carries one channel and parameter")
    params: dict[str, Any] = {"channel": channel, "symbol": [p[1] for p in parts]}
    spec = _PARAM.get(channel)
    if spec is not None:
        params[spec[0]] = param
    return params


def _method(method: str, streams: list[str], request_id: RequestId) -> str:
    body: dict[str, Any] = {"method": method, "params": _params(streams)}
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"method":"subscribe","params":{"channel":"trade","symbol":[..]},"req_id":N}``."""
    return _method("subscribe", streams, request_id)


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"method":"unsubscribe","params":{..},"req_id":N}``."""
    return _method("unsubscribe", streams, request_id)


def build_ping(request_id: RequestId = None) -> str | None:
    """``{"method":"ping","req_id":N}`` (an application-level ping)."""
    body: dict[str, Any] = {"method": "ping"}
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def build_login(credentials: ApiCredentials, now_ms: int, request_id: RequestId) -> str:
    """Kraken has no login frame: private subscriptions carry a REST-issued token."""
    raise WireFormatError("Kraken has no login frame: private subscribes carry a token")


def api_sign(url_path: str, nonce: str, body: str, secret_b64: str) -> str:
    """``API-Sign``: base64(HMAC-SHA512(base64decode(secret), path + SHA256(nonce + body))),
    as Kraken's own Python example computes it."""
    digest = hashlib.sha256((nonce + body).encode()).digest()
    mac = hmac.new(base64.b64decode(secret_b64), url_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def token_request(credentials: ApiCredentials, nonce_ms: int) -> tuple[dict[str, str], str]:
    """Headers and form body of ``GetWebSocketsToken`` (the nonce: epoch ms, increasing)."""
    nonce = str(nonce_ms)
    body = f"nonce={nonce}"
    sign = api_sign(TOKEN_PATH, nonce, body, credentials.secret)
    headers = {"API-Key": credentials.api_key, "API-Sign": sign,
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    return headers, body


def token_url(private_ws_url: str) -> str:
    """The ``GetWebSocketsToken`` URL beside a private WebSocket URL: ``wss://ws-auth.kraken.
    com/v2`` -> ``https://api.kraken.com/0/private/GetWebSocketsToken``; any other host (a
    mock, a relay) is asked itself."""
    from urllib.parse import urlsplit

    parts = urlsplit(private_ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    host = parts.hostname or ""
    netloc = REST_HOSTS.get(host) or parts.netloc
    return f"{scheme}://{netloc}{TOKEN_PATH}"


def parse_token_answer(doc: Any) -> tuple[str | None, str]:
    """``{"error":[],"result":{"token":..,"expires":900}}`` -> (token, ""); an answer with
    errors -> (None, the first error)."""
    if not isinstance(doc, dict):
        return None, "not a Kraken REST answer"
    errors = doc.get("error")
    if isinstance(errors, list) and errors:
        return None, str(errors[0])
    result = doc.get("result")
    token = result.get("token") if isinstance(result, dict) else None
    if not isinstance(token, str) or not token:
        return None, "no token in the answer"
    return token, ""


def build_private_subscribe(
    channel: str, token: str, request_id: RequestId, unsubscribe: bool = False
) -> str:
    """``{"method":"subscribe","params":{"channel":"executions","token":..,"snap_orders":true,
    "snap_trades":true},"req_id":N}`` (``balances``: ``snapshot``)."""
    if channel not in PRIVATE_CHANNELS:
        raise WireFormatError(f"not a Kraken private channel: {channel!r}")
    params: dict[str, Any] = {"channel": channel, "token": token}
    if not unsubscribe:
        if channel == "executions":
            params.update(snap_orders=True, snap_trades=True)
        else:
            params["snapshot"] = True
    body: dict[str, Any] = {"method": "unsubscribe" if unsubscribe else "subscribe",
                            "params": params}  # fmt: skip
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def _result_stream(result: dict[str, Any]) -> str | None:
    channel, symbol = result.get("channel"), result.get("symbol")
    if channel in PRIVATE_CHANNELS:
        return str(channel)
    if not isinstance(channel, str) or not isinstance(symbol, str):
        return None
    spec = _PARAM.get(channel)
    param = result.get(spec[0]) if spec is not None else None
    return compose(channel, symbol, param if isinstance(param, int) else None)


def _data_stream(channel: str, item: dict[str, Any]) -> str | None:
    symbol = item.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        return None
    if channel == "ohlc":
        interval = item.get("interval")
        return compose(channel, symbol, interval if isinstance(interval, int) else None)
    return compose(channel, symbol)


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from Kraken."""
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    channel = obj.get("channel")
    if channel == "heartbeat":
        return Notice("heartbeat")
    method = obj.get("method")
    request_id = obj.get("req_id")
    if isinstance(method, str):
        success = obj.get("success")
        if method == "pong":
            return Pong(request_id, "pong")
        if success is True and method in ("subscribe", "unsubscribe"):
            result = obj.get("result")
            stream = _result_stream(result) if isinstance(result, dict) else None
            return Ack(request_id, method, (stream,) if stream else (), result)
        if success is False or "error" in obj:
            return Error(request_id, method, str(obj.get("error", "")), obj)
        return Unknown(text)
    if "Error" in obj or "error" in obj:  # {"Error": "Exceeded msg rate"}
        msg = str(obj.get("Error") or obj.get("error"))
        return Error(request_id, "error", msg, obj)
    if channel == "status":
        items = obj.get("data")
        item = items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}
        return Notice("status", str(item.get("system", "")), dumps(item), raw=obj)
    if channel in PRIVATE_CHANNELS and isinstance(obj.get("data"), list):
        sequence = obj.get("sequence")
        seq = sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None
        entries = obj["data"]
        head = entries[0] if entries and isinstance(entries[0], dict) else {}
        return Data(str(channel), seq, parse_time_ms(head.get("timestamp")), obj, text)
    if channel in PUBLIC_CHANNELS and isinstance(obj.get("data"), list):
        items = obj["data"]
        first = items[0] if items and isinstance(items[0], dict) else None
        if first is None or not isinstance(channel, str):
            return Unknown(text)
        stream = _data_stream(channel, first)
        if stream is None:
            return Unknown(text)
        seq = None
        if channel == "trade":
            ids = [i.get("trade_id") for i in items if isinstance(i, dict)]
            ints = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
            seq = max(ints) if ints else None
        ts = obj.get("timestamp") or first.get("timestamp")
        return Data(stream, seq, parse_time_ms(ts), obj, text)
    return Unknown(text)


# --- order books --------------------------------------------------------------------------------


def loads_exact(text: str) -> Any:
    """JSON with every number kept as the text Kraken sent (``0.10000000`` stays so): what the
    checksum is computed from. ValueError when ``text`` is not JSON."""
    return json.loads(text, parse_float=str, parse_int=str)


def checksum_token(value: str) -> str:
    """``"0.00100000"`` -> ``"100000"``: the decimal point removed, then leading zeros."""
    return value.replace(".", "").lstrip("0")


def checksum_string(bids: list[list[str]], asks: list[list[str]]) -> str:
    """The top 10 asks (low to high) then the top 10 bids (high to low), each level
    price + qty as `checksum_token`s. Levels are ``[price, qty]`` texts, best first."""
    parts = [checksum_token(p) + checksum_token(q) for p, q, *_ in asks[:CHECKSUM_LEVELS]]
    parts += [checksum_token(p) + checksum_token(q) for p, q, *_ in bids[:CHECKSUM_LEVELS]]
    return "".join(parts)


def book_checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    """CRC32 of `checksum_string`, unsigned 32-bit (Kraken's ``checksum``)."""
    return zlib.crc32(checksum_string(bids, asks).encode()) & 0xFFFFFFFF


def levels_of(value: Any) -> list[list[str]]:
    """``[{"price": "45283.5", "qty": "0.1"}, ..]`` (from `loads_exact`) -> ``[[price, qty]]``;
    malformed entries are skipped."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        if isinstance(item, dict):
            price, qty = item.get("price"), item.get("qty")
            if isinstance(price, str) and isinstance(qty, str):
                out.append([price, qty])
    return out


def _levels_json(levels: list[list[str]]) -> str:
    return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q, *_ in levels) + "]"


def build_book(
    stream: str,
    bids: list[list[str]],
    asks: list[list[str]],
    checksum: int,
    event_time_ms: int | None,
    kind: str = "update",
) -> str:
    """One ``book`` message: ``{"channel":"book","type":"snapshot"|"update","data":[{"symbol",
    "bids","asks","checksum","timestamp"}]}``; levels ``{"price":..,"qty":..}`` written from their
    texts as numbers (so the checksum of what a client parses matches). The snapshot carries no
    ``timestamp`` (as in Kraken's example)."""
    _, symbol, _ = stream_parts(stream)
    item = (
        f'{{"symbol":{dumps(symbol)},"bids":{_levels_json(bids)},"asks":{_levels_json(asks)},'
        f'"checksum":{checksum}'
    )
    if kind == "update" and event_time_ms is not None:
        item += f',"timestamp":"{rfc3339(event_time_ms)}"'
    return f'{{"channel":"book","type":"{kind}","data":[{item}}}]}}'


# --- server side (the mock exchange) ------------------------------------------------------------


def now_rfc3339() -> str:
    """The wall clock as Kraken writes ``time_in`` / ``time_out``."""
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_ack(
    method: str,
    stream: str,
    request_id: RequestId = None,
    snapshot: bool = True,
    time_in: str | None = None,
) -> str:
    """One acknowledgement per symbol: ``{"method":"subscribe","result":{"channel":..,
    "snapshot":..,"symbol":..},"success":true,"time_in":..,"time_out":..,"req_id":N}``."""
    channel, symbol, param = stream_parts(stream)
    result: dict[str, Any] = {"channel": channel}
    spec = _PARAM.get(channel)
    if spec is not None:
        result[spec[0]] = param
    if method == "subscribe":
        result["snapshot"] = snapshot
    result["symbol"] = symbol
    body: dict[str, Any] = {"method": method, "result": result, "success": True}
    body["time_in"] = time_in or now_rfc3339()
    body["time_out"] = now_rfc3339()
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def build_private_ack(
    method: str, channel: str, request_id: RequestId = None, time_in: str | None = None
) -> str:
    """The acknowledgement of a private subscribe: ``{"method":"subscribe","result":
    {"channel":"executions","snapshot":true},"success":true,..}`` (no symbol)."""
    result: dict[str, Any] = {"channel": channel}
    if method == "subscribe":
        result["snapshot"] = True
    body: dict[str, Any] = {"method": method, "result": result, "success": True}
    body["time_in"] = time_in or now_rfc3339()
    body["time_out"] = now_rfc3339()
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def build_error(
    method: str,
    error: str,
    request_id: RequestId = None,
    symbol: str | None = None,
    time_in: str | None = None,
) -> str:
    """``{"error":"Currency pair not supported XBT/USD","method":"subscribe","success":false,
    "symbol":..,"time_in":..,"time_out":..,"req_id":N}``."""
    body: dict[str, Any] = {"error": error, "method": method, "success": False}
    if symbol is not None:
        body["symbol"] = symbol
    body["time_in"] = time_in or now_rfc3339()
    body["time_out"] = now_rfc3339()
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    return dumps(body)


def build_pong(request_id: RequestId = None, time_in: str | None = None) -> str:
    """``{"method":"pong","req_id":N,"time_in":..,"time_out":..}``."""
    body: dict[str, Any] = {"method": "pong"}
    rid = _request_id(request_id)
    if rid is not None:
        body["req_id"] = rid
    body["time_in"] = time_in or now_rfc3339()
    body["time_out"] = now_rfc3339()
    return dumps(body)


def build_status(connection_id: int, system: str = "online") -> str:
    """The ``status`` update sent on connect."""
    item = {"api_version": "v2", "connection_id": connection_id, "system": system,
            "version": "2.0.0"}  # fmt: skip
    return dumps({"channel": "status", "data": [item], "type": "update"})


def _invalid(method: str, request_id: RequestId, error: str = MALFORMED) -> InvalidRequest:
    return InvalidRequest(request_id, method, error, build_error(method, error, request_id))


def parse_client_message(text: str) -> ClientRequest:
    """Classify a client frame (the mock's side)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return _invalid("error", None)
    if not isinstance(obj, dict):
        return _invalid("error", None)
    method = obj.get("method")
    request_id = obj.get("req_id")
    if request_id is not None and (not isinstance(request_id, int) or isinstance(request_id, bool)):
        return _invalid(str(method or "error"), None)
    if method == "ping":
        return PingRequest(request_id)
    if method not in ("subscribe", "unsubscribe"):
        if isinstance(method, str) and method:
            return _invalid(method, request_id, UNKNOWN_METHOD)
        return _invalid("error", request_id)
    params = obj.get("params")
    if not isinstance(params, dict):
        return _invalid(method, request_id)
    channel, symbols = params.get("channel"), params.get("symbol")
    if not isinstance(channel, str) or channel not in PUBLIC_CHANNELS:
        if isinstance(channel, str) and channel in PRIVATE_CHANNELS | {"instrument", "level3"}:
            return OtherRequest(request_id, method, params)
        return _invalid(method, request_id)
    if (
        not isinstance(symbols, list)
        or not symbols
        or not all(isinstance(s, str) and s for s in symbols)
    ):
        return _invalid(method, request_id)
    param: int | None = None
    spec = _PARAM.get(channel)
    if spec is not None:
        value = params.get(spec[0], spec[2])
        if not isinstance(value, int) or value not in spec[1]:
            return _invalid(method, request_id)
        param = value
    streams = tuple(compose(channel, s, param) for s in symbols)
    return SubscribeRequest(request_id, streams, unsubscribe=method == "unsubscribe")


def build_trade(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``trade`` message: ``trade_id`` = seq (Kraken: "Sequential int")."""
    _, symbol, _ = stream_parts(stream)
    item = {"symbol": symbol, "side": "buy" if seq % 2 else "sell",
            "price": 42000 + (seq % 200) / 10, "qty": round(0.001 * (1 + seq % 997), 8),
            "ord_type": "limit" if seq % 3 else "market", "trade_id": seq,
            "timestamp": rfc3339(event_time_ms)}  # fmt: skip
    return dumps({"channel": "trade", "type": kind, "data": [item]})


def build_ticker(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``ticker`` message with every documented field (bid, bid_qty, ask, ask_qty, last,
    volume, vwap, low, high, change, change_pct) and ``timestamp``."""
    _, symbol, _ = stream_parts(stream)
    last = 42000 + (seq % 200) / 10
    item = {"symbol": symbol, "bid": round(last - 0.1, 1), "bid_qty": 0.5,
            "ask": round(last + 0.1, 1), "ask_qty": 1.25, "last": last,
            "volume": round(1000 + seq % 500 / 10, 8), "vwap": 41990.5, "low": 41800.0,
            "high": 42300.0, "change": round(last - 41900.0, 1),
            "change_pct": round((last - 41900.0) / 41900.0 * 100, 2),
            "timestamp": rfc3339(event_time_ms)}  # fmt: skip
    return dumps({"channel": "ticker", "type": kind, "data": [item]})


def build_ohlc(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``ohlc`` message: the candle the event falls in (``interval_begin``), with open,
    high, low, close, trades, volume, vwap, interval and ``timestamp`` (the interval's end)."""
    _, symbol, interval = stream_parts(stream)
    bar_ms = (interval or DEFAULT_OHLC_INTERVAL) * 60_000
    begin = event_time_ms - event_time_ms % bar_ms
    close = 42000 + (seq % 200) / 10
    item = {"symbol": symbol, "open": 42000.0, "high": max(42010.0, close),
            "low": min(42000.0, close), "close": close, "trades": 1 + seq % 50,
            "volume": round(0.25 * (1 + seq % 50), 8), "vwap": round((42000.0 + close) / 2, 2),
            "interval_begin": rfc3339(begin).replace("Z", "000Z"), "interval": interval,
            "timestamp": rfc3339(begin + bar_ms)}  # fmt: skip
    body = {"channel": "ohlc", "type": kind, "timestamp": rfc3339(event_time_ms), "data": [item]}
    return dumps(body)


def build_data(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One message of a non-book channel (books: `build_book` from the mock's book)."""
    channel = stream_parts(stream)[0]
    if channel == "trade":
        return build_trade(stream, seq, event_time_ms, kind)
    if channel == "ticker":
        return build_ticker(stream, seq, event_time_ms, kind)
    if channel == "ohlc":
        return build_ohlc(stream, seq, event_time_ms, kind)
    raise WireFormatError(f"no data builder for {stream!r}")


def build_private_data(channel: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``executions`` (an order's execution report) or ``balances`` (a ledger entry)
    message with ``sequence`` = seq."""
    ts = rfc3339(event_time_ms)
    if channel == "executions":
        item: dict[str, Any] = {"order_id": f"O{seq:06d}-ABCDE-FGHIJK", "exec_id": f"T{seq:06d}",
                                "exec_type": "trade" if seq % 2 else "new",
                                "order_status": "filled" if seq % 2 else "new",
                                "symbol": "BTC/USD", "side": "buy", "order_type": "limit",
                                "order_qty": 0.001, "limit_price": 42000.0,
                                "timestamp": ts}  # fmt: skip
    else:
        item = {"ledger_id": f"L{seq:06d}-ABCDE-FGHIJK", "ref_id": f"T{seq:06d}",
                "timestamp": ts, "type": "trade", "asset": "BTC", "asset_class": "currency",
                "category": "trade", "wallet_type": "spot", "wallet_id": "main",
                "amount": 0.001, "fee": 0.0, "balance": round(1 + seq * 0.001, 6)}  # fmt: skip
    return dumps({"channel": channel, "type": kind, "data": [item], "sequence": seq})
