"""Kraken spot WebSocket v2 wire format against the verbatim examples of exchange-dialects.md
section 6 (and the stream naming of 6.9)."""

from __future__ import annotations

import json

import pytest

from connquota.exchanges.dialects import kraken
from connquota.exchanges.dialects.base import (
    Ack,
    Data,
    Error,
    InvalidRequest,
    Notice,
    OtherRequest,
    PingRequest,
    Pong,
    SubscribeRequest,
    Unknown,
    WireFormatError,
)

TRADE_SNAPSHOT = """{
    "channel": "trade",
    "type": "snapshot",
    "data": [
        {"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 6423.46326,
         "ord_type": "limit", "trade_id": 4665846, "timestamp": "2023-09-25T07:48:36.925533Z"},
        {"symbol": "MATIC/USD", "side": "buy", "price": 0.5147, "qty": 1136.19677815,
         "ord_type": "limit", "trade_id": 4665847, "timestamp": "2023-09-25T07:49:36.925603Z"}
    ]
}"""
BOOK_UPDATE = """{
    "channel": "book",
    "type": "update",
    "data": [
        {"symbol": "MATIC/USD", "bids": [{"price": 0.5657, "qty": 1098.3947558}], "asks": [],
         "checksum": 2114181697, "timestamp": "2023-10-06T17:35:55.440295Z"}
    ]
}"""
OHLC_SNAPSHOT = """{
    "channel": "ohlc",
    "type": "snapshot",
    "timestamp": "2023-10-04T16:26:01.806315597Z",
    "data": [
        {"symbol": "ALGO/USD", "open": 0.09875, "high": 0.09875, "low": 0.09875,
         "close": 0.09875, "trades": 1, "volume": 201.86015, "vwap": 0.09875,
         "interval_begin": "2023-10-04T15:25:00.000000000Z", "interval": 5,
         "timestamp": "2023-10-04T15:30:00.000000Z"}
    ]
}"""
ACK = """{"method": "subscribe", "result": {"channel": "trade", "snapshot": false,
 "symbol": "BTC/USD"}, "success": true, "time_in": "2018-11-12T21:14:59.545897Z",
 "time_out": "2018-11-12T21:14:59.545901Z"}"""
ERROR_ACK = """{"error": "Currency pair not supported XBT/USD", "method": "subscribe",
 "success": false, "symbol": "XBT/USD", "time_in": "2018-11-12T21:14:59.545897Z"}"""
STATUS = """{"channel": "status", "data": [{"api_version": "v2",
 "connection_id": 13834774380200032777, "system": "online", "version": "2.0.0"}],
 "type": "update"}"""


def test_stream_names_carry_the_channel_parameter_only_when_not_the_default() -> None:
    assert kraken.stream_name("BTC/USD", "ticker") == "ticker:BTC/USD"
    assert kraken.stream_parts("book:BTC/USD") == ("book", "BTC/USD", 10)
    assert kraken.stream_parts("book.25:BTC/USD") == ("book", "BTC/USD", 25)
    assert kraken.stream_parts("ohlc:BTC/USD") == ("ohlc", "BTC/USD", 1)
    assert kraken.stream_parts("ohlc.5:BTC/USD") == ("ohlc", "BTC/USD", 5)
    assert kraken.compose("book", "BTC/USD", 10) == "book:BTC/USD"
    assert kraken.compose("ohlc", "BTC/USD", 60) == "ohlc.60:BTC/USD"
    assert kraken.parse_stream("book.25:ETH/USD").channel == "book"
    for bad in ("trade", "book.7:BTC/USD", "trade.5:BTC/USD", ":BTC/USD", "trade:A:B"):
        with pytest.raises(WireFormatError):
            kraken.stream_parts(bad)


