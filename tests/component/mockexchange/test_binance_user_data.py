"""Binance spot user data on the mock's WebSocket API (``/ws-api/v3``), as exchange-dialects.md
1.6 documents it: session.logon takes Ed25519 keys only, userDataStream.subscribe.signature any
key type; one subscription per account per connection; events gapless per account."""

from __future__ import annotations

import json
import time

from mockexchange_clients import client_from, handshake, receive_text

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges.dialects import binance
from connquota.exchanges.dialects.base import ApiCredentials, Data
from connquota.mockexchange.keys import asymmetric_account, generate_key_pair
from connquota.mockexchange.settings import TestAccount

HMAC = TestAccount("hmac-key", "hmac-secret", account_id="acct-hmac")
ED, ED_PRIVATE = asymmetric_account("ed-key", "acct-ed")
RSA, RSA_PRIVATE = asymmetric_account("rsa-key", "acct-rsa", "rsa")
ACCOUNTS = (HMAC, ED, RSA)
CREDS = {
    "acct-hmac": ApiCredentials("hmac-key", "hmac-secret"),
    "acct-ed": ApiCredentials("ed-key", ED_PRIVATE),
    "acct-rsa": ApiCredentials("rsa-key", RSA_PRIVATE),
}


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _reply(ws) -> dict:
    """The next response to a request (user-data events skipped)."""
    while True:
        doc = json.loads(await receive_text(ws))
        if "status" in doc:
            return doc


async def test_session_logon_takes_only_a_valid_fresh_ed25519_signature(start_mock) -> None:
    mx = await start_mock("binance", limits=["messagesPerConnection=50/1"], accounts=ACCOUNTS)
    cases = [
        (binance.build_login(CREDS["acct-hmac"], _now_ms(), "hmac"), 401, -2015),
        (binance.build_login(CREDS["acct-rsa"], _now_ms(), "rsa"), 401, -2015),
        (binance.build_login(ApiCredentials("ed-key", generate_key_pair()[0]), _now_ms(), "x"),
         400, -1022),
        (binance.build_login(ApiCredentials("nobody", ED_PRIVATE), _now_ms(), "who"), 401, -2015),
        (binance.build_login(CREDS["acct-ed"], _now_ms() - 6000, "old"), 400, -1021),
    ]  # fmt: skip
    async with client_from("127.0.0.60") as client:
        ws = await client.ws_connect(mx.url + "/ws-api/v3")
        for frame, status, code in cases:
            await ws.send_str(frame)
            reply = await _reply(ws)
            assert (reply["status"], reply["error"]["code"]) == (status, code), reply
            assert reply["id"] == json.loads(frame)["id"]
        await ws.send_str(binance.build_login(CREDS["acct-ed"], _now_ms() - 6000, "w", 10000))
        reply = await _reply(ws)
        assert reply["status"] == 200 and reply["result"]["apiKey"] == "ed-key"
        await ws.close()
    assert mx.violations() == []


async def test_signature_subscriptions_of_every_key_type_share_one_session_gaplessly(
    start_mock,
) -> None:
    # market data at 1/s, user data at 100/s: the events below can only be the private feed's
    mx = await start_mock(
        "binance",
        limits=["messagesPerConnection=50/1"],
        accounts=ACCOUNTS,
        private_rate_hz=100,
    )
    async with client_from("127.0.0.61") as client:
        ws = await client.ws_connect(mx.url + "/ws-api/v3")
        ids = {}
        for account, creds in CREDS.items():
            await ws.send_str(
                binance.build_user_data_subscribe_signature(creds, _now_ms(), account)
            )
            reply = await _reply(ws)
            assert reply["status"] == 200 and reply["id"] == account, reply
            ids[reply["result"]["subscriptionId"]] = account
        assert sorted(ids) == [0, 1, 2]
        seqs: dict[int, list[int]] = {}
        kinds = set()
        while min((len(v) for v in seqs.values()), default=0) < 10 or len(seqs) < 3:
            text = await receive_text(ws)
            doc = json.loads(text)
            event = binance.parse_server_message(text)
            assert isinstance(event, Data) and event.stream == "userData"
            seqs.setdefault(doc["subscriptionId"], []).append(event.seq)
            kinds.add(event.payload["e"])
        for seq in seqs.values():
            assert seq == list(range(seq[0], seq[0] + len(seq)))  # gapless per account
        assert kinds == {"outboundAccountPosition", "executionReport"}
        await ws.send_str(binance.build_user_data_unsubscribe("u", 1))
        assert (await _reply(ws))["result"] == {}
        await ws.close()
    assert mx.violations() == []


