"""OKX v5 wire format: ``/ws/v5/public``, ``/ws/v5/private``, ``/ws/v5/business``.

OKX names a subscription with a JSON object (``{"channel":"tickers","instId":"BTC-USDT"}``).
connquota's stream string for it is ``<channel>:<instId>`` (``tickers:BTC-USDT``); an argument
keyed by something else is written ``<channel>:<key>=<value>[,<key>=<value>]``
(``orders:instType=ANY``, ``instruments:instType=SPOT``). The client keeps the connection alive
with the text frame ``ping`` (answer: ``pong``) when idle less than 30 s; the server closes a
connection after 30 s without data (close code 4004). Subscribe, unsubscribe and login requests
count against 480 per hour per connection.

Source: exchange-dialects.md section 3 (https://www.okx.com/docs-v5/en/).
"""

from __future__ import annotations

import base64
import json
from typing import Any

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
    MarketPrices,
    Notice,
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
    hmac_sha256,
    loads_object,
)

name = "okx"

PING_TEXT = "ping"
PONG_TEXT = "pong"
IDLE_TIMEOUT_S = 30.0
LOGIN_TIMESTAMP_VALID_S = 30.0
MAX_REQUEST_ID_CHARS = 32
ARG_KEYS = ("channel", "instType", "instFamily", "instId", "ccy")

ACCOUNT_WIDE_CHANNELS = frozenset({"account", "balance_and_position", "account-greeks"})
"""Private channels OKX takes with no argument but the channel (``ccy`` optional): their stream
string is ``<channel>:*`` (``account:*``), or ``account:ccy=BTC`` with a currency."""

PATHS = {"/ws/v5/public": "public", "/ws/v5/private": "private", "/ws/v5/business": "business"}

PUBLIC_CHANNELS = frozenset(
    {"tickers", "trades", "books", "books5", "bbo-tbt", "books50-l2-tbt", "books-l2-tbt",
     "instruments", "open-interest", "funding-rate", "mark-price", "index-tickers",
     "price-limit", "opt-summary", "liquidation-orders"}
)  # fmt: skip
BUSINESS_CHANNELS = frozenset({"trades-all", "mark-price-candle1m", "index-candle1m"})
PRIVATE_CHANNELS = frozenset(
    {"orders", "account", "positions", "balance_and_position", "liquidation-warning",
     "account-greeks"}
)  # fmt: skip
LOGIN_CHANNELS = frozenset({"books-l2-tbt", "books50-l2-tbt"})
BOOK_DEPTHS = {"books": 400, "books-l2-tbt": 400, "books50-l2-tbt": 50, "books5": 5, "bbo-tbt": 1}
"""Order-book channels and the levels per side each carries."""
INCREMENTAL_BOOKS = frozenset({"books", "books-l2-tbt", "books50-l2-tbt"})
"""Book channels whose first push is a ``snapshot`` and the rest ``update``s (with checksum,
``prevSeqId`` and ``seqId``); ``books5`` and ``bbo-tbt`` push their top levels whole every time,
without ``action``."""
"""Public-endpoint channels that need login (VIP tiers)."""

CLOSE_CODES = {
    1009: "Request message exceeds the maximum frame length",
    4001: "Login Failed",
    4002: "Invalid Request",
    4003: "APIKey subscription amount exceeds the limit 100",
    4004: "No data received in 30s",
    4005: "Buffer is full, cannot write data",
    4006: "Abnormal disconnection",
    4007: "API key has been updated or deleted. Please reconnect.",
    4008: "The number of subscribed channels exceeds the maximum limit.",
    4009: "The number of subscription channels for this connection exceeds the limit",
}
"""Documented close codes and their reasons."""

