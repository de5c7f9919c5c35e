"""Deribit JSON-RPC dialect against the verbatim examples of exchange-dialects.md section 7."""

from __future__ import annotations

import json

import pytest

from connquota.exchanges.dialects import deribit
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    InvalidRequest,
    Notice,
    OtherRequest,
    Ping,
    PingRequest,
    Pong,
    SubscribeRequest,
    Unknown,
    WireFormatError,
)

# 7.3 (https://docs.deribit.com/api-reference/subscription-management/private-subscribe)
ACK = '{"jsonrpc": "2.0", "id": 4235, "result": ["deribit_price_index.btc_usd"]}'
# 7.3 (https://docs.deribit.com/articles/errors)
ERROR = """{"jsonrpc": "2.0", "error": {"code": 13009, "message": "invalid_token",
  "data": {"reason": "token has expired", "param": "access_token"}},
  "usIn": 1704153600000000, "usOut": 1704153600001234, "usDiff": 1234, "id": 42}"""
# 7.3 (https://github.com/ccxt/ccxt/issues/6931)
BAD_PARAMS = (
    '{"jsonrpc":"2.0","error":{"message":"Invalid params","data":{"reason":"value must be a '
    'list","param":"channels"},"code":-32602},"testnet":false,"usIn":1589288990523561,'
    '"usOut":1589288990524197,"usDiff":636}'
)
# 7.4 (https://docs.deribit.com/articles/notifications)
NOTIFICATION = """{"jsonrpc": "2.0", "method": "subscription", "params": {
  "channel": "deribit_price_index.btc_usd",
  "data": {"timestamp": 1535098298227, "price": 6521.17, "index_name": "btc_usd"}}}"""
# 7.4 (https://pastebin.com/yxcgdGkA)
BOOK_CHANGE = (
    '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"book.ETH-PERPETUAL.100ms",'
    '"data":{"type":"change","timestamp":1566347390056,"prev_change_id":1891043995,'
    '"instrument_name":"ETH-PERPETUAL","change_id":1891044008,"bids":[],"asks":[["change",'
    '196.45,7055.0],["change",196.5,90202.0]]}}}'
)
# 7.5 (https://docs.deribit.com/api-reference/session-management/public-set_heartbeat)
SET_HEARTBEAT = (
    '{"jsonrpc": "2.0", "id": 9098, "method": "public/set_heartbeat", "params": {"interval": 30}}'
)
SET_HEARTBEAT_OK = '{"jsonrpc": "2.0","id": 1569,"result": "ok"}'
TEST_REQUEST = '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'


def test_stream_naming() -> None:
    assert deribit.stream_name("BTC-PERPETUAL", "trades") == "trades.BTC-PERPETUAL.100ms"
    assert deribit.stream_name("BTC-PERPETUAL", "book.agg2") == "book.BTC-PERPETUAL.agg2"
    assert deribit.stream_name("BTC-PERPETUAL", "chart.trades") == "chart.trades.BTC-PERPETUAL.1"
    assert deribit.stream_name("ETH-PERPETUAL", "chart.trades.60") == (
        "chart.trades.ETH-PERPETUAL.60"
    )
    assert deribit.stream_parts("book.BTC-PERPETUAL.100ms") == ("book", "BTC-PERPETUAL", "100ms")
    assert deribit.stream_parts("chart.trades.BTC-27DEC24-60000-C.1D") == (
        "chart.trades",
        "BTC-27DEC24-60000-C",
        "1D",
    )
    assert deribit.parse_stream("ticker.BTC-PERPETUAL.100ms").channel == "ticker"
    for bad in ("trades.BTC-PERPETUAL", "book.btc-perpetual.100ms", "trades.BTC-PERPETUAL.1s",
                "chart.trades.BTC-PERPETUAL.2", "deribit_price_index.btc_usd"):  # fmt: skip
        with pytest.raises(WireFormatError):
            deribit.stream_parts(bad)


def test_requests_have_the_documented_shape() -> None:
    sub = json.loads(deribit.build_subscribe(["trades.BTC-PERPETUAL.100ms"], 4235))
    assert sub == {"jsonrpc": "2.0", "id": 4235, "method": "public/subscribe",
                   "params": {"channels": ["trades.BTC-PERPETUAL.100ms"]}}  # fmt: skip
    unsub = json.loads(deribit.build_unsubscribe(["book.BTC-PERPETUAL.100ms"], "7"))
    assert unsub["method"] == "public/unsubscribe" and unsub["id"] == 7
    assert json.loads(deribit.build_set_heartbeat(30, 9098)) == json.loads(SET_HEARTBEAT)
    assert json.loads(deribit.build_set_heartbeat(2, 1))["params"]["interval"] == 10
    assert json.loads(deribit.build_ping(3)) == {
        "jsonrpc": "2.0", "id": 3, "method": "public/test", "params": {}
    }  # fmt: skip
    # the mock reads them back
    assert deribit.parse_client_message(json.dumps(sub)) == SubscribeRequest(
        4235, ("trades.BTC-PERPETUAL.100ms",)
    )
    assert isinstance(deribit.parse_client_message(SET_HEARTBEAT), OtherRequest)
    assert isinstance(deribit.parse_client_message(deribit.build_ping(3)), PingRequest)


