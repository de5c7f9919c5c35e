"""Deribit private streams through a gateway (issue 15): `public/auth` with client_credentials
from the mounted Secret, user channels with `private/subscribe`, the token renewed with the
refresh_token grant before it expires; a wrong secret is refused (13004) and retried only when
the Secret changes; a revoked key ends the session and is reported; sessions per API key are
held per key and the credits of one sub-account are shared by every connection of it. The mock
is the referee: it ends a session whose token expired and records every violation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import GW_IP, mock_attempts, shrunk, wait_for
from test_private_streams import (
    PrivateConsumer,
    assert_no_secret_anywhere,
    private_plan,
    refused_probe,
    write_secret,
)

from connquota.api.limits import Limit, LimitName, LimitScope, LimitShape
from connquota.api.plan import PlanCredential, Slice
from connquota.mockexchange.settings import MockSettings, TestAccount

SECRET = "W0H6FJW4IRPZ1MOQ8FP6KMC5RZDUUKXS"
WRONG = "WRONGSECRETWRONGSECRETWRONGSECRE"
USER_STREAMS = ["user.orders.any.any.raw", "user.trades.BTC-PERPETUAL.100ms", "user.portfolio.btc"]
TOKEN_TTL_S = 120
"""Exchange seconds a token lives in these tests: 6 wall seconds at the harness' time scale 20
(the gateway renews it after half)."""


def settings(accounts: list[TestAccount]) -> MockSettings:
    return MockSettings(accounts=tuple(accounts), private_rate_hz=20.0, ban_after_violations=100)


def credential(tmp_path: Path, name: str, key: str, secret: str, account: str) -> PlanCredential:
    cred = write_secret(tmp_path, name, {"apiKey": key, "apiSecret": secret})
    return cred.model_copy(update={"accountId": account, "keyId": key})


def key_slice(key: str | None, value: int) -> Slice:
    assert key is not None
    return Slice(
        limit=LimitName.CONCURRENT_CONNECTIONS,
        scope=LimitScope.API_KEY,
        key=key,
        value=value,
        shape=LimitShape.CONCURRENT,
    )


def credit_slices(harness, conns: list) -> list[Slice]:
    """The sub-accounts' credit buckets, all of them this pod's (scaled as the profile): without
    a slice of its account's credits a connection sends nothing."""
    limit = harness.gateway_profile().limit(LimitName.MESSAGES_PER_ACCOUNT, LimitScope.ACCOUNT)
    return [
        Slice(
            limit=limit.name,
            scope=limit.scope,
            key=account,
            value=int(limit.value),
            shape=limit.shape,
            windowSeconds=limit.windowSeconds,
            burst=limit.burst,
        )
        for account in sorted({cred.accountId for cred, _ in conns})
    ]


async def start(harness, tmp_path: Path, conns: list, slices: list[Slice], limits=(), accounts=()):
    mock = await harness.start_mock(
        "deribit",
        [*shrunk("deribit", connectionAttempts=(10, 20.0)), *limits],
        settings=settings(list(accounts) or [TestAccount("fo7WAPRm4P", SECRET, account_id="sub")]),
    )
    mock.deribit_token_ttl_s = TOKEN_TTL_S  # type: ignore[attr-defined]
    if not any(s.limit == LimitName.MESSAGES_PER_ACCOUNT for s in slices):
        slices = [*slices, *credit_slices(harness, conns)]
    if not any(s.scope == LimitScope.API_KEY for s in slices):  # the published 16 per key
        slices = [*slices, *(key_slice(k, 16) for k in sorted({c.keyId for c, _ in conns}))]
    gw = harness.gateway(harness.write_plan(private_plan(harness, conns, slices)))
    gw.start()
    return mock, gw


