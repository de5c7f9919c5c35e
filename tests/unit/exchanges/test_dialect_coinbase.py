"""Coinbase Advanced Trade WebSocket wire format against the examples of exchange-dialects.md
section 5 (market_trades as quoted by ccxt, heartbeats, the subscriptions ack, error frames)
and the stream naming ``<channel>:<product_id>``."""

from __future__ import annotations

import json

import pytest

from connquota.exchanges.dialects import coinbase
from connquota.exchanges.dialects.base import (
    Ack,
    Data,
    Error,
    InvalidRequest,
    Notice,
    OtherRequest,
    SubscribeRequest,
    Unknown,
    WireFormatError,
)

# exchange-dialects.md 5.4 (ccxt's quote of Coinbase's docs; its trailing comma removed so that
# it is JSON)
MARKET_TRADES = """{
    "channel": "market_trades",
    "client_id": "",
    "timestamp": "2023-02-09T20:19:35.39625135Z",
    "sequence_num": 0,
    "events": [
        {
            "type": "snapshot",
            "trades": [
                {
                    "trade_id": "000000000",
                    "product_id": "ETH-USD",
                    "price": "1260.01",
                    "size": "0.3",
                    "side": "BUY",
                    "time": "2019-08-14T20:42:27.265Z"
                }
            ]
        }
    ]
}"""
HEARTBEAT = """{
  "channel": "heartbeats",
  "client_id": "",
  "timestamp": "2023-06-23T20:31:26.122969572Z",
  "sequence_num": 0,
  "events": [
    {
      "current_time": "2023-06-23 20:31:56.121961769 +0000 UTC m=+91717.525857105",
      "heartbeat_counter": "3049"
    }
  ]
}"""
ACK = (
    '{"channel": "subscriptions", "client_id": "", "timestamp": "2023-02-09T20:19:35.39625135Z", '
    '"sequence_num": 0, "events": [{"subscriptions": {"market_trades": ["BTC-USD", "ETH-USD"]}}]}'
)
AUTH_ERROR = '{"type":"error","message":"authentication failure"}'
OLD_ERROR = '{"message":"Failed to subscribe","reason":"No channels provided","type":"error"}'
HEARTBEATS_REQUEST = """{
  "type": "subscribe",
  "channel": "heartbeats",
  "jwt": "XYZ"
}"""


def test_stream_naming_and_one_channel_per_subscribe():
    assert coinbase.stream_name("BTC-USD", "market_trades") == "market_trades:BTC-USD"
    name = coinbase.parse_stream("level2:ETH-EUR")
    assert (name.symbol, name.channel) == ("ETH-EUR", "level2")
    for bad in ("level2", "nochannel:BTC-USD", "ticker:", "ticker:A:B"):
        with pytest.raises(WireFormatError):
            coinbase.parse_stream(bad)
    # the SDK's shape: {"type", "product_ids", "channel"} (no jwt when unauthenticated)
    frame = json.loads(coinbase.build_subscribe(["level2:ETH-USD", "level2:ETH-EUR"], 7))
    assert frame == {
        "type": "subscribe",
        "product_ids": ["ETH-USD", "ETH-EUR"],
        "channel": "level2",
    }
    assert json.loads(coinbase.build_unsubscribe(["ticker:BTC-USD"], 8))["type"] == "unsubscribe"
    with pytest.raises(WireFormatError, match="one channel"):
        coinbase.build_subscribe(["level2:ETH-USD", "ticker:ETH-USD"], 9)
    assert coinbase.subscribe_group("level2:ETH-USD") == "level2"
    assert json.loads(coinbase.build_heartbeats_subscribe()) == {
        "type": "subscribe",
        "channel": "heartbeats",
    }
    assert coinbase.build_ping() is None
    assert coinbase.path_for("public") == "/"
    assert coinbase.parse_endpoint("/").kind == "public"


def test_documented_server_messages():
    ev = coinbase.parse_server_message(MARKET_TRADES)
    assert isinstance(ev, Data)
    assert ev.stream == "market_trades:ETH-USD" and ev.seq == 0 and ev.raw == MARKET_TRADES
    assert ev.event_time_ms == 1675973975396
    assert coinbase.sequence_of(ev) == 0
    beat = coinbase.parse_server_message(HEARTBEAT)
    assert isinstance(beat, Notice) and beat.kind == "heartbeat"
    assert coinbase.sequence_of(beat) == 0
    ack = coinbase.parse_server_message(ACK)
    assert isinstance(ack, Ack) and ack.request_id is None
    assert ack.streams == ("market_trades:BTC-USD", "market_trades:ETH-USD")
    for text, msg in ((AUTH_ERROR, "authentication failure"),
                      (OLD_ERROR, "Failed to subscribe: No channels provided")):  # fmt: skip
        err = coinbase.parse_server_message(text)
        assert isinstance(err, Error) and err.msg == msg
        assert coinbase.sequence_of(err) is None
    for broken in ("{", "[1,2]", '{"channel":"market_trades","events":[{"trades":[]}]}',
                   '{"channel":"nope","events":[{}]}'):  # fmt: skip
        assert isinstance(coinbase.parse_server_message(broken), Unknown)


