"""Binance spot wire format against the verbatim examples of exchange-dialects.md section 1."""

from __future__ import annotations

import json

import pytest

from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    InvalidRequest,
    LoginRequest,
    LoginResult,
    Notice,
    OtherRequest,
    SubscribeRequest,
    WireFormatError,
)


def test_stream_names_are_lower_case_symbol_at_channel() -> None:
    assert binance.stream_name("BTCUSDT", "aggTrade") == "btcusdt@aggTrade"
    assert binance.stream_name("BNBBTC", "depth@100ms") == "bnbbtc@depth@100ms"
    parsed = binance.parse_stream("btcusdt@depth@100ms")
    assert (parsed.symbol, parsed.channel) == ("btcusdt", "depth@100ms")
    assert binance.parse_stream("!miniTicker@arr").channel == "!miniTicker@arr"
    for stream in ("btcusdt@kline_1m", "btcusdt@depth20@100ms", "btcusdt@ticker_1h"):
        assert binance.is_valid_stream(stream)
    with pytest.raises(WireFormatError):
        binance.parse_stream("BTCUSDT@trade")


def test_url_forms_select_raw_combined_and_api_endpoints() -> None:
    assert binance.parse_endpoint("/ws/btcusdt@trade").initial_streams == ("btcusdt@trade",)
    assert binance.parse_endpoint("/ws").initial_streams == ()
    # Any path under /ws/ is served (ccxt opens /ws/<n>): only stream names subscribe.
    assert binance.parse_endpoint("/ws/0").initial_streams == ()
    assert binance.parse_endpoint("/ws/0/btcusdt@trade").initial_streams == ("btcusdt@trade",)
    combined = binance.parse_endpoint("/stream", "streams=btcusdt@trade/ethusdt@aggTrade")
    assert combined.combined and combined.initial_streams == ("btcusdt@trade", "ethusdt@aggTrade")
    assert binance.combined_stream_path(["a@trade", "b@trade"]) == "/stream?streams=a@trade/b@trade"
    assert binance.parse_endpoint("/ws-api/v3").private
    with pytest.raises(WireFormatError):
        binance.parse_endpoint("/v5/public/spot")


def test_subscribe_and_unsubscribe_match_the_documented_requests() -> None:
    sub = json.loads(binance.build_subscribe(["btcusdt@aggTrade", "btcusdt@depth"], 1))
    assert sub == {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 1}
    unsub = json.loads(binance.build_unsubscribe(["btcusdt@depth"], 312))
    assert unsub == {"method": "UNSUBSCRIBE", "params": ["btcusdt@depth"], "id": 312}
    request = binance.parse_client_message(binance.build_subscribe(["btcusdt@depth"], 7))
    assert request == SubscribeRequest(7, ("btcusdt@depth",), unsubscribe=False)
    assert binance.build_ping() is None


def test_ack_and_list_result_parse_as_acks() -> None:
    assert binance.parse_server_message('{"result": null, "id": 1}') == Ack(1, "response")
    listed = binance.parse_server_message('{"result": ["btcusdt@aggTrade"],"id": 3}')
    assert isinstance(listed, Ack) and listed.result == ["btcusdt@aggTrade"]
    assert json.loads(binance.build_ack(1)) == {"result": None, "id": 1}


def test_invalid_stream_gets_the_real_error_shape() -> None:
    request = binance.parse_client_message('{"method":"SUBSCRIBE","params":["BTC"],"id":2}')
    assert isinstance(request, InvalidRequest)
    assert json.loads(request.reply) == {
        "error": {"code": 2, "msg": "Invalid request: invalid stream"},
        "id": 2,
    }
    event = binance.parse_server_message(
        '{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}'
    )
    assert event == Error(2, "2", "Invalid request: invalid stream", event.raw)


@pytest.mark.parametrize(
    ("text", "code", "msg_start"),
    [
        ("{not json", "3", "Invalid JSON: expected value at line 1 column"),
        ('{"params":["btcusdt@trade"],"id":1}', "2", "Invalid request: missing field `method`"),
        ('{"method":"SUBSCRIBEX","id":1}', "2", "Invalid request: unknown variant `SUBSCRIBEX`"),
        ('{"method":"SUBSCRIBE","params":[],"id":{"a":1}}', "2", "Invalid request: request ID"),
        ('{"method":"GET_PROPERTY","params":["x"],"id":2}', "0", "Unknown property"),
        ('{"method":"SET_PROPERTY","params":["combined",1],"id":5}', "1", "Invalid value type"),
    ],
)
def test_malformed_requests_get_the_documented_error(text: str, code: str, msg_start: str) -> None:
    request = binance.parse_client_message(text)
    assert isinstance(request, InvalidRequest)
    assert request.code == code
    assert request.msg.startswith(msg_start)
    assert json.loads(request.reply)["error"]["code"] == int(code)


def test_property_requests_are_valid() -> None:
    request = binance.parse_client_message(
        '{"method": "SET_PROPERTY","params": ["combined", true],"id": 5}'
    )
    assert request == OtherRequest(5, "SET_PROPERTY", ["combined", True])


def test_trade_payload_carries_trade_id_as_sequence_and_event_time() -> None:
    documented = (
        '{"e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", '
        '"q": "100", "T": 1672515782136, "m": true, "M": true}'
    )
    event = binance.parse_server_message(documented)
    assert isinstance(event, Data)
    assert (event.stream, event.seq, event.event_time_ms) == ("bnbbtc@trade", 12345, 1672515782136)
    built = json.loads(binance.build_data("bnbbtc@trade", 12345, 1672515782136, combined=False))
    assert built == json.loads(documented)


