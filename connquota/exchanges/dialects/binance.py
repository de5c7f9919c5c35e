"""Binance spot wire format: market streams (stream.binance.com) and the WebSocket API.

Stream strings are Binance's own names (``btcusdt@trade``, ``btcusdt@depth@100ms``,
``!miniTicker@arr``). URL forms: ``/ws/<stream>`` (raw), ``/ws`` + SUBSCRIBE (raw),
``/stream?streams=a/b`` and ``/stream`` (combined, wrapped as ``{"stream":..,"data":..}``),
``/ws-api/v3`` (the WebSocket API, used for user data). Heartbeats are protocol ping frames from
the server every 20 s; the client answers with a pong that echoes the payload; both pings and
pongs count against the 5 messages/s per connection.

User data (stream name ``userData``) rides the WebSocket API: ``session.logon`` (Ed25519 keys
only) then ``userDataStream.subscribe``, or ``userDataStream.subscribe.signature`` on any session
with any key type. Signatures cover the request params sorted by name, ``k=v`` joined by ``&``:
HMAC-SHA-256 as hex, RSA (PKCS#1 v1.5, SHA-256) and Ed25519 as base64; a secret holding a PEM
private key is signed as RSA or Ed25519, anything else as an HMAC secret key.

USD-M futures (fstream) speaks the same protocol with the differences of section 2: market
data under the routes ``/public`` (depth, bookTicker) and ``/market`` (the rest), futures
stream names (``@markPrice[@1s]``, ``@forceOrder``, ``!markPrice@arr``...), unsigned-integer
request ids only, depth diffs with ``pu``; `is_futures_domain` tells a profile's product,
`is_valid_stream_for` and `parse_client_message(futures=..)` judge per product.

Source: exchange-dialects.md sections 1 and 2 (binance/binance-spot-api-docs,
web-socket-streams.md, web-socket-api.md; the USD-M pages of developers.binance.com).
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import msgspec

from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    ClientRequest,
    Data,
    Endpoint,
    Error,
    InvalidRequest,
    LoginRequest,
    LoginResult,
    Notice,
    OtherRequest,
    PingRequest,
    RequestId,
    ServerEvent,
    StreamName,
    SubscribeRequest,
    Unknown,
    WireFormatError,
    dumps,
    hmac_sha256,
    loads_object,
    valid_request_id,
)

name = "binance"

MAX_REQUEST_ID_CHARS = 36
STREAM_METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
SERVER_PING_INTERVAL_S = 20.0
PONG_TIMEOUT_S = 60.0

_SYMBOL = r"[a-z0-9]{2,20}"
_INTERVAL = r"(1s|1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
_CHANNEL_PATTERNS = (
    r"trade",
    r"aggTrade",
    r"depth(@100ms)?",
    r"depth(5|10|20)(@100ms)?",
    rf"kline_{_INTERVAL}(@\+08:00)?",
    r"bookTicker",
    r"miniTicker",
    r"ticker",
    r"ticker_(1h|4h|1d)",
    r"avgPrice",
    r"referencePrice",
    r"blockTrade",
)
_STREAM_RE = re.compile(rf"^{_SYMBOL}@({'|'.join(_CHANNEL_PATTERNS)})$")
_MARKET_WIDE_RE = re.compile(r"^!(miniTicker|ticker_(1h|4h|1d))@arr$")
_FUTURES_INTERVAL = r"(1m|3m|5m|15m|30m|1h|2h|4h|6h|8h|12h|1d|3d|1w|1M)"
_FUTURES_CHANNEL_PATTERNS = (
    r"aggTrade",
    r"trade",  # ccxt's binanceusdm subscribes <symbol>@trade on /public (secondary)
    r"markPrice(@1s)?",
    rf"kline_{_FUTURES_INTERVAL}",
    r"miniTicker",
    r"ticker",
    r"bookTicker",
    r"forceOrder",
    r"depth(@500ms|@100ms)?",
    r"depth(5|10|20)(@500ms|@100ms)?",
)
_FUTURES_STREAM_RE = re.compile(rf"^{_SYMBOL}@({'|'.join(_FUTURES_CHANNEL_PATTERNS)})$")
_FUTURES_MARKET_WIDE_RE = re.compile(
    r"^!(markPrice@arr(@1s)?|forceOrder@arr|miniTicker@arr|ticker@arr|bookTicker)$"
)
FUTURES_ROUTES = ("/public", "/market")
"""USD-M's market-data base paths (the Important WebSocket Change Notice): ``/public`` for
high-frequency book data (depth, bookTicker), ``/market`` for the rest."""


# --- streams and URLs -------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``BTCUSDT`` x ``depth@100ms`` -> ``btcusdt@depth@100ms`` (symbols are lower case)."""
    if not symbol:
        return channel
    return f"{symbol.lower()}@{channel}"


