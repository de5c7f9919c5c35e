"""OKX v5 wire format against the verbatim examples of exchange-dialects.md section 3."""

from __future__ import annotations

import json

import pytest

from connquota.exchanges.dialects import okx
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    InvalidRequest,
    LoginRequest,
    LoginResult,
    Notice,
    PingRequest,
    Pong,
    SubscribeRequest,
    WireFormatError,
)


def test_stream_strings_map_to_channel_arguments_and_back() -> None:
    assert okx.stream_name("BTC-USDT", "tickers") == "tickers:BTC-USDT"
    assert okx.stream_to_arg("tickers:BTC-USDT") == {"channel": "tickers", "instId": "BTC-USDT"}
    assert okx.stream_to_arg("orders:instType=ANY") == {"channel": "orders", "instType": "ANY"}
    assert (
        okx.arg_to_stream({"channel": "instruments", "instType": "SPOT"})
        == "instruments:instType=SPOT"
    )
    assert okx.parse_stream("books:BTC-USDT").channel == "books"
    with pytest.raises(WireFormatError):
        okx.stream_to_arg("tickers")


def test_urls_select_public_private_and_business() -> None:
    assert okx.parse_endpoint("/ws/v5/public").kind == "public"
    assert okx.parse_endpoint("/ws/v5/private").private
    assert okx.path_for("business") == "/ws/v5/business"
    assert okx.endpoint_for_channel("candle1m") == "business"
    assert okx.endpoint_for_channel("orders") == "private"
    with pytest.raises(WireFormatError):
        okx.parse_endpoint("/ws/v5/other")


def test_subscribe_matches_the_documented_request() -> None:
    documented = {
        "id": "1512",
        "op": "subscribe",
        "args": [{"channel": "tickers", "instId": "BTC-USDT"}],
    }
    assert json.loads(okx.build_subscribe(["tickers:BTC-USDT"], "1512")) == documented
    assert okx.parse_client_message(json.dumps(documented)) == SubscribeRequest(
        "1512", ("tickers:BTC-USDT",)
    )
    unsub = json.loads(okx.build_unsubscribe(["tickers:BTC-USDT"], None))
    assert unsub == {"op": "unsubscribe", "args": [{"channel": "tickers", "instId": "BTC-USDT"}]}


def test_one_ack_per_argument_with_conn_id() -> None:
    ack = json.loads(okx.build_ack("subscribe", "tickers:BTC-USDT", "accb8e21", "1512"))
    assert ack == {
        "id": "1512",
        "event": "subscribe",
        "arg": {"channel": "tickers", "instId": "BTC-USDT"},
        "connId": "accb8e21",
    }
    documented = '{"event": "unsubscribe","arg": {"channel": "tickers","instId": "BTC-USDT"},"connId": "d0b44253"}'
    assert okx.parse_server_message(documented) == Ack(None, "unsubscribe", ("tickers:BTC-USDT",))


def test_documented_error_parses_with_code_and_message() -> None:
    documented = {
        "id": "1512", "event": "error", "code": "60012",
        "msg": 'Invalid request: {"op": "subscribe", "argss":[{ "channel" : "trades", "instId" : "BTC-USD-191227"}]}',
        "connId": "a4d3ae55",
    }  # fmt: skip
    event = okx.parse_server_message(json.dumps(documented))
    assert isinstance(event, Error) and event.code == "60012" and event.request_id == "1512"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{oops", "60012"),
        (
            '{"op": "subscribe", "argss":[{ "channel" : "trades", "instId" : "BTC-USD-191227"}]}',
            "60012",
        ),
        ('{"op": "subscribbe", "args":[]}', "60019"),
        ('{"op": "login", "args":[{"apiKey": "k"}]}', "60012"),
    ],
)
def test_malformed_requests_get_documented_error_codes(text: str, code: str) -> None:
    request = okx.parse_client_message(text)
    assert isinstance(request, InvalidRequest) and request.code == code
    reply = json.loads(request.reply.replace("{conn_id}", "a4d3ae55"))
    assert reply["event"] == "error" and reply["code"] == code and reply["connId"] == "a4d3ae55"
    if code == "60012":
        assert reply["msg"] == "Invalid request: " + text