async def test_user_channels_reach_consumers_and_the_token_is_renewed_before_it_expires(
    harness, tmp_path
):
    cred = credential(tmp_path, "d", "fo7WAPRm4P", SECRET, "sub")
    streams = [*USER_STREAMS, "ticker.BTC-PERPETUAL.100ms"]
    mock, gw = await start(harness, tmp_path, [(cred, streams)], [])
    await harness.wait_live(gw, len(streams), timeout_s=30)
    opened = mock.metrics.registry.get_sample_value("mockexchange_websockets_opened_total")
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(streams)

    async def renewed_twice_with_frames():
        renewals = getattr(mock, "deribit_refreshes", [])
        return len(renewals) >= 2 and all(consumer.count(s) >= 20 for s in streams)

    # tokens live 6 s: two renewals take 9 s or more; without them the mock ends the session
    await wait_for(renewed_twice_with_frames, 30, "two token renewals and frames on every stream")
    consumer.close()
    assert getattr(mock, "deribit_expired", []) == []
    assert mock.metrics.registry.get_sample_value("mockexchange_websockets_opened_total") == opened
    (conn,) = [c for c in mock.websockets(GW_IP) if c.account is not None]
    assert conn.account == "sub" and conn.api_key == "fo7WAPRm4P"
    for stream in streams:
        seqs = consumer.seqs[stream]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs[:20]
        channels = {p["params"]["channel"] for p in consumer.payloads[stream]}
        assert channels == {stream}
    trade_seqs = [
        t["trade_seq"]
        for p in consumer.payloads["user.trades.BTC-PERPETUAL.100ms"]
        for t in p["params"]["data"]
    ]
    assert trade_seqs == list(range(trade_seqs[0], trade_seqs[0] + len(trade_seqs)))
    portfolio = consumer.payloads["user.portfolio.btc"][-1]["params"]["data"]
    assert portfolio["currency"] == "BTC" and "equity" in portfolio
    order = consumer.payloads["user.orders.any.any.raw"][-1]["params"]["data"]
    assert isinstance(order, dict) and order["order_state"] in ("open", "filled")
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET])


async def test_a_wrong_secret_is_refused_and_retried_only_when_the_secret_changes(
    harness, tmp_path
):
    cred = credential(tmp_path, "d", "fo7WAPRm4P", WRONG, "sub")
    mock, gw = await start(harness, tmp_path, [(cred, USER_STREAMS)], [])

    refused = refused_probe(harness, gw)

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert "code 13004: invalid_credentials" in conn["status"], conn
    assert "credential files change" in conn["status"], conn
    attempts = mock_attempts(mock)
    for _ in range(20):  # with a 1 s backoff cap a retrying gateway would try again here
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    assert "login refused by the exchange" in harness.logs()

    write_secret(tmp_path, cred.name, {"apiSecret": SECRET})
    await harness.wait_live(gw, len(USER_STREAMS), timeout_s=20)
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET, WRONG])


async def test_a_key_revoked_mid_session_ends_the_session_and_is_reported(harness, tmp_path):
    cred = credential(tmp_path, "d", "fo7WAPRm4P", SECRET, "sub")
    mock, gw = await start(harness, tmp_path, [(cred, USER_STREAMS)], [])
    await harness.wait_live(gw, len(USER_STREAMS), timeout_s=30)
    assert mock.revoke_key("fo7WAPRm4P") == 1

    refused = refused_probe(harness, gw)

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert "13004" in conn["status"], conn
    assert [c for c in mock.websockets(GW_IP) if c.account is not None] == []
    attempts = mock_attempts(mock)
    for _ in range(15):
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    harness.assert_no_violation()


