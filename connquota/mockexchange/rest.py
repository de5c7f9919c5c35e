"""Public REST market-data endpoints that exchange client libraries call before they open a
WebSocket (market lists, server time), served in the exchange's own shapes.

OKX (`/api/v5/public/instruments`, `/api/v5/public/time`) and Bybit (`/v5/market/instruments-info`,
`/v5/market/time`): spot instruments in their documented shapes and envelopes (the functions
below cite the pages); order-book snapshots (`/api/v5/market/books`, `/v5/market/orderbook`)
read the book the mock's book stream pushes, numbered as its pushes (OKX `seqId`, Bybit `u`/`seq`).

Binance spot (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/general-endpoints):
`GET /api/v3/ping` -> `{}`, `GET /api/v3/time` -> `{"serverTime": ms}`,
`GET /api/v3/exchangeInfo[?symbol=X|symbols=["X","Y"]]` -> timezone, serverTime, rateLimits,
exchangeFilters and one entry per symbol with its assets, precisions, order types, permission
sets and filters. The mock trades any symbol: the list is `DEFAULT_SYMBOLS`, every symbol some
connection subscribed to, and any asked for by name.

Kraken (`/0/public/Time`, `/0/public/Assets`, `/0/public/AssetPairs`): the `{"error": [],
"result": ..}` envelope, pairs keyed by Kraken's ids (`XXBTZUSD`, altname `XBTUSD`); and the one
private call, `POST /0/private/GetWebSocketsToken` (API-Key / API-Sign of a test account, a
token the Kraken session accepts in private subscribes within 15 minutes, scaled).

These requests are outside what connquota plans (it manages WebSocket connections only): the
mock answers them without counting them against any limit (docs/mock-exchange.md).
"""

from __future__ import annotations

import hmac
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connquota.api.limits import Dialect
from connquota.exchanges.dialects import binance, bybit, kraken, okx
from connquota.mockexchange.books import MockBook

if TYPE_CHECKING:
    from connquota.mockexchange.server import MockExchange

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ETHBTC")
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
"""Quote assets a Binance symbol may end with, longest first where one ends another."""
ORDER_TYPES = [
    "LIMIT",
    "LIMIT_MAKER",
    "MARKET",
    "STOP_LOSS",
    "STOP_LOSS_LIMIT",
    "TAKE_PROFIT",
    "TAKE_PROFIT_LIMIT",
]
RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
]


def split_symbol(symbol: str) -> tuple[str, str] | None:
    """(base, quote) of a Binance symbol such as BTCUSDT, or None when no quote asset fits."""
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return None


