"""Kraken private streams through a gateway process (issue 15): before it subscribes, the
session gets its WebSocket token from REST `GetWebSocketsToken` (signed with the mounted key,
leaving from the connection's own address); `executions` and `balances` then reach consumers.
A wrong key is refused by the REST call and retried only when the Secret changes; a key
revoked mid-session ends the session and is reported. The mock is the referee."""

from __future__ import annotations

import asyncio
import base64
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
from connquota.mockexchange.settings import MockSettings, TestAccount

SECRET = base64.b64encode(b"kraken-test-secret-0123456789abcdef" * 2).decode()
WRONG = base64.b64encode(b"kraken-wrong-secret-0123456789abcde" * 2).decode()
KEY = "kraken-key-1"
STREAMS = ["executions", "balances#main"]


def credential(tmp_path: Path, secret: str) -> PlanCredential:
    cred = write_secret(tmp_path, "k", {"apiKey": KEY, "apiSecret": secret})
    return cred.model_copy(update={"accountId": "acct-kr", "keyId": KEY})


async def start(harness, tmp_path: Path, secret: str):
    mock = await harness.start_mock(
        "kraken",
        shrunk("kraken", connectionAttempts=(10, 20.0)),
        settings=MockSettings(
            accounts=(TestAccount(KEY, SECRET, account_id="acct-kr"),),
            private_rate_hz=20.0,
            ban_after_violations=100,
        ),
    )
    cred = credential(tmp_path, secret)
    gw = harness.gateway(harness.write_plan(private_plan(harness, [(cred, STREAMS)])))
    gw.start()
    return mock, gw, cred


async def test_private_channels_reach_consumers_with_a_rest_token(harness, tmp_path):
    mock, gw, _ = await start(harness, tmp_path, SECRET)
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    assert len(getattr(mock, "kraken_tokens", ())) >= 1  # the REST call was made
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(STREAMS)
    await wait_for(
        lambda: _true(all(consumer.count(s) >= 5 for s in STREAMS)), 20, "private events"
    )
    consumer.close()
    (conn,) = [c for c in mock.websockets(GW_IP) if c.account is not None]
    assert conn.account == "acct-kr"
    for stream in STREAMS:
        seqs = consumer.seqs[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET])


async def test_a_wrong_key_is_refused_by_the_token_call_and_retried_when_the_secret_changes(
    harness, tmp_path
):
    mock, gw, cred = await start(harness, tmp_path, WRONG)
    conn = await wait_for(refused_probe(harness, gw), 20, "the connection reported as refused")
    assert "EAPI:Invalid" in conn["status"], conn
    assert "credential files change" in conn["status"], conn
    attempts = mock_attempts(mock)
    for _ in range(20):  # with a 1 s backoff cap a retrying gateway would try again here
        await asyncio.sleep(0.1)
        assert (await refused_probe(harness, gw)()) is not None
    assert mock_attempts(mock) == attempts
    write_secret(tmp_path, cred.name, {"apiSecret": SECRET})
    await harness.wait_live(gw, len(STREAMS), timeout_s=20)
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET, WRONG])


async def test_a_key_revoked_mid_session_ends_the_session_and_is_reported(harness, tmp_path):
    mock, gw, _ = await start(harness, tmp_path, SECRET)
    await harness.wait_live(gw, len(STREAMS), timeout_s=30)
    mock.revoke_key(KEY)
    conn = await wait_for(refused_probe(harness, gw), 20, "the connection reported as refused")
    assert conn["status"], conn
    assert [c for c in mock.websockets(GW_IP) if c.account is not None] == []
    harness.assert_no_violation()


async def _true(value: bool) -> bool:
    return value