def parse_stream(stream: str) -> StreamName:
    """Split ``btcusdt@depth@100ms`` into symbol ``btcusdt`` and channel ``depth@100ms``."""
    if not is_valid_stream(stream):
        raise WireFormatError(f"not a Binance spot stream name: {stream!r}")
    if stream.startswith("!"):
        return StreamName(symbol="", channel=stream)
    symbol, channel = stream.split("@", 1)
    return StreamName(symbol=symbol, channel=channel)


def is_valid_stream(stream: str) -> bool:
    """Whether ``stream`` is a documented Binance stream name, spot or USD-M futures (the
    gateway serves either product; the exchange checks its own: `is_valid_stream_for`)."""
    return is_valid_stream_for(stream, False) or is_valid_stream_for(stream, True)


def is_valid_stream_for(stream: str, futures: bool) -> bool:
    """Whether ``stream`` is a stream name of spot (``futures`` False) or of USD-M futures:
    ``@markPrice[@1s]``, ``@forceOrder``, ``!markPrice@arr[@1s]``, ``!forceOrder@arr`` and
    ``@depth@500ms`` are futures only; ``@depth@100ms`` is both; ``@avgPrice``, ``@ticker_1h``
    and ``@kline_1s`` are spot only."""
    if futures:
        return bool(_FUTURES_STREAM_RE.match(stream) or _FUTURES_MARKET_WIDE_RE.match(stream))
    return bool(_STREAM_RE.match(stream) or _MARKET_WIDE_RE.match(stream))


def futures_route(stream: str) -> str:
    """The USD-M base path serving ``stream``: ``/public`` for depth and bookTicker streams
    (secondary sources: go-binance, jesse), ``/market`` for every other market stream."""
    channel = stream.split("@", 1)[1] if "@" in stream and not stream.startswith("!") else stream
    if channel.startswith("depth") or channel in ("bookTicker", "!bookTicker", "trade"):
        return "/public"
    return "/market"


def split_route(path: str) -> tuple[str, str]:
    """(``/public`` or ``/market`` or ``""``, the rest): USD-M's route prefix of a path."""
    for route in FUTURES_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route, path[len(route) :] or "/"
    return "", path


def raw_stream_path(stream: str) -> str:
    """``/ws/<stream>``: one raw stream named in the URL."""
    return f"/ws/{stream}"


def combined_stream_path(streams: list[str]) -> str:
    """``/stream?streams=a/b/c`` (or ``/stream`` with no streams): combined payloads."""
    return "/stream?streams=" + "/".join(streams) if streams else "/stream"


WS_PATH = "/ws"
"""Raw endpoint with no stream in the URL: subscribe with SUBSCRIBE."""
WS_API_PATH = "/ws-api/v3"
"""The WebSocket API (session.logon, userDataStream.subscribe)."""


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path Binance does not serve.
    USD-M's route prefixes (``/public/ws/..``, ``/market/stream?streams=..``) select the same
    endpoints as spot's paths (`split_route` says which route)."""
    route, rest = split_route(path)
    if route:
        if rest in ("/", WS_API_PATH):
            raise WireFormatError(f"Binance serves no WebSocket at {path!r}")
        return parse_endpoint(rest, query)
    if path == WS_API_PATH:
        return Endpoint(kind="api", private=True)
    if path in ("/ws", "/ws/"):
        return Endpoint(kind="raw")
    if path.startswith("/ws/"):
        # Binance accepts any path under /ws/ (ccxt opens /ws/<n> and subscribes afterwards):
        # only segments that are stream names subscribe at the handshake.
        names = path[len("/ws/") :].split("/")
        return Endpoint(kind="raw", initial_streams=tuple(s for s in names if is_valid_stream(s)))
    if path in ("/stream", "/stream/"):
        values = parse_qs(query).get("streams", [])
        streams = tuple(s for v in values for s in v.split("/") if s)
        return Endpoint(kind="combined", initial_streams=streams, combined=True)
    raise WireFormatError(f"Binance serves no WebSocket at {path!r}")


# --- client side: requests ----------------------------------------------------------------


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"method":"SUBSCRIBE","params":[...],"id":N}``."""
    return dumps({"method": "SUBSCRIBE", "params": list(streams), "id": request_id})


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"method":"UNSUBSCRIBE","params":[...],"id":N}``."""
    return dumps({"method": "UNSUBSCRIBE", "params": list(streams), "id": request_id})


def build_list_subscriptions(request_id: RequestId) -> str:
    """``{"method":"LIST_SUBSCRIPTIONS","id":N}``."""
    return dumps({"method": "LIST_SUBSCRIPTIONS", "id": request_id})


def build_ping(request_id: RequestId = None) -> str | None:
    """None: Binance heartbeats are protocol ping/pong frames, not text."""
    return None


