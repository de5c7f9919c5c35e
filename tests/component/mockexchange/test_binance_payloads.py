"""Binance spot payloads on the mock carry every field of the documented examples
(web-socket-streams.md, docs/exchange-dialects.md 1.4.2) with plausible values: trades priced at
the symbol book's best bid or ask, tickers consistent (low <= open, last <= high, bid < ask),
klines that close on their interval (`x` true once, then the next interval)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from mockexchange_clients import client_from, receive_text

DOCUMENTED = {
    "trade": {"e", "E", "s", "t", "p", "q", "T", "m", "M"},
    "aggTrade": {"e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"},
    "bookTicker": {"u", "s", "b", "B", "a", "A"},
    "miniTicker": {"e", "E", "s", "c", "o", "h", "l", "v", "q"},
    "ticker": {
        "e",
        "E",
        "s",
        "p",
        "P",
        "w",
        "x",
        "c",
        "Q",
        "b",
        "B",
        "a",
        "A",
        "o",
        "h",
        "l",
        "v",
        "q",
        "O",
        "C",
        "F",
        "L",
        "n",
    },
}
KLINE = {"t", "T", "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}


async def _by_stream(mx, streams: list[str], count: int) -> dict[str, list[Any]]:
    got: dict[str, list[Any]] = {s: [] for s in streams}
    async with client_from("127.0.0.80") as client:
        ws = await client.ws_connect(mx.url + "/stream?streams=" + "/".join(streams))
        while min(len(v) for v in got.values()) < count:
            frame = json.loads(await receive_text(ws))
            got[frame["stream"]].append(frame["data"])
        await ws.close()
    return got


async def test_every_documented_field_with_plausible_values(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=20)
    streams = [f"btcusdt@{c}" for c in DOCUMENTED]
    got = await _by_stream(mx, streams, 5)
    for channel, fields in DOCUMENTED.items():
        for payload in got[f"btcusdt@{channel}"]:
            assert fields <= set(payload), (channel, fields - set(payload))
            assert payload["s"] == "BTCUSDT"
    book = mx.books.binance("BTCUSDT")
    low, high = float(book.top_bids(1000)[-1][0]), float(book.top_asks(1000)[-1][0])
    for trade in got["btcusdt@trade"] + got["btcusdt@aggTrade"]:
        assert low < float(trade["p"]) < high and float(trade["q"]) > 0
        assert isinstance(trade["m"], bool)
    ids = [t["t"] for t in got["btcusdt@trade"]]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    for ticker in got["btcusdt@ticker"]:
        values = {k: float(ticker[k]) for k in ("o", "h", "l", "c", "b", "a", "w")}
        assert values["l"] <= min(values["o"], values["c"]) <= max(values["o"], values["c"])
        assert max(values["o"], values["c"]) <= values["h"] and values["b"] < values["a"]
        assert (
            ticker["C"] - ticker["O"] == 86_400_000 and ticker["n"] == ticker["L"] - ticker["F"] + 1
        )
        assert abs(float(ticker["p"]) - (values["c"] - values["o"])) < 1e-6
    for mini in got["btcusdt@miniTicker"]:
        assert float(mini["l"]) <= float(mini["c"]) <= float(mini["h"])
    updates = [b["u"] for b in got["btcusdt@bookTicker"]]
    assert updates == sorted(updates) and len(set(updates)) == len(updates)
    for best in got["btcusdt@bookTicker"]:
        assert float(best["b"]) < float(best["a"]) and float(best["B"]) > 0


async def test_a_kline_closes_on_its_interval_with_x_then_the_next_one_opens(start_mock) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=10)
    got = await _by_stream(mx, ["ethusdt@kline_1s"], 35)  # 10 events per 1 s kline
    klines = [e["k"] for e in got["ethusdt@kline_1s"]]
    for event, k in zip(got["ethusdt@kline_1s"], klines, strict=True):
        assert set(k) >= KLINE and k["i"] == "1s" and k["T"] == k["t"] + 999
        assert event["e"] == "kline" and float(k["l"]) <= float(k["c"]) <= float(k["h"])
    closed = [i for i, k in enumerate(klines) if k["x"]]
    assert len(closed) >= 2
    for i in closed:
        assert got["ethusdt@kline_1s"][i]["E"] > klines[i]["T"]  # closed once it ended
        if i + 1 < len(klines):
            nxt = klines[i + 1]
            assert nxt["t"] > klines[i]["t"] and not nxt["x"]
    # within one kline: the same start, first trade id kept, trade count growing
    for a, b in itertools.pairwise(klines):
        if a["t"] == b["t"]:
            assert b["f"] == a["f"] and b["n"] == a["n"] + 1 and not a["x"]


async def test_market_wide_streams_are_arrays_and_window_tickers_have_their_fields(
    start_mock,
) -> None:
    mx = await start_mock("binance", rate_per_stream_hz=20)
    streams = ["!miniTicker@arr", "!ticker_1h@arr", "btcusdt@ticker_4h"]
    got = await _by_stream(mx, streams, 3)
    for minis in got["!miniTicker@arr"]:
        assert isinstance(minis, list) and len({m["s"] for m in minis}) == len(minis) >= 2
        for mini in minis:
            assert set(mini) >= DOCUMENTED["miniTicker"] and mini["e"] == "24hrMiniTicker"
    window = {"e", "E", "s", "p", "P", "o", "h", "l", "c", "w", "v", "q", "O", "C", "F", "L", "n"}
    for tickers in got["!ticker_1h@arr"]:
        assert isinstance(tickers, list)
        for ticker in tickers:
            assert set(ticker) >= window and ticker["e"] == "1hTicker"
            assert ticker["O"] % 60_000 == 0 and ticker["C"] == ticker["E"]
            assert 3_600_000 <= ticker["C"] - ticker["O"] < 3_600_000 + 60_000
    for ticker in got["btcusdt@ticker_4h"]:
        assert set(ticker) >= window and ticker["e"] == "4hTicker" and ticker["s"] == "BTCUSDT"