def test_the_mock_side_reads_requests_and_builds_complete_payloads():
    req = coinbase.parse_client_message(coinbase.build_subscribe(["ticker:BTC-USD"], None))
    assert req == SubscribeRequest(None, ("ticker:BTC-USD",))
    other = coinbase.parse_client_message(HEARTBEATS_REQUEST)
    assert isinstance(other, OtherRequest) and other.params == "heartbeats"
    whole = coinbase.parse_client_message('{"type":"unsubscribe","channel":"level2"}')
    assert isinstance(whole, OtherRequest) and whole.method == "unsubscribe"
    for bad in ("{", '{"type":"subscribe"}', '{"type":"subscribe","channel":"level2"}',
                '{"type":"subscribe","channel":"user","product_ids":["BTC-USD"]}',
                '{"type":"hello","channel":"ticker"}'):  # fmt: skip
        got = coinbase.parse_client_message(bad)
        assert isinstance(got, InvalidRequest)
        assert json.loads(got.reply)["type"] == "error"
    trade = json.loads(coinbase.stamp(coinbase.build_trade("market_trades:BTC-USD", 5, 0), 41))
    assert trade["sequence_num"] == 41 and trade["channel"] == "market_trades"
    assert set(trade["events"][0]["trades"][0]) == {
        "trade_id", "product_id", "price", "size", "side", "time"}  # fmt: skip
    ticker = json.loads(coinbase.build_ticker("ticker:BTC-USD", 5, 0))["events"][0]["tickers"][0]
    assert {"best_bid", "best_ask_quantity", "price_percent_chg_24_h", "low_52_w"} <= set(ticker)
    candle = json.loads(coinbase.build_candle("candles:BTC-USD", 5, 301_000))["events"][0]
    assert candle["candles"][0]["start"] == "300"
    book = json.loads(coinbase.build_level2("level2:BTC-USD", [["1.00", "2"]], [], 0, "snapshot"))
    assert book["channel"] == "l2_data" and coinbase.is_snapshot(book)
    assert coinbase.levels_of(book) == ([["1.00", "2"]], [])
    parsed = coinbase.parse_server_message(json.dumps(book))
    assert isinstance(parsed, Data) and parsed.stream == "level2:BTC-USD"


def test_futures_balance_summary_is_a_productless_private_channel():
    """ "Authenticated. Sends updates on all of a user's futures (FCM) balances, including
    subsequent updates. No products required." (the channel's AsyncAPI page)."""
    fbs = coinbase.FUTURES_BALANCE
    assert (coinbase.parse_stream(fbs).symbol, coinbase.parse_stream(fbs).channel) == ("", fbs)
    assert coinbase.subscribe_group(fbs) == fbs
    signed = json.loads(coinbase.build_authenticated("subscribe", [fbs], "JWT"))
    assert signed == {"type": "subscribe", "channel": fbs, "jwt": "JWT"}
    # the mock's side: no JWT is an authentication failure; with one a subscribe of the channel
    refused = coinbase.parse_client_message(json.dumps({"type": "subscribe", "channel": fbs}))
    assert isinstance(refused, InvalidRequest) and refused.msg == coinbase.AUTH_FAILURE
    request = coinbase.parse_client_message(json.dumps(signed))
    assert request == SubscribeRequest(None, (fbs,))
    # the subscriptions ack lists it without products; its messages parse as its data
    ack = coinbase.parse_server_message(coinbase.build_subscriptions({fbs: [], "user": ["A-B"]}))
    assert isinstance(ack, Ack) and set(ack.streams) == {fbs, "user:A-B"}
    text = coinbase.stamp(coinbase.build_futures_balance_summary(3, 1_700_000_000_000), 5)
    ev = coinbase.parse_server_message(text)
    assert isinstance(ev, Data) and ev.stream == fbs and coinbase.sequence_of(ev) == 5
    summary = json.loads(text)["events"][0]["fcm_balance_summary"]
    assert all(isinstance(v, str) for k, v in summary.items() if not k.endswith("_measure"))
    assert summary["intraday_margin_window_measure"]["margin_window_type"].startswith("FCM_")
