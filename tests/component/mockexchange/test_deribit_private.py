"""Deribit's private side on the mock: `public/auth` with client_credentials answers tokens
(a wrong secret gets 13004), `private/subscribe` of user channels needs the login and sends the
account's own feeds, the refresh_token grant renews the tokens (a stale refresh token gets
13009), an unrenewed token ends the session, and sessions per API key are enforced."""

from __future__ import annotations

import json

from mockexchange_clients import client_from, receive_until, wait_closed

from connquota.exchanges.dialects import deribit
from connquota.exchanges.dialects.base import ApiCredentials, LoginResult
from connquota.mockexchange.settings import TestAccount

PATH = "/ws/api/v2"
ACCOUNT = TestAccount("fo7WAPRm4P", "W0H6FJW4IRPZ1MOQ8FP6KMC5RZDUUKXS", account_id="sub")
CREDS = ApiCredentials("fo7WAPRm4P", "W0H6FJW4IRPZ1MOQ8FP6KMC5RZDUUKXS")


def _answer(rid: int):
    return lambda m: isinstance(m, dict) and m.get("id") == rid


async def test_login_user_channels_and_token_renewal(start_mock) -> None:
    mx = await start_mock("deribit", private_rate_hz=50.0, accounts=(ACCOUNT,))
    async with client_from("127.0.0.61") as client:
        ws = await client.ws_connect(mx.url + PATH)
        channels = ["user.orders.any.any.raw", "user.trades.BTC-PERPETUAL.100ms"]
        await ws.send_str(deribit.build_private_subscribe(channels, 1))
        refused = (await receive_until(ws, _answer(1)))[-1]
        assert refused["error"]["code"] == 10000, "user channels need a login"
        # the documented request (exchange-dialects.md 7.6), with a wrong secret
        wrong = ApiCredentials("fo7WAPRm4P", "nope")
        await ws.send_str(deribit.build_login(wrong, 0, 2))
        error = (await receive_until(ws, _answer(2)))[-1]["error"]
        assert (error["code"], error["message"]) == (13004, "invalid_credentials")
        await ws.send_str(deribit.build_login(CREDS, 0, 3))
        text = (await receive_until(ws, _answer(3)))[-1]
        assert isinstance(deribit.parse_server_message(json.dumps(text)), LoginResult)
        result = text["result"]
        assert result["token_type"] == "bearer" and result["expires_in"] == 900
        assert result["scope"] == "connection mainaccount"
        # public/subscribe does not cover user channels: left out of the result
        await ws.send_str(deribit.build_subscribe(["user.portfolio.btc"], 4))
        assert (await receive_until(ws, _answer(4)))[-1]["result"] == []
        both = [*channels, "ticker.BTC-PERPETUAL.100ms", "user.nope"]
        await ws.send_str(deribit.build_private_subscribe(both, 5))
        assert (await receive_until(ws, _answer(5)))[-1]["result"] == [
            "ticker.BTC-PERPETUAL.100ms",
            *channels,
        ]
        seen: dict[str, list] = {}

        def enough(m) -> bool:
            if isinstance(m, dict) and m.get("method") == "subscription":
                seen.setdefault(m["params"]["channel"], []).append(m["params"]["data"])
            return all(len(seen.get(c, [])) >= 3 for c in channels)

        await receive_until(ws, enough)
        assert isinstance(seen["user.orders.any.any.raw"][0], dict)
        trades = [t["trade_seq"] for d in seen["user.trades.BTC-PERPETUAL.100ms"] for t in d]
        assert trades == list(range(trades[0], trades[0] + len(trades)))
        # renewal: the refresh token of this login works once, the old one no more
        await ws.send_str(deribit.build_refresh(result["refresh_token"], 6))
        renewed = (await receive_until(ws, _answer(6)))[-1]["result"]
        assert renewed["refresh_token"] != result["refresh_token"]
        await ws.send_str(deribit.build_refresh(result["refresh_token"], 7))
        assert (await receive_until(ws, _answer(7)))[-1]["error"]["code"] == 13009
        assert not ws.closed
        await ws.close()
    assert mx.violations() == []


async def test_an_unrenewed_token_ends_the_session(start_mock) -> None:
    mx = await start_mock("deribit", time_scale=60.0, accounts=(ACCOUNT,))
    mx.deribit_token_ttl_s = 60  # 1 wall second
    async with client_from("127.0.0.62") as client:
        ws = await client.ws_connect(mx.url + PATH)
        await ws.send_str(deribit.build_login(CREDS, 0, 1))
        assert (await receive_until(ws, _answer(1)))[-1]["result"]["expires_in"] == 1
        await wait_closed(ws, 5)
    assert len(mx.deribit_expired) == 1


async def test_sessions_per_api_key_are_enforced(start_mock) -> None:
    mx = await start_mock("deribit", limits=["concurrentConnections:apiKey=1"], accounts=(ACCOUNT,))
    async with client_from("127.0.0.63") as client:
        first = await client.ws_connect(mx.url + PATH)
        await first.send_str(deribit.build_login(CREDS, 0, 1))
        assert "result" in (await receive_until(first, _answer(1)))[-1]
        second = await client.ws_connect(mx.url + PATH)
        await second.send_str(deribit.build_login(CREDS, 0, 2))
        error = (await receive_until(second, _answer(2)))[-1]["error"]
        assert error["code"] == 10066
        await first.close()
        await second.close()
    (violation,) = mx.violations()
    assert violation.to_json()["scope"] == "apiKey"


async def test_client_signature_logs_in_and_a_wrong_or_stale_signature_is_refused(
    start_mock,
) -> None:
    """`client_signature` (exchange-dialects.md 7.6): the HMAC of the key's secret over
    timestamp, nonce and data logs in; another secret's signature, a timestamp over the
    documented 60 s old and an unknown key get 13004; a timestamp that is no integer -32602."""
    import dataclasses
    import time

    mx = await start_mock("deribit", private_rate_hz=50.0, accounts=(ACCOUNT,))
    signed = dataclasses.replace(CREDS, signed_auth=True)
    now = int(time.time() * 1000)
    async with client_from("127.0.0.64") as client:
        ws = await client.ws_connect(mx.url + PATH)
        refusals = [
            deribit.build_login(dataclasses.replace(signed, secret="nope"), now, 1),
            deribit.build_login(signed, now - 61_000, 2),
            deribit.build_login(dataclasses.replace(signed, api_key="unknown"), now, 3),
        ]
        for rid, frame in enumerate(refusals, 1):
            assert json.loads(frame)["params"]["grant_type"] == "client_signature"
            await ws.send_str(frame)
            assert (await receive_until(ws, _answer(rid)))[-1]["error"]["code"] == 13004, rid
        bad = json.loads(deribit.build_login(signed, now, 4))
        bad["params"]["timestamp"] = str(now)
        await ws.send_str(json.dumps(bad))
        assert (await receive_until(ws, _answer(4)))[-1]["error"]["code"] == -32602
        await ws.send_str(deribit.build_login(signed, now, 5))
        result = (await receive_until(ws, _answer(5)))[-1]["result"]
        assert result["token_type"] == "bearer"
        channel = "user.orders.any.any.raw"
        await ws.send_str(deribit.build_private_subscribe([channel], 6))
        assert (await receive_until(ws, _answer(6)))[-1]["result"] == [channel]
        pushes = await receive_until(
            ws, lambda m: isinstance(m, dict) and m.get("params", {}).get("channel") == channel
        )
        assert pushes
        await ws.close()
    assert mx.violations() == []
