"""OKX `tickers` and Bybit `kline`/`tickers` pushes on the mock carry every field of the
documented examples (docs/exchange-dialects.md, OKX and Bybit sections) with plausible values:
bid <= last <= ask inside the 24 h range, klines that close on their interval (`confirm` true,
`end` = `start` + interval - 1), sequence fields consecutive."""

from __future__ import annotations

import json
import time
from typing import Any

from mockexchange_clients import client_from, receive_text

from connquota.exchanges.dialects import bybit, okx
from connquota.exchanges.dialects.base import ApiCredentials

OKX_TICKER = {"instType", "instId", "last", "lastSz", "askPx", "askSz", "bidPx", "bidSz",
              "open24h", "high24h", "low24h", "volCcy24h", "vol24h", "sodUtc0", "sodUtc8",
              "ts"}  # fmt: skip
BYBIT_KLINE = {"start", "end", "interval", "open", "close", "high", "low", "volume",
               "turnover", "confirm", "timestamp"}  # fmt: skip
BYBIT_SPOT_TICKER = {"symbol", "lastPrice", "highPrice24h", "lowPrice24h", "prevPrice24h",
                     "volume24h", "turnover24h", "price24hPcnt", "usdIndexPrice"}  # fmt: skip
BYBIT_LINEAR_TICKER = BYBIT_SPOT_TICKER - {"usdIndexPrice"} | {
    "markPrice", "indexPrice", "openInterest", "openInterestValue", "fundingRate",
    "nextFundingTime", "bid1Price", "bid1Size", "ask1Price", "ask1Size"}  # fmt: skip


async def _pushes(url: str, subscribe: dict[str, Any], count: int, ip: str) -> list[Any]:
    got: list[Any] = []
    async with client_from(ip) as client:
        ws = await client.ws_connect(url)
        await ws.send_str(json.dumps(subscribe))
        while len(got) < count:
            frame = json.loads(await receive_text(ws))
            if "data" in frame:
                got.append(frame)
        await ws.close()
    return got


