"""Login/auth with the documented signatures, and connections per account."""

from __future__ import annotations

import json
import time

import pytest
from mockexchange_clients import PRIVATE_PATH, client_from, receive_text

from connquota.exchanges.dialects import binance, bybit, okx
from connquota.exchanges.dialects.base import ApiCredentials, Error, LoginResult
from connquota.mockexchange.keys import asymmetric_account, generate_key_pair
from connquota.mockexchange.settings import default_accounts

GOOD = ApiCredentials("test-key-1", "test-secret-1", "test-passphrase")
BAD_SECRET = ApiCredentials("test-key-1", "wrong-secret", "test-passphrase")
WIRE = {"binance": binance, "okx": okx, "bybit": bybit}

# Binance's session.logon takes Ed25519 keys only: the mock holds the public keys of test-key-1
# and test-key-2, the test signs with the private keys.
_ED1, _ED1_PRIVATE = asymmetric_account("test-key-1", "acct-1")
_ED2, _ED2_PRIVATE = asymmetric_account("test-key-2", "acct-2")
ED25519_ACCOUNTS = (_ED1, _ED2, *default_accounts()[2:])


def _creds(dialect: str, n: int = 1, secret: str | None = None) -> ApiCredentials:
    """Credentials of test-key-n as the dialect's mock knows them (Binance: Ed25519)."""
    if dialect == "binance":
        return ApiCredentials(f"test-key-{n}", secret or (_ED1_PRIVATE, _ED2_PRIVATE)[n - 1])
    return ApiCredentials(f"test-key-{n}", secret or f"test-secret-{n}", "test-passphrase")


def _accounts(dialect: str) -> dict:
    return {"accounts": ED25519_ACCOUNTS} if dialect == "binance" else {}


def _now_ms() -> int:
    return int(time.time() * 1000)


@pytest.mark.parametrize("dialect", ["binance", "okx", "bybit"])
async def test_login_with_the_documented_signature_succeeds_and_a_bad_one_fails(
    start_mock, dialect
) -> None:
    mx = await start_mock(dialect, limits=["messagesPerConnection=50/1"], **_accounts(dialect))
    wire = WIRE[dialect]
    wrong = generate_key_pair()[0] if dialect == "binance" else "wrong-secret"
    async with client_from("127.0.0.50") as client:
        bad = await client.ws_connect(mx.url + PRIVATE_PATH[dialect])
        await bad.send_str(wire.build_login(_creds(dialect, secret=wrong), _now_ms(), "1"))
        refused = wire.parse_server_message(await receive_text(bad))
        assert isinstance(refused, Error | LoginResult) and not getattr(refused, "ok", False)
        expected_code = {"binance": "-1022", "okx": "60007", "bybit": "auth"}[dialect]
        assert refused.code == expected_code
        good = await client.ws_connect(mx.url + PRIVATE_PATH[dialect])
        await good.send_str(wire.build_login(_creds(dialect), _now_ms(), "2"))
        accepted = wire.parse_server_message(await receive_text(good))
        assert isinstance(accepted, LoginResult) and accepted.ok
        await bad.close()
        await good.close()
    assert mx.violations() == []


async def test_okx_login_errors_follow_the_documented_codes(start_mock) -> None:
    mx = await start_mock("okx", limits=["messagesPerConnection=50/1"])
    stale = str(int(time.time()) - 60)
    cases = [
        (okx.build_login(ApiCredentials("nobody", "x", "p"), _now_ms(), None), "60005"),
        (okx.build_login(ApiCredentials("test-key-1", "test-secret-1", "wrong"), _now_ms(), None), "60024"),
        (json.dumps({"op": "login", "args": [{"apiKey": "test-key-1", "passphrase": "test-passphrase",
                                              "timestamp": stale, "sign": okx.login_signature("test-secret-1", stale)}]}), "60006"),
    ]  # fmt: skip
    async with client_from("127.0.0.51") as client:
        ws = await client.ws_connect(mx.url + "/ws/v5/private")
        for frame, code in cases:
            await ws.send_str(frame)
            assert json.loads(await receive_text(ws))["code"] == code
        await ws.send_str(okx.build_subscribe(["orders:instType=ANY"], "s1"))
        assert json.loads(await receive_text(ws))["code"] == "60011"
        await ws.send_str(okx.build_login(GOOD, _now_ms(), None))
        assert json.loads(await receive_text(ws))["event"] == "login"
        await ws.send_str(okx.build_login(GOOD, _now_ms(), None))
        assert json.loads(await receive_text(ws))["code"] == "60031"
        await ws.close()


async def test_okx_private_channel_connections_per_account_at_the_limit_pass_and_one_more_is_refused(
    start_mock,
) -> None:
    mx = await start_mock(
        "okx", limits=["concurrentConnections:account=2", "messagesPerConnection=50/1"]
    )
    conns = []
    async with client_from("127.0.0.52") as client:
        for n in range(3):
            ws = await client.ws_connect(mx.url + "/ws/v5/private")
            await ws.send_str(okx.build_login(GOOD, _now_ms(), None))
            assert json.loads(await receive_text(ws))["event"] == "login"
            await ws.send_str(okx.build_subscribe(["orders:instType=ANY"], f"s{n}"))
            conns.append((ws, json.loads(await receive_text(ws))))
        assert [reply["event"] for _, reply in conns] == [
            "subscribe",
            "subscribe",
            "channel-conn-count-error",
        ]
        assert conns[2][1] == {"event": "channel-conn-count-error", "channel": "orders", "connCount": "2",
                               "connId": conns[2][1]["connId"]}  # fmt: skip
        for ws, _ in conns:
            await ws.close()
    assert mx.peak_fraction(*_account_limit()) == 1.0
    assert [v.limit for v in mx.violations()] == ["concurrentConnections"]


