"""Coinbase private streams through a gateway (issue 15): private connections open the
user-data endpoint and subscribe the `user` channel with a fresh ES256 JWT per message, signed
with the EC key in the mounted Secret (the mock verifies each against the account's public key
and refuses a replayed one); a wrong key is refused ("authentication failure") and retried only
when the Secret changes; a revoked key ends the session and is reported; 0 violations."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from conftest import GW_IP, mock_attempts, shrunk, wait_for
from test_private_streams import (
    PrivateConsumer,
    assert_no_secret_anywhere,
    private_plan,
    refused_probe,
    write_secret,
)

from connquota.api.plan import PlanCredential
from connquota.exchanges import get_profile
from connquota.exchanges.dialects import coinbase
from connquota.exchanges.dialects.base import ApiCredentials
from connquota.gateway.private_wire import PrivateWire
from connquota.gateway.protocol import connect_url
from connquota.mockexchange.keys import asymmetric_account, generate_key_pair
from connquota.mockexchange.settings import MockSettings, TestAccount

KEY_NAME = "organizations/org-1/apiKeys/key-1"
STREAMS = ["user:BTC-USD", "user:ETH-USD"]


def settings(accounts: list[TestAccount]) -> MockSettings:
    return MockSettings(accounts=tuple(accounts), private_rate_hz=20.0, ban_after_violations=100)


def credential(tmp_path: Path, private_pem: str) -> PlanCredential:
    cred = write_secret(tmp_path, "cb", {"apiKey": KEY_NAME, "apiSecret": private_pem})
    return cred.model_copy(update={"accountId": "acct-cb"})


async def start(
    harness, tmp_path: Path, account: TestAccount, private_pem: str, streams: list[str] = STREAMS
):
    mock = await harness.start_mock(
        "coinbase", shrunk("coinbase", connectionAttempts=(10, 20.0)), settings=settings([account])
    )
    cred = credential(tmp_path, private_pem)
    gw = harness.gateway(harness.write_plan(private_plan(harness, [(cred, streams)])))
    gw.start()
    return mock, gw, cred


def test_private_connections_go_to_the_user_data_endpoint_and_sign_every_message():
    profile = get_profile("coinbase")
    assert connect_url(profile, private=True) == "wss://advanced-trade-ws-user.coinbase.com"
    assert connect_url(profile, private=False) == "wss://advanced-trade-ws.coinbase.com"
    private_pem, public_pem = generate_key_pair("ec")
    wire = PrivateWire(coinbase, ApiCredentials(KEY_NAME, private_pem))
    assert not wire.logs_on
    frames = [
        json.loads(wire.build_heartbeats_subscribe(None)),
        json.loads(wire.build_subscribe(["user:BTC-USD#a"], 1) or "{}"),
        json.loads(wire.build_subscribe(["user:BTC-USD#a"], 2) or "{}"),
    ]
    assert frames[1]["channel"] == "user" and frames[1]["product_ids"] == ["BTC-USD"]
    nonces = set()
    for frame in frames:
        header, claims, signature, signed = coinbase.jwt_parts(frame["jwt"]) or ({}, {}, b"", "")
        assert header["alg"] == "ES256" and header["kid"] == KEY_NAME == claims["sub"]
        assert claims["iss"] == "cdp" and claims["exp"] - claims["nbf"] == 120
        assert "uri" not in claims
        assert coinbase.verify_es256(public_pem, signed, signature)
        nonces.add(header["nonce"])
    assert len(nonces) == 3, "a fresh JWT per message"


async def test_user_orders_reach_consumers_with_a_fresh_jwt_per_subscribe(harness, tmp_path):
    account, private_pem = asymmetric_account(KEY_NAME, "acct-cb", kind="ec")
    mock, gw, _ = await start(harness, tmp_path, account, private_pem)
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(STREAMS)
    await wait_for(lambda: _counts(consumer, 10), 20, f"user messages on {STREAMS}")
    # the exchange drops the connection: the gateway subscribes again with new JWTs (the mock
    # refuses a JWT it has seen: one nonce per message)
    before = {s: consumer.count(s) for s in STREAMS}
    await mock.disconnect(GW_IP)
    await wait_for(lambda: _counts(consumer, max(before.values()) + 10), 30, "after reconnecting")
    consumer.close()
    (conn,) = [c for c in mock.websockets(GW_IP) if c.account is not None]
    assert conn.account == "acct-cb" and conn.api_key == KEY_NAME
    # two sessions x one user subscribe per batch, every JWT accepted once
    assert len(mock._coinbase_nonces) >= 2  # type: ignore[attr-defined]
    for stream in STREAMS:
        seqs = consumer.seqs[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]
        payload = consumer.payloads[stream][-1]
        assert payload["channel"] == "user"
        (order,) = payload["events"][0]["orders"]
        assert order["product_id"] == stream.split(":")[1]
        assert order["status"] in ("OPEN", "FILLED")
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [private_pem])


async def _counts(consumer: PrivateConsumer, n: int) -> bool:
    return all(consumer.count(s) >= n for s in STREAMS)


async def test_a_wrong_key_is_refused_and_retried_only_when_the_secret_changes(harness, tmp_path):
    account, private_pem = asymmetric_account(KEY_NAME, "acct-cb", kind="ec")
    wrong = generate_key_pair("ec")[0]
    mock, gw, cred = await start(harness, tmp_path, account, wrong)

    refused = refused_probe(harness, gw)

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert "authentication failure" in conn["status"], conn
    assert "credential files change" in conn["status"], conn
    attempts = mock_attempts(mock)
    for _ in range(20):  # with a 1 s backoff cap a retrying gateway would try again here
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    assert "login refused by the exchange" in harness.logs()

    write_secret(tmp_path, cred.name, {"apiSecret": private_pem})
    await harness.wait_live(gw, len(STREAMS), timeout_s=20)
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [private_pem, wrong])


async def test_a_key_revoked_mid_session_ends_the_session_and_is_reported(harness, tmp_path):
    account, private_pem = asymmetric_account(KEY_NAME, "acct-cb", kind="ec")
    mock, gw, _ = await start(harness, tmp_path, account, private_pem)
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    assert mock.revoke_key(KEY_NAME) == 1

    refused = refused_probe(harness, gw)

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert "authentication failure" in conn["status"], conn
    assert [c for c in mock.websockets(GW_IP) if c.account is not None] == []
    attempts = mock_attempts(mock)
    for _ in range(15):
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    harness.assert_no_violation()


async def test_futures_balance_summary_reaches_consumers_beside_user_orders(harness, tmp_path):
    """`futures_balance_summary` ("Authenticated. Sends updates on all of a user's futures
    (FCM) balances [...] No products required."): the stream is the channel alone, its
    subscribe a JWT-signed message without product_ids, its messages the account's
    `fcm_balance_summary`, consecutive on the gateway's seq beside the `user` orders."""
    streams = ["user:BTC-USD", coinbase.FUTURES_BALANCE]
    account, private_pem = asymmetric_account(KEY_NAME, "acct-cb", kind="ec")
    mock, gw, _ = await start(harness, tmp_path, account, private_pem, streams)
    await harness.wait_live(gw, len(streams), timeout_s=30)
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(streams)

    async def counted() -> bool:
        return all(consumer.count(s) >= 10 for s in streams)

    await wait_for(counted, 20, f"messages on {streams}")
    consumer.close()
    (conn,) = [c for c in mock.websockets(GW_IP) if c.account is not None]
    assert conn.streams == {f"{s}@acct-cb" for s in streams}
    seqs = consumer.seqs[coinbase.FUTURES_BALANCE]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]
    payload = consumer.payloads[coinbase.FUTURES_BALANCE][-1]
    assert payload["channel"] == coinbase.FUTURES_BALANCE
    summary = payload["events"][0]["fcm_balance_summary"]
    assert {"futures_buying_power", "total_usd_balance", "cfm_usd_balance", "available_margin",
            "intraday_margin_window_measure", "overnight_margin_window_measure"} <= set(summary)  # fmt: skip
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [private_pem])