def binance_symbol_info(symbol: str) -> dict[str, Any] | None:
    """One `symbols[]` entry of exchangeInfo, in Binance's documented shape."""
    assets = split_symbol(symbol)
    if assets is None:
        return None
    base, quote = assets
    return {
        "symbol": symbol,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ORDER_TYPES,
        "icebergAllowed": True,
        "ocoAllowed": True,
        "otoAllowed": True,
        "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True,
        "cancelReplaceAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.01000000",
                "maxPrice": "1000000.00000000",
                "tickSize": "0.01000000",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001000",
                "maxQty": "9000.00000000",
                "stepSize": "0.00001000",
            },
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {
                "filterType": "MARKET_LOT_SIZE",
                "minQty": "0.00000000",
                "maxQty": "100.00000000",
                "stepSize": "0.00000000",
            },
            {
                "filterType": "NOTIONAL",
                "minNotional": "5.00000000",
                "applyMinToMarket": True,
                "maxNotional": "9000000.00000000",
                "applyMaxToMarket": False,
                "avgPriceMins": 5,
            },
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [],
        "permissionSets": [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def subscribed_symbols(mx: MockExchange) -> set[str]:
    """Upper-case symbols of every stream some connection ever subscribed to."""
    return {
        name.split("@", 1)[0].upper()
        for name in list(mx.feeds.feeds)
        if "@" in name and not name.startswith("!")
    }


def _binance_error(code: int, msg: str) -> web.Response:
    return web.json_response({"code": code, "msg": msg}, status=400)


def add_rest_routes(app: web.Application, mx: MockExchange) -> None:
    """Register the REST endpoints of the mock's dialect (before the WebSocket catch-all)."""
    routes = {
        Dialect.BINANCE: _binance_routes,
        Dialect.OKX: _okx_routes,
        Dialect.BYBIT: _bybit_routes,
        Dialect.KRAKEN: _kraken_routes,
    }.get(mx.dialect)
    if routes is not None:
        routes(app, mx)


def _binance_routes(app: web.Application, mx: MockExchange) -> None:
    if binance.is_futures_domain(mx.profile.domain):
        _binance_futures_routes(app, mx)
        return

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(_: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def exchange_info(request: web.Request) -> web.Response:
        asked: list[str] = []
        if "symbol" in request.query:
            asked = [request.query["symbol"]]
        elif "symbols" in request.query:
            try:
                names = json.loads(request.query["symbols"])
            except ValueError:
                return _binance_error(-1100, "Illegal characters found in parameter 'symbols'.")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return _binance_error(-1100, "Illegal characters found in parameter 'symbols'.")
            asked = names
        if asked:
            infos = [binance_symbol_info(s) for s in asked]
            if any(i is None for i in infos):
                return _binance_error(-1121, "Invalid symbol.")
        else:
            infos = [binance_symbol_info(s) for s in _listed(mx, subscribed_symbols(mx))]
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": RATE_LIMITS,
                "exchangeFilters": [],
                "symbols": [i for i in infos if i is not None],
            }
        )

    async def depth(request: web.Request) -> web.Response:
        return _binance_depth(request, mx, futures=False)

    app.router.add_get("/api/v3/ping", ping)
    app.router.add_get("/api/v3/time", server_time)
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
    app.router.add_get("/api/v3/depth", depth)


SPOT_DEPTH_LIMIT = (100, 5000)
"""``GET /api/v3/depth``: default and maximum ``limit`` ("If limit > 5000, then the response
will truncate to 5000")."""
FUTURES_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
"""``GET /fapi/v1/depth``: valid ``limit`` values (default 500)."""


def _binance_depth(request: web.Request, mx: MockExchange, futures: bool) -> web.Response:
    """The order book of a symbol now, ``lastUpdateId`` aligned with the depth streams (the
    same `books.BinanceBook`): Binance's "How to manage a local order book correctly" works
    with it. Not counted against REST weight (the mock models no REST weight)."""
    symbol = request.query.get("symbol", "")
    if not symbol:
        msg = "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."
        return _binance_error(-1102, msg)
    if split_symbol(symbol) is None or not symbol.isalnum() or not symbol.isupper():
        return _binance_error(-1121, "Invalid symbol.")
    try:
        limit = int(request.query.get("limit", 500 if futures else SPOT_DEPTH_LIMIT[0]))
    except ValueError:
        return _binance_error(-1100, "Illegal characters found in parameter 'limit'.")
    if futures and limit not in FUTURES_DEPTH_LIMITS:
        return _binance_error(-1100, "Illegal characters found in parameter 'limit'.")
    if limit < 1:
        return _binance_error(-1100, "Illegal characters found in parameter 'limit'.")
    book = mx.books.binance(symbol)
    limit = min(limit, SPOT_DEPTH_LIMIT[1])
    body: dict[str, Any] = {"lastUpdateId": book.update_id}
    if futures:
        now = int(time.time() * 1000)
        body.update({"E": now, "T": now})
    body["bids"] = book.top_bids(limit)
    body["asks"] = book.top_asks(limit)
    return web.json_response(body)