# 7.6 (https://docs.deribit.com/articles/authentication): the test vector and its request
CLIENT_SIGNATURE_AUTH = """{
  "jsonrpc": "2.0",
  "id": 9929,
  "method": "public/auth",
  "params": {
    "grant_type": "client_signature",
    "client_id": "AMANDA",
    "timestamp": 1576074319000,
    "nonce": "1iqt2wls",
    "data": "",
    "signature": "56590594f97921b09b18f166befe0d1319b198bbcdad7ca73382de2f88fe9aa1"
  }
}"""


def test_client_signature_matches_the_documented_test_vector() -> None:
    assert deribit.client_signature("AMANDASECRECT", 1576074319000, "1iqt2wls", "") == (
        "56590594f97921b09b18f166befe0d1319b198bbcdad7ca73382de2f88fe9aa1"
    )
    signed = ApiCredentials("AMANDA", "AMANDASECRECT", signed_auth=True)
    built = deribit.build_login(signed, 1576074319000, 9929, nonce="1iqt2wls")
    assert json.loads(built) == json.loads(CLIENT_SIGNATURE_AUTH)
    assert "AMANDASECRECT" not in built
    # a fresh random nonce when none is given; the secret is sent only by client_credentials
    a, b = (json.loads(deribit.build_login(signed, 1, 1))["params"] for _ in range(2))
    assert a["nonce"] != b["nonce"] and a["signature"] != b["signature"]
    plain = json.loads(deribit.build_login(ApiCredentials("AMANDA", "AMANDASECRECT"), 1, 1))
    assert plain["params"]["grant_type"] == "client_credentials"


def test_server_messages_are_classified() -> None:
    ack = deribit.parse_server_message(ACK)
    assert isinstance(ack, Ack) and ack.request_id == 4235
    assert ack.streams == ("deribit_price_index.btc_usd",)
    err = deribit.parse_server_message(ERROR)
    assert isinstance(err, Error) and (err.request_id, err.code, err.msg) == (
        42,
        "13009",
        "invalid_token",
    )
    bad = deribit.parse_server_message(BAD_PARAMS)
    assert isinstance(bad, Error) and bad.code == "-32602" and bad.request_id is None
    note = deribit.parse_server_message(NOTIFICATION)
    assert isinstance(note, Data) and note.stream == "deribit_price_index.btc_usd"
    assert note.event_time_ms == 1535098298227 and note.raw == NOTIFICATION
    book = deribit.parse_server_message(BOOK_CHANGE)
    assert isinstance(book, Data) and book.stream == "book.ETH-PERPETUAL.100ms"
    assert book.seq == 1891044008 and book.event_time_ms == 1566347390056
    assert deribit.continuity(book.payload) == (1891043995, 1891044008)
    assert isinstance(deribit.parse_server_message(TEST_REQUEST), Ping)
    beat = deribit.build_heartbeat("heartbeat")
    assert isinstance(deribit.parse_server_message(beat), Notice)
    ok = deribit.parse_server_message(SET_HEARTBEAT_OK)
    assert isinstance(ok, Ack) and ok.op == "set_heartbeat"
    pong = deribit.build_result(3, {"version": "1.2.26"}, 1)
    assert isinstance(deribit.parse_server_message(pong), Pong)
    assert isinstance(deribit.parse_server_message("{not json"), Unknown)
    assert isinstance(deribit.parse_server_message('{"jsonrpc":"2.0"}'), Unknown)


def test_built_data_parses_with_sequences_and_continuity() -> None:
    trades = deribit.parse_server_message(deribit.build_trades("trades.BTC-PERPETUAL.100ms", 7, 5))
    assert isinstance(trades, Data) and trades.seq == 7 and trades.event_time_ms == 5
    snap = deribit.build_book("book.BTC-PERPETUAL.100ms", "snapshot", 10, None,
                              [["new", 1.0, 2.0]], [["new", 3.0, 4.0]], 99)  # fmt: skip
    change = deribit.build_book("book.BTC-PERPETUAL.100ms", "change", 11, 10,
                                [["delete", 1.0, 0.0]], [], 100)  # fmt: skip
    assert deribit.continuity(json.loads(snap)) == (None, 10)
    assert deribit.continuity(json.loads(change)) == (10, 11)
    assert "prev_change_id" not in json.loads(snap)["params"]["data"]
    chart = json.loads(deribit.build_chart("chart.trades.BTC-PERPETUAL.5", 3, 600_001))
    assert chart["params"]["data"]["tick"] == 600_000


def test_malformed_client_requests_get_json_rpc_errors() -> None:
    for text, code in (("{x", -32700), ("[]", -32600), ('{"method":"public/test"}', -32600),
                       ('{"id":1,"method":"public/nope"}', -32601),
                       ('{"id":1,"method":"public/subscribe","params":{"channels":"x"}}', -32602),
                       ('{"id":1,"method":"public/subscribe","params":["x"]}', -32602)):  # fmt: skip
        request = deribit.parse_client_message(text)
        assert isinstance(request, InvalidRequest), text
        assert json.loads(request.reply)["error"]["code"] == code
