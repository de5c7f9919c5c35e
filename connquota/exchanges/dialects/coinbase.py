"""Coinbase Advanced Trade WebSocket wire format: ``wss://advanced-trade-ws.coinbase.com``
(public market data) and ``wss://advanced-trade-ws-user.coinbase.com`` (the ``user`` channel).

Coinbase subscribes one channel per message with a product list
(``{"type":"subscribe","product_ids":["BTC-USD"],"channel":"market_trades"}``) and answers
every subscribe and unsubscribe with a ``subscriptions`` message listing everything the
connection is subscribed to. connquota's stream string for one channel x product is
``<channel>:<product_id>`` (``market_trades:BTC-USD``, ``ticker:BTC-USD``, ``level2:BTC-USD``,
``candles:BTC-USD``); every stream of one subscribe message shares its channel
(`subscribe_group`). Level2 data arrives with ``"channel":"l2_data"`` and is read back as
``level2:<product>``.

Every message from the server carries ``sequence_num``, counted per connection (one message
after another, whatever its channel): a number more than one above the previous one means a
message was lost (`sequence_of`). There is no client ping: a client subscribes to the
``heartbeats`` channel (one message a second) to keep quiet connections open
(`build_heartbeats_subscribe`). Errors are ``{"type":"error","message":..}``.

Authenticated channels (``user``) carry a ``jwt`` in every subscribe and unsubscribe: a fresh
ES256 JWT per message (`build_jwt`: header ``kid`` = the key name and a random ``nonce``; claims
``sub`` = the key name, ``iss`` ``cdp``, ``nbf`` now and ``exp`` 120 s later, no ``uri`` for
WebSocket), signed with the key's EC P-256 private key. ``user`` data messages list
``orders`` (``order_id``, ``status``, ``product_id``, ...); a refused JWT gets
``{"type":"error","message":"authentication failure"}``.

Source: exchange-dialects.md section 5
(https://docs.cdp.coinbase.com/coinbase-app/advanced-trade-apis/websocket/websocket-overview,
.../websocket-channels).
"""

from __future__ import annotations

import base64
import json
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

name = "coinbase"

ACKS_LIST_ALL = True
"""A ``subscriptions`` message answers every subscribe and unsubscribe with the whole list of
what the connection holds (no request id)."""

PATHS = {"/": "public", "": "public"}
"""Paths served: the market-data host's root (user data: ``advanced-trade-ws-user``)."""

PUBLIC_CHANNELS = frozenset({"market_trades", "ticker", "ticker_batch", "level2", "candles"})
"""Product channels connquota subscribes without authentication."""
PRODUCTLESS_CHANNELS = frozenset({"heartbeats", "status"})
"""Channels subscribed without products (connquota uses ``heartbeats``)."""
PRIVATE_CHANNELS = frozenset({"user", "futures_balance_summary"})
"""JWT-authenticated channels (connquota speaks both)."""
USER = "user"
FUTURES_BALANCE = "futures_balance_summary"
"""The user's futures (FCM) balances: "Authenticated. [...] No products required." Its stream
string is the channel alone (no ``:<product>``), its subscribe carries no ``product_ids``."""
JWT_LIFETIME_S = 120
"""``exp`` - ``nbf`` of a JWT: "Your JWT expires after 2 minutes"."""
JWT_ISSUER = "cdp"
WIRE_CHANNEL = {"level2": "l2_data"}
"""The ``channel`` a subscribed channel's data messages carry, where it differs [S]."""
SUBSCRIBED_CHANNEL = {wire: sub for sub, wire in WIRE_CHANNEL.items()}
CANDLE_SECONDS = 300
"""Candles are five-minute bars (``start`` in UNIX seconds)."""
HEARTBEATS = "heartbeats"

AUTH_FAILURE = "authentication failure"
"""The error of a channel that needs a JWT asked without one [S]."""
FAILED = "Failed to subscribe"
UNKNOWN_PRODUCT = "Unknown product"
RATE_LIMITED = "rate limit exceeded"
"""The mock's error for a message over the per-IP rate (Coinbase's own frame is not published:
exchange-dialects.md 5.7)."""

# the mock never puts a number other than 0 here; its connection stamps each message (the
# envelope's first ``"sequence_num":0,``) with the connection's count as it is queued
SEQ_MARK = '"sequence_num":0,'


# --- streams ------------------------------------------------------------------------------------