ERRORS = {
    "60004": "Invalid timestamp",
    "60005": "Invalid apiKey",
    "60006": "Timestamp request expired",
    "60007": "Invalid sign",
    "60009": "Login failed.",
    "60011": "Please log in",
    "60012": "Invalid request: {0}",
    "60014": "Requests too frequent",
    "60018": "Wrong URL or {0} doesn't exist. Please use the correct URL, channel and parameters "
    "referring to API document.",
    "60019": "Invalid op: {0}",
    "60024": "Wrong passphrase",
    "60031": "The WebSocket endpoint does not allow multiple or repeated logins.",
    "64001": "This channel has been migrated to the '/business' URL",
    "64002": 'This channel is not supported by "/business" URL',
}
"""Documented error codes used by the mock and their message templates."""

UPGRADE_NOTICE_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."


def _is_candle(channel: str) -> bool:
    return channel.startswith("candle")


# --- streams and URLs -------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``BTC-USDT`` x ``tickers`` -> ``tickers:BTC-USDT``."""
    return f"{channel}:{symbol}"


def stream_to_arg(stream: str) -> dict[str, str]:
    """``tickers:BTC-USDT`` -> ``{"channel":"tickers","instId":"BTC-USDT"}``."""
    channel, sep, rest = stream.partition(":")
    if not channel or not sep or not rest:
        raise WireFormatError(f"not an OKX stream string: {stream!r}")
    arg = {"channel": channel}
    if rest == "*" and channel in ACCOUNT_WIDE_CHANNELS:
        return arg
    if "=" not in rest:
        arg["instId"] = rest
        return arg
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or key not in ARG_KEYS[1:] or not value:
            raise WireFormatError(f"not an OKX stream string: {stream!r}")
        arg[key] = value
    return arg


def arg_to_stream(arg: dict[str, Any]) -> str:
    """``{"channel":"tickers","instId":"BTC-USDT"}`` -> ``tickers:BTC-USDT``."""
    channel = arg.get("channel")
    if not isinstance(channel, str) or not channel:
        raise WireFormatError(f"OKX argument without a channel: {arg!r}")
    keys = [k for k in ARG_KEYS[1:] if k in arg]
    if keys == ["instId"]:
        return f"{channel}:{arg['instId']}"
    if not keys and channel in ACCOUNT_WIDE_CHANNELS:
        return f"{channel}:*"
    if not keys:
        raise WireFormatError(f"OKX argument without instType/instFamily/instId: {arg!r}")
    return channel + ":" + ",".join(f"{k}={arg[k]}" for k in keys)


def parse_stream(stream: str) -> StreamName:
    """``tickers:BTC-USDT`` -> symbol ``BTC-USDT``, channel ``tickers``."""
    arg = stream_to_arg(stream)
    symbol = arg.get("instId") or arg.get("instFamily") or arg.get("instType") or ""
    return StreamName(symbol=symbol, channel=arg["channel"])


def endpoint_for_channel(channel: str) -> str:
    """Which socket serves ``channel``: ``public``, ``private`` or ``business``."""
    if channel in PRIVATE_CHANNELS:
        return "private"
    if channel in BUSINESS_CHANNELS or _is_candle(channel):
        return "business"
    return "public"


BUSINESS_PREFIXES = ("candle", "mark-price-candle", "index-candle")
"""Channel families OKX serves on ``/ws/v5/business`` only, one channel per bar size
(``candle1m``, ``candle1H``, ``mark-price-candle3M``...)."""


def home_endpoint(channel: str) -> str | None:
    """The one socket OKX serves ``channel`` on (``public``, ``private`` or ``business``), for
    the channels this dialect knows; None for a channel it does not know (OKX has more)."""
    if channel in BUSINESS_CHANNELS or channel.startswith(BUSINESS_PREFIXES):
        return "business"
    if channel in PUBLIC_CHANNELS:
        return "public"
    if channel in PRIVATE_CHANNELS:
        return "private"
    return None


def channel_of(stream: str) -> str:
    """``candle1m:BTC-USDT`` -> ``candle1m`` (no validation: `stream_to_arg` validates)."""
    return stream.partition(":")[0]


