"""Public REST market-data endpoints that exchange client libraries call before they open a
WebSocket (market lists, server time), served in the exchange's own shapes.

Binance spot (https://developers.binance.com/docs/binance-spot-api-docs/rest-api/general-endpoints):
`GET /api/v3/ping` -> `{}`, `GET /api/v3/time` -> `{"serverTime": ms}`,
`GET /api/v3/exchangeInfo[?symbol=X|symbols=["X","Y"]]` -> timezone, serverTime, rateLimits,
exchangeFilters and one entry per symbol with its assets, precisions, order types, permission
sets and filters. The mock trades any symbol: the list is `DEFAULT_SYMBOLS`, every symbol some
connection subscribed to, and any asked for by name.

These requests are outside what connquota plans (it manages WebSocket connections only): the
mock answers them without counting them against any limit (docs/mock-exchange.md).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from connquota.api.limits import Dialect

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
    if mx.dialect != Dialect.BINANCE:
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
            listed = dict.fromkeys([*DEFAULT_SYMBOLS, *sorted(subscribed_symbols(mx))])
            infos = [binance_symbol_info(s) for s in listed]
        return web.json_response(
            {
                "timezone": "UTC",
                "serverTime": int(time.time() * 1000),
                "rateLimits": RATE_LIMITS,
                "exchangeFilters": [],
                "symbols": [i for i in infos if i is not None],
            }
        )

    app.router.add_get("/api/v3/ping", ping)
    app.router.add_get("/api/v3/time", server_time)
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