def stream_name(symbol: str, channel: str) -> str:
    """``BTC-USD`` x ``ticker`` -> ``ticker:BTC-USD``."""
    return f"{channel}:{symbol}"


def parse_stream(stream: str) -> StreamName:
    """``market_trades:BTC-USD`` -> symbol ``BTC-USD``, channel ``market_trades``;
    ``futures_balance_summary`` (no products) -> symbol ``""``."""
    if stream == FUTURES_BALANCE:
        return StreamName(symbol="", channel=FUTURES_BALANCE)
    channel, sep, product = stream.partition(":")
    if not sep or channel not in PUBLIC_CHANNELS | PRIVATE_CHANNELS or not product:
        raise WireFormatError(f"not a Coinbase stream string: {stream!r}")
    if ":" in product:
        raise WireFormatError(f"not a Coinbase product id in {stream!r}")
    return StreamName(symbol=product, channel=channel)


def subscribe_group(stream: str) -> str:
    """ "You can only subscribe to one channel per subscription message": the channel."""
    return stream.partition(":")[0]


def valid_product(product: str) -> bool:
    """``BASE-QUOTE`` of upper-case letters and digits (``BTC-USD``, ``ETH-EUR``)."""
    base, dash, quote = product.partition("-")
    return (
        bool(dash) and base.isalnum() and quote.isalnum() and product.upper() == product
    ) and "-" not in quote


def path_for(kind: str) -> str:
    """``public`` -> ``/`` (the market-data host's root)."""
    if kind != "public":
        raise WireFormatError(f"Coinbase has no {kind!r} WebSocket on the market-data host")
    return "/"


def parse_endpoint(path: str, query: str = "") -> Endpoint:
    """What a connection path selects; WireFormatError for a path Coinbase does not serve."""
    return endpoint_at(PATHS, "Coinbase", path)


# --- time ---------------------------------------------------------------------------------------