def binance_futures_symbol_info(symbol: str) -> dict[str, Any] | None:
    """One `symbols[]` entry of `GET /fapi/v1/exchangeInfo`: a USD-M perpetual in Binance's
    documented shape (https://developers.binance.com/docs/derivatives/usds-margined-futures/
    market-data/rest-api/Exchange-Information)."""
    assets = split_symbol(symbol)
    if assets is None:
        return None
    base, quote = assets
    return {
        "symbol": symbol, "pair": symbol, "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
        "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
        "baseAsset": base, "quoteAsset": quote, "marginAsset": quote,
        "pricePrecision": 2, "quantityPrecision": 3, "baseAssetPrecision": 8,
        "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
        "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012500",
        "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.10", "maxPrice": "4529764",
             "tickSize": "0.10"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000",
             "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120",
             "stepSize": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500",
             "multiplierDown": "0.9500", "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT",
                       "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }  # fmt: skip


def _binance_futures_routes(app: web.Application, mx: MockExchange) -> None:
    """USD-M futures public REST (`/fapi/v1/ping`, `/time`, `/exchangeInfo`, `/depth`): what
    ccxt's binanceusdm calls before its WebSockets (markets) and for its order-book snapshot."""

    async def ping(_: web.Request) -> web.Response:
        return web.json_response({})

    async def server_time(_: web.Request) -> web.Response:
        return web.json_response({"serverTime": int(time.time() * 1000)})

    async def exchange_info(_: web.Request) -> web.Response:
        infos = [binance_futures_symbol_info(s) for s in _listed(mx, subscribed_symbols(mx))]
        return web.json_response(
            {"timezone": "UTC", "serverTime": int(time.time() * 1000),
             "futuresType": "U_MARGINED", "rateLimits": FUTURES_RATE_LIMITS,
             "exchangeFilters": [], "assets": [],
             "symbols": [i for i in infos if i is not None]}
        )  # fmt: skip

    async def depth(request: web.Request) -> web.Response:
        return _binance_depth(request, mx, futures=True)

    app.router.add_get("/fapi/v1/ping", ping)
    app.router.add_get("/fapi/v1/time", server_time)
    app.router.add_get("/fapi/v1/exchangeInfo", exchange_info)
    app.router.add_get("/fapi/v1/depth", depth)


FUTURES_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]


def _listed(mx: MockExchange, symbols: set[str]) -> list[str]:
    """The default symbols, then every symbol some connection subscribed to (Binance spelling,
    BTCUSDT), without duplicates."""
    return list(dict.fromkeys([*DEFAULT_SYMBOLS, *sorted(symbols)]))


def okx_instrument(inst_id: str) -> dict[str, Any] | None:
    """One spot instrument of `GET /api/v5/public/instruments` in OKX's documented shape."""
    base, _, quote = inst_id.partition("-")
    if not base or not quote:
        return None
    return {
        "instType": "SPOT", "instId": inst_id, "uly": "", "instFamily": "",
        "baseCcy": base, "quoteCcy": quote, "settleCcy": "", "ctVal": "", "ctMult": "",
        "ctValCcy": "", "optType": "", "stk": "", "listTime": "1606468572000",
        "contTdSwTime": "", "expTime": "", "lever": "10", "tickSz": "0.01",
        "lotSz": "0.00000001", "minSz": "0.00001", "ctType": "", "alias": "", "state": "live",
        "ruleType": "normal", "maxLmtSz": "9999999999", "maxMktSz": "1000000",
        "maxLmtAmt": "20000000", "maxMktAmt": "1000000", "maxTwapSz": "9999999999",
        "maxIcebergSz": "9999999999", "maxTriggerSz": "9999999999", "maxStopSz": "1000000",
    }  # fmt: skip


def _okx_inst_ids(mx: MockExchange) -> list[str]:
    subscribed = {
        name.split(":", 1)[1]
        for name in list(mx.feeds.feeds)
        if ":" in name and "-" in name.split(":", 1)[1]
    }
    defaults = [f"{b}-{q}" for b, q in (split_symbol(s) or ("", "") for s in DEFAULT_SYMBOLS)]
    return list(dict.fromkeys([*defaults, *sorted(subscribed)]))