async def test_okx_tickers_carry_best_bid_ask_and_the_24h_fields(start_mock) -> None:
    mx = await start_mock("okx", rate_per_stream_hz=50)
    arg = {"channel": "tickers", "instId": "BTC-USDT"}
    frames = await _pushes(mx.url + "/ws/v5/public", {"op": "subscribe", "args": [arg]}, 5,
                           "127.0.0.81")  # fmt: skip
    items = [f["data"][0] for f in frames]
    for item in items:
        assert item.keys() >= OKX_TICKER, OKX_TICKER - item.keys()
        assert item["instId"] == "BTC-USDT" and item["instType"] == "SPOT"
        bid, last, ask = float(item["bidPx"]), float(item["last"]), float(item["askPx"])
        assert bid <= last <= ask and bid < ask
        assert float(item["low24h"]) <= bid and ask <= float(item["high24h"])
        assert float(item["bidSz"]) > 0 and float(item["askSz"]) > 0
    seqs = [item["seqId"] for item in items]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_bybit_klines_are_closed_bars_with_prices(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=50)
    frames = await _pushes(mx.url + "/v5/public/spot",
                           {"op": "subscribe", "args": ["kline.5.BTCUSDT"]}, 5,
                           "127.0.0.82")  # fmt: skip
    for frame in frames:
        assert frame["topic"] == "kline.5.BTCUSDT"
        (bar,) = frame["data"]
        assert bar.keys() >= BYBIT_KLINE, BYBIT_KLINE - bar.keys()
        assert bar["interval"] == "5" and bar["confirm"] is True
        assert bar["start"] % 300_000 == 0 and bar["end"] == bar["start"] + 299_999
        assert bar["end"] < bar["timestamp"]
        low, high = float(bar["low"]), float(bar["high"])
        assert low <= float(bar["open"]) <= high and low <= float(bar["close"]) <= high
        assert float(bar["volume"]) > 0 and float(bar["turnover"]) > 0
    seqs = [f["data"][0]["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_bybit_tickers_carry_the_fields_of_their_category(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=50)
    sub = {"op": "subscribe", "args": ["tickers.BTCUSDT"]}
    spot = await _pushes(mx.url + "/v5/public/spot", sub, 3, "127.0.0.83")
    linear = await _pushes(mx.url + "/v5/public/linear", sub, 3, "127.0.0.84")
    for frame in spot:
        item = frame["data"]
        assert item.keys() >= BYBIT_SPOT_TICKER, BYBIT_SPOT_TICKER - item.keys()
        assert "markPrice" not in item, "spot tickers have no derivative fields"
        low, high = float(item["lowPrice24h"]), float(item["highPrice24h"])
        assert low <= float(item["lastPrice"]) <= high
    for frame in linear:
        item = frame["data"]
        assert item.keys() >= BYBIT_LINEAR_TICKER, BYBIT_LINEAR_TICKER - item.keys()
        assert float(item["bid1Price"]) <= float(item["lastPrice"]) <= float(item["ask1Price"])
    seqs = [f["cs"] for f in linear]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_bybit_auth_takes_expires_as_a_number_or_a_string_of_digits(start_mock) -> None:
    """Clients in production send ``expires`` as a string (ccxt); Bybit accepts both forms; a
    string that is not digits stays ``Params Error``."""
    mx = await start_mock("bybit")
    replies = []
    async with client_from("127.0.0.85") as client:
        for form in (int, str, lambda e: f"x{e}"):
            ws = await client.ws_connect(mx.url + "/v5/private")
            expires = int(time.time() * 1000) + 10_000
            signature = bybit.auth_signature("test-secret-1", expires)
            args = ["test-key-1", form(expires), signature]
            await ws.send_str(json.dumps({"op": "auth", "args": args, "req_id": "a"}))
            replies.append(json.loads(await receive_text(ws)))
            await ws.close()
    assert [r["success"] for r in replies] == [True, True, False]
    assert replies[2]["ret_msg"] == "Params Error"


OKX_ORDER = {"instId", "ordId", "clOrdId", "px", "sz", "side", "ordType", "state", "fillPx",
             "fillSz", "accFillSz", "avgPx", "uTime", "cTime"}  # fmt: skip


async def test_okx_account_without_ccy_and_orders_with_their_fields(start_mock) -> None:
    """OKX takes ``{"channel":"account"}`` without ``ccy``; ``orders`` pushes carry the order."""
    mx = await start_mock("okx", rate_per_stream_hz=50)
    async with client_from("127.0.0.86") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/private")
        await ws.send_str(okx.build_login(ApiCredentials("test-key-1", "test-secret-1",
                                                          "test-passphrase"),
                                           int(time.time() * 1000), "l1"))  # fmt: skip
        assert json.loads(await receive_text(ws))["event"] == "login"
        args = [{"channel": "account"}, {"channel": "orders", "instType": "SPOT"}]
        await ws.send_str(json.dumps({"op": "subscribe", "args": args}))
        acks, account, orders = [], [], []
        while len(acks) < 2 or len(account) < 2 or len(orders) < 4:
            frame = json.loads(await receive_text(ws))
            if frame.get("event"):
                acks.append(frame)
            elif frame["arg"]["channel"] == "account":
                account.append(frame["data"][0])
            else:
                orders.append(frame["data"][0])
        await ws.close()
    assert [a["event"] for a in acks] == ["subscribe", "subscribe"]
    assert acks[0]["arg"] == {"channel": "account"}
    assert account[0]["details"] and "totalEq" in account[0]
    for item in orders:
        assert item.keys() >= OKX_ORDER, OKX_ORDER - item.keys()
        assert float(item["accFillSz"]) <= float(item["sz"])
        assert item["state"] in ("partially_filled", "filled")
        assert int(item["cTime"]) <= int(item["uTime"])
    seqs = [item["seqId"] for item in orders]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_bybit_private_items_carry_their_fields(start_mock) -> None:
    """order, execution, position and wallet pushes are not shells: each carries its topic's
    documented fields."""
    mx = await start_mock("bybit", rate_per_stream_hz=50)
    wanted = {"order": {"orderId", "orderLinkId", "side", "price", "qty", "orderStatus",
                        "cumExecQty", "leavesQty", "avgPrice", "createdTime", "updatedTime"},
              "execution": {"execId", "orderId", "execPrice", "execQty", "execFee", "execTime"},
              "position": {"symbol", "side", "size", "entryPrice", "markPrice", "positionIdx"},
              "wallet": {"accountType", "totalEquity", "coin"}}  # fmt: skip
    got: dict[str, dict] = {}
    async with client_from("127.0.0.87") as client:
        ws = await client.ws_connect(mx.url + "/v5/private")
        creds = ApiCredentials("test-key-1", "test-secret-1", "test-passphrase")
        await ws.send_str(bybit.build_login(creds, int(time.time() * 1000), "l1"))
        assert json.loads(await receive_text(ws))["success"] is True
        await ws.send_str(json.dumps({"op": "subscribe", "args": sorted(wanted)}))
        while len(got) < len(wanted):
            frame = json.loads(await receive_text(ws))
            if "data" in frame:
                got[frame["topic"]] = frame["data"][0]
        await ws.close()
    for topic, fields in wanted.items():
        assert got[topic].keys() >= fields, (topic, fields - got[topic].keys())
