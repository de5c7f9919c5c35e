"""Binance spot on the mock: stream host (``/ws``, ``/stream``) and the WebSocket API.

The WebSocket API (``/ws-api/v3``) serves user data: ``session.logon`` verifies an Ed25519
signature with the account's public key (other key types are refused, as on Binance), then
``userDataStream.subscribe`` subscribes the logged-on account; ``userDataStream.subscribe.signature``
subscribes any account whose HMAC, RSA or Ed25519 signature verifies, on any session. One active
subscription per account per connection; events come from the account's private feed.
"""

from __future__ import annotations

from aiohttp import web

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    LoginRequest,
    OtherRequest,
    PingRequest,
    RequestId,
    SubscribeRequest,
    dumps,
)
from connquota.mockexchange.books import BinanceBook
from connquota.mockexchange.sessions.base import DialectSession, wall_ms
from connquota.mockexchange.settings import TestAccount

TOO_MANY_PARAMS = "Invalid request: too many parameters"
INVALID_KEY = "Invalid API-key, IP, or permissions for action."
INVALID_SIGNATURE = "Signature for this request is not valid."
ALREADY_SUBSCRIBED = "A user data stream subscription for this account is already active."
TOO_MANY_SUBSCRIPTIONS = "Too many user data stream subscriptions on this session."
MAX_ACTIVE_SUBSCRIPTIONS = 1000
"""Active user-data subscriptions per session (web-socket-api.md)."""
MAX_LIFETIME_SUBSCRIPTIONS = 65535
"""User-data subscriptions over a session's lifetime (web-socket-api.md)."""
RETIRED_PATH = "USD-M's legacy market-data URLs were retired on 2026-04-23; use /public or /market"
USER_DATA_PREFIX = "userData:"
"""The mock's feed of an account's user data is ``userData:<account>``."""


