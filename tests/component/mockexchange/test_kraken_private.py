"""Kraken's private side on the mock: `GetWebSocketsToken` checks API-Sign (the documented
HMAC-SHA512) and an increasing nonce; a token works in private subscribes within 15 minutes
(scaled) of its creation and, once a private subscription used it, for as long as that
connection stays open; without a usable token a private subscribe is refused."""

from __future__ import annotations

import base64
import time

import aiohttp
from mockexchange_clients import client_from, receive_until

from connquota.exchanges.dialects import kraken
from connquota.exchanges.dialects.base import ApiCredentials
from connquota.mockexchange.rest import kraken_tokens
from connquota.mockexchange.settings import TestAccount
from connquota.testing.waiting import wait_until

SECRET = base64.b64encode(b"kraken-test-secret-0123456789abcdef" * 2).decode()
ACCOUNT = TestAccount("kraken-key-1", SECRET, account_id="acct-kr")
CREDS = ApiCredentials(ACCOUNT.api_key, SECRET)


def test_api_sign_matches_krakens_documented_example() -> None:
    # https://docs.kraken.com/api/docs/guides/spot-rest-auth (the documented example)
    secret = (
        "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
    )
    body = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
    sign = kraken.api_sign("/0/private/AddOrder", "1616492376594", body, secret)
    assert sign == (
        "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
    )


async def _token(client: aiohttp.ClientSession, url: str, nonce_ms: int) -> dict:
    headers, body = kraken.token_request(CREDS, nonce_ms)
    async with client.post(url + kraken.TOKEN_PATH, data=body, headers=headers) as resp:
        return await resp.json()


def _answer(method: str):
    return lambda m: isinstance(m, dict) and m.get("method") == method


async def test_tokens_are_signed_short_lived_unless_used(start_mock) -> None:
    mx = await start_mock("kraken", time_scale=900.0, private_rate_hz=20.0, accounts=(ACCOUNT,))
    async with client_from("127.0.0.65") as client:
        answer = await _token(client, mx.url, 1_000)
        assert answer["error"] == [] and answer["result"]["expires"] == 900
        used, unused = answer["result"]["token"], (await _token(client, mx.url, 1_001))["result"]
        replay = await _token(client, mx.url, 1_001)
        assert replay == {"error": ["EAPI:Invalid nonce"], "result": {}}
        headers, body = kraken.token_request(ApiCredentials(ACCOUNT.api_key, "AAAA"), 1_002)
        async with client.post(mx.url + kraken.TOKEN_PATH, data=body, headers=headers) as resp:
            assert (await resp.json())["error"] == ["EAPI:Invalid signature"]
        ws = await client.ws_connect(mx.url + "/v2")
        await ws.send_str(kraken.build_private_subscribe("executions", used, 7))
        ack = (await receive_until(ws, _answer("subscribe")))[-1]
        assert ack["success"] is True and ack["result"]["channel"] == "executions"
        assert ack["req_id"] == 7
        data = await receive_until(
            ws, lambda m: isinstance(m, dict) and m.get("channel") == "executions"
        )
        assert data[-1]["type"] == "snapshot" and isinstance(data[-1]["sequence"], int)
        # 15 minutes pass (1 s at time scale 900): the unused token is no longer accepted;
        # the used one keeps working on its open connection
        issued = kraken_tokens(mx)[unused["token"]].issued_mono
        ttl_s = mx.settings.scaled_s(kraken.TOKEN_TTL_S)
        await wait_until(
            lambda: _true(time.monotonic() - issued > ttl_s), 5, "the unused token's 15 minutes"
        )
        await ws.send_str(kraken.build_private_subscribe("balances", unused["token"], 8))
        refused = (await receive_until(ws, _answer("subscribe")))[-1]
        assert refused["success"] is False and refused["error"] == "ESession:Invalid session"
        await ws.send_str(kraken.build_private_subscribe("balances", used, 9))
        assert (await receive_until(ws, _answer("subscribe")))[-1]["success"] is True
        await ws.close()
    assert mx.violations() == []


async def _true(value: bool) -> bool:
    return value