async def test_a_second_subscription_for_one_account_on_one_connection_is_refused(
    start_mock,
) -> None:
    mx = await start_mock("binance", limits=["messagesPerConnection=50/1"], accounts=ACCOUNTS)
    async with client_from("127.0.0.62") as client:
        ws = await client.ws_connect(mx.url + "/ws-api/v3")
        await ws.send_str(binance.build_login(CREDS["acct-ed"], _now_ms(), "l"))
        assert (await _reply(ws))["status"] == 200
        await ws.send_str(binance.build_user_data_subscribe("s1"))
        assert (await _reply(ws))["result"] == {"subscriptionId": 0}
        await ws.send_str(
            binance.build_user_data_subscribe_signature(CREDS["acct-ed"], _now_ms(), "s2")
        )
        refused = await _reply(ws)
        assert refused["status"] == 400 and refused["id"] == "s2"
        # another connection of the same account may subscribe: the rule is per connection
        other = await client.ws_connect(mx.url + "/ws-api/v3")
        await other.send_str(
            binance.build_user_data_subscribe_signature(CREDS["acct-ed"], _now_ms(), "s3")
        )
        assert (await _reply(other))["result"] == {"subscriptionId": 0}
        await ws.close()
        await other.close()
    assert [(v.limit, v.scope, v.account) for v in mx.violations()] == [
        ("userDataSubscriptionsPerAccount", "account", "acct-ed")
    ]


async def test_stream_and_ws_api_connections_share_one_attempt_budget_per_ip(start_mock) -> None:
    mx = await start_mock("binance", limits=["connectionAttempts:ip=4/60"], accounts=ACCOUNTS)
    async with client_from("127.0.0.63") as client:
        statuses = [
            (await handshake(client, mx.url + path))[0]
            for path in ("/stream", "/ws-api/v3", "/ws/btcusdt@trade", "/ws-api/v3", "/ws-api/v3")
        ]
    assert statuses == [101, 101, 101, 101, 429]
    assert mx.peak(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, "127.0.0.63") == 5
    assert [v.limit for v in mx.violations()] == ["connectionAttempts"]


async def test_a_revoked_key_gets_the_documented_401_and_its_user_data_stops(start_mock) -> None:
    mx = await start_mock(
        "binance", limits=["messagesPerConnection=50/1"], accounts=ACCOUNTS, private_rate_hz=50
    )
    async with client_from("127.0.0.64") as client:
        ws = await client.ws_connect(mx.url + "/ws-api/v3")
        await ws.send_str(binance.build_login(CREDS["acct-ed"], _now_ms(), "l"))
        assert (await _reply(ws))["status"] == 200
        await ws.send_str(binance.build_user_data_subscribe("s"))
        assert (await _reply(ws))["result"] == {"subscriptionId": 0}
        assert mx.revoke_key("ed-key") == 1
        assert await _reply(ws) == {
            "id": None,
            "status": 401,
            "error": {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."},
        }
        assert not any(s.startswith("userData:") for c in mx.websockets() for s in c.streams)
        await ws.send_str(binance.build_login(CREDS["acct-ed"], _now_ms(), "again"))
        assert (await _reply(ws))["error"]["code"] == -2015
        await ws.close()