class BinanceSession(DialectSession):
    """Binance spot: one session per connection; ``combined`` may change with SET_PROPERTY."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.combined = self.endpoint.combined
        self.api = self.endpoint.kind == "api"
        self.logon: TestAccount | None = None
        self.logon_ms: int | None = None
        self.user_subs: dict[str, int] = {}
        """Account -> its user-data subscription id on this session."""
        self.next_subscription_id = 0

    @property
    def variant(self) -> str:
        if self.api:
            return f"api:{self.conn.conn_id}"  # subscription ids are per session
        return "combined" if self.combined else "raw"

    def handshake_error(self) -> web.Response | None:
        route, _ = binance.split_route(self.conn.path)
        if self.futures and not route:
            # "Legacy URLs decommissioned 2026-04-23": market data lives under /public, /market
            return web.Response(status=404, text=f"{self.conn.path}: {RETIRED_PATH}")
        if route and not self.futures:
            return web.Response(status=404, text=f"Binance spot serves no {route} path")
        streams = self.endpoint.initial_streams
        if not all(binance.is_valid_stream_for(s, self.futures) for s in streams):
            return web.Response(
                status=400, text=binance.build_error(2, "Invalid request: invalid stream", None)
            )
        if self.mx.over_stream_limit(self.conn, len(set(streams)), "handshake refused (HTTP 400)"):
            return web.Response(status=400, text=binance.build_error(2, TOO_MANY_PARAMS, None))
        return None

    async def on_open(self) -> None:
        if self.endpoint.initial_streams:
            self.mx.subscribe(self.conn, self._on_route(list(self.endpoint.initial_streams)))

    def _on_route(self, streams: list[str]) -> list[str]:
        """The streams this connection's USD-M route serves (all of them on spot). A stream on
        the wrong route (depth on /market, aggTrade on /public) is acknowledged and never
        delivers, as clients report of Binance."""
        if not self.futures:
            return streams
        route, _ = binance.split_route(self.conn.path)
        return [s for s in streams if binance.futures_route(s) == route]

    async def on_text(self, text: str) -> None:
        if self.api:
            await self._on_api_text(text)
            return
        request = binance.parse_client_message(text, futures=self.futures)
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
        self.mx.subscribe(self.conn, self._on_route(streams))
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
            rid = request.request_id
            if request.method == "userDataStream.subscribe":
                if self.logon is None:
                    self.send(binance.build_api_error(rid, 401, -2015, INVALID_KEY))
                    return
                self._subscribe_user_data(self.logon.account, rid)
            elif request.method == "userDataStream.unsubscribe":
                self._unsubscribe_user_data(request.params, rid)
            else:  # session.status
                result = {
                    "apiKey": self.logon.api_key if self.logon else None,
                    "authorizedSince": self.logon_ms,
                    "connectedSince": self.mx.wall_ms_of(self.conn.opened_at),
                    "returnRateLimits": False,
                    "serverTime": wall_ms(),
                    "userDataStream": bool(self.user_subs),
                }
                self.send(binance.build_api_response(rid, result))

    def _on_signed(self, request: LoginRequest) -> None:
        """session.logon (Ed25519 keys only) or userDataStream.subscribe.signature (any key)."""
        rid = request.request_id
        fields = dict(request.fields)
        method = fields.pop("method")
        account = self.mx.settings.account_for_key(request.api_key)
        if account is None:
            self.send(binance.build_api_error(rid, 401, -2015, INVALID_KEY))
            return
        kind = binance.key_type(account.public_key) if account.public_key else binance.KEY_HMAC
        if method == "session.logon" and kind != binance.KEY_ED25519:
            # "Only Ed25519 keys are supported for this feature." (the error is the mock's pick)
            self.send(binance.build_api_error(rid, 401, -2015, INVALID_KEY))
            return
        key = account.public_key or account.secret
        if not binance.verify(kind, key, fields, str(fields.get("signature", ""))):
            self.send(binance.build_api_error(rid, 400, -1022, INVALID_SIGNATURE))
            return
        now = wall_ms()
        try:
            timestamp = int(fields["timestamp"])
            recv_window = int(fields.get("recvWindow", binance.RECV_WINDOW_DEFAULT_MS))
        except (TypeError, ValueError):
            timestamp, recv_window = -1, 0
        if timestamp > 10**14:  # microseconds
            timestamp //= 1000
        window = min(recv_window, binance.RECV_WINDOW_MAX_MS)
        if not (timestamp < now + 1000 and now - timestamp <= window):
            msg = "Timestamp for this request is outside of the recvWindow."
            self.send(binance.build_api_error(rid, 400, -1021, msg))
            return
        if self.conn.account is None:
            refused = self.mx.login(self.conn, account, "error -1034 (HTTP 429)")
            if refused is not None:
                msg = f"Too many concurrent connections; current limit is '{refused}'."
                self.send(binance.build_api_error(rid, 429, -1034, msg))
                return
        if method == "session.logon":
            self.logon, self.logon_ms = account, now
            connected = int(self.mx.wall_ms_of(self.conn.opened_at))
            self.send(binance.build_logon_result(rid, request.api_key, now, connected, now))
        else:
            self._subscribe_user_data(account.account, rid)

    def _subscribe_user_data(self, account: str, request_id: RequestId) -> None:
        if account in self.user_subs:
            # "1 active subscription per account per connection" (the reply is the mock's)
            self.mx.violate_rule(
                self.conn, "userDataSubscriptionsPerAccount", LimitScope.ACCOUNT, 2, 1,
                "error -1000 (subscription refused)", account,
            )  # fmt: skip
            self.send(binance.build_api_error(request_id, 400, -1000, ALREADY_SUBSCRIBED))
            return
        if (
            len(self.user_subs) >= MAX_ACTIVE_SUBSCRIPTIONS
            or self.next_subscription_id >= MAX_LIFETIME_SUBSCRIPTIONS
        ):
            self.mx.violate_rule(
                self.conn, "userDataSubscriptionsPerSession", LimitScope.CONNECTION,
                len(self.user_subs) + 1, MAX_ACTIVE_SUBSCRIPTIONS,
                "error -1000 (subscription refused)", account,
            )  # fmt: skip
            self.send(binance.build_api_error(request_id, 400, -1000, TOO_MANY_SUBSCRIPTIONS))
            return
        subscription_id = self.next_subscription_id
        self.next_subscription_id += 1
        self.user_subs[account] = subscription_id
        self.mx.subscribe(self.conn, [USER_DATA_PREFIX + account], private=True)
        self.send(binance.build_api_response(request_id, {"subscriptionId": subscription_id}))

    def _unsubscribe_user_data(self, params: object, request_id: RequestId) -> None:
        wanted = params.get("subscriptionId") if isinstance(params, dict) else None
        for account, subscription_id in list(self.user_subs.items()):
            if wanted is None or wanted == subscription_id:
                del self.user_subs[account]
                self.mx.unsubscribe(self.conn, [USER_DATA_PREFIX + account])
        self.send(binance.build_api_response(request_id, {}))

    def on_key_revoked(self, account: str) -> bool:
        """Binance tells a session whose key was revoked with a -2015 error (``id: null``) and
        its user data stops."""
        if not self.api or (account not in self.user_subs and self.conn.account != account):
            return False
        self.send(binance.build_api_error(None, 401, -2015, INVALID_KEY))
        if account in self.user_subs:
            del self.user_subs[account]
            self.mx.unsubscribe(self.conn, [USER_DATA_PREFIX + account])
        if self.logon is not None and self.logon.account == account:
            self.logon = None
        return True

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if stream.startswith(USER_DATA_PREFIX):
            subscription_id = self.user_subs.get(stream[len(USER_DATA_PREFIX) :], 0)
            return binance.build_user_data_event(subscription_id, seq, event_time_ms)
        depth = binance.depth_kind(stream)
        payload: object
        if depth is not None:
            payload = self._depth_payload(stream, seq, event_time_ms, *depth)
        else:
            payload = self._market_payload(stream, seq, event_time_ms)
            if payload is None and self.futures:
                payload = binance.build_futures_payload(stream, seq, event_time_ms)
            elif payload is None:
                return binance.build_data(stream, seq, event_time_ms, self.combined)
        if self.combined:
            return dumps({"stream": stream, "data": payload})
        return dumps(payload)

    def _depth_payload(
        self, stream: str, seq: int, event_time_ms: int, kind: str, levels: int
    ) -> dict[str, object]:
        """A depth event from the symbol's book (books.BinanceBook): diffs numbered by update
        id (``U`` = the stream's previous ``u`` + 1), partial books with ``lastUpdateId``."""
        symbol = stream.split("@", 1)[0].upper()
        book = self.mx.books.binance(symbol)
        futures = self.futures
        if kind == "partial" and not futures:
            last_id, bids, asks = book.partial(stream, seq, levels)
            return binance.build_partial_depth(last_id, bids, asks)
        if kind == "partial":
            # USD-M partial depth: a depthUpdate-shaped event carrying the top levels
            event = book.diff(stream, seq)
            bids, asks = book.top_bids(levels), book.top_asks(levels)
        else:
            event = book.diff(stream, seq)
            bids, asks = event.bids, event.asks
        return binance.build_depth_update(
            symbol, event.first_id, event.final_id, bids, asks, event_time_ms,
            event.prev_final_id if futures else None,
        )  # fmt: skip

    def _market_payload(self, stream: str, seq: int, event_time_ms: int) -> object | None:
        """Spot's trade, aggTrade, bookTicker, ticker, miniTicker and kline payloads with every
        documented field, priced from the symbol's book (`books.BinanceBook`); None for other
        streams. The event of ``seq`` is the same for every connection that asks for it."""
        if stream.startswith("!") and not self.futures:
            return self._market_wide(stream, seq, event_time_ms)
        if stream.startswith("!") or "@" not in stream:
            return None
        symbol, channel = stream.split("@", 1)
        channel = channel.split("@", 1)[0] if channel.startswith("kline_") else channel
        if channel not in MARKET_CHANNELS and not channel.startswith("kline_"):
            return None
        if self.futures and channel in ("aggTrade", "markPrice"):
            return None
        symbol = symbol.upper()
        book = self.mx.books.binance(symbol)
        cached = book.payloads.get(stream)
        if cached is not None and cached[0] == seq:
            return cached[1]
        payload = market_payload(book, stream, channel, seq, event_time_ms, cached)
        book.payloads[stream] = (seq, payload)
        return payload

    def _market_wide(self, stream: str, seq: int, event_time_ms: int) -> object | None:
        """``!miniTicker@arr`` and ``!ticker_<window>@arr``: an array of the symbols' payloads
        ("Same as <symbol>@miniTicker payload", one per symbol)."""
        channel = stream[1:].split("@", 1)[0]
        if channel != "miniTicker" and not channel.startswith("ticker_"):
            return None
        cache = self.mx.books.binance(ARR_SYMBOLS[0]).payloads
        cached = cache.get(stream)
        if cached is not None and cached[0] == seq:
            return cached[1]["arr"]
        items = []
        for symbol in ARR_SYMBOLS:
            book = self.mx.books.binance(symbol)
            items.append(market_payload(book, stream, channel, seq, event_time_ms, None))
        cache[stream] = (seq, {"arr": items})
        return items

    @property
    def futures(self) -> bool:
        """Whether this mock serves Binance USD-M futures (fstream) rather than spot."""
        return binance.is_futures_domain(self.mx.profile.domain)

    def notice(self) -> str | None:
        return binance.build_shutdown_notice(wall_ms(), self.combined, api=self.api)

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        # "A connection that goes beyond the limit will be disconnected"
        await self.mx.close_conn(self.conn, 1008, "Too many messages")
        return True


MARKET_CHANNELS = ("trade", "aggTrade", "bookTicker", "ticker", "miniTicker", "ticker_1h",
                   "ticker_4h", "ticker_1d")  # fmt: skip
ARR_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
"""Symbols in the mock's market-wide arrays (``!miniTicker@arr``, ``!ticker_1h@arr``)."""
INTERVAL_MS = {"1s": 1000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000,
               "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000,
               "6h": 21_600_000, "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000,
               "3d": 259_200_000, "1w": 604_800_000, "1M": 2_592_000_000}  # fmt: skip
"""Kline intervals in ms (``1M`` as 30 days: the mock does not follow calendar months)."""
DAY_MS = 86_400_000
WINDOW_MS = {"1h": 3_600_000, "4h": 14_400_000, "1d": DAY_MS}


def _num(value: float) -> str:
    return f"{value:.8f}"


def market_payload(
    book: BinanceBook,
    stream: str,
    channel: str,
    seq: int,
    event_time_ms: int,
    previous: tuple[int, dict[str, object]] | None,
) -> dict[str, object]:
    """One spot payload (web-socket-streams.md) priced from ``book``: trades at the best ask
    (the buyer takes: ``m`` false) or the best bid (``m`` true); tickers around the book's mid
    with consistent open/high/low/last, volumes and trade counts; a kline per interval whose
    last event in the interval has ``x`` true (the first event past it closes it)."""
    symbol = book.symbol
    bid, ask = book.best()
    buyer_maker = seq % 2 == 1
    price = bid if buyer_maker else ask
    qty = _num(0.001 * (1 + seq % 50))
    if channel == "trade":
        return {"e": "trade", "E": event_time_ms, "s": symbol, "t": seq, "p": price, "q": qty,
                "T": event_time_ms, "m": buyer_maker, "M": True}  # fmt: skip
    if channel == "aggTrade":
        return {"e": "aggTrade", "E": event_time_ms, "s": symbol, "a": seq, "p": price,
                "q": qty, "f": seq, "l": seq, "T": event_time_ms, "m": buyer_maker,
                "M": True}  # fmt: skip
    if channel == "bookTicker":
        book.diff(stream, seq)  # the best levels move: a push per change
        bids, asks = book.top_bids(1), book.top_asks(1)
        return {"u": book.update_id, "s": symbol, "b": bids[0][0], "B": bids[0][1],
                "a": asks[0][0], "A": asks[0][1]}  # fmt: skip
    last = (float(bid) + float(ask)) / 2
    open_ = last * 0.98
    high, low = max(last, open_) * 1.01, min(last, open_) * 0.99
    volume = 1000.0 + seq % 1000
    quote = volume * (open_ + last) / 2
    if channel == "miniTicker":
        return {"e": "24hrMiniTicker", "E": event_time_ms, "s": symbol, "c": _num(last),
                "o": _num(open_), "h": _num(high), "l": _num(low), "v": _num(volume),
                "q": _num(quote), "L": seq}  # fmt: skip
    if channel.startswith("ticker_"):  # rolling window: O on a minute, C the update time
        window = channel[len("ticker_") :]
        first = max(0, seq - 18150)
        return {"e": f"{window}Ticker", "E": event_time_ms, "s": symbol,
                "p": _num(last - open_), "P": f"{(last - open_) / open_ * 100:.3f}",
                "o": _num(open_), "h": _num(high), "l": _num(low), "c": _num(last),
                "w": _num(quote / volume), "v": _num(volume), "q": _num(quote),
                "O": event_time_ms - event_time_ms % 60_000 - WINDOW_MS[window],
                "C": event_time_ms, "F": first, "L": seq, "n": seq - first + 1}  # fmt: skip
    if channel == "ticker":
        first = max(0, seq - 18150)
        return {"e": "24hrTicker", "E": event_time_ms, "s": symbol,
                "p": _num(last - open_), "P": f"{(last - open_) / open_ * 100:.3f}",
                "w": _num(quote / volume), "x": _num(open_ * 0.999), "c": _num(last),
                "Q": qty, "b": bid, "B": book.top_bids(1)[0][1], "a": ask,
                "A": book.top_asks(1)[0][1], "o": _num(open_), "h": _num(high),
                "l": _num(low), "v": _num(volume), "q": _num(quote),
                "O": event_time_ms - DAY_MS, "C": event_time_ms, "F": first, "L": seq,
                "n": seq - first + 1}  # fmt: skip
    interval = channel[len("kline_") :]
    span = INTERVAL_MS[interval]
    start = event_time_ms - event_time_ms % span
    prior = previous[1].get("k") if previous is not None else None
    closed = False
    if isinstance(prior, dict) and not prior.get("x") and int(str(prior["t"])) < start:
        # the first event past the interval's end closes the kline it was building
        start, closed = int(str(prior["t"])), True
    kline = {"t": start, "T": start + span - 1, "s": symbol, "i": interval, "f": seq,
             "L": seq, "o": _num(open_), "c": _num(last), "h": _num(high), "l": _num(low),
             "v": _num(volume), "n": 1 + seq % 100, "x": closed, "q": _num(quote),
             "V": _num(volume / 2), "Q": _num(quote / 2), "B": "0"}  # fmt: skip
    if isinstance(prior, dict) and int(str(prior["t"])) == start:
        kline["f"] = prior["f"]
        kline["n"] = int(str(prior["n"])) + 1
    return {"e": "kline", "E": event_time_ms, "s": symbol, "k": kline}
