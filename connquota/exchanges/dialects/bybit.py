"""Bybit v5 wire format: ``/v5/public/{spot,linear,inverse,option,spread}`` and ``/v5/private``.

Topics are strings (``publicTrade.BTCUSDT``, ``orderbook.50.BTCUSDT``, ``tickers.BTCUSDT``;
private ``order``, ``execution``, ``position``, ``wallet``). The client pings with
``{"req_id":..,"op":"ping"}`` (recommended every 20 s); the pong's shape depends on the
category. Private sockets authenticate with ``{"op":"auth","args":[key, expires, signature]}``
where signature = hex(HMAC-SHA256(secret, "GET/realtime" + expires)).

Source: exchange-dialects.md section 4 (https://bybit-exchange.github.io/docs/v5/ws/connect).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import parse_qs

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
    hmac_sha256,
    loads_object,
)

name = "bybit"

PUBLIC_CATEGORIES = ("spot", "linear", "inverse", "option", "spread")
PING_INTERVAL_S = 20.0
IDLE_TIMEOUT_S = 600.0
MAX_ACTIVE_RANGE_S = (30.0, 600.0)
SPOT_MAX_ARGS_PER_REQUEST = 10
MAX_ARGS_CHARS = 21_000

_SYMBOL = r"[A-Z0-9][A-Z0-9-]{1,30}"
_PUBLIC_TOPIC_RE = re.compile(
    rf"^(publicTrade|tickers|liquidation|allLiquidation)\.{_SYMBOL}$"
    rf"|^orderbook\.(1|25|50|100|200|500|1000)\.{_SYMBOL}$"
    rf"|^kline\.(1|3|5|15|30|60|120|240|360|720|D|W|M)\.{_SYMBOL}$"
)
PRIVATE_TOPICS = frozenset(
    {"order", "execution", "execution.fast", "position", "wallet", "greeks", "dcp"}
    | {f"{t}.{c}" for t in ("order", "execution", "position") for c in ("spot", "linear",
                                                                          "inverse", "option")}
)  # fmt: skip


# --- streams and URLs -------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``BTCUSDT`` x ``orderbook.50`` -> ``orderbook.50.BTCUSDT`` (private topics: no symbol)."""
    return f"{channel}.{symbol}" if symbol else channel


def parse_stream(stream: str) -> StreamName:
    """``orderbook.50.BTCUSDT`` -> symbol ``BTCUSDT``, channel ``orderbook.50``."""
    if stream in PRIVATE_TOPICS:
        return StreamName(symbol="", channel=stream)
    if not _PUBLIC_TOPIC_RE.match(stream):
        raise WireFormatError(f"not a Bybit v5 topic: {stream!r}")
    channel, _, symbol = stream.rpartition(".")
    return StreamName(symbol=symbol, channel=channel)


def is_valid_topic(stream: str, private: bool) -> bool:
    """Whether ``stream`` is a documented topic for a public or a private connection."""
    if private:
        return stream in PRIVATE_TOPICS
    return bool(_PUBLIC_TOPIC_RE.match(stream))


def public_path(category: str) -> str:
    """``spot`` -> ``/v5/public/spot``."""
    if category not in PUBLIC_CATEGORIES:
        raise WireFormatError(f"Bybit has no public category {category!r}")
    return f"/v5/public/{category}"


PRIVATE_PATH = "/v5/private"