def rfc3339(ms: int | float) -> str:
    """Epoch milliseconds as Coinbase writes ``timestamp`` (nanosecond digits)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def parse_time_ms(value: Any) -> int | None:
    """``2023-02-09T20:19:35.39625135Z`` (any number of fraction digits) -> epoch ms."""
    if not isinstance(value, str) or not value.endswith("Z") or "T" not in value:
        return None
    head, dot, frac = value[:-1].partition(".")
    try:
        dt = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    if dot and not frac.isdigit():
        return None
    ms = int(dt.timestamp() * 1000)
    return ms + (int((frac + "000")[:3]) if frac else 0)


# --- client side (the gateway) ------------------------------------------------------------------


def _request(kind: str, streams: list[str]) -> str:
    if not streams:
        raise WireFormatError("a Coinbase subscribe names at least one product")
    parts = [parse_stream(s) for s in streams]
    channel = parts[0].channel
    if any(p.channel != channel for p in parts):
        raise WireFormatError("one Coinbase subscribe message carries one channel")
    if channel == FUTURES_BALANCE:
        return dumps({"type": kind, "channel": channel})
    return dumps({"type": kind, "product_ids": [p.symbol for p in parts], "channel": channel})


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def build_jwt(key_name: str, private_pem: str, now_s: int, nonce: str) -> str:
    """An ES256 JWT for one WebSocket message, as the official SDK builds it: header
    ``{"alg":"ES256","kid":<key name>,"nonce":..,"typ":"JWT"}``, claims ``{"sub":<key name>,
    "iss":"cdp","nbf":now,"exp":now+120}`` (no ``uri``: WebSocket JWTs are built with no
    request method or path)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise WireFormatError("a Coinbase CDP key for ES256 is an EC (P-256) private key")
    header = {"alg": "ES256", "kid": key_name, "nonce": nonce, "typ": "JWT"}
    claims = {"sub": key_name, "iss": JWT_ISSUER, "nbf": now_s, "exp": now_s + JWT_LIFETIME_S}
    signing_input = f"{_b64url(dumps(header).encode())}.{_b64url(dumps(claims).encode())}"
    der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, str] | None:
    """``(header, claims, raw signature, signing input)`` of a compact JWT, or None."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        header = json.loads(_b64url_decode(pieces[0]))
        claims = json.loads(_b64url_decode(pieces[1]))
        signature = _b64url_decode(pieces[2])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return header, claims, signature, f"{pieces[0]}.{pieces[1]}"


def verify_es256(public_pem: str, signing_input: str, signature: bytes) -> bool:
    """Whether ``signature`` (raw r || s, 64 bytes) signs ``signing_input`` under the EC
    public key ``public_pem``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(public_pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def build_authenticated(kind: str, streams: list[str], jwt: str) -> str:
    """A subscribe / unsubscribe carrying ``jwt``: ``{"type":..,"product_ids":[..],
    "channel":"user","jwt":..}``."""
    doc = json.loads(_request(kind, streams))
    doc["jwt"] = jwt
    return dumps(doc)


def build_subscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"type":"subscribe","product_ids":[..],"channel":"market_trades"}`` (Coinbase has no
    request id: ``request_id`` is not sent)."""
    return _request("subscribe", streams)


def build_unsubscribe(streams: list[str], request_id: RequestId) -> str:
    """``{"type":"unsubscribe","product_ids":[..],"channel":..}``."""
    return _request("unsubscribe", streams)


def build_heartbeats_subscribe(request_id: RequestId = None) -> str:
    """``{"type":"subscribe","channel":"heartbeats"}``: one message a second keeps the
    connection open ("Most channels close within 60-90 seconds if no updates are sent")."""
    return dumps({"type": "subscribe", "channel": HEARTBEATS})


def build_ping(request_id: RequestId = None) -> str | None:
    """No client ping op: None (heartbeats come from the ``heartbeats`` channel)."""
    return None


def build_login(credentials: ApiCredentials, now_ms: int, request_id: RequestId) -> str:
    """Coinbase has no login frame: every authenticated subscribe carries its own JWT."""
    raise WireFormatError("Coinbase authenticated channels (JWT ES256 per subscribe): not spoken")


def _ack_streams(events: Any) -> tuple[str, ...]:
    out: list[str] = []
    for event in events if isinstance(events, list) else ():
        subs = event.get("subscriptions") if isinstance(event, dict) else None
        if not isinstance(subs, dict):
            continue
        for channel, products in subs.items():
            if channel == FUTURES_BALANCE and isinstance(products, list):
                out.append(FUTURES_BALANCE)
                continue
            if channel in PRODUCTLESS_CHANNELS or not isinstance(products, list):
                continue
            out += [f"{channel}:{p}" for p in products if isinstance(p, str)]
    return tuple(out)


def _product_of(channel: str, event: dict[str, Any]) -> str | None:
    if channel == "level2":
        product = event.get("product_id")
        return product if isinstance(product, str) else None
    key = {"market_trades": "trades", "ticker": "tickers", "ticker_batch": "tickers",
           "candles": "candles"}.get(channel)  # fmt: skip
    items = event.get(key) if key else None
    if isinstance(items, list) and items and isinstance(items[0], dict):
        product = items[0].get("product_id")
        return product if isinstance(product, str) and product else None
    return None


def _trade_seq(events: list[Any]) -> int | None:
    ids = []
    for event in events:
        for trade in event.get("trades", ()) if isinstance(event, dict) else ():
            tid = trade.get("trade_id") if isinstance(trade, dict) else None
            if isinstance(tid, str) and tid.isdigit():
                ids.append(int(tid))
    return max(ids) if ids else None


def parse_server_message(text: str, default_stream: str | None = None) -> ServerEvent:
    """Classify a frame from Coinbase."""
    obj = loads_object(text)
    if obj is None:
        return Unknown(text)
    if obj.get("type") == "error":
        msg = obj.get("message")
        reason = obj.get("reason")
        detail = f"{msg}: {reason}" if reason else str(msg or "")
        return Error(None, "error", detail, obj)
    wire = obj.get("channel")
    events = obj.get("events")
    if not isinstance(wire, str) or not isinstance(events, list):
        return Unknown(text)
    if wire == HEARTBEATS:
        return Notice("heartbeat", raw=obj)
    if wire == "subscriptions":
        return Ack(None, "subscribe", _ack_streams(events), obj)
    channel = SUBSCRIBED_CHANNEL.get(wire, wire)
    if channel == USER and events and isinstance(events[0], dict):
        orders = events[0].get("orders")
        first = orders[0] if isinstance(orders, list) and orders else None
        product = first.get("product_id") if isinstance(first, dict) else None
        if not isinstance(product, str):
            return Unknown(text)
        return Data(f"{USER}:{product}", None, parse_time_ms(obj.get("timestamp")), obj, text)
    if channel == FUTURES_BALANCE and events and isinstance(events[0], dict):
        if not isinstance(events[0].get("fcm_balance_summary"), dict):
            return Unknown(text)
        return Data(FUTURES_BALANCE, None, parse_time_ms(obj.get("timestamp")), obj, text)
    if channel not in PUBLIC_CHANNELS or not events or not isinstance(events[0], dict):
        return Unknown(text)
    product = _product_of(channel, events[0])
    if product is None:
        return Unknown(text)
    seq = _trade_seq(events) if channel == "market_trades" else None
    return Data(f"{channel}:{product}", seq, parse_time_ms(obj.get("timestamp")), obj, text)


def sequence_of(ev: ServerEvent) -> int | None:
    """The connection's ``sequence_num`` of a parsed message (None for error frames and what
    does not carry one)."""
    obj: Any = None
    if isinstance(ev, Data):
        obj = ev.payload
    elif isinstance(ev, Ack):
        obj = ev.result
    elif isinstance(ev, Notice):
        obj = ev.raw
    value = obj.get("sequence_num") if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def is_snapshot(payload: Any) -> bool:
    """Whether a level2 (or other) message is a ``snapshot`` event."""
    events = payload.get("events") if isinstance(payload, dict) else None
    if not isinstance(events, list) or not events or not isinstance(events[0], dict):
        return False
    return events[0].get("type") == "snapshot"


def levels_of(payload: Any) -> tuple[list[list[str]], list[list[str]]]:
    """A level2 message's ``updates`` as (bids, asks) ``[price_level, new_quantity]`` lists
    (a quantity of 0 removes the level); malformed entries are skipped."""
    bids: list[list[str]] = []
    asks: list[list[str]] = []
    events = payload.get("events") if isinstance(payload, dict) else None
    for event in events if isinstance(events, list) else ():
        for item in event.get("updates", ()) if isinstance(event, dict) else ():
            if not isinstance(item, dict):
                continue
            price, qty, side = item.get("price_level"), item.get("new_quantity"), item.get("side")
            if isinstance(price, str) and isinstance(qty, str):
                (bids if side == "bid" else asks).append([price, qty])
    return bids, asks


# --- server side (the mock exchange) ------------------------------------------------------------


def now_rfc3339() -> str:
    """The wall clock as Coinbase writes ``timestamp``."""
    return rfc3339(datetime.now(tz=UTC).timestamp() * 1000)


def _envelope(channel: str, events: list[Any], timestamp: str | None = None) -> str:
    """``{"channel":..,"client_id":"","timestamp":..,"sequence_num":0,"events":[..]}`` (the
    connection stamps ``sequence_num``: `SEQ_MARK`)."""
    return (
        f'{{"channel":{dumps(channel)},"client_id":"","timestamp":"{timestamp or now_rfc3339()}",'
        f"{SEQ_MARK}"
        f'"events":{dumps(events)}}}'
    )


def stamp(text: str, sequence_num: int) -> str:
    """``text`` with the connection's ``sequence_num`` (frames without the mark unchanged)."""
    return text.replace(SEQ_MARK, f'"sequence_num":{sequence_num},', 1)