def test_subscribe_unsubscribe_and_ping_frames() -> None:
    frame = json.loads(kraken.build_subscribe(["book.25:BTC/USD", "book.25:ETH/USD"], 3))
    assert frame == {"method": "subscribe", "req_id": 3,
                     "params": {"channel": "book", "symbol": ["BTC/USD", "ETH/USD"], "depth": 25}}  # fmt: skip
    assert json.loads(kraken.build_unsubscribe(["trade:MATIC/USD"], None)) == {
        "method": "unsubscribe", "params": {"channel": "trade", "symbol": ["MATIC/USD"]}
    }  # fmt: skip
    assert json.loads(kraken.build_ping(101)) == {"method": "ping", "req_id": 101}
    with pytest.raises(WireFormatError):
        kraken.build_subscribe(["trade:BTC/USD", "ticker:BTC/USD"], 1)
    assert kraken.subscribe_group("book.25:BTC/USD") != kraken.subscribe_group("book:BTC/USD")


def test_the_documented_messages_parse() -> None:
    trades = kraken.parse_server_message(TRADE_SNAPSHOT)
    assert isinstance(trades, Data) and trades.stream == "trade:MATIC/USD"
    assert trades.seq == 4665847 and trades.raw == TRADE_SNAPSHOT
    assert trades.event_time_ms == 1695628116925
    book = kraken.parse_server_message(BOOK_UPDATE)
    assert isinstance(book, Data) and book.stream == "book:MATIC/USD" and book.seq is None
    assert kraken.resolve_stream(book.stream, {"book.100:MATIC/USD"}) == "book.100:MATIC/USD"
    candles = kraken.parse_server_message(OHLC_SNAPSHOT)
    assert isinstance(candles, Data) and candles.stream == "ohlc.5:ALGO/USD"
    ack = kraken.parse_server_message(ACK)
    assert isinstance(ack, Ack) and ack.streams == ("trade:BTC/USD",)
    error = kraken.parse_server_message(ERROR_ACK)
    assert isinstance(error, Error) and error.msg == "Currency pair not supported XBT/USD"
    assert isinstance(kraken.parse_server_message('{"Error": "Exceeded msg rate"}'), Error)
    status = kraken.parse_server_message(STATUS)
    assert isinstance(status, Notice) and status.kind == "status" and status.code == "online"
    assert isinstance(kraken.parse_server_message('{"channel": "heartbeat"}'), Notice)
    pong = kraken.parse_server_message('{"method": "pong", "req_id": 101}')
    assert isinstance(pong, Pong) and pong.request_id == 101
    for broken in ('{"channel":"trade","data":[{}]}', "[1]", '{"e":', '{"method":"x"}'):
        assert isinstance(kraken.parse_server_message(broken), Unknown)


def test_the_documented_checksum_keeps_the_digits_as_sent() -> None:
    message = kraken.loads_exact(BOOK_UPDATE)
    (item,) = message["data"]
    assert kraken.levels_of(item["bids"]) == [["0.5657", "1098.3947558"]]
    assert kraken.checksum_token("0.00100000") == "100000"
    assert kraken.checksum_token("45285.2") == "452852"
    asks = [["45285.2", "0.00100000"]]
    assert kraken.checksum_string([], asks) == "452852100000"


def test_the_mock_side_reads_requests_as_kraken_does() -> None:
    request = kraken.parse_client_message(kraken.build_subscribe(["ohlc.5:BTC/USD"], 4))
    assert request == SubscribeRequest(4, ("ohlc.5:BTC/USD",))
    assert kraken.parse_client_message('{"method":"ping","req_id":7}') == PingRequest(7)
    for text in ('{"method":"subscribe","params":{"channel":"book","symbol":["A/B"],"depth":7}}',
                 '{"method":"subscribe","params":{"channel":"trade","symbol":[]}}',
                 '{"method":"subscribe","params":{"channel":"trade","symbol":["A/B"]},'
                 '"req_id":"x"}', "not json"):  # fmt: skip
        invalid = kraken.parse_client_message(text)
        assert isinstance(invalid, InvalidRequest)
        assert json.loads(invalid.reply)["success"] is False
    private = '{"method":"subscribe","params":{"channel":"executions","token":"t"}}'
    assert isinstance(kraken.parse_client_message(private), OtherRequest)
    ack = json.loads(kraken.build_ack("subscribe", "book.25:BTC/USD", 3))
    assert ack["result"] == {"channel": "book", "depth": 25, "snapshot": True, "symbol": "BTC/USD"}
    assert ack["success"] is True and ack["req_id"] == 3