def endpoint_refusal(path: str, channel: str) -> str | None:
    """Why a public (not logged-in) connection opened at ``path`` cannot subscribe to
    ``channel``, naming the endpoint that serves it; None when it can, or when the path or the
    channel is one this dialect does not know (then the exchange decides). OKX answers such a
    subscription with 60018, 64001 or 64002 (docs/exchange-dialects.md section 3)."""
    kind = PATHS.get(path.rstrip("/"))
    home = home_endpoint(channel)
    if kind is None or home is None or home == kind:
        return None
    where = path_for(home)
    if home == "private":
        return (
            f"OKX serves {channel} on {where} only, to a logged-in connection: give the "
            "stream a credential"
        )
    if kind == "business":
        code = "64002"
    elif kind == "public" and channel in BUSINESS_CHANNELS:
        code = "64001"
    else:
        code = "60018"
    return (
        f"OKX serves {channel} on {where} only, not on the quota's endpoint {path} (it "
        f"answers {code}): declare the stream in a quota whose endpoint is {where}"
    )


def path_for(kind: str) -> str:
    """``public`` -> ``/ws/v5/public`` (and private, business)."""
    if kind not in PATHS.values():
        raise WireFormatError(f"OKX has no {kind!r} WebSocket")
    return f"/ws/v5/{kind}"


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path OKX does not serve."""
    return endpoint_at(PATHS, "OKX", path)


# --- client side ------------------------------------------------------------------------------


def _request(op: str, args: list[Any], request_id: RequestId) -> str:
    body: dict[str, Any] = {}
    if request_id is not None:
        body["id"] = str(request_id)
    body["op"] = op
    body["args"] = args
    return dumps(body)


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"id":"1512","op":"subscribe","args":[{"channel":..,"instId":..}]}``."""
    return _request("subscribe", [stream_to_arg(s) for s in streams], request_id)


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"op":"unsubscribe","args":[...]}``."""
    return _request("unsubscribe", [stream_to_arg(s) for s in streams], request_id)


def build_ping(request_id: RequestId = None) -> str | None:
    """The literal text frame ``ping``."""
    return PING_TEXT


def login_signature(secret: str, timestamp_s: str) -> str:
    """Base64(HMAC-SHA256(secret, timestamp + 'GET' + '/users/self/verify'))."""
    return base64.b64encode(hmac_sha256(secret, f"{timestamp_s}GET/users/self/verify")).decode()


def build_login(credentials: ApiCredentials, now_ms: int, request_id: RequestId) -> str:
    """The login request, timestamp in epoch seconds as a string."""
    timestamp_s = str(now_ms // 1000)
    arg = {
        "apiKey": credentials.api_key,
        "passphrase": credentials.passphrase or "",
        "timestamp": timestamp_s,
        "sign": login_signature(credentials.secret, timestamp_s),
    }
    return _request("login", [arg], request_id)


def _seq_of(item: dict[str, Any]) -> int | None:
    for key in ("seqId", "tradeId"):
        if key in item:
            try:
                return int(item[key])
            except (TypeError, ValueError):
                return None
    return None


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from OKX."""
    if text == PONG_TEXT:
        return Pong(payload=text)
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    event = obj.get("event")
    request_id = obj.get("id")
    if event in ("subscribe", "unsubscribe"):
        try:
            streams: tuple[str, ...] = (arg_to_stream(obj.get("arg") or {}),)
        except WireFormatError:
            streams = ()
        return Ack(request_id, event, streams)
    if event == "login":
        return LoginResult(
            obj.get("code") == "0", request_id, str(obj.get("code")), obj.get("msg", "")
        )
    if event == "error":
        return Error(request_id, str(obj.get("code")), str(obj.get("msg", "")), obj)
    if event == "notice":
        return Notice("notice", str(obj.get("code", "")), str(obj.get("msg", "")), raw=obj)
    if event == "channel-conn-count-error":
        msg = f"channel {obj.get('channel')} connCount {obj.get('connCount')}"
        return Error(request_id, event, msg, obj)
    if event == "channel-conn-count":
        return Notice(event, msg=str(obj.get("connCount", "")), raw=obj)
    if isinstance(obj.get("arg"), dict) and isinstance(obj.get("data"), list):
        stream = arg_to_stream(obj["arg"])
        items = obj["data"]
        first = items[0] if items else None
        seq, ts = None, None
        if isinstance(first, dict):
            seq, ts = _seq_of(first), first.get("ts")
        elif isinstance(first, list) and first:
            ts = first[0]  # a candle: [ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]
        event_ms = int(str(ts)) if str(ts).isdigit() else None
        return Data(stream, seq, event_ms, obj, text)
    return Unknown(text)


