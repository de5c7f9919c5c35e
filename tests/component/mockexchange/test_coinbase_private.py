"""Coinbase's user channel on the mock: a subscribe whose ES256 JWT verifies against the test
account's public key gets the account's orders; a JWT from another key, a replayed one, one
with a `uri`, an expired one or none at all get `authentication failure`."""

from __future__ import annotations

import json
import time

from mockexchange_clients import client_from, receive_until

from connquota.exchanges.dialects import coinbase
from connquota.mockexchange.keys import asymmetric_account, generate_key_pair

KEY = "organizations/org-1/apiKeys/key-1"


def _signed(pem: str, now_s: int, nonce: str, **claims: object) -> str:
    jwt = coinbase.build_jwt(KEY, pem, now_s, nonce)
    if not claims:
        return jwt
    header, body, _, _ = coinbase.jwt_parts(jwt) or ({}, {}, b"", "")
    body.update(claims)
    # re-sign with the extra claims (a client that put them in)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    enc = coinbase._b64url
    signing_input = f"{enc(json.dumps(header).encode())}.{enc(json.dumps(body).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{enc(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _is_frame(channel: str):
    return lambda m: isinstance(m, dict) and (m.get("channel") == channel or "type" in m)


async def test_user_channel_jwts_are_verified_one_per_message(start_mock) -> None:
    account, pem = asymmetric_account(KEY, "acct-cb", kind="ec")
    mx = await start_mock("coinbase", private_rate_hz=50.0, accounts=(account,))
    other = generate_key_pair("ec")[0]
    now = int(time.time())
    async with client_from("127.0.0.64") as client:
        ws = await client.ws_connect(mx.url + "/")
        refusals = [
            coinbase.build_subscribe(["user:BTC-USD"], None),  # no jwt
            coinbase.build_authenticated("subscribe", ["user:BTC-USD"], _signed(other, now, "a")),
            coinbase.build_authenticated(
                "subscribe", ["user:BTC-USD"], _signed(pem, now, "b", uri="GET host/path")
            ),
            coinbase.build_authenticated(
                "subscribe", ["user:BTC-USD"], _signed(pem, now - 300, "c")
            ),
        ]
        for frame in refusals:
            await ws.send_str(frame)
            reply = (await receive_until(ws, _is_frame("subscriptions")))[-1]
            assert reply == {"type": "error", "message": "authentication failure"}, frame
        good = _signed(pem, now, "d")
        await ws.send_str(coinbase.build_authenticated("subscribe", ["user:BTC-USD"], good))
        subs = (await receive_until(ws, _is_frame("subscriptions")))[-1]
        assert subs["events"][0]["subscriptions"] == {"user": ["BTC-USD"]}
        # the same JWT again: refused ("a different JWT for each websocket message")
        await ws.send_str(coinbase.build_authenticated("subscribe", ["user:ETH-USD"], good))
        replay = (await receive_until(ws, _is_frame("subscriptions")))[-1]
        assert replay == {"type": "error", "message": "authentication failure"}
        orders = await receive_until(
            ws, lambda m: isinstance(m, dict) and m.get("channel") == "user"
        )
        event = orders[-1]["events"][0]
        assert event["type"] == "snapshot" and event["orders"][0]["product_id"] == "BTC-USD"
        assert not ws.closed
        await ws.close()
    assert mx.violations() == []


async def test_futures_balance_summary_needs_a_jwt_and_sends_the_accounts_balances(
    start_mock,
) -> None:
    account, pem = asymmetric_account(KEY, "acct-cb", kind="ec")
    mx = await start_mock("coinbase", private_rate_hz=50.0, accounts=(account,))
    fbs = coinbase.FUTURES_BALANCE
    now = int(time.time())
    async with client_from("127.0.0.65") as client:
        ws = await client.ws_connect(mx.url + "/")
        await ws.send_str(json.dumps({"type": "subscribe", "channel": fbs}))  # no jwt
        reply = (await receive_until(ws, _is_frame("subscriptions")))[-1]
        assert reply == {"type": "error", "message": "authentication failure"}
        await ws.send_str(coinbase.build_authenticated("subscribe", [fbs], _signed(pem, now, "e")))
        subs = (await receive_until(ws, _is_frame("subscriptions")))[-1]
        assert subs["events"][0]["subscriptions"] == {fbs: []}
        pushes = await receive_until(
            ws,
            lambda m: isinstance(m, dict) and m.get("channel") == fbs and len(m["events"]) == 1
            and m["events"][0]["type"] == "update",
        )  # fmt: skip
        mine = [m for m in pushes if isinstance(m, dict) and m.get("channel") == fbs]
        assert mine[0]["events"][0]["type"] == "snapshot"
        assert [m["sequence_num"] for m in mine] == sorted(m["sequence_num"] for m in mine)
        assert "fcm_balance_summary" in mine[-1]["events"][0]
        await ws.send_str(
            coinbase.build_authenticated("unsubscribe", [fbs], _signed(pem, now, "f"))
        )
        subs = (await receive_until(ws, _is_frame("subscriptions")))[-1]
        assert subs["events"][0]["subscriptions"] == {}
        await ws.close()
    assert mx.violations() == []