def _okx_routes(app: web.Application, mx: MockExchange) -> None:
    """OKX public REST (https://www.okx.com/docs-v5/en/#public-data-rest-api): instruments
    (spot only: the mock trades spot pairs) and the server time."""

    async def instruments(request: web.Request) -> web.Response:
        kind = request.query.get("instType", "")
        if kind not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
            msg = "Parameter instType error"
            return web.json_response({"code": "51000", "msg": msg, "data": []})
        ids = [request.query["instId"]] if "instId" in request.query else _okx_inst_ids(mx)
        data = [okx_instrument(i) for i in ids] if kind == "SPOT" else []
        return web.json_response({"code": "0", "msg": "", "data": [d for d in data if d]})

    async def server_time(_: web.Request) -> web.Response:
        now = str(int(time.time() * 1000))
        return web.json_response({"code": "0", "msg": "", "data": [{"ts": now}]})

    async def books(request: web.Request) -> web.Response:
        return _okx_books(request, mx)

    app.router.add_get("/api/v5/public/instruments", instruments)
    app.router.add_get("/api/v5/public/time", server_time)
    app.router.add_get("/api/v5/market/books", books)


OKX_BOOKS_SZ = (1, 400)
"""``GET /api/v5/market/books``: default and maximum ``sz`` (levels per side)."""


def _started(mx: MockExchange, stream: str, depth: int, okx_levels: bool) -> MockBook:
    return mx.books.started(stream, depth, okx_levels, mx.feeds)


def _okx_books(request: web.Request, mx: MockExchange) -> web.Response:
    """``GET /api/v5/market/books?instId=..&sz=..`` (https://www.okx.com/docs-v5/en/#order-book-
    trading-market-data-get-order-book): the book of the ``books`` channel of ``instId`` now, its
    ``seqId`` the last event that channel pushed (the next update's ``prevSeqId``), levels
    ``[price, size, "0", orders]``, at most ``sz`` per side."""

    def error(code: str, msg: str) -> web.Response:
        return web.json_response({"code": code, "msg": msg, "data": []})

    inst_id = request.query.get("instId", "")
    if not inst_id:
        return error("50014", "Parameter instId can not be empty.")
    if okx_instrument(inst_id) is None:
        return error("51001", "Instrument ID does not exist.")
    try:
        size = int(request.query.get("sz", OKX_BOOKS_SZ[0]))
    except ValueError:
        return error("51000", "Parameter sz error")
    if size < 1:
        return error("51000", "Parameter sz error")
    size = min(size, OKX_BOOKS_SZ[1])
    stream = okx.stream_name(inst_id, "books")
    book = _started(mx, stream, okx.BOOK_DEPTHS["books"], okx_levels=True)
    item = {"asks": book.book.sorted_asks(size), "bids": book.book.sorted_bids(size),
            "ts": str(int(time.time() * 1000)), "seqId": book.seq}  # fmt: skip
    return web.json_response({"code": "0", "msg": "", "data": [item]})


BYBIT_BOOK_LIMITS = {"spot": (1, 200), "linear": (25, 500), "inverse": (25, 500),
                     "option": (1, 25)}  # fmt: skip
"""``GET /v5/market/orderbook``: default and maximum ``limit`` per category."""
BYBIT_STREAM_DEPTHS = {"spot": (1, 50, 200, 1000), "linear": (1, 50, 200, 1000),
                       "inverse": (1, 50, 200, 1000), "option": (25, 100)}  # fmt: skip
"""``orderbook.<depth>.<symbol>`` depths per category, shallowest first (Bybit's orderbook
stream page: spot, linear and inverse 1/50/200/1000, option 25/100)."""


