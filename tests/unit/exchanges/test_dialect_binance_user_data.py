"""Binance spot user data over the WebSocket API, against the verbatim examples of
exchange-dialects.md 1.6: signatures per key type, session.logon, userDataStream.subscribe(.signature),
their responses and the event envelope."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    LoginRequest,
    LoginResult,
    Notice,
    OtherRequest,
)


def _pem_pair(kind: str) -> tuple[str, str]:
    key = (
        ed25519.Ed25519PrivateKey.generate()
        if kind == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_session_logon_request_from_the_docs_parses_as_a_login() -> None:
    documented = {
        "id": "c174a2b1-3f51-4580-b200-8528bd237cb7",
        "method": "session.logon",
        "params": {
            "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
            "signature": "1cf54395b336b0a9727ef27d5d98987962bc47aca6e13fe978612d0adee066ed",
            "timestamp": 1649729878532,
        },
    }
    request = binance.parse_api_message(json.dumps(documented))
    assert isinstance(request, LoginRequest)
    assert request.request_id == documented["id"] and request.fields["method"] == "session.logon"
    assert binance.signature_payload(documented["params"]) == (
        "apiKey=vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
        "&timestamp=1649729878532"
    )


def test_session_logon_response_from_the_docs_is_a_successful_login() -> None:
    documented = """{
        "id": "c174a2b1-3f51-4580-b200-8528bd237cb7",
        "status": 200,
        "result": {
            "apiKey": "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
            "authorizedSince": 1649729878532,
            "connectedSince": 1649729873021,
            "returnRateLimits": false,
            "serverTime": 1649729878630,
            "userDataStream": false
        }
    }"""
    assert binance.parse_server_message(documented) == LoginResult(
        True, "c174a2b1-3f51-4580-b200-8528bd237cb7"
    )
    built = binance.build_logon_result(
        "c174a2b1-3f51-4580-b200-8528bd237cb7",
        "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
        1649729878532,
        1649729873021,
        1649729878630,
    )
    assert json.loads(built) == json.loads(documented)


def test_user_data_subscribe_and_its_response_follow_the_docs() -> None:
    rid = "d3df8a21-98ea-4fe0-8f4e-0fcea5d418b7"
    assert json.loads(binance.build_user_data_subscribe(rid)) == {
        "id": rid,
        "method": "userDataStream.subscribe",
    }
    request = binance.parse_api_message(binance.build_user_data_subscribe(rid))
    assert request == OtherRequest(rid, "userDataStream.subscribe", {})
    response = '{"id": "d3df8a21-98ea-4fe0-8f4e-0fcea5d418b7","status": 200,"result": {"subscriptionId": 0}}'
    assert binance.parse_server_message(response) == Ack(
        rid, "response", result={"subscriptionId": 0}
    )
    assert json.loads(binance.build_api_response(rid, {"subscriptionId": 0})) == json.loads(
        response
    )
    unsubscribe = json.loads(binance.build_user_data_unsubscribe("u", 3))
    assert unsubscribe == {"id": "u", "method": "userDataStream.unsubscribe",
                           "params": {"subscriptionId": 3}}  # fmt: skip


def test_signature_subscription_from_the_docs_parses_with_its_signed_fields() -> None:
    documented = {
        "id": "d3df8a22-98ea-4fe0-9f4e-0fcea5d418b7",
        "method": "userDataStream.subscribe.signature",
        "params": {
            "apiKey": "mjcKCrJzTU6TChLsnPmgnQJJMR616J4yWvdZWDUeXkk6vL6dLyS7rcVOQlADlVjA",
            "timestamp": 1747385641636,
            "signature": "yN1vWpXb+qoZ3/dGiFs9vmpNdV7e3FxkA+BstzbezDKwObcijvk/CVkWxIwMCtCJbP270R0OempYwEpS6rDZCQ==",
        },
    }
    request = binance.parse_api_message(json.dumps(documented))
    assert isinstance(request, LoginRequest)
    assert request.fields["method"] == "userDataStream.subscribe.signature"
    assert request.api_key == documented["params"]["apiKey"]


def test_user_data_event_envelope_from_the_docs_is_data_on_the_user_data_stream() -> None:
    documented = {
        "subscriptionId": 0,
        "event": {
            "e": "outboundAccountPosition",
            "E": 1728972148778,
            "u": 1728972148778,
            "B": [{"a": "BTC", "f": "11818.00000000", "l": "182.00000000"},
                  {"a": "USDT", "f": "10580.00000000", "l": "70.00000000"}],
        },
    }  # fmt: skip
    event = binance.parse_server_message(json.dumps(documented))
    assert event == Data("userData", 1728972148778, 1728972148778, documented["event"])
    terminated = '{"subscriptionId": 0,"event": {"e": "eventStreamTerminated","E": 1728973001334}}'
    notice = binance.parse_server_message(terminated)
    assert isinstance(notice, Notice) and notice.kind == "eventStreamTerminated"
    assert binance.parse_server_message(binance.build_stream_terminated(0, 1728973001334)) == notice


def test_mock_user_data_events_alternate_types_and_carry_the_sequence_in_u() -> None:
    kinds = []
    for seq in (10, 11):
        event = binance.parse_server_message(binance.build_user_data_event(2, seq, 1728972148778))
        assert isinstance(event, Data) and event.stream == "userData" and event.seq == seq
        kinds.append(event.payload["e"])
    assert kinds == ["outboundAccountPosition", "executionReport"]


def test_key_revoked_and_ban_responses_are_errors_with_their_status() -> None:
    revoked = '{"id": null,"status": 401,"error": {"code": -2015,"msg": "Invalid API-key, IP, or permissions for action."}}'
    event = binance.parse_server_message(revoked)
    assert isinstance(event, Error) and event.code == "-2015" and event.request_id is None
    ban = {
        "id": "fc93a61a-a192-4cf4-bb2a-a8f0f0c51e06",
        "status": 418,
        "error": {
            "code": -1003,
            "msg": "Way too much request weight used; IP banned until 1659146400000. Please use WebSocket Streams for live updates to avoid bans.",
            "data": {"serverTime": 1659142907531, "retryAfter": 1659146400000},
        },
    }
    event = binance.parse_server_message(json.dumps(ban))
    assert isinstance(event, Error) and event.code == "-1003" and event.raw["status"] == 418


def test_key_types_are_told_apart_by_their_pem() -> None:
    ed_private, ed_public = _pem_pair("ed25519")
    rsa_private, rsa_public = _pem_pair("rsa")
    assert (
        binance.key_type("NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j")
        == "hmac"
    )
    assert binance.key_type(ed_private) == binance.key_type(ed_public) == "ed25519"
    assert binance.key_type(rsa_private.strip()) == binance.key_type(rsa_public) == "rsa"
    assert binance.supports_session_logon(ApiCredentials("k", ed_private))
    assert not binance.supports_session_logon(ApiCredentials("k", "hmac-secret"))


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_asymmetric_signatures_are_base64_and_verify_with_the_public_key(kind: str) -> None:
    private, public = _pem_pair(kind)
    params = {"apiKey": "k1", "timestamp": 1747385641636}
    signature = binance.sign(private.strip(), params)  # Secret files are read stripped
    assert binance.verify(kind, public, params, signature)
    assert not binance.verify(kind, public, {**params, "timestamp": 1747385641637}, signature)
    assert not binance.verify(kind, _pem_pair(kind)[1], params, signature)  # another key
    assert not binance.verify(kind, public, params, "not base64!")
    if kind == "ed25519":
        assert len(signature) == 88  # 64 bytes, like the documented .signature example


def test_hmac_sign_is_the_documented_hex_and_verifies_case_insensitively() -> None:
    params = {"apiKey": "k1", "timestamp": 1}
    signature = binance.sign("secret", params)
    assert signature == binance.hmac_signature("secret", params)
    assert binance.verify("hmac", "secret", params, signature.upper())
    assert not binance.verify("hmac", "other", params, signature)


def test_logon_and_signature_subscribe_sign_api_key_timestamp_and_recv_window() -> None:
    private, public = _pem_pair("ed25519")
    creds = ApiCredentials("k1", private)
    for text in (
        binance.build_login(creds, 1649729878532, "l", recv_window_ms=10000),
        binance.build_user_data_subscribe_signature(creds, 1649729878532, "s", 10000),
    ):
        request = binance.parse_api_message(text)
        assert isinstance(request, LoginRequest)
        params = {k: v for k, v in request.fields.items() if k != "method"}
        assert set(params) == {"apiKey", "timestamp", "recvWindow", "signature"}
        assert binance.verify("ed25519", public, params, params["signature"])