def signature_payload(params: dict[str, Any]) -> str:
    """All params except ``signature``, sorted by name, ``k=v`` joined by ``&`` (no encoding)."""
    items = sorted((k, v) for k, v in params.items() if k != "signature")
    return "&".join(f"{k}={_param_text(v)}" for k, v in items)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def hmac_signature(secret: str, params: dict[str, Any]) -> str:
    """The documented HMAC-SHA-256 signature: lower-case hex over ``signature_payload``."""
    return hmac_sha256(secret, signature_payload(params)).hex()


KEY_HMAC = "hmac"
KEY_RSA = "rsa"
KEY_ED25519 = "ed25519"
RECV_WINDOW_DEFAULT_MS = 5000
"""``recvWindow`` when a request sends none."""
RECV_WINDOW_MAX_MS = 60000
USER_DATA_STREAM = "userData"
"""connquota's stream name for the user data of a connection's account (one subscription per
account per connection)."""


def key_type(secret: str) -> str:
    """``ed25519`` or ``rsa`` for a PEM private (or public) key, else ``hmac`` (a secret key)."""
    if "-----BEGIN" not in secret:
        return KEY_HMAC
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_pem_public_key,
    )

    data = secret.strip().encode() + b"\n"
    try:
        key: Any = (
            load_pem_private_key(data, password=None)
            if "PRIVATE KEY" in secret
            else load_pem_public_key(data)
        )
    except (ValueError, TypeError) as exc:
        raise WireFormatError("the key is PEM but not a readable unencrypted key") from exc
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return KEY_ED25519
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return KEY_RSA
    raise WireFormatError("Binance signs with HMAC, RSA or Ed25519 keys only")


def sign(secret: str, params: dict[str, Any]) -> str:
    """The signature of ``params`` with ``secret`` as Binance documents it for its key type:
    HMAC-SHA-256 -> hex; RSA (RSASSA-PKCS1-v1_5, SHA-256) and Ed25519 (a PEM private key) ->
    base64 over the UTF-8 payload."""
    kind = key_type(secret)
    if kind == KEY_HMAC:
        return hmac_signature(secret, params)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key: Any = load_pem_private_key(secret.strip().encode() + b"\n", password=None)
    payload = signature_payload(params).encode()
    if kind == KEY_ED25519:
        raw = key.sign(payload)
    else:
        raw = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode()


