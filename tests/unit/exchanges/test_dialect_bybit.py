"""Bybit v5 wire format against the verbatim examples of exchange-dialects.md section 4."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from connquota.exchanges.dialects import bybit
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    InvalidRequest,
    LoginRequest,
    LoginResult,
    PingRequest,
    Pong,
    SubscribeRequest,
    WireFormatError,
)


def test_topics_compose_and_parse() -> None:
    assert bybit.stream_name("BTCUSDT", "orderbook.50") == "orderbook.50.BTCUSDT"
    assert bybit.stream_name("", "order") == "order"
    parsed = bybit.parse_stream("orderbook.1.BTCUSDT")
    assert (parsed.symbol, parsed.channel) == ("BTCUSDT", "orderbook.1")
    assert bybit.parse_stream("publicTrade.BTCUSDT").channel == "publicTrade"
    assert bybit.is_valid_topic("order.spot", private=True)
    assert not bybit.is_valid_topic("order", private=False)
    with pytest.raises(WireFormatError):
        bybit.parse_stream("dcp.future")


def test_urls_select_category_and_private_max_active_time() -> None:
    assert bybit.parse_endpoint("/v5/public/spot").kind == "spot"
    assert bybit.public_path("linear") == "/v5/public/linear"
    private = bybit.parse_endpoint("/v5/private", "max_active_time=1m")
    assert private.private and private.max_active_s == 60
    with pytest.raises(WireFormatError):
        bybit.parse_endpoint("/v5/private", "max_active_time=20s")
    with pytest.raises(WireFormatError):
        bybit.parse_endpoint("/v5/public/futures")


def test_subscribe_matches_the_documented_request() -> None:
    documented = {
        "req_id": "test",
        "op": "subscribe",
        "args": ["orderbook.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.ETHUSDT"],
    }
    assert json.loads(bybit.build_subscribe(documented["args"], "test")) == documented
    assert bybit.parse_client_message(json.dumps(documented)) == SubscribeRequest(
        "test", tuple(documented["args"])
    )
    unsub = {"op": "unsubscribe", "args": ["publicTrade.ETHUSD"], "req_id": "customised_id"}
    assert json.loads(bybit.build_unsubscribe(["publicTrade.ETHUSD"], "customised_id")) == unsub


@pytest.mark.parametrize(
    ("category", "documented"),
    [
        (
            "private",
            {
                "success": True,
                "ret_msg": "",
                "op": "subscribe",
                "conn_id": "cejreassvfrsfvb9v1a0-2m",
            },
        ),
        (
            "spot",
            {
                "success": True,
                "ret_msg": "subscribe",
                "conn_id": "2324d924",
                "req_id": "10001",
                "op": "subscribe",
            },
        ),
        (
            "linear",
            {
                "success": True,
                "ret_msg": "",
                "conn_id": "3cd84cb1",
                "req_id": "",
                "op": "subscribe",
            },
        ),
    ],
)
def test_acks_have_each_categorys_documented_shape(category: str, documented: dict) -> None:
    request_id = documented.get("req_id") or None
    built = json.loads(
        bybit.build_op_result(category, "subscribe", documented["conn_id"], request_id)
    )
    assert built == documented
    assert isinstance(bybit.parse_server_message(json.dumps(documented)), Ack)


def test_option_ack_is_a_command_response() -> None:
    built = json.loads(
        bybit.build_op_result(
            "option", "subscribe", "aa01", None, topics=("orderbook.100.BTC-6JAN23-18000-C",)
        )
    )
    assert built == {
        "success": True,
        "conn_id": "aa01",
        "data": {"failTopics": [], "successTopics": ["orderbook.100.BTC-6JAN23-18000-C"]},
        "type": "COMMAND_RESP",
    }
    event = bybit.parse_server_message(json.dumps(built))
    assert event == Ack(None, "subscribe", ("orderbook.100.BTC-6JAN23-18000-C",))


@pytest.mark.parametrize(
    ("category", "documented"),
    [
        ("spot", {"success": True, "ret_msg": "pong", "conn_id": "0970e817", "op": "ping"}),
        (
            "linear",
            {"success": True, "ret_msg": "pong", "conn_id": "465772b1", "req_id": "", "op": "ping"},
        ),
        ("option", {"args": ["1672916271846"], "op": "pong"}),
        (
            "private",
            {
                "req_id": "test",
                "op": "pong",
                "args": ["1672916271846"],
                "conn_id": "cfcb4ocsvfriu23r3er0-1b",
            },
        ),
    ],
)
def test_pongs_have_each_categorys_documented_shape(category: str, documented: dict) -> None:
    built = bybit.build_pong(
        category, documented.get("conn_id", ""), documented.get("req_id") or None, 1672916271846
    )
    assert json.loads(built) == documented
    assert isinstance(bybit.parse_server_message(built), Pong)


def test_ping_request_round_trip() -> None:
    assert json.loads(bybit.build_ping("100001")) == {"req_id": "100001", "op": "ping"}
    assert bybit.parse_client_message('{"op":"ping"}') == PingRequest(None)


def test_auth_signature_is_hex_hmac_of_get_realtime_expires() -> None:
    expected = hmac.new(b"secret", b"GET/realtime1662350400000", hashlib.sha256).hexdigest()
    assert bybit.auth_signature("secret", 1662350400000) == expected
    text = bybit.build_login(ApiCredentials("api_key", "secret"), 1662350399000, "10001")
    assert json.loads(text) == {
        "req_id": "10001",
        "op": "auth",
        "args": ["api_key", 1662350400000, expected],
    }
    request = bybit.parse_client_message(text)
    assert isinstance(request, LoginRequest) and request.fields["expires"] == 1662350400000
    success = '{"success": true,"ret_msg": "","op": "auth","conn_id": "cejreaspqfh3sjdnldmg-p"}'
    assert bybit.parse_server_message(success) == LoginResult(True, None, "", "")
    failure = '{"conn_id":"cldfn8fcgepd64b9hgg0-o8uhe","op":"auth","ret_msg":"Params Error","success":false}'
    assert bybit.parse_server_message(failure) == LoginResult(False, None, "auth", "Params Error")


@pytest.mark.parametrize(
    ("text", "ret_msg"),
    [
        ("not json", "error:request body format error"),
        ('{"op":"subscribbe","args":["tickers.BTCUSDT"]}', "error:invalid op"),
        ('{"op":"auth","args":["k"]}', "Params Error"),
        ('{"op":"subscribe","args":"tickers.BTCUSDT"}', "error:param error"),
    ],
)
def test_malformed_requests_get_a_failure_reply(text: str, ret_msg: str) -> None:
    request = bybit.parse_client_message(text)
    assert isinstance(request, InvalidRequest)
    reply = json.loads(request.reply.replace("{conn_id}", "c1"))
    assert reply["success"] is False and reply["ret_msg"] == ret_msg and reply["conn_id"] == "c1"
    assert isinstance(bybit.parse_server_message(json.dumps(reply)), (Error, LoginResult))


def test_public_trade_carries_seq_and_ts() -> None:
    documented = {
        "topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868,
        "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50",
                  "L": "PlusTick", "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": False,
                  "seq": 1783284617}],
    }  # fmt: skip
    text = json.dumps(documented)
    assert bybit.parse_server_message(text) == Data(
        "publicTrade.BTCUSDT", 1783284617, 1672304486868, documented, text
    )
    built = json.loads(bybit.build_data("publicTrade.BTCUSDT", 1783284617, 1672304486868))
    assert set(built) == set(documented) and set(built["data"][0]) == set(documented["data"][0])
    book = bybit.parse_server_message(bybit.build_data("orderbook.50.BTCUSDT", 42, 1672304486868))
    assert isinstance(book, Data) and book.seq == 42 and book.payload["data"]["u"] == 42
    ticker = bybit.parse_server_message(bybit.build_data("tickers.BTCUSDT", 43, 1672304486868))
    assert isinstance(ticker, Data) and ticker.seq == 43