def build_subscriptions(subscriptions: dict[str, list[str]]) -> str:
    """The ``subscriptions`` message: every channel the connection holds with its products."""
    return _envelope("subscriptions", [{"subscriptions": subscriptions}])


def build_heartbeat(counter: int, now_ms: int | None = None) -> str:
    """One ``heartbeats`` message (``heartbeat_counter`` as a string, as documented)."""
    ms = now_ms if now_ms is not None else datetime.now(tz=UTC).timestamp() * 1000
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    current = dt.strftime("%Y-%m-%d %H:%M:%S.%f") + "000 +0000 UTC m=+0.000000001"
    event = {"current_time": current, "heartbeat_counter": str(counter)}
    return _envelope(HEARTBEATS, [event], rfc3339(ms))


def build_error(message: str, reason: str | None = None) -> str:
    """``{"type":"error","message":..}`` (with ``reason`` where one is given)."""
    body: dict[str, Any] = {"type": "error", "message": message}
    if reason:
        body["reason"] = reason
    return dumps(body)


def parse_client_message(text: str) -> ClientRequest:
    """Classify a client frame (the mock's side). ``heartbeats``/``status`` subscriptions and
    a whole-channel unsubscribe (no ``product_ids``) are `OtherRequest`s whose method is the
    request type and whose params are the channel."""
    obj = loads_object(text)
    if obj is None:
        return InvalidRequest(None, "error", FAILED, build_error(FAILED, "malformed JSON"))
    kind = obj.get("type")
    channel = obj.get("channel")
    if kind not in ("subscribe", "unsubscribe"):
        reason = f"unknown type {kind!r}" if kind else "type is required"
        return InvalidRequest(None, "error", FAILED, build_error(FAILED, reason))
    if not isinstance(channel, str) or not channel:
        return InvalidRequest(None, kind, FAILED, build_error(FAILED, "No channels provided"))
    if channel in PRIVATE_CHANNELS and not obj.get("jwt"):
        return InvalidRequest(None, kind, AUTH_FAILURE, build_error(AUTH_FAILURE))
    if channel in PRODUCTLESS_CHANNELS:
        return OtherRequest(None, kind, channel)
    if channel == FUTURES_BALANCE:  # products, if any, are not needed and not read
        return SubscribeRequest(None, (FUTURES_BALANCE,), unsubscribe=kind == "unsubscribe")
    if channel not in PUBLIC_CHANNELS | {USER}:
        reason = f"channel {channel} is not valid"
        return InvalidRequest(None, kind, FAILED, build_error(FAILED, reason))
    products = obj.get("product_ids")
    if kind == "unsubscribe" and not products:
        return OtherRequest(None, kind, channel)  # "unsubscribe from a channel entirely"
    if not isinstance(products, list) or not products:
        reason = "No product ids provided"
        return InvalidRequest(None, kind, FAILED, build_error(FAILED, reason))
    if not all(isinstance(p, str) and p for p in products):
        return InvalidRequest(None, kind, FAILED, build_error(FAILED, "invalid product_ids"))
    streams = tuple(stream_name(p, channel) for p in products)
    return SubscribeRequest(None, streams, unsubscribe=kind == "unsubscribe")