def bybit_book_stream(mx: MockExchange, category: str, symbol: str, limit: int) -> str:
    """The stream whose book a REST ``limit`` reads: the shallowest ``orderbook.<depth>`` at
    least ``limit`` deep that some push started, else the shallowest at least that deep (the
    deepest when none is): the mock keeps one book per stream."""
    depths = BYBIT_STREAM_DEPTHS[category]
    deep_enough = [d for d in depths if d >= limit] or [depths[-1]]
    names = [bybit.stream_name(symbol, f"orderbook.{d}") for d in deep_enough]
    for name in names:
        book = mx.books.books.get(name)
        if book is not None and book.seq is not None:
            return name
    return names[0]


def _bybit_orderbook(request: web.Request, mx: MockExchange) -> web.Response:
    """``GET /v5/market/orderbook?category=..&symbol=..&limit=..``
    (https://bybit-exchange.github.io/docs/v5/market/orderbook): the book of one
    ``orderbook.<depth>`` stream (`bybit_book_stream`) now, ``u`` and ``seq`` its last push's
    (the stream's later deltas carry greater ``u``), at most ``limit`` levels per side."""
    now = int(time.time() * 1000)

    def error(msg: str) -> web.Response:
        return web.json_response(
            {"retCode": 10001, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": now}
        )

    category = request.query.get("category", "")
    if category not in BYBIT_BOOK_LIMITS:
        return error("params error: category")
    symbol = request.query.get("symbol", "")
    if not symbol or split_symbol(symbol) is None:
        return error("params error: symbol invalid")
    default, most = BYBIT_BOOK_LIMITS[category]
    try:
        limit = int(request.query.get("limit", default))
    except ValueError:
        return error("params error: limit")
    if not 1 <= limit <= most:
        return error("params error: limit")
    stream = bybit_book_stream(mx, category, symbol, limit)
    depth = bybit.orderbook_depth(stream) or limit
    book = _started(mx, stream, depth, okx_levels=False)
    result = {"s": symbol, "b": book.book.sorted_bids(limit), "a": book.book.sorted_asks(limit),
              "ts": now, "u": book.seq, "seq": book.seq, "cts": now}  # fmt: skip
    return web.json_response(
        {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}
    )


def bybit_instrument(symbol: str) -> dict[str, Any] | None:
    """One spot instrument of `GET /v5/market/instruments-info` in Bybit's documented shape."""
    assets = split_symbol(symbol)
    if assets is None:
        return None
    base, quote = assets
    return {
        "symbol": symbol, "baseCoin": base, "quoteCoin": quote, "innovation": "0",
        "status": "Trading", "marginTrading": "none", "stTag": "0",
        "lotSizeFilter": {"basePrecision": "0.000001", "quotePrecision": "0.00000001",
                          "minOrderQty": "0.000048", "maxOrderQty": "71.73956243",
                          "minOrderAmt": "1", "maxOrderAmt": "2000000"},
        "priceFilter": {"tickSize": "0.01"},
        "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
    }  # fmt: skip


def _bybit_routes(app: web.Application, mx: MockExchange) -> None:
    """Bybit V5 public REST (https://bybit-exchange.github.io/docs/v5/market/instrument):
    spot instruments and the server time, in the `retCode`/`result` envelope."""

    def envelope(result: Any) -> web.Response:
        now = int(time.time() * 1000)
        return web.json_response(
            {"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": now}
        )

    async def instruments(request: web.Request) -> web.Response:
        category = request.query.get("category", "")
        if category not in ("spot", "linear", "inverse", "option"):
            return web.json_response(
                {"retCode": 10001, "retMsg": "params error: category", "result": {},
                 "retExtInfo": {}, "time": int(time.time() * 1000)}
            )  # fmt: skip
        subscribed = {name.rsplit(".", 1)[1] for name in list(mx.feeds.feeds) if "." in name}
        symbols = (
            [request.query["symbol"]] if "symbol" in request.query else _listed(mx, subscribed)
        )
        rows = [bybit_instrument(s) for s in symbols] if category == "spot" else []
        return envelope({"category": category, "list": [r for r in rows if r],
                         "nextPageCursor": ""})  # fmt: skip

    async def server_time(_: web.Request) -> web.Response:
        now = time.time()
        return envelope({"timeSecond": str(int(now)), "timeNano": str(int(now * 1e9))})

    async def orderbook(request: web.Request) -> web.Response:
        return _bybit_orderbook(request, mx)

    app.router.add_get("/v5/market/instruments-info", instruments)
    app.router.add_get("/v5/market/orderbook", orderbook)
    app.router.add_get("/v5/market/time", server_time)


KRAKEN_PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD", "ETH/BTC", "BTC/EUR")
"""Pairs the Kraken mock lists besides every pair some connection subscribed to."""
KRAKEN_ASSET_IDS = {"BTC": ("XXBT", "XBT"), "ETH": ("XETH", "ETH"), "USD": ("ZUSD", "USD"),
                    "EUR": ("ZEUR", "EUR")}  # fmt: skip
"""Assets whose Kraken id and altname differ from the code (legacy X/Z ids, XBT for BTC)."""


def kraken_asset(code: str) -> tuple[str, str]:
    """(Kraken asset id, altname) of ``code``: ``BTC`` -> (``XXBT``, ``XBT``)."""
    return KRAKEN_ASSET_IDS.get(code, (code, code))


def kraken_asset_pair(pair: str) -> tuple[str, dict[str, Any]] | None:
    """(pair id, entry) of `GET /0/public/AssetPairs` for ``BASE/QUOTE`` in Kraken's documented
    shape (https://docs.kraken.com/api-reference/market-data/get-tradable-asset-pairs)."""
    base, slash, quote = pair.partition("/")
    if not slash or not base.isalnum() or not quote.isalnum():
        return None
    (base_id, base_alt), (quote_id, quote_alt) = kraken_asset(base), kraken_asset(quote)
    legacy = base_id != base_alt and quote_id != quote_alt
    pair_id = base_id + quote_id if legacy else base_alt + quote_alt
    fees = [
        [0, 0.26],
        [50000, 0.24],
        [100000, 0.22],
        [250000, 0.2],
        [500000, 0.18],
        [1000000, 0.16],
        [2500000, 0.14],
        [5000000, 0.12],
        [10000000, 0.1],
    ]
    fees_maker = [
        [0, 0.16],
        [50000, 0.14],
        [100000, 0.12],
        [250000, 0.1],
        [500000, 0.08],
        [1000000, 0.06],
        [2500000, 0.04],
        [5000000, 0.02],
        [10000000, 0],
    ]
    return pair_id, {
        "altname": base_alt + quote_alt, "wsname": f"{base_alt}/{quote_alt}",
        "aclass_base": "currency", "base": base_id, "aclass_quote": "currency",
        "quote": quote_id, "lot": "unit", "cost_decimals": 5, "pair_decimals": 2,
        "lot_decimals": 8, "lot_multiplier": 1, "leverage_buy": [], "leverage_sell": [],
        "fees": fees, "fees_maker": fees_maker, "fee_volume_currency": "ZUSD",
        "margin_call": 80, "margin_stop": 40, "ordermin": "0.0001", "costmin": "0.5",
        "tick_size": "0.01", "status": "online",
    }  # fmt: skip


def _kraken_pairs(mx: MockExchange) -> list[str]:
    subscribed = {name.split(":", 1)[1] for name in list(mx.feeds.feeds) if ":" in name}
    return list(dict.fromkeys([*KRAKEN_PAIRS, *sorted(subscribed)]))


def _kraken_routes(app: web.Application, mx: MockExchange) -> None:
    """Kraken spot public REST (https://docs.kraken.com/api-reference/market-data/): server
    time, assets and tradable asset pairs, in the ``{"error": [], "result": ..}`` envelope."""

    def envelope(result: Any, errors: list[str] | None = None) -> web.Response:
        return web.json_response({"error": errors or [], "result": result})

    async def server_time(_: web.Request) -> web.Response:
        now = time.time()
        rfc1123 = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))
        return envelope({"unixtime": int(now), "rfc1123": rfc1123})

    async def assets(_: web.Request) -> web.Response:
        codes = dict.fromkeys(c for p in _kraken_pairs(mx) for c in p.split("/"))
        result = {}
        for code in codes:
            asset_id, altname = kraken_asset(code)
            result[asset_id] = {"aclass": "currency", "altname": altname, "decimals": 10,
                                "display_decimals": 5, "collateral_value": 1.0,
                                "status": "enabled"}  # fmt: skip
        return envelope(result)

    async def asset_pairs(request: web.Request) -> web.Response:
        rows = [kraken_asset_pair(p) for p in _kraken_pairs(mx)]
        result = {pair_id: entry for pair_id, entry in (r for r in rows if r is not None)}
        asked = request.query.get("pair")
        if asked:
            wanted = set(asked.split(","))
            result = {k: v for k, v in result.items()
                      if k in wanted or v["altname"] in wanted or v["wsname"] in wanted}  # fmt: skip
            if not result:
                return envelope({}, ["EQuery:Unknown asset pair"])
        return envelope(result)

    async def websockets_token(request: web.Request) -> web.Response:
        """``POST /0/private/GetWebSocketsToken``: a token for the test account whose key
        signed the request (API-Sign as Kraken documents it, the nonce above the key's last)."""
        body = await request.text()
        token, error = kraken_issue_token(
            mx, request.headers.get("API-Key", ""), request.headers.get("API-Sign", ""), body
        )
        if token is None:
            return envelope({}, [error])
        return envelope({"token": token, "expires": kraken.TOKEN_TTL_S})

    app.router.add_get("/0/public/Time", server_time)
    app.router.add_get("/0/public/Assets", assets)
    app.router.add_get("/0/public/AssetPairs", asset_pairs)
    app.router.add_post(kraken.TOKEN_PATH, websockets_token)