async def test_sessions_are_held_per_key_and_credits_are_shared_by_the_sub_account(
    harness, tmp_path
):
    """Two keys of one sub-account: each key's slice of sessions holds its own (key-1's second
    connection waits, key-2 is not held back), and every request of all three connections is
    charged to the one credit bucket of the sub-account, which the gateway's account slice
    keeps within its refill rate."""
    secrets = {n: f"S3CR3T{n}0123456789ABCDEFGHIJKLMN" for n in (1, 2)}
    accounts = [TestAccount(f"key-{n}", secrets[n], account_id="sub-1") for n in (1, 2)]
    creds = [credential(tmp_path, f"k{n}", f"key-{n}", secrets[n], "sub-1") for n in (1, 2)]
    per_key = Limit(
        name=LimitName.CONCURRENT_CONNECTIONS,
        value=1,
        scope=LimitScope.API_KEY,
        shape=LimitShape.CONCURRENT,
    )
    # 6 requests a scaled second (20 exchange s), a burst of 8, for the whole sub-account
    credits = Limit(
        name=LimitName.MESSAGES_PER_ACCOUNT,
        value=6,
        windowSeconds=20,
        burst=8,
        scope=LimitScope.ACCOUNT,
        shape=LimitShape.TOKEN_BUCKET,
    )
    credit_slice = Slice(
        limit=LimitName.MESSAGES_PER_ACCOUNT,
        scope=LimitScope.ACCOUNT,
        key="sub-1",
        value=6,
        shape=LimitShape.SLIDING_WINDOW,
        windowSeconds=1.0,
    )
    conns = [
        (creds[0], ["user.orders.any.any.raw"]),
        (creds[0], ["user.portfolio.btc"]),
        (creds[1], ["user.orders.any.any.raw#2", "user.trades.BTC-PERPETUAL.100ms"]),
    ]
    slices = [key_slice("key-1", 1), key_slice("key-2", 1), credit_slice]
    mock, gw = await start(harness, tmp_path, conns, slices, [per_key, credits], accounts)

    async def one_session_per_key():
        logged = sorted(c.api_key for c in mock.websockets(GW_IP) if c.account is not None)
        return logged == ["key-1", "key-2"]

    await wait_for(one_session_per_key, 30, "one session on each key")

    async def key_one_waits():
        st = await harness.status(gw)
        waiting = [c for c in st["connections"] if c["state"] != "live"]
        return waiting if len(waiting) == 1 else None

    waiting = await wait_for(key_one_waits, 10, "key-1's second session waiting")
    assert "concurrent slice on apiKey key-1" in waiting[0]["status"]
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    key_one, key_two = [*conns[0][1], *conns[1][1]], conns[2][1]
    await consumer.connect([*key_one, *key_two])

    async def both_keys_deliver():
        return all(consumer.count(s) >= 5 for s in key_two) and any(
            consumer.count(s) >= 5 for s in key_one
        )

    await wait_for(both_keys_deliver, 20, "frames of both keys' sessions")
    # heartbeats go on (two answers a scaled second per connection) while the credits hold:
    # the one bucket of sub-1 takes the requests of both keys' sessions
    await wait_for(
        lambda: _true(
            harness.mock.peak_fraction(LimitName.MESSAGES_PER_ACCOUNT, LimitScope.ACCOUNT) >= 0.5
        ),
        10,
        "the sub-account's credit bucket half used",
    )
    consumer.close()
    harness.assert_peak_at_least(LimitName.MESSAGES_PER_ACCOUNT, LimitScope.ACCOUNT, 0.5)
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONCURRENT_CONNECTIONS, LimitScope.API_KEY)


async def _true(value: bool) -> bool:
    return value


def signing(cred: PlanCredential) -> PlanCredential:
    """`cred` with `deribitAuth: clientSignature`, as the operator plans it."""
    return cred.model_copy(update={"deribitAuth": "clientSignature"})


async def test_a_client_signature_credential_logs_in_without_sending_its_secret(harness, tmp_path):
    """`deribitAuth: clientSignature` on the credential: the gateway logs in with
    `client_signature` (HMAC-SHA256 of timestamp, nonce and data, exchange-dialects.md 7.6),
    user channels reach a consumer and the token is renewed."""
    cred = signing(credential(tmp_path, "d", "fo7WAPRm4P", SECRET, "sub"))
    mock, gw = await start(harness, tmp_path, [(cred, USER_STREAMS)], [])
    await harness.wait_live(gw, len(USER_STREAMS), timeout_s=30)
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(USER_STREAMS)

    async def renewed_with_frames():
        renewals = getattr(mock, "deribit_refreshes", [])
        return len(renewals) >= 1 and all(consumer.count(s) >= 10 for s in USER_STREAMS)

    await wait_for(renewed_with_frames, 30, "a token renewal and frames on every user stream")
    consumer.close()
    assert set(mock.deribit_grants) == {"client_signature"}  # type: ignore[attr-defined]
    assert getattr(mock, "deribit_expired", []) == []
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET])


async def test_a_wrong_secrets_client_signature_is_refused_and_reported(harness, tmp_path):
    cred = signing(credential(tmp_path, "d", "fo7WAPRm4P", WRONG, "sub"))
    mock, gw = await start(harness, tmp_path, [(cred, USER_STREAMS)], [])
    conn = await wait_for(refused_probe(harness, gw), 20, "the connection reported as refused")
    assert "code 13004: invalid_credentials" in conn["status"], conn
    assert set(mock.deribit_grants) == {"client_signature"}  # type: ignore[attr-defined]
    write_secret(tmp_path, cred.name, {"apiSecret": SECRET})
    await harness.wait_live(gw, len(USER_STREAMS), timeout_s=20)
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [SECRET, WRONG])