def _duration_s(text: str) -> float | None:
    match = re.fullmatch(r"(\d+)([sm]?)", text)
    if not match:
        return None
    value = float(match.group(1))
    return value * 60 if match.group(2) == "m" else value


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path Bybit does not serve."""
    path = path.rstrip("/")
    if path == PRIVATE_PATH:
        max_active_s: float | None = None
        values = parse_qs(query).get("max_active_time", [])
        if values:
            max_active_s = _duration_s(values[0])
            low, high = MAX_ACTIVE_RANGE_S
            if max_active_s is None or not low <= max_active_s <= high:
                raise WireFormatError(f"max_active_time must be 30s..600s, not {values[0]!r}")
        return Endpoint(kind="private", private=True, max_active_s=max_active_s)
    prefix = "/v5/public/"
    if path.startswith(prefix) and path[len(prefix) :] in PUBLIC_CATEGORIES:
        return Endpoint(kind=path[len(prefix) :])
    raise WireFormatError(f"Bybit serves no WebSocket at {path!r}")


# --- client side ------------------------------------------------------------------------------


def _request(op: str, args: list[Any] | None, request_id: RequestId) -> str:
    body: dict[str, Any] = {}
    if request_id is not None:
        body["req_id"] = str(request_id)
    body["op"] = op
    if args is not None:
        body["args"] = args
    return dumps(body)


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"req_id":"test","op":"subscribe","args":[...]}``."""
    return _request("subscribe", list(streams), request_id)


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"req_id":"..","op":"unsubscribe","args":[...]}``."""
    return _request("unsubscribe", list(streams), request_id)


def build_ping(request_id: RequestId = None) -> str | None:
    """``{"req_id":"100001","op":"ping"}``."""
    return _request("ping", None, request_id)


def auth_signature(secret: str, expires_ms: int) -> str:
    """Lower-case hex of HMAC-SHA256(secret, "GET/realtime" + expires)."""
    return hmac_sha256(secret, f"GET/realtime{expires_ms}").hex()


def build_login(
    credentials: ApiCredentials, now_ms: int, request_id: RequestId, valid_ms: int = 1000
) -> str:
    """``{"op":"auth","args":[key, expires, signature]}`` with expires = now + ``valid_ms``."""
    expires_ms = now_ms + valid_ms
    args = [credentials.api_key, expires_ms, auth_signature(credentials.secret, expires_ms)]
    return _request("auth", args, request_id)


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from Bybit."""
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    op = obj.get("op")
    request_id = obj.get("req_id") or None
    if op == "pong" or (op == "ping" and obj.get("ret_msg") == "pong"):
        args = obj.get("args") or obj.get("data") or [""]
        return Pong(request_id, str(args[0]) if isinstance(args, list) and args else "")
    if op == "auth":
        ok = obj.get("success") is True or obj.get("retCode") == 0
        return LoginResult(ok, request_id, "" if ok else "auth", str(obj.get("ret_msg", "")))
    if op in ("subscribe", "unsubscribe"):
        if obj.get("success") is False:
            return Error(request_id, op, str(obj.get("ret_msg", "")), obj)
        return Ack(request_id, op)
    if obj.get("type") == "COMMAND_RESP":
        data = obj.get("data") or {}
        if data.get("failTopics"):
            return Error(request_id, "subscribe", f"failTopics {data['failTopics']}", obj)
        return Ack(request_id, "subscribe", tuple(data.get("successTopics") or ()))
    if "success" in obj and obj.get("success") is False:
        return Error(request_id, str(op or ""), str(obj.get("ret_msg", "")), obj)
    if "topic" in obj and "data" in obj:
        return Data(str(obj["topic"]), _seq_of(obj), _int(obj.get("ts")), obj, text)
    return Unknown(text)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _seq_of(obj: dict[str, Any]) -> int | None:
    data = obj.get("data")
    if isinstance(data, list):
        data = data[0] if data and isinstance(data[0], dict) else {}
    if not isinstance(data, dict):
        return None
    if str(obj.get("topic", "")).startswith("orderbook"):
        return _int(data.get("u"))
    for key in ("seq", "cs", "u"):
        if key in data:
            return _int(data[key])
    return _int(obj.get("cs"))


# --- server side --------------------------------------------------------------------------------


def _reply(body: dict[str, Any]) -> str:
    return dumps(body)


