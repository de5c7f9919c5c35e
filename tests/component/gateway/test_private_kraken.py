"""Kraken private streams, the gateway's wire (`PrivateWire`) against the mock (issue 15): the
token comes from REST `GetWebSocketsToken` signed with the key (API-Sign), private subscribes
to `executions` and `balances` carry it, their data and acks come back under the plan's stream
names; a wrong key is refused by the REST call (EAPI:Invalid signature / key); a revoked key's
session is closed by the exchange, its token then refused (an auth error to the session).

Through a gateway process: test_private_kraken_gateway.py."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
from conftest import GW_IP, shrunk

from connquota.exchanges.dialects import kraken
from connquota.exchanges.dialects.base import Ack, ApiCredentials, Data, Error, LoginResult
from connquota.gateway.private_wire import PrivateWire
from connquota.mockexchange.settings import MockSettings, TestAccount
from connquota.testing.waiting import wait_until

SECRET = base64.b64encode(b"kraken-test-secret-0123456789abcdef" * 2).decode()
ACCOUNT = TestAccount("kraken-key-1", SECRET, account_id="acct-kr")
STREAMS = ["executions", "balances#main"]


async def start_mock(harness):
    return await harness.start_mock(
        "kraken",
        shrunk("kraken", connectionAttempts=(10, 20.0)),
        settings=MockSettings(accounts=(ACCOUNT,), private_rate_hz=20.0, ban_after_violations=100),
    )


def gateway_http() -> aiohttp.ClientSession:
    """An HTTP session leaving from the gateway's test address, as the egress session does."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(GW_IP, 0)))


class WireReader:
    """Frames from one upstream WebSocket, parsed by a PrivateWire."""

    def __init__(self, wire: PrivateWire, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.wire, self.ws = wire, ws
        self.acks: list[Ack] = []
        self.errors: list[Error] = []
        self.data: dict[str, list[Any]] = {}

    async def until(self, done, timeout_s: float = 10.0) -> None:
        async def step() -> bool:
            msg = await self.ws.receive(timeout=timeout_s)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"the upstream WebSocket ended: {msg.type}")
            ev = self.wire.parse_server_message(msg.data)
            if isinstance(ev, Ack):
                self.acks.append(ev)
            elif isinstance(ev, Error):
                self.errors.append(ev)
            elif isinstance(ev, Data):
                self.data.setdefault(ev.stream, []).append(ev.payload)
            return bool(done())

        await wait_until(step, timeout_s, "frames from the mock", 0.0)


async def test_private_channels_carry_a_rest_token_and_data_arrives_under_plan_names(
    harness,
):
    mock = await start_mock(harness)
    wire = PrivateWire(kraken, ApiCredentials(ACCOUNT.api_key, SECRET))
    assert not wire.logs_on
    url = mock.url + "/v2"
    async with gateway_http() as http:
        assert await wire.prepare(http, url) is None
        assert wire.kraken_token in mock.kraken_tokens  # type: ignore[attr-defined]
        ws = await http.ws_connect(url)
        for rid, stream in enumerate(STREAMS, start=1):
            frame = wire.build_subscribe([stream], rid)
            assert frame is not None
            doc = json.loads(frame)
            assert doc["params"]["token"] == wire.kraken_token
            assert doc["params"]["channel"] == stream.split("#")[0]
            await ws.send_str(frame)
        reader = WireReader(wire, ws)
        await reader.until(lambda: all(len(reader.data.get(s, [])) >= 5 for s in STREAMS))
        assert sorted(s for a in reader.acks for s in a.streams) == sorted(STREAMS)
        assert reader.errors == []
        for stream in STREAMS:
            seqs = [p["sequence"] for p in reader.data[stream]]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        assert reader.data["executions"][0]["type"] == "snapshot"
        assert {"order_id", "exec_id", "exec_type"} <= set(reader.data["executions"][-1]["data"][0])
        assert {"asset", "balance", "ledger_id"} <= set(reader.data["balances#main"][-1]["data"][0])
        (conn,) = [c for c in mock.websockets(GW_IP) if c.account is not None]
        assert conn.account == "acct-kr"
        await ws.close()
    harness.assert_no_violation()


async def test_a_wrong_key_is_refused_by_the_token_call(harness):
    await start_mock(harness)
    url = harness.mock.url + "/v2"
    wrong_secret = base64.b64encode(b"not-the-secret" * 4).decode()
    async with gateway_http() as http:
        refused = await PrivateWire(kraken, ApiCredentials(ACCOUNT.api_key, wrong_secret)).prepare(
            http, url
        )
        assert refused == LoginResult(
            False, None, "EAPI:Invalid signature", "GetWebSocketsToken refused"
        )
        unknown = await PrivateWire(kraken, ApiCredentials("nobody", SECRET)).prepare(http, url)
        assert unknown is not None and not unknown.ok and unknown.code == "EAPI:Invalid key"
    harness.assert_no_violation()


async def test_a_revoked_key_ends_the_session_and_its_token_is_refused(harness):
    mock = await start_mock(harness)
    url = mock.url + "/v2"
    wire = PrivateWire(kraken, ApiCredentials(ACCOUNT.api_key, SECRET))
    async with gateway_http() as http:
        assert await wire.prepare(http, url) is None
        ws = await http.ws_connect(url)
        await ws.send_str(wire.build_subscribe(["executions"], 1) or "")
        reader = WireReader(wire, ws)
        await reader.until(lambda: len(reader.data.get("executions", [])) >= 2)
        assert mock.revoke_key(ACCOUNT.api_key) == 1
        closed = await ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # a new session: the REST call refuses the key; the old token is refused too
        again = await PrivateWire(kraken, ApiCredentials(ACCOUNT.api_key, SECRET)).prepare(
            http, url
        )
        assert again is not None and again.code == "EAPI:Invalid key"
        ws = await http.ws_connect(url)
        await ws.send_str(wire.build_subscribe(["executions"], 2) or "")
        reader = WireReader(wire, ws)
        await reader.until(lambda: reader.errors)
        assert reader.errors[0].msg == kraken.INVALID_SESSION
        assert wire.is_auth_error(reader.errors[0])
        await ws.close()
    harness.assert_no_violation()