def verify(kind: str, key: str, params: dict[str, Any], signature: str) -> bool:
    """Whether ``signature`` signs ``params`` (the server's side): ``key`` is the HMAC secret,
    or the PEM public key of an RSA / Ed25519 API key."""
    if kind == KEY_HMAC:
        return hmac.compare_digest(hmac_signature(key, params), signature.lower())
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        raw = base64.b64decode(signature, validate=True)
        public: Any = load_pem_public_key(key.strip().encode() + b"\n")
        payload = signature_payload(params).encode()
        if kind == KEY_ED25519:
            public.verify(raw, payload)
        else:
            public.verify(raw, payload, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def supports_session_logon(credentials: ApiCredentials) -> bool:
    """Whether ``session.logon`` accepts this key ("Only Ed25519 keys are supported")."""
    return key_type(credentials.secret) == KEY_ED25519


def _signed_params(
    credentials: ApiCredentials, now_ms: int, recv_window_ms: int | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"apiKey": credentials.api_key, "timestamp": now_ms}
    if recv_window_ms is not None:
        params["recvWindow"] = recv_window_ms
    params["signature"] = sign(credentials.secret, params)
    return params


def build_login(
    credentials: ApiCredentials,
    now_ms: int,
    request_id: RequestId,
    recv_window_ms: int | None = None,
) -> str:
    """``session.logon`` on the WebSocket API, signed over the sorted ``apiKey``, ``timestamp``
    (and ``recvWindow``). Binance accepts only Ed25519 keys here (``supports_session_logon``);
    other keys subscribe with ``build_user_data_subscribe_signature``."""
    params = _signed_params(credentials, now_ms, recv_window_ms)
    return dumps({"id": request_id, "method": "session.logon", "params": params})


def build_user_data_subscribe(request_id: RequestId) -> str:
    """``userDataStream.subscribe`` on a logged-on WebSocket API session."""
    return dumps({"id": request_id, "method": "userDataStream.subscribe"})


def build_user_data_subscribe_signature(
    credentials: ApiCredentials,
    now_ms: int,
    request_id: RequestId,
    recv_window_ms: int | None = None,
) -> str:
    """``userDataStream.subscribe.signature``: subscribe without logon, any key type."""
    params = _signed_params(credentials, now_ms, recv_window_ms)
    return dumps(
        {"id": request_id, "method": "userDataStream.subscribe.signature", "params": params}
    )


def build_user_data_unsubscribe(request_id: RequestId, subscription_id: int | None = None) -> str:
    """``userDataStream.unsubscribe`` (every subscription of the session, or one)."""
    body: dict[str, Any] = {"id": request_id, "method": "userDataStream.unsubscribe"}
    if subscription_id is not None:
        body["params"] = {"subscriptionId": subscription_id}
    return dumps(body)


# --- client side: parsing server messages -------------------------------------------------------


_SEQ_FIELD = {"trade": "t", "aggTrade": "a", "depthUpdate": "u"}
"""The field that numbers an event type's messages (klines: `k.L`; others: the first of
`u`, `lastUpdateId`, `L` they carry)."""


def _seq_of(payload: dict[str, Any]) -> int | None:
    event = payload.get("e")
    field = _SEQ_FIELD.get(event) if type(event) is str else None
    if field is not None:
        return _int(payload.get(field))
    if event == "kline" and isinstance(payload.get("k"), dict):
        return _int(payload["k"].get("L"))
    for key in ("u", "lastUpdateId", "L"):
        if key in payload:
            return _int(payload[key])
    return None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _infer_stream(payload: dict[str, Any]) -> str:
    symbol = str(payload.get("s", "")).lower()
    event = payload.get("e")
    if event == "depthUpdate":
        return f"{symbol}@depth"
    if event == "24hrTicker":
        return f"{symbol}@ticker"
    if event == "24hrMiniTicker":
        return f"{symbol}@miniTicker"
    if event == "kline" and isinstance(payload.get("k"), dict):
        return f"{symbol}@kline_{payload['k'].get('i', '')}"
    if isinstance(event, str) and symbol:
        return f"{symbol}@{event}"
    if "b" in payload and "a" in payload and "u" in payload and symbol:
        return f"{symbol}@bookTicker"
    return ""


def _wrapped_data(text: str, obj: dict[str, Any]) -> str | None:
    """The `data` of a combined frame as sent, when the frame is exactly
    `{"stream":"<name>","data":<data>}` (Binance's compact order); None otherwise."""
    if len(obj) != 2:
        return None
    stream = obj["stream"]
    if isinstance(stream, str) and '"' not in stream and "\\" not in stream:
        head = '{"stream":"' + stream + '","data":'
    else:
        head = f'{{"stream":{json.dumps(stream)},"data":'
    if not text.startswith(head) or not text.endswith("}"):
        return None
    return text[len(head) : -1]


_COMBINED_HEAD = '{"stream":"'
_DATA_KEY = '","data":'


_ABSENT = msgspec.Raw()


class _KlineFields(msgspec.Struct):
    L: msgspec.Raw = _ABSENT


class _DataFields(msgspec.Struct):
    """What the gateway reads of a market-data payload: its event type and the fields that
    may number it, kept as their JSON text (`a` is an aggTrade id but a depth event's asks);
    every other field is checked to be JSON and skipped."""

    e: str | None = None
    t: msgspec.Raw = _ABSENT
    a: msgspec.Raw = _ABSENT
    u: msgspec.Raw = _ABSENT
    lastUpdateId: msgspec.Raw = _ABSENT
    L: msgspec.Raw = _ABSENT
    k: msgspec.Raw = _ABSENT


class _Combined(msgspec.Struct, forbid_unknown_fields=True):
    stream: str
    data: _DataFields


_COMBINED = msgspec.json.Decoder(_Combined)
_KLINE = msgspec.json.Decoder(_KlineFields)


def _fast_seq(data: _DataFields) -> int | None:
    """`_seq_of` on the decoded fields (the same rule); ValueError when the numbering field
    is not a JSON integer (the full parse then decides)."""
    event = data.e
    if event == "trade":
        field = data.t
    elif event == "aggTrade":
        field = data.a
    elif event == "depthUpdate":
        field = data.u
    elif event == "kline" and data.k:
        field = _KLINE.decode(data.k).L
    else:
        field = data.u or data.lastUpdateId or data.L
    return int(field) if field else None


def fast_data(text: str) -> tuple[str, int | None, str] | None:
    """(stream, exchange sequence, payload JSON as sent) of a combined market-data frame, with
    one pass over the text and no event object: what the gateway needs of each message. None
    for every other frame (acks, errors, notices, other shapes, numbering fields that are not
    integers): `parse_server_message` decides those.

    The one pass (msgspec, decoding only the fields above) is the validation: a frame that is
    not JSON is never forwarded. The payload's text is cut out of the frame by position, which
    is exact when the frame is `{"stream":"<name>","data":<data>}` with a name that needs no
    escaping (Binance's compact order): checked against the decoded name, so no other shape
    passes."""
    if not text.startswith(_COMBINED_HEAD):
        return None
    try:
        frame = _COMBINED.decode(text)
    except msgspec.DecodeError:  # not JSON, another shape, or fields of other types
        return None
    stream = frame.stream
    start = len(_COMBINED_HEAD) + len(stream)
    if (
        stream.startswith("!")
        or not text.startswith(_DATA_KEY, start)
        or text[len(_COMBINED_HEAD) : start] != stream
        or text[-1] != "}"
    ):
        return None  # escaped characters, spaces or another key order: the slow path
    data = frame.data
    if data.e == "serverShutdown":
        return None
    try:
        seq = _fast_seq(data)
    except (ValueError, msgspec.DecodeError):
        return None
    return stream, seq, text[start + len(_DATA_KEY) : -1]


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from the stream host or the WebSocket API.

    Raw payloads carry no stream name: pass ``default_stream`` for ``/ws/<stream>``; otherwise
    the stream is inferred from the symbol and event type (use combined streams to be exact)."""
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    if "stream" in obj and isinstance(obj.get("data"), list):  # !markPrice@arr, ...@arr
        return Data(str(obj["stream"]), None, None, obj["data"], _wrapped_data(text, obj))
    if "stream" in obj and isinstance(obj.get("data"), dict):
        data = obj["data"]
        if data.get("e") == "serverShutdown":
            return Notice(kind="serverShutdown", event_time_ms=_int(data.get("E")), raw=obj)
        stream = str(obj["stream"])
        return Data(stream, _seq_of(data), _int(data.get("E")), data, _wrapped_data(text, obj))
    if "status" in obj and "id" in obj:
        return _parse_api_response(obj)
    if "error" in obj and isinstance(obj["error"], dict):
        err = obj["error"]
        return Error(obj.get("id"), str(err.get("code")), str(err.get("msg", "")), obj)
    if "code" in obj and "msg" in obj:
        return Error(obj.get("id"), str(obj["code"]), str(obj["msg"]), obj)
    if "result" in obj and "id" in obj:
        return Ack(obj["id"], "response", result=obj["result"])
    if isinstance(obj.get("event"), dict):
        event = obj["event"]
        if event.get("e") == "eventStreamTerminated":
            return Notice(kind="eventStreamTerminated", event_time_ms=_int(event.get("E")), raw=obj)
        if "subscriptionId" in obj:
            return Data(USER_DATA_STREAM, _int(event.get("u")), _int(event.get("E")), event)
        if event.get("e") == "serverShutdown":
            return Notice(kind="serverShutdown", event_time_ms=_int(event.get("E")), raw=obj)
    if obj.get("e") == "serverShutdown":
        return Notice(kind="serverShutdown", event_time_ms=_int(obj.get("E")), raw=obj)
    stream = default_stream or _infer_stream(obj)
    if stream:
        return Data(stream, _seq_of(obj), _int(obj.get("E")), obj, text)
    return Unknown(text)


def _parse_api_response(obj: dict[str, Any]) -> ServerEvent:
    status = obj.get("status")
    result = obj.get("result")
    if status == 200:
        if isinstance(result, dict) and "authorizedSince" in result:
            return LoginResult(ok=True, request_id=obj.get("id"))
        return Ack(obj.get("id"), "response", result=result)
    error = obj.get("error")
    err: dict[str, Any] = error if isinstance(error, dict) else {}
    return Error(obj.get("id"), str(err.get("code", status)), str(err.get("msg", "")), obj)


# --- server side: parsing client requests --------------------------------------------------


def _error_reply(code: int, msg: str, request_id: RequestId) -> InvalidRequest:
    return InvalidRequest(request_id, str(code), msg, build_error(code, msg, request_id))


def _unsigned_int(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**64


def parse_client_message(text: str, futures: bool | None = None) -> ClientRequest:
    """Classify a client frame on the stream host (SUBSCRIBE, UNSUBSCRIBE, ...). Spot takes
    an int64, an alphanumeric string (at most 36) or null as ``id``; USD-M futures ("The id
    used in the JSON payloads is an unsigned INT") only an unsigned integer. ``futures``: True
    for USD-M, False for spot (stream names of that product only), None for either (the
    gateway's consumer endpoint, which serves what its plan holds)."""
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return _error_reply(3, "Invalid JSON: expected value at line 1 column 1", None)
    if not isinstance(obj, dict):
        return _error_reply(3, "Invalid JSON: expected value at line 1 column 1", None)
    request_id = obj.get("id")
    if (futures and not _unsigned_int(request_id)) or not valid_request_id(
        request_id, MAX_REQUEST_ID_CHARS
    ):
        return _error_reply(2, "Invalid request: request ID must be an unsigned integer", None)
    method = obj.get("method")
    if method is None:
        msg = f"Invalid request: missing field `method` at line 1 column {len(text)}"
        return _error_reply(2, msg, request_id)
    if method not in STREAM_METHODS:
        column = text.find(json.dumps(method)) + len(json.dumps(method))
        msg = (
            f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
            f"`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 "
            f"column {column}"
        )
        return _error_reply(2, msg, request_id)
    params = obj.get("params")
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
            return _error_reply(2, "Invalid request: invalid stream", request_id)
        valid = (
            is_valid_stream if futures is None else partial(is_valid_stream_for, futures=futures)
        )
        if not all(valid(p) for p in params):
            return _error_reply(2, "Invalid request: invalid stream", request_id)
        return SubscribeRequest(request_id, tuple(params), unsubscribe=method == "UNSUBSCRIBE")
    if method in ("SET_PROPERTY", "GET_PROPERTY"):
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            return _error_reply(2, "Invalid request: property name must be a string", request_id)
        if params[0] != "combined":
            return _error_reply(0, "Unknown property", request_id)
        if method == "SET_PROPERTY" and (len(params) != 2 or not isinstance(params[1], bool)):
            return _error_reply(1, "Invalid value type: expected Boolean", request_id)
    return OtherRequest(request_id, method, params)


def parse_api_message(text: str) -> ClientRequest:
    """Classify a client frame on the WebSocket API (session.logon, userDataStream.*)."""
    obj = loads_object(text)
    if obj is None:
        reply = build_api_error(None, 400, -1000, "Malformed request.")
        return InvalidRequest(None, "-1000", "Malformed request.", reply)
    request_id = obj.get("id")
    method = obj.get("method")
    raw_params = obj.get("params")
    params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    if method in ("session.logon", "userDataStream.subscribe.signature"):
        api_key = params.get("apiKey")
        if not isinstance(api_key, str) or "signature" not in params or "timestamp" not in params:
            msg = "Mandatory parameter 'signature' was not sent, was empty/null, or malformed."
            reply = build_api_error(request_id, 400, -1102, msg)
            return InvalidRequest(request_id, "-1102", msg, reply)
        fields = dict(params)
        fields["method"] = method
        return LoginRequest(request_id, api_key, fields)
    if method == "ping":
        return PingRequest(request_id)
    if method in ("userDataStream.subscribe", "userDataStream.unsubscribe", "session.status"):
        return OtherRequest(request_id, method, params)
    msg = "Unknown method."
    return InvalidRequest(request_id, "-1020", msg, build_api_error(request_id, 400, -1020, msg))


# --- server side: building server messages ---------------------------------------------------


def build_ack(request_id: RequestId, result: Any = None) -> str:
    """``{"result":null,"id":N}`` (or the LIST_SUBSCRIPTIONS/GET_PROPERTY result)."""
    return dumps({"result": result, "id": request_id})


def build_error(code: int, msg: str, request_id: RequestId) -> str:
    """The error as the stream host sends it: ``{"error":{"code":2,"msg":".."},"id":N}``."""
    return dumps({"error": {"code": code, "msg": msg}, "id": request_id})


def build_api_response(request_id: RequestId, result: Any) -> str:
    """A WebSocket API success: ``{"id":..,"status":200,"result":..}``."""
    return dumps({"id": request_id, "status": 200, "result": result})


def build_api_error(
    request_id: RequestId, status: int, code: int, msg: str, data: Any = None
) -> str:
    """A WebSocket API error: ``{"id":..,"status":4xx,"error":{"code":..,"msg":..}}``."""
    error: dict[str, Any] = {"code": code, "msg": msg}
    if data is not None:
        error["data"] = data
    return dumps({"id": request_id, "status": status, "error": error})


def build_logon_result(
    request_id: RequestId, api_key: str, authorized_ms: int, connected_ms: int, now_ms: int
) -> str:
    """The session.logon success response."""
    result = {
        "apiKey": api_key,
        "authorizedSince": authorized_ms,
        "connectedSince": connected_ms,
        "returnRateLimits": False,
        "serverTime": now_ms,
        "userDataStream": False,
    }
    return build_api_response(request_id, result)


def build_user_data_event(subscription_id: int, seq: int, event_time_ms: int) -> str:
    """A user-data event in its envelope: ``outboundAccountPosition`` (even ``seq``) or
    ``executionReport`` (odd). The mock puts the sequence number in ``u`` of both (Binance's
    ``u`` is the account's last update time in outboundAccountPosition)."""
    event: dict[str, Any]
    if seq % 2 == 0:
        event = {
            "e": "outboundAccountPosition",
            "E": event_time_ms,
            "u": seq,
            "B": [{"a": "USDT", "f": "10580.00000000", "l": "70.00000000"}],
        }
    else:
        event = {"e": "executionReport", "E": event_time_ms, "s": "BTCUSDT", "c": f"mock{seq}",
                 "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "0.01000000", "p": "52000.00",
                 "x": "NEW", "X": "NEW", "r": "NONE", "i": seq, "T": event_time_ms,
                 "u": seq}  # fmt: skip
    return dumps({"subscriptionId": subscription_id, "event": event})


def build_stream_terminated(subscription_id: int, event_time_ms: int) -> str:
    """``eventStreamTerminated`` in its envelope (the subscription ended)."""
    event = {"e": "eventStreamTerminated", "E": event_time_ms}
    return dumps({"subscriptionId": subscription_id, "event": event})


def build_shutdown_notice(event_time_ms: int, combined: bool, api: bool = False) -> str:
    """``serverShutdown`` in the raw, combined or WebSocket API shape."""
    event = {"e": "serverShutdown", "E": event_time_ms}
    if api:
        return dumps({"event": event})
    if combined:
        return dumps({"stream": "!serverShutdown", "data": event})
    return dumps(event)


def build_payload(stream: str, seq: int, event_time_ms: int) -> dict[str, Any]:
    """The raw payload of one market-data event on ``stream`` with sequence number ``seq``.

    Where the documented payload has an update id, ``seq`` is it (``t`` for trade, ``a``/``f``/
    ``l`` for aggTrade, ``U``=``u`` for depthUpdate, ``u`` for bookTicker, ``lastUpdateId`` for
    partial depth, ``k.L`` for kline, ``L`` for tickers)."""
    parsed = parse_stream(stream)
    symbol = parsed.symbol.upper()
    channel = parsed.channel
    if channel == "trade":
        return {"e": "trade", "E": event_time_ms, "s": symbol, "t": seq, "p": "0.001",
                "q": "100", "T": event_time_ms, "m": True, "M": True}  # fmt: skip
    if channel == "aggTrade":
        return {"e": "aggTrade", "E": event_time_ms, "s": symbol, "a": seq, "p": "0.001",
                "q": "100", "f": seq, "l": seq, "T": event_time_ms, "m": True, "M": True}  # fmt: skip
    if channel.startswith("depth") and channel[5:6] in ("", "@"):
        return {"e": "depthUpdate", "E": event_time_ms, "s": symbol, "U": seq, "u": seq,
                "b": [["0.0024", "10"]], "a": [["0.0026", "100"]]}  # fmt: skip
    if channel.startswith("depth"):
        return {"lastUpdateId": seq, "bids": [["0.0024", "10"]], "asks": [["0.0026", "100"]]}
    if channel == "bookTicker":
        return {"u": seq, "s": symbol, "b": "25.35190000", "B": "31.21000000",
                "a": "25.36520000", "A": "40.66000000"}  # fmt: skip
    if channel.startswith("kline_"):
        interval = channel[len("kline_") :].split("@")[0]
        kline = {"t": event_time_ms, "T": event_time_ms, "s": symbol, "i": interval,
                 "f": seq, "L": seq, "o": "0.0010", "c": "0.0020", "h": "0.0025",
                 "l": "0.0015", "v": "1000", "n": 1, "x": False}  # fmt: skip
        return {"e": "kline", "E": event_time_ms, "s": symbol, "k": kline}
    event = "24hrMiniTicker" if channel == "miniTicker" else "24hrTicker"
    if channel not in ("ticker", "miniTicker"):
        event = channel.lstrip("!").split("@")[0]
    return {"e": event, "E": event_time_ms, "s": symbol, "c": "0.0025", "L": seq}


def build_data(stream: str, seq: int, event_time_ms: int, combined: bool) -> str:
    """One data frame: the raw payload, or ``{"stream":..,"data":..}`` on combined endpoints."""
    payload = build_payload(stream, seq, event_time_ms)
    if combined:
        return dumps({"stream": stream, "data": payload})
    return dumps(payload)


# --- order books (depth streams) -----------------------------------------------------------

_PARTIAL_DEPTH_RE = re.compile(r"^depth(5|10|20)(@\d+ms)?$")
_DIFF_DEPTH_RE = re.compile(r"^depth(@\d+ms)?$")


def depth_kind(stream: str) -> tuple[str, int] | None:
    """``("diff", 0)`` for ``<symbol>@depth[@100ms]``, ``("partial", 5)`` for
    ``<symbol>@depth5[@100ms]`` (10, 20), else None."""
    _, sep, channel = stream.partition("@")
    if not sep or stream.startswith("!"):
        return None
    if _DIFF_DEPTH_RE.match(channel):
        return ("diff", 0)
    match = _PARTIAL_DEPTH_RE.match(channel)
    if match:
        return ("partial", int(match.group(1)))
    return None


def build_depth_update(
    symbol: str,
    first_id: int,
    final_id: int,
    bids: list[list[str]],
    asks: list[list[str]],
    event_time_ms: int,
    prev_final_id: int | None = None,
) -> dict[str, Any]:
    """A diff depth event (``depthUpdate``): spot's fields ``e E s U u b a``; USD-M futures add
    the transaction time ``T`` and ``pu`` (the previous event's ``u``), given ``prev_final_id``."""
    if prev_final_id is None:
        return {"e": "depthUpdate", "E": event_time_ms, "s": symbol, "U": first_id,
                "u": final_id, "b": bids, "a": asks}  # fmt: skip
    return {"e": "depthUpdate", "E": event_time_ms, "T": event_time_ms, "s": symbol,
            "U": first_id, "u": final_id, "pu": prev_final_id, "b": bids, "a": asks}  # fmt: skip


def build_partial_depth(
    last_update_id: int, bids: list[list[str]], asks: list[list[str]]
) -> dict[str, Any]:
    """A spot partial book depth event: ``{"lastUpdateId":..,"bids":..,"asks":..}``."""
    return {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}


FUTURES_DOMAIN_PREFIX = "fstream"


def is_futures_domain(domain: str) -> bool:
    """Whether a profile's limit domain is Binance USD-M futures (``fstream.binance.com``)."""
    return domain.startswith(FUTURES_DOMAIN_PREFIX)


# --- USD-M futures payloads --------------------------------------------------------------------


def _mark_price(symbol: str, seq: int, event_time_ms: int) -> dict[str, Any]:
    """``markPriceUpdate`` (Mark Price Stream): mark, index and estimated settle price, funding
    rate and next funding time."""
    mark = 60000 + seq % 1000
    next_funding = (event_time_ms // 28_800_000 + 1) * 28_800_000
    return {"e": "markPriceUpdate", "E": event_time_ms, "s": symbol,
            "p": f"{mark}.10000000", "i": f"{mark}.02659091", "P": f"{mark}.25641265",
            "r": "0.00010000", "T": next_funding}  # fmt: skip


def _force_order(symbol: str, seq: int, event_time_ms: int) -> dict[str, Any]:
    """``forceOrder`` (Liquidation Order Stream): the liquidation order in ``o``."""
    order = {"s": symbol, "S": "SELL" if seq % 2 else "BUY", "o": "LIMIT", "f": "IOC",
             "q": "0.014", "p": "9910", "ap": "9910", "X": "FILLED", "l": "0.014",
             "z": "0.014", "T": event_time_ms}  # fmt: skip
    return {"e": "forceOrder", "E": event_time_ms, "o": order}


_ARR_SYMBOLS = ("BTCUSDT", "ETHUSDT")
"""Symbols in the mock's market-wide arrays (``!markPrice@arr``, ``!forceOrder@arr``)."""


def build_futures_payload(stream: str, seq: int, event_time_ms: int) -> Any:
    """The raw payload of one USD-M market-data event (a list for ``!markPrice@arr``). Streams
    spot also has keep spot's payload except aggTrade, which has no ``M`` on futures."""
    if stream.startswith("!markPrice@arr"):
        return [_mark_price(s, seq, event_time_ms) for s in _ARR_SYMBOLS]
    if stream == "!forceOrder@arr":
        return _force_order(_ARR_SYMBOLS[seq % len(_ARR_SYMBOLS)], seq, event_time_ms)
    symbol, _, channel = stream.partition("@")
    if channel.startswith("markPrice"):
        return _mark_price(symbol.upper(), seq, event_time_ms)
    if channel == "forceOrder":
        return _force_order(symbol.upper(), seq, event_time_ms)
    payload = build_payload(stream, seq, event_time_ms)
    if channel == "aggTrade":
        payload.pop("M", None)
    return payload


def channel_of(stream: str) -> str:
    """``btcusdt@depth@100ms`` -> ``depth@100ms``; a market-wide stream is its own channel."""
    if stream.startswith("!") or "@" not in stream:
        return stream
    return stream.split("@", 1)[1]


def endpoint_refusal(path: str, channel: str) -> str | None:
    """Why a connection opened at ``path`` gets no data for ``channel``, naming the route that
    serves it: USD-M serves depth and bookTicker on ``/public`` and the other market streams on
    ``/market``, and acknowledges a stream on the other route without ever delivering it (a
    client's report, docs/exchange-dialects.md 2.3). None for spot's paths (no route) or when
    the route serves the channel. For the planner's endpoint rules (`planner.endpoints`)."""
    route, _ = split_route(path)
    if not route:
        return None
    home = futures_route(channel if channel.startswith("!") else "x@" + channel)
    if home == route:
        return None
    return (
        f"Binance USD-M serves {channel} on {home} only, not on the quota's endpoint {path} "
        f"(it acknowledges the subscription and never delivers data): declare the stream in "
        f"a quota whose endpoint is wss://fstream.binance.com{home}/stream"
    )