def build_op_result(
    category: str,
    op: str,
    conn_id: str,
    request_id: RequestId,
    success: bool = True,
    ret_msg: str | None = None,
    topics: tuple[str, ...] = (),
) -> str:
    """The answer to subscribe/unsubscribe/auth in the category's documented shape."""
    if category in ("option", "spread") and op in ("subscribe", "unsubscribe"):
        data = {"failTopics": [] if success else list(topics),
                "successTopics": list(topics) if success else []}  # fmt: skip
        return _reply(
            {"success": success, "conn_id": conn_id, "data": data, "type": "COMMAND_RESP"}
        )
    if ret_msg is None:
        ret_msg = op if category == "spot" and success else ""
    body: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": conn_id}
    if category != "private" or request_id is not None:
        body["req_id"] = "" if request_id is None else request_id
    body["op"] = op
    return _reply(body)


def build_pong(category: str, conn_id: str, request_id: RequestId, now_ms: int) -> str:
    """The pong in the category's documented shape."""
    if category == "private":
        body: dict[str, Any] = {}
        if request_id is not None:
            body["req_id"] = request_id
        body.update({"op": "pong", "args": [str(now_ms)], "conn_id": conn_id})
        return _reply(body)
    if category in ("option", "spread"):
        return _reply({"args": [str(now_ms)], "op": "pong"})
    body = {"success": True, "ret_msg": "pong", "conn_id": conn_id}
    if category != "spot" or request_id is not None:
        body["req_id"] = "" if request_id is None else request_id
    body["op"] = "ping"
    return _reply(body)


def parse_client_message(text: str) -> ClientRequest:
    """Classify a client frame. ``InvalidRequest.reply`` holds ``{conn_id}`` to fill in."""
    obj = loads_object(text)
    if obj is None:
        return _invalid(None, "", "error:request body format error")
    raw_id = obj.get("req_id")
    request_id = raw_id if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
    op = obj.get("op")
    args = obj.get("args")
    if op == "ping":
        return PingRequest(request_id)
    if op in ("subscribe", "unsubscribe"):
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            return _invalid(request_id, op, "error:param error")
        return SubscribeRequest(request_id, tuple(args), unsubscribe=op == "unsubscribe")
    if op == "auth":
        if (
            not isinstance(args, list)
            or len(args) != 3
            or not isinstance(args[0], str)
            or not _is_expires(args[1])
            or not isinstance(args[2], str)
        ):
            return _invalid(request_id, "auth", "Params Error")
        expires = int(args[1])
        return LoginRequest(request_id, args[0], {"expires": expires, "signature": args[2]})
    if op in ("pong",):
        return OtherRequest(request_id, op)
    return _invalid(request_id, str(op or ""), "error:invalid op")