def _price(seq: int) -> str:
    return f"{42000 + (seq % 200) / 100:.2f}"


def build_trade(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``market_trades`` message: ``trade_id`` = seq (consecutive per product)."""
    product = parse_stream(stream).symbol
    trade = {"trade_id": str(seq), "product_id": product, "price": _price(seq),
             "size": f"{0.001 * (1 + seq % 997):.8f}", "side": "BUY" if seq % 2 else "SELL",
             "time": rfc3339(event_time_ms)}  # fmt: skip
    return _envelope("market_trades", [{"type": kind, "trades": [trade]}], rfc3339(event_time_ms))


def build_ticker(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``ticker`` message with every documented field (price, volume_24_h, low/high 24 h
    and 52 w, price_percent_chg_24_h, best bid/ask and their quantities)."""
    product = parse_stream(stream).symbol
    last = 42000 + (seq % 200) / 100
    ticker = {"type": "ticker", "product_id": product, "price": f"{last:.2f}",
              "volume_24_h": f"{1000 + (seq % 500) / 10:.8f}", "low_24_h": "41800.00",
              "high_24_h": "42300.00", "low_52_w": "15460.00", "high_52_w": "73750.00",
              "price_percent_chg_24_h": f"{(last - 41900.0) / 41900.0 * 100:.8f}",
              "best_bid": f"{last - 0.01:.2f}", "best_bid_quantity": "0.50000000",
              "best_ask": f"{last + 0.01:.2f}", "best_ask_quantity": "1.25000000"}  # fmt: skip
    channel = parse_stream(stream).channel
    events = [{"type": kind, "tickers": [ticker]}]
    return _envelope(channel, events, rfc3339(event_time_ms))


def build_candle(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``candles`` message: the five-minute bar the event falls in (``start`` in UNIX
    seconds, open/high/low/close/volume as strings)."""
    product = parse_stream(stream).symbol
    start = event_time_ms // 1000 - (event_time_ms // 1000) % CANDLE_SECONDS
    close = 42000 + (seq % 200) / 100
    candle = {"start": str(start), "high": f"{max(42001.0, close):.2f}",
              "low": f"{min(42000.0, close):.2f}", "open": "42000.00", "close": f"{close:.2f}",
              "volume": f"{0.25 * (1 + seq % 50):.8f}", "product_id": product}  # fmt: skip
    return _envelope("candles", [{"type": kind, "candles": [candle]}], rfc3339(event_time_ms))


def build_level2(
    stream: str,
    bids: list[list[str]],
    asks: list[list[str]],
    event_time_ms: int,
    kind: str = "update",
) -> str:
    """One ``l2_data`` message: ``{"type":"snapshot"|"update","product_id":..,"updates":[{"side":
    "bid"|"offer","event_time":..,"price_level":..,"new_quantity":..}]}``; a snapshot's
    ``event_time`` is the epoch (as in Coinbase's example)."""
    product = parse_stream(stream).symbol
    when = "1970-01-01T00:00:00Z" if kind == "snapshot" else rfc3339(event_time_ms)
    updates = [{"side": "bid", "event_time": when, "price_level": p, "new_quantity": q}
               for p, q, *_ in bids]  # fmt: skip
    updates += [{"side": "offer", "event_time": when, "price_level": p, "new_quantity": q}
                for p, q, *_ in asks]  # fmt: skip
    event = {"type": kind, "product_id": product, "updates": updates}
    return _envelope(WIRE_CHANNEL["level2"], [event], rfc3339(event_time_ms))


def build_data(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One message of a non-book channel (level2: `build_level2` from the mock's book)."""
    channel = parse_stream(stream).channel
    if channel == "market_trades":
        return build_trade(stream, seq, event_time_ms, kind)
    if channel in ("ticker", "ticker_batch"):
        return build_ticker(stream, seq, event_time_ms, kind)
    if channel == "candles":
        return build_candle(stream, seq, event_time_ms, kind)
    raise WireFormatError(f"no data builder for {stream!r}")


def loads(text: str) -> Any:
    """JSON of a Coinbase frame (tests)."""
    return json.loads(text)


def build_user(stream: str, seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``user`` message: an event listing one order of the stream's product (``order_id``
    = seq), the fields of Coinbase's user channel."""
    product = parse_stream(stream).symbol
    order = {"order_id": f"order-{seq}", "client_order_id": f"client-{seq}",
             "cumulative_quantity": "0" if seq % 3 else "0.001",
             "leaves_quantity": "0.001" if seq % 3 else "0", "avg_price": "0",
             "total_fees": "0", "status": "OPEN" if seq % 3 else "FILLED",
             "product_id": product, "creation_time": rfc3339(event_time_ms),
             "order_side": "BUY" if seq % 2 else "SELL", "order_type": "Limit",
             "cancel_reason": "", "reject_reason": "", "product_type": "SPOT",
             "time_in_force": "GOOD_UNTIL_CANCELLED"}  # fmt: skip
    return _envelope(USER, [{"type": kind, "orders": [order]}], rfc3339(event_time_ms))


def build_futures_balance_summary(seq: int, event_time_ms: int, kind: str = "update") -> str:
    """One ``futures_balance_summary`` message: an event with the account's
    ``fcm_balance_summary`` (the fields of the REST balance summary, as strings, with the
    intraday and overnight margin window measures)."""
    usd = 10000 + (seq % 500)
    hold = (seq % 7) * 10

    def window(kind_: str, level: str) -> dict[str, str]:
        return {"margin_window_type": kind_, "margin_level": level,
                "initial_margin": f"{hold * 2}", "maintenance_margin": f"{hold}",
                "liquidation_buffer_percentage": "1000", "total_hold": f"{hold}",
                "futures_buying_power": f"{usd - hold}"}  # fmt: skip

    summary = {"futures_buying_power": f"{usd - hold}", "total_usd_balance": f"{usd * 2}",
               "cbi_usd_balance": f"{usd}", "cfm_usd_balance": f"{usd}",
               "total_open_orders_hold_amount": f"{hold}", "unrealized_pnl": "0",
               "daily_realized_pnl": "0", "initial_margin": f"{hold * 2}",
               "available_margin": f"{usd - hold * 2}", "liquidation_threshold": f"{hold}",
               "liquidation_buffer_amount": f"{usd - hold}",
               "liquidation_buffer_percentage": "1000",
               "intraday_margin_window_measure": window("FCM_MARGIN_WINDOW_TYPE_INTRADAY",
                                                        "MARGIN_LEVEL_TYPE_BASE"),
               "overnight_margin_window_measure": window("FCM_MARGIN_WINDOW_TYPE_OVERNIGHT",
                                                         "MARGIN_LEVEL_TYPE_BASE")}  # fmt: skip
    event = {"type": kind, "fcm_balance_summary": summary}
    return _envelope(FUTURES_BALANCE, [event], rfc3339(event_time_ms))