def test_heartbeat_is_plain_text_ping_and_pong() -> None:
    assert okx.build_ping() == "ping"
    assert okx.parse_client_message("ping") == PingRequest()
    assert okx.parse_server_message("pong") == Pong(payload="pong")


def test_login_signature_and_round_trip() -> None:
    secret = "test-secret"
    sign = okx.login_signature(secret, "1538054050")
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(
        hmac.new(secret.encode(), b"1538054050GET/users/self/verify", hashlib.sha256).digest()
    ).decode()
    assert sign == expected
    text = okx.build_login(ApiCredentials("key", secret, "pass"), 1538054050123, None)
    assert json.loads(text)["args"][0] == {
        "apiKey": "key",
        "passphrase": "pass",
        "timestamp": "1538054050",
        "sign": expected,
    }
    request = okx.parse_client_message(text)
    assert isinstance(request, LoginRequest) and request.fields["sign"] == expected
    assert okx.parse_server_message(
        '{"event": "login","code": "0","msg": "","connId": "a4d3ae55"}'
    ) == LoginResult(True, None, "0", "")
    failed = okx.parse_server_message(
        '{"event": "error","code": "60009","msg": "Login failed.","connId": "a4d3ae55"}'
    )
    assert isinstance(failed, Error) and failed.code == "60009"


def test_trade_push_carries_seq_id_and_ts() -> None:
    documented = {
        "arg": {"channel": "trades", "instId": "BTC-USDT"},
        "data": [{"instId": "BTC-USDT", "tradeId": "130639474", "px": "42219.9", "sz": "0.12060306",
                  "side": "buy", "ts": "1630048897897", "count": "3", "source": "0", "seqId": 1234}],
    }  # fmt: skip
    text = json.dumps(documented)
    event = okx.parse_server_message(text)
    assert event == Data("trades:BTC-USDT", 1234, 1630048897897, documented, text)
    built = json.loads(okx.build_data("trades:BTC-USDT", 1234, 1630048897897))
    assert set(built["data"][0]) == set(documented["data"][0])
    books = okx.parse_server_message(okx.build_data("books:BTC-USDT", 7, 1630048897897))
    assert isinstance(books, Data) and books.seq == 7 and books.payload["data"][0]["prevSeqId"] == 6


def test_notices_and_connection_count_error() -> None:
    notice = okx.parse_server_message(okx.build_upgrade_notice("a4d3ae55"))
    assert isinstance(notice, Notice) and notice.code == "64008"
    assert json.loads(okx.build_upgrade_notice("a4d3ae55")) == {
        "event": "notice", "code": "64008",
        "msg": "The connection will soon be closed for a service upgrade. Please reconnect.",
        "connId": "a4d3ae55",
    }  # fmt: skip
    text = okx.build_channel_conn_count_error("orders", 30, "a4d3ae55")
    assert json.loads(text) == {
        "event": "channel-conn-count-error",
        "channel": "orders",
        "connCount": "30",
        "connId": "a4d3ae55",
    }
    assert isinstance(okx.parse_server_message(text), Error)


def test_candles_are_pushed_as_documented_arrays_of_strings_and_parse_with_their_bar_start() -> (
    None
):
    """OKX's candle push: `data` holds `[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`,
    every field a string, `ts` the start of the bar."""
    assert okx.bar_ms("candle1m") == 60_000 and okx.bar_ms("candle4H") == 14_400_000
    assert okx.bar_ms("candle1Dutc") == 86_400_000 and okx.bar_ms("candleX") == 60_000
    text = okx.build_data("candle15m:BTC-USDT", 7, 1_700_000_123_456)
    row = json.loads(text)["data"][0]
    assert len(row) == 9 and all(isinstance(v, str) for v in row)
    assert int(row[0]) == 1_700_000_123_456 - 1_700_000_123_456 % 900_000
    assert float(row[3]) <= float(row[4]) <= float(row[2]) and row[8] == "0"
    event = okx.parse_server_message(text)
    assert isinstance(event, Data) and event.stream == "candle15m:BTC-USDT"
    assert event.event_time_ms == int(row[0]) and event.seq is None