def test_combined_payloads_are_wrapped_with_the_stream_name() -> None:
    text = binance.build_data("btcusdt@depth@100ms", 160, 1672515782136, combined=True)
    event = binance.parse_server_message(text)
    assert isinstance(event, Data)
    assert (event.stream, event.seq) == ("btcusdt@depth@100ms", 160)
    assert event.payload["U"] == event.payload["u"] == 160
    assert event.raw is not None and json.loads(event.raw) == event.payload
    assert text == f'{{"stream":"btcusdt@depth@100ms","data":{event.raw}}}'


def test_the_payload_is_kept_as_the_exchange_sent_it_only_when_it_is_one_piece() -> None:
    """What the gateway forwards: the exchange's own bytes (spacing, key order, number
    spelling), never a re-encoding; a frame of another shape falls back to the parsed value."""
    sent = '{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.10","q":"2.0"}'
    combined = binance.parse_server_message('{"stream":"btcusdt@trade","data":' + sent + "}")
    assert isinstance(combined, Data) and combined.raw == sent
    raw = binance.parse_server_message(sent, default_stream="btcusdt@trade")
    assert isinstance(raw, Data) and raw.raw == sent
    spaced = '{"stream": "btcusdt@trade", "data": ' + sent + "}"
    other_order = '{"data":' + sent + ',"stream":"btcusdt@trade"}'
    extra_key = '{"stream":"btcusdt@trade","data":' + sent + ',"x":{}}'
    for text in (spaced, other_order, extra_key):
        event = binance.parse_server_message(text)
        assert isinstance(event, Data) and event.raw is None and event.payload["t"] == 7


def test_the_fast_path_finds_what_the_full_parse_finds_or_leaves_the_frame_to_it() -> None:
    """The gateway's per-message path: stream, exchange sequence and the payload as sent, as
    `parse_server_message` would give them, for every channel the mock serves; everything
    else (notices, acks, errors, other shapes) is left to the full parse."""
    streams = ["btcusdt@trade", "btcusdt@aggTrade", "btcusdt@depth", "btcusdt@depth@100ms",
               "btcusdt@depth5", "btcusdt@bookTicker", "btcusdt@kline_1m", "btcusdt@ticker",
               "btcusdt@miniTicker", "btcusdt@ticker_1h"]  # fmt: skip
    for stream in streams:
        text = binance.build_data(stream, 42, 1672515782136, combined=True)
        full = binance.parse_server_message(text)
        assert isinstance(full, Data)
        assert binance.fast_data(text) == (full.stream, full.seq, full.raw), stream
    sent = '{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"1.10","q":"2.0"}'
    others = [
        binance.build_shutdown_notice(1770123456789, combined=True),
        '{"stream":"btcusdt@trade","data":{"e":"serverShutdown","E":1}}',
        '{"result":null,"id":1}',
        '{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":2}',
        '{"stream": "btcusdt@trade", "data": ' + sent + "}",
        '{"stream":"btcusdt@trade","data":' + sent + ',"x":{}}',
        '{"stream":"btcusdt@trade","data":[1]}',
        '{"stream":"btcusdt@trade","data":' + sent,
        sent,
    ]
    for text in others:
        assert binance.fast_data(text) is None, text


def test_server_shutdown_notice_in_all_three_shapes() -> None:
    for combined, api in ((False, False), (True, False), (False, True)):
        text = binance.build_shutdown_notice(1770123456789, combined=combined, api=api)
        event = binance.parse_server_message(text)
        assert event == Notice("serverShutdown", event_time_ms=1770123456789, raw=json.loads(text))
    assert json.loads(binance.build_shutdown_notice(1770123456789, combined=True)) == {
        "stream": "!serverShutdown",
        "data": {"e": "serverShutdown", "E": 1770123456789},
    }


def test_hmac_signature_matches_the_documented_test_vector() -> None:
    params = {
        "symbol": "BTCUSDT", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC",
        "quantity": "0.01000000", "price": "52000.00", "recvWindow": 100,
        "timestamp": 1645423376532,
        "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
    }  # fmt: skip
    secret = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    assert binance.hmac_signature(secret, params) == (
        "aa1b5712c094bc4e57c05a1a5c1fd8d88dcd628338ea863fec7b88e59fe2db24"
    )


def test_session_logon_round_trips_through_the_api_parser() -> None:
    creds = ApiCredentials("key1", "secret1")
    request = binance.parse_api_message(binance.build_login(creds, 1649729878532, "abc"))
    assert isinstance(request, LoginRequest) and request.api_key == "key1"
    signed = {"apiKey": "key1", "timestamp": 1649729878532}
    assert request.fields["signature"] == binance.hmac_signature("secret1", signed)
    response = binance.build_logon_result(
        "abc", "key1", 1649729878532, 1649729873021, 1649729878630
    )
    assert binance.parse_server_message(response) == LoginResult(True, "abc")
    revoked = '{"id": null,"status": 401,"error": {"code": -2015,"msg": "Invalid API-key, IP, or permissions for action."}}'
    event = binance.parse_server_message(revoked)
    assert isinstance(event, Error) and event.code == "-2015"


def test_user_data_event_envelope_parses_as_data() -> None:
    event = binance.parse_server_message(binance.build_user_data_event(0, 5, 1728972148778))
    assert isinstance(event, Data) and event.stream == "userData" and event.seq == 5