@dataclass
class KrakenToken:
    """A WebSocket token the mock issued: whose key, when (monotonic), and the connections a
    private subscription bound it to (then it does not expire while one of them is open)."""

    api_key: str
    issued_mono: float
    bound: set[str] = field(default_factory=set)


def kraken_tokens(mx: MockExchange) -> dict[str, KrakenToken]:
    """The tokens the mock issued (``token -> KrakenToken``)."""
    tokens: dict[str, KrakenToken] = mx.__dict__.setdefault("kraken_tokens", {})
    return tokens


def kraken_issue_token(
    mx: MockExchange, api_key: str, api_sign: str, body: str
) -> tuple[str | None, str]:
    """(token, "") for a correctly signed ``GetWebSocketsToken``; (None, the error) else:
    ``EAPI:Invalid key`` (unknown or revoked key), ``EAPI:Invalid signature``,
    ``EAPI:Invalid nonce`` (not above the key's last)."""
    account = mx.settings.account_for_key(api_key)
    if account is None:
        return None, kraken.INVALID_KEY
    form = dict(urllib.parse.parse_qsl(body))
    nonce = form.get("nonce", "")
    try:
        expected = kraken.api_sign(kraken.TOKEN_PATH, nonce, body, account.secret)
    except ValueError:  # the account's secret is not base64
        return None, kraken.INVALID_SIGNATURE
    if not nonce.isdigit() or not hmac.compare_digest(expected, api_sign):
        return None, kraken.INVALID_SIGNATURE
    nonces: dict[str, int] = mx.__dict__.setdefault("_kraken_nonces", {})
    if int(nonce) <= nonces.get(api_key, 0):
        return None, kraken.INVALID_NONCE
    nonces[api_key] = int(nonce)
    token = secrets.token_urlsafe(32)
    kraken_tokens(mx)[token] = KrakenToken(api_key, time.monotonic())
    return token, ""