def _is_expires(value: Any) -> bool:
    """Bybit takes ``expires`` as a number or as a string of digits (clients send both)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value.isdigit())


def _invalid(request_id: RequestId, op: str, ret_msg: str) -> InvalidRequest:
    body: dict[str, Any] = {"success": False, "ret_msg": ret_msg, "conn_id": "{conn_id}"}
    body["req_id"] = "" if request_id is None else request_id
    body["op"] = op
    return InvalidRequest(request_id, op, ret_msg, dumps(body))


def handler_not_found(topic: str) -> str:
    """The ret_msg for an unknown topic: ``error:handler not found,topic:<topic>``."""
    return f"error:handler not found,topic:{topic}"


def orderbook_depth(topic: str) -> int | None:
    """``orderbook.50.BTCUSDT`` -> 50; None for any other topic."""
    parts = topic.split(".")
    if len(parts) >= 3 and parts[0] == "orderbook" and parts[1].isdigit():
        return int(parts[1])
    return None


def build_orderbook(
    stream: str,
    kind: str,
    bids: list[list[str]],
    asks: list[list[str]],
    event_time_ms: int,
    update_id: int,
    cross_seq: int,
) -> str:
    """One ``orderbook.<depth>.<symbol>`` push as documented: ``type`` ``snapshot`` or
    ``delta``, ``data`` with ``s``, ``b``, ``a``, ``u`` (update id) and ``seq`` (cross
    sequence), and ``cts``."""
    book = {"s": parse_stream(stream).symbol, "b": bids, "a": asks, "u": update_id,
            "seq": cross_seq}  # fmt: skip
    return dumps({"topic": stream, "type": kind, "ts": event_time_ms, "data": book,
                  "cts": event_time_ms})  # fmt: skip


def build_data(
    stream: str,
    seq: int,
    event_time_ms: int,
    category: str = "spot",
    prices: MarketPrices | None = None,
) -> str:
    """One push: publicTrade ``seq``; orderbook ``u`` and ``seq``; tickers ``cs``; kline
    ``seq``; all = seq. ``category`` (spot, linear, inverse, option) shapes ``tickers``;
    ``prices`` (from the mock's book) price trades and tickers, without: fixed prices."""
    parsed = parse_stream(stream)
    symbol = parsed.symbol
    channel = parsed.channel
    if channel == "publicTrade":
        item = {"T": event_time_ms, "s": symbol, "S": "Buy", "v": "0.001", "p": "16578.50",
                "L": "PlusTick", "i": str(uuid.UUID(int=seq)), "BT": False, "seq": seq}  # fmt: skip
        if prices is not None:  # a buy takes the best ask, a sell the best bid
            buy = prices.last == prices.ask[0]
            item.update(p=prices.last, S="Buy" if buy else "Sell",
                        L="PlusTick" if buy else "MinusTick")  # fmt: skip
        return dumps({"topic": stream, "type": "snapshot", "ts": event_time_ms, "data": [item]})
    if channel.startswith("orderbook"):
        book = {"s": symbol, "b": [["16493.50", "0.006"]], "a": [["16611.00", "0.029"]],
                "u": seq, "seq": seq}  # fmt: skip
        return dumps({"topic": stream, "type": "delta", "ts": event_time_ms, "data": book,
                      "cts": event_time_ms})  # fmt: skip
    if channel == "tickers":
        ticker = ticker_item(symbol, seq, linear=category != "spot", prices=prices)
        return dumps({"topic": stream, "type": "snapshot", "ts": event_time_ms, "cs": seq,
                      "data": ticker})  # fmt: skip
    if channel.startswith("kline"):
        item = kline_item(channel.split(".")[1], seq, event_time_ms)
        return dumps({"topic": stream, "type": "snapshot", "ts": event_time_ms, "data": [item]})
    item = {"start": event_time_ms, "symbol": symbol, "seq": seq}
    return dumps({"topic": stream, "type": "snapshot", "ts": event_time_ms, "data": [item]})


_INTERVAL_MS = {"D": 86_400_000, "W": 604_800_000, "M": 2_592_000_000}
"""Milliseconds per Bybit kline interval that is not a number of minutes (a month = 30 days)."""


def interval_ms(interval: str) -> int:
    """``5`` -> 300000, ``D`` -> 86400000; one minute if unreadable."""
    if interval.isdigit():
        return int(interval) * 60_000
    return _INTERVAL_MS.get(interval, 60_000)


def kline_item(interval: str, seq: int, event_time_ms: int) -> dict[str, Any]:
    """One closed bar (``confirm`` true): the last whole interval before the event, ``start``
    on the interval, ``end`` = start + interval - 1, low <= open, close <= high; ``seq`` is the
    mock's sequence."""
    length = interval_ms(interval)
    start = event_time_ms - event_time_ms % length - length
    close = 42000 + (seq % 200) / 10
    low, high = min(42000.0, close), max(42010.0, close)
    volume = 1 + seq % 50
    return {"start": start, "end": start + length - 1, "interval": interval, "open": "42000",
            "close": f"{close:.1f}", "high": f"{high:.1f}", "low": f"{low:.1f}",
            "volume": str(volume), "turnover": f"{volume * close:.2f}", "confirm": True,
            "timestamp": event_time_ms, "seq": seq}  # fmt: skip


def ticker_item(
    symbol: str, seq: int, linear: bool, prices: MarketPrices | None = None
) -> dict[str, Any]:
    """A ``tickers`` item with the documented spot fields; ``linear`` adds the derivative ones
    (mark/index price, open interest, funding, best bid/ask); ``cs`` is the mock's sequence.
    ``prices``: best bid/ask and last from the mock's book and trades; without, fixed prices
    around 42000. low24h <= every price <= high24h."""
    if prices is None:
        fixed = 42000 + (seq % 200) / 10
        prices = MarketPrices([f"{fixed - 0.1:.1f}", "1.5"], [f"{fixed + 0.1:.1f}", "2.0"],
                              f"{fixed:.1f}")  # fmt: skip
    last = float(prices.last)
    prev = last * 0.98
    high, low = float(prices.ask[0]) * 1.01, min(prev, float(prices.bid[0])) * 0.99
    item: dict[str, Any] = {
        "symbol": symbol, "lastPrice": prices.last, "highPrice24h": f"{high:.2f}",
        "lowPrice24h": f"{low:.2f}", "prevPrice24h": f"{prev:.2f}", "volume24h": "1234.5",
        "turnover24h": f"{1234.5 * last:.2f}", "price24hPcnt": f"{(last - prev) / prev:.4f}",
        "usdIndexPrice": prices.last, "cs": seq}  # fmt: skip
    if linear:
        del item["usdIndexPrice"]
        item.update({
            "tickDirection": "PlusTick", "prevPrice1h": f"{last * 0.998:.2f}",
            "markPrice": prices.last, "indexPrice": f"{last - 0.5:.2f}", "openInterest": "5000",
            "openInterestValue": f"{5000 * last:.2f}", "fundingRate": "0.0001",
            "nextFundingTime": "1673280000000", "bid1Price": prices.bid[0],
            "bid1Size": prices.bid[1], "ask1Price": prices.ask[0],
            "ask1Size": prices.ask[1]})  # fmt: skip
    return item


def new_conn_id() -> str:
    """A connection id in Bybit's style."""
    return str(uuid.uuid4())


def build_private_data(topic: str, seq: int, event_time_ms: int) -> str:
    """A private push (order, execution, position, wallet): ``id``, ``creationTime``, ``data``;
    the mock puts ``seq`` in each item."""
    ts = str(event_time_ms)
    kind, _, category = topic.partition(".")
    category = category if category in ("spot", "linear", "inverse", "option") else "linear"
    item: dict[str, Any] = {"category": category, "symbol": "BTCUSDT", "seq": seq,
                            "updatedTime": ts}  # fmt: skip
    order = {"orderId": str(uuid.UUID(int=seq // 2)), "orderLinkId": f"mock{seq // 2}",
             "side": "Buy", "orderType": "Limit", "price": "42000.0", "qty": "0.02"}  # fmt: skip
    if kind == "order":
        item.update(order, orderStatus="Filled" if seq % 2 else "PartiallyFilled",
                    cumExecQty="0.02" if seq % 2 else "0.01", cumExecValue="840.0",
                    leavesQty="0" if seq % 2 else "0.01", avgPrice="42000.0",
                    timeInForce="GTC", createdTime=str(event_time_ms - 1_000))  # fmt: skip
    elif kind == "execution":
        item.update(order, execId=str(uuid.UUID(int=seq)), execPrice="42000.0",
                    execQty="0.01", execFee="0.0042", execTime=ts, isMaker=True,
                    leavesQty="0" if seq % 2 else "0.01", execType="Trade")  # fmt: skip
    elif kind == "position":
        item.update(side="Buy", size="0.02", entryPrice="42000.0", markPrice="42010.0",
                    positionValue="840.0", unrealisedPnl="0.2", leverage="10",
                    positionIdx=0, positionStatus="Normal")  # fmt: skip
    elif kind == "wallet":
        item = {"accountType": "UNIFIED", "totalEquity": "1000", "totalWalletBalance": "1000",
                "totalAvailableBalance": "990", "coin": [{"coin": "USDT", "equity": "1000",
                "walletBalance": "1000", "locked": "10"}], "seq": seq}  # fmt: skip
    return dumps({"id": f"{seq}", "topic": topic, "creationTime": event_time_ms, "data": [item]})
