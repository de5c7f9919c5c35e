"""The mock's public REST market data: what client libraries call before they open a
WebSocket (Binance: ping, time, exchangeInfo), in the exchange's documented shapes."""

from __future__ import annotations

import json

import aiohttp

from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange


async def test_binance_exchange_info_lists_symbols_in_the_documented_shape() -> None:
    mx = MockExchange(get_profile("binance-spot"), "127.0.0.1", 0)
    await mx.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(mx.http_url + "/api/v3/ping") as resp:
                assert resp.status == 200 and await resp.json() == {}
            async with http.get(mx.http_url + "/api/v3/time") as resp:
                assert isinstance((await resp.json())["serverTime"], int)
            async with http.get(mx.http_url + "/api/v3/exchangeInfo") as resp:
                info = await resp.json()
            assert {"timezone", "serverTime", "rateLimits", "exchangeFilters"} <= set(info)
            btc = next(s for s in info["symbols"] if s["symbol"] == "BTCUSDT")
            assert (btc["baseAsset"], btc["quoteAsset"], btc["status"]) == (
                "BTC",
                "USDT",
                "TRADING",
            )
            kinds = {f["filterType"] for f in btc["filters"]}
            assert {"PRICE_FILTER", "LOT_SIZE", "NOTIONAL"} <= kinds
            query = {"symbols": json.dumps(["DOGEUSDT", "ETHBTC"])}
            async with http.get(mx.http_url + "/api/v3/exchangeInfo", params=query) as resp:
                names = [s["symbol"] for s in (await resp.json())["symbols"]]
            assert names == ["DOGEUSDT", "ETHBTC"]
            params = {"symbol": "NOPE"}
            async with http.get(mx.http_url + "/api/v3/exchangeInfo", params=params) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == -1121
            # Any path under /ws/ is a raw endpoint (ccxt opens /ws/<n>, then subscribes).
            async with http.ws_connect(mx.url + "/ws/0") as ws:
                await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
                assert json.loads((await ws.receive(timeout=5)).data) == {"result": None, "id": 1}
    finally:
        await mx.stop()