# --- server side --------------------------------------------------------------------------------


def build_error(code: str, conn_id: str, request_id: RequestId = None, *fmt: str) -> str:
    """``{"id":..,"event":"error","code":"60012","msg":"..","connId":".."}``."""
    body: dict[str, Any] = {}
    if request_id is not None:
        body["id"] = request_id
    body.update(
        {"event": "error", "code": code, "msg": ERRORS[code].format(*fmt), "connId": conn_id}
    )
    return dumps(body)


def _invalid(code: str, request_id: RequestId, *fmt: str) -> InvalidRequest:
    reply = build_error(code, "{conn_id}", request_id, *fmt)
    return InvalidRequest(request_id, code, ERRORS[code].format(*fmt), reply)


def parse_client_message(text: str) -> ClientRequest:
    """Classify a client frame. ``InvalidRequest.reply`` holds ``{conn_id}`` to fill in."""
    if text == PING_TEXT:
        return PingRequest()
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return _invalid("60012", None, text)
    if not isinstance(obj, dict):
        return _invalid("60012", None, text)
    request_id = obj.get("id")
    if request_id is not None and not (
        isinstance(request_id, str)
        and 0 < len(request_id) <= MAX_REQUEST_ID_CHARS
        and request_id.isalnum()
    ):
        return _invalid("60012", None, text)
    op = obj.get("op")
    args = obj.get("args")
    if op in ("subscribe", "unsubscribe"):
        if not isinstance(args, list) or not args or not all(isinstance(a, dict) for a in args):
            return _invalid("60012", request_id, text)
        try:
            streams = tuple(arg_to_stream(a) for a in args)
        except WireFormatError:
            return _invalid("60012", request_id, text)
        return SubscribeRequest(request_id, streams, unsubscribe=op == "unsubscribe")
    if op == "login":
        if not isinstance(args, list) or len(args) != 1 or not isinstance(args[0], dict):
            return _invalid("60012", request_id, text)
        arg = args[0]
        if not all(
            isinstance(arg.get(k), str) for k in ("apiKey", "passphrase", "timestamp", "sign")
        ):
            return _invalid("60012", request_id, text)
        return LoginRequest(request_id, arg["apiKey"], dict(arg))
    return _invalid("60019", request_id, str(op))


def describe_arg(stream: str) -> str:
    """``channel:tickers,instId:BTC-USDT`` as OKX writes an argument in error messages."""
    arg = stream_to_arg(stream)
    return ",".join(f"{k}:{v}" for k, v in arg.items())


def build_ack(op: str, stream: str, conn_id: str, request_id: RequestId = None) -> str:
    """One ack per argument: ``{"id":..,"event":"subscribe","arg":{..},"connId":".."}``."""
    body: dict[str, Any] = {}
    if request_id is not None:
        body["id"] = request_id
    body.update({"event": op, "arg": stream_to_arg(stream), "connId": conn_id})
    return dumps(body)


def build_login_result(conn_id: str, request_id: RequestId = None) -> str:
    """``{"event":"login","code":"0","msg":"","connId":".."}``."""
    body: dict[str, Any] = {}
    if request_id is not None:
        body["id"] = request_id
    body.update({"event": "login", "code": "0", "msg": "", "connId": conn_id})
    return dumps(body)


def build_upgrade_notice(conn_id: str) -> str:
    """The 64008 service-upgrade notice."""
    return dumps({"event": "notice", "code": "64008", "msg": UPGRADE_NOTICE_MSG, "connId": conn_id})


def build_channel_conn_count_error(channel: str, conn_count: int, conn_id: str) -> str:
    """``{"event":"channel-conn-count-error","channel":"orders","connCount":"30","connId":..}``."""
    return dumps(
        {"event": "channel-conn-count-error", "channel": channel, "connCount": str(conn_count),
         "connId": conn_id}
    )  # fmt: skip


