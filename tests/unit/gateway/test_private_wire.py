"""The frames of private sessions per dialect and key type (pure: no connection)."""

from __future__ import annotations

import json
import time

from connquota.exchanges import get_profile
from connquota.exchanges.dialects import binance, bybit, okx
from connquota.exchanges.dialects.base import ApiCredentials, Data, Error
from connquota.gateway.private_wire import PrivateWire, wire_name
from connquota.gateway.protocol import connect_url
from connquota.mockexchange.keys import generate_key_pair


def test_a_private_stream_name_may_carry_a_tag_after_a_hash() -> None:
    assert wire_name("userData#alice") == "userData"
    assert wire_name("orders:instType=ANY") == "orders:instType=ANY"


def test_binance_ed25519_keys_log_on_then_subscribe_user_data() -> None:
    private, public = generate_key_pair("ed25519")
    wire = PrivateWire(binance, ApiCredentials("ed-key", private))
    assert wire.logs_on
    logon = json.loads(wire.login_frame("l1"))
    assert logon["method"] == "session.logon" and logon["params"]["recvWindow"] == 10000
    params = logon["params"]
    assert binance.verify("ed25519", public, params, params["signature"])
    assert json.loads(wire.build_subscribe(["userData#a"], 7)) == {
        "id": 7,
        "method": "userDataStream.subscribe",
    }
    event = wire.parse_server_message(binance.build_user_data_event(0, 12, 1))
    assert isinstance(event, Data) and event.stream == "userData#a" and event.seq == 12
    assert json.loads(wire.build_unsubscribe(["userData#a"], 8))["method"] == (
        "userDataStream.unsubscribe"
    )


def test_binance_hmac_and_rsa_keys_sign_the_subscription_instead_of_logging_on() -> None:
    rsa_private, rsa_public = generate_key_pair("rsa")
    for secret, kind, key in (
        ("hmac-secret", "hmac", "hmac-secret"),
        (rsa_private, "rsa", rsa_public),
    ):
        wire = PrivateWire(binance, ApiCredentials("k", secret))
        assert not wire.logs_on and wire.login_frame("l") is None
        frame = json.loads(wire.build_subscribe(["userData"], 3))
        assert frame["method"] == "userDataStream.subscribe.signature"
        assert binance.verify(kind, key, frame["params"], frame["params"]["signature"])
        assert abs(frame["params"]["timestamp"] - time.time() * 1000) < 5000
        assert wire.build_subscribe(["btcusdt@trade"], 4) is None  # not on the WS API


def test_okx_and_bybit_log_in_and_subscribe_the_exchange_names() -> None:
    wire = PrivateWire(okx, ApiCredentials("k", "s", "p"))
    assert json.loads(wire.login_frame(None))["op"] == "login"
    sub = json.loads(wire.build_subscribe(["orders:instType=ANY#x"], 1))
    assert sub["args"] == [{"channel": "orders", "instType": "ANY"}]
    wire = PrivateWire(bybit, ApiCredentials("k", "s"))
    auth = json.loads(wire.login_frame("a"))
    expires = auth["args"][1]
    assert auth["op"] == "auth" and 4000 < expires - time.time() * 1000 <= 5000
    assert auth["args"][2] == bybit.auth_signature("s", expires)
    assert json.loads(wire.build_subscribe(["order", "wallet"], 2))["args"] == ["order", "wallet"]


def test_auth_errors_are_told_apart_from_other_refusals() -> None:
    wire = PrivateWire(binance, ApiCredentials("k", "s"))
    assert wire.is_auth_error(Error(None, "-2015", "Invalid API-key"))
    assert not wire.is_auth_error(Error(1, "-1003", "Too much request weight"))
    assert PrivateWire(okx, ApiCredentials("k", "s", "p")).is_auth_error(Error(None, "60007", ""))


def test_private_connections_open_the_private_endpoint() -> None:
    spot = get_profile("binance-spot").with_endpoint("ws://127.0.0.1:9000")
    assert connect_url(spot, private=True) == "ws://127.0.0.1:9000/ws-api/v3"
    assert connect_url(spot) == "ws://127.0.0.1:9000/stream"
    assert connect_url(get_profile("okx"), private=True) == "wss://ws.okx.com:8443/ws/v5/private"
    assert connect_url(get_profile("bybit"), private=True) == "wss://stream.bybit.com/v5/private"