def _account_limit():
    from connquota.api.limits import LimitName, LimitScope

    return LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT


@pytest.mark.parametrize("dialect", ["binance", "bybit"])
async def test_sessions_per_account_at_the_limit_pass_and_one_more_is_refused(
    start_mock, dialect
) -> None:
    mx = await start_mock(
        dialect,
        limits=["concurrentConnections:account=2", "messagesPerConnection=50/1"],
        **_accounts(dialect),
    )
    wire = WIRE[dialect]
    results = []
    async with client_from("127.0.0.53") as client:
        conns = [await client.ws_connect(mx.url + PRIVATE_PATH[dialect]) for _ in range(3)]
        for n, ws in enumerate(conns):
            await ws.send_str(wire.build_login(_creds(dialect), _now_ms(), f"l{n}"))
            results.append(wire.parse_server_message(await receive_text(ws)))
        assert [getattr(r, "ok", False) for r in results] == [True, True, False]
        # another account has its own budget
        other = await client.ws_connect(mx.url + PRIVATE_PATH[dialect])
        await other.send_str(wire.build_login(_creds(dialect, 2), _now_ms(), "o"))
        assert getattr(wire.parse_server_message(await receive_text(other)), "ok", False)
        for ws in [*conns, other]:
            await ws.close()
    assert mx.peak(*_account_limit(), "acct-1") == 2
    assert [v.account for v in mx.violations()] == ["acct-1"]


async def test_sessions_per_api_key_count_each_key_of_one_account_apart(start_mock) -> None:
    """Deribit's rule (16 sessions per key, credits per sub-account) on the mock: two keys of
    one account each have their own session limit."""
    from connquota.mockexchange.settings import TestAccount

    one_account = tuple(
        TestAccount(f"test-key-{n}", f"test-secret-{n}", "test-passphrase", "sub-1") for n in (1, 2)
    )
    mx = await start_mock(
        "bybit",
        limits=["concurrentConnections:apiKey=1", "messagesPerConnection=50/1"],
        accounts=one_account,
    )
    ok = []
    async with client_from("127.0.0.56") as client:
        conns = [await client.ws_connect(mx.url + "/v5/private") for _ in range(3)]
        for ws, n in zip(conns, (1, 1, 2), strict=True):
            await ws.send_str(bybit.build_login(_creds("bybit", n), _now_ms(), f"l{n}"))
            ok.append(getattr(bybit.parse_server_message(await receive_text(ws)), "ok", False))
        for ws in conns:
            await ws.close()
    assert ok == [True, False, True]
    from connquota.api.limits import LimitName, LimitScope

    key_limit = (LimitName.CONCURRENT_CONNECTIONS, LimitScope.API_KEY)
    assert mx.peak(*key_limit, "test-key-1") == mx.peak(*key_limit, "test-key-2") == 1
    assert [(v.scope, v.account) for v in mx.violations()] == [("apiKey", "sub-1")]


async def test_bybit_private_topics_need_auth_and_then_deliver_data(start_mock) -> None:
    mx = await start_mock("bybit", rate_per_stream_hz=50, limits=["messagesPerConnection=50/1"])
    async with client_from("127.0.0.54") as client:
        ws = await client.ws_connect(mx.url + "/v5/private")
        await ws.send_str(bybit.build_subscribe(["order"], "s"))
        assert json.loads(await receive_text(ws))["ret_msg"] == "Request not authorized"
        await ws.send_str(bybit.build_login(GOOD, _now_ms(), "a"))
        assert json.loads(await receive_text(ws))["success"] is True
        await ws.send_str(bybit.build_subscribe(["order"], "s"))
        assert json.loads(await receive_text(ws))["success"] is True
        event = bybit.parse_server_message(await receive_text(ws))
        assert event.stream == "order" and event.seq is not None
        await ws.close()


async def test_binance_user_data_stream_after_logon(start_mock) -> None:
    mx = await start_mock(
        "binance",
        rate_per_stream_hz=50,
        limits=["messagesPerConnection=50/1"],
        accounts=ED25519_ACCOUNTS,
    )
    async with client_from("127.0.0.55") as client:
        ws = await client.ws_connect(mx.url + "/ws-api/v3")
        await ws.send_str(binance.build_user_data_subscribe("u0"))
        assert json.loads(await receive_text(ws))["error"]["code"] == -2015
        await ws.send_str(binance.build_login(_creds("binance"), _now_ms(), "l"))
        assert binance.parse_server_message(await receive_text(ws)) == LoginResult(True, "l")
        await ws.send_str(binance.build_user_data_subscribe("u1"))
        assert json.loads(await receive_text(ws)) == {
            "id": "u1",
            "status": 200,
            "result": {"subscriptionId": 0},
        }
        first = binance.parse_server_message(await receive_text(ws))
        second = binance.parse_server_message(await receive_text(ws))
        assert first.stream == "userData" and second.seq == first.seq + 1
        await ws.close()