def build_book(
    stream: str,
    bids: list[list[str]],
    asks: list[list[str]],
    event_time_ms: int,
    seq_id: int,
    action: str | None = None,
    prev_seq_id: int | None = None,
    checksum: int | None = None,
) -> str:
    """One order-book push as documented: ``books``/``books-l2-tbt``/``books50-l2-tbt`` with
    ``action`` (``snapshot``: ``prevSeqId`` -1; ``update``), ``checksum``, ``prevSeqId`` and
    ``seqId``; ``books5`` (``instId``, ``ts``, ``seqId``) and ``bbo-tbt`` (``ts``, ``seqId``)
    without ``action``. Levels are ``[price, size, "0", orders]``."""
    arg = stream_to_arg(stream)
    item: dict[str, Any] = {"asks": asks, "bids": bids}
    if arg["channel"] == "books5":
        item["instId"] = arg.get("instId", "")
    item["ts"] = str(event_time_ms)
    if checksum is not None:
        item["checksum"] = checksum
    if prev_seq_id is not None:
        item["prevSeqId"] = prev_seq_id
    item["seqId"] = seq_id
    body: dict[str, Any] = {"arg": arg}
    if action is not None:
        body["action"] = action
    body["data"] = [item]
    return dumps(body)


def build_data(
    stream: str, seq: int, event_time_ms: int, prices: MarketPrices | None = None
) -> str:
    """One push: trades carry ``tradeId``/``seqId`` = seq; books carry ``prevSeqId``/``seqId``
    (a one-level update without a book behind it: the mock sends `build_book` frames).
    ``prices`` (from the mock's book) price trades and tickers; without, fixed prices."""
    arg = stream_to_arg(stream)
    inst = arg.get("instId", "")
    channel = arg["channel"]
    ts = str(event_time_ms)
    if channel.startswith("books") or channel == "bbo-tbt":
        item = {"asks": [["8476.98", "415", "0", "13"]], "bids": [["8476.97", "256", "0", "12"]],
                "ts": ts, "checksum": 0, "prevSeqId": seq - 1, "seqId": seq}  # fmt: skip
        return dumps({"arg": arg, "action": "update", "data": [item]})
    if channel in ("trades", "trades-all"):
        item = {"instId": inst, "tradeId": str(seq), "px": "42219.9", "sz": "0.12060306",
                "side": "buy", "ts": ts, "count": "1", "source": "0", "seqId": seq}  # fmt: skip
        if prices is not None:  # a buy takes the best ask, a sell the best bid
            item["px"] = prices.last
            item["side"] = "buy" if prices.last == prices.ask[0] else "sell"
        return dumps({"arg": arg, "data": [item]})
    if _is_candle(channel):
        return dumps({"arg": arg, "data": [candle_row(channel, seq, event_time_ms)]})
    if channel == "tickers":
        return dumps({"arg": arg, "data": [ticker_item(inst, seq, event_time_ms, prices)]})
    if channel == "orders":
        return dumps({"arg": arg, "data": [order_item(inst or "BTC-USDT", seq, event_time_ms)]})
    if channel == "account":
        ccy = arg.get("ccy", "USDT")
        details = {"ccy": ccy, "eq": "1000", "cashBal": "1000", "availBal": "990",
                   "frozenBal": "10", "ordFrozen": "10", "uTime": ts}  # fmt: skip
        item = {"uTime": ts, "totalEq": "1000", "details": [details], "seqId": seq}
        return dumps({"arg": arg, "data": [item]})
    item = {"instId": inst, "last": "9999.99", "ts": ts, "seqId": seq}
    return dumps({"arg": arg, "data": [item]})


def order_item(inst: str, seq: int, event_time_ms: int) -> dict[str, Any]:
    """An ``orders`` item: a limit buy of 0.02 filled 0.01 at a time (``state`` partially_filled
    then filled, ``accFillSz`` the running total, ``fillPx``/``fillSz`` the last fill); one order
    per pair of pushes; ``seqId`` is the mock's sequence."""
    ts = str(event_time_ms)
    order = seq // 2
    filled = "0.02" if seq % 2 else "0.01"
    return {"instType": "SPOT", "instId": inst, "ordId": str(300_000_000 + order),
            "clOrdId": f"mock{order}", "tag": "", "px": "42000.0", "sz": "0.02",
            "ordType": "limit", "side": "buy", "posSide": "net", "tdMode": "cash",
            "fillPx": "42000.0", "fillSz": "0.01", "fillTime": ts, "tradeId": str(seq),
            "accFillSz": filled, "avgPx": "42000.0", "state": "filled" if seq % 2 else
            "partially_filled", "fee": "-0.00001", "feeCcy": "BTC", "execType": "M",
            "uTime": ts, "cTime": str(event_time_ms - 1_000), "seqId": seq}  # fmt: skip


def ticker_item(
    inst: str, seq: int, event_time_ms: int, prices: MarketPrices | None = None
) -> dict[str, Any]:
    """A `tickers` item with every documented field (last, lastSz, best bid/ask with sizes,
    the 24 h open/high/low/volumes and the UTC+0/UTC+8 day opens) plus the mock's ``seqId``;
    bid <= last <= ask and low24h <= every price <= high24h. ``prices``: best bid/ask and last
    from the mock's book and trades; without, fixed prices around 42000."""
    inst_type = "SWAP" if inst.endswith("-SWAP") else "SPOT"
    if prices is None:
        last = 42000 + (seq % 200) / 10
        prices = MarketPrices([f"{last - 0.1:.1f}", "5"], [f"{last + 0.1:.1f}", "11"],
                              f"{last:.1f}")  # fmt: skip
    last = float(prices.last)
    open_ = last * 0.98
    high, low = float(prices.ask[0]) * 1.01, min(open_, float(prices.bid[0])) * 0.99
    return {"instType": inst_type, "instId": inst, "last": prices.last, "lastSz": "0.1",
            "askPx": prices.ask[0], "askSz": prices.ask[1], "bidPx": prices.bid[0],
            "bidSz": prices.bid[1], "open24h": f"{open_:.1f}", "high24h": f"{high:.1f}",
            "low24h": f"{low:.1f}", "volCcy24h": f"{52.9 * last:.1f}", "vol24h": "52.9",
            "sodUtc0": f"{open_ * 1.002:.1f}", "sodUtc8": f"{open_ * 1.001:.1f}",
            "ts": str(event_time_ms), "seqId": seq}  # fmt: skip


_BAR_MS = {"s": 1_000, "m": 60_000, "H": 3_600_000, "D": 86_400_000, "W": 604_800_000,
           "M": 2_592_000_000}  # fmt: skip
"""Milliseconds per unit of an OKX bar (`candle1m`, `candle4H`, `candle1Dutc`; a month is
taken as 30 days)."""


def bar_ms(channel: str) -> int:
    """The bar length of a candle channel (`candle15m` -> 900000); one minute if unreadable."""
    bar = channel.removeprefix("candle").removesuffix("utc")
    count, unit = bar[:-1], bar[-1:]
    if not count.isdigit() or unit not in _BAR_MS:
        return 60_000
    return int(count) * _BAR_MS[unit]


def candle_row(channel: str, seq: int, event_time_ms: int) -> list[str]:
    """One candle as OKX pushes it: an array of strings `[ts, o, h, l, c, vol, volCcy,
    volCcyQuote, confirm]`, `ts` the start of the bar the event falls in, still open."""
    start = event_time_ms - event_time_ms % bar_ms(channel)
    close = 42000 + (seq % 200) / 10
    low, high = min(42000.0, close), max(42010.0, close)
    volume = 1 + seq % 50
    return [str(start), "42000", f"{high:.1f}", f"{low:.1f}", f"{close:.1f}", str(volume),
            f"{volume * 0.001:.4f}", f"{volume * 42:.2f}", "0"]  # fmt: skip
