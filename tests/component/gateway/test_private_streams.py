"""Private streams end to end: a gateway process logs in with the key in its mounted Secret files
and delivers each dialect's private stream to a consumer; a refused key is reported clearly and
retried only when the Secret changes; secrets never appear in logs, status or metrics.

Private stream names: binance `userData` (optionally `userData#<tag>`), okx
`orders:instType=...`, bybit `order` / `wallet` ...
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import GW_IP, mock_attempts, shrunk, wait_for

from connquota.api.limits import Limit, LimitName, LimitScope, LimitShape
from connquota.api.plan import ConnectionPlan, PlanCredential, Slice
from connquota.mockexchange.keys import asymmetric_account
from connquota.mockexchange.settings import TestAccount
from connquota.testing.gateway_plans import bind_address, pod_plan

PRIVATE_RATE_HZ = 20.0


def write_secret(tmp_path: Path, name: str, files: dict[str, str]) -> PlanCredential:
    """Secret files as the kubelet mounts them, and the plan's reference to them."""
    directory = tmp_path / "credentials" / name
    directory.mkdir(parents=True, exist_ok=True)
    for key, value in files.items():
        tmp = directory / f".{key}.tmp"
        tmp.write_text(value + "\n")
        tmp.replace(directory / key)
    return PlanCredential(
        name=name,
        accountId=f"acct-{name}",
        secretName=f"secret-{name}",
        mountPath=str(directory),
        passphraseKey="passphrase" if "passphrase" in files else None,
    )


class PrivateConsumer:
    """A consumer of the gateway's /v1/ws that keeps every payload per stream."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.payloads: dict[str, list[Any]] = {}
        self.seqs: dict[str, list[int]] = {}
        self._task: asyncio.Task | None = None

    async def connect(self, streams: list[str]) -> None:
        ws = await self.http.ws_connect(self.url)
        await ws.send_str(json.dumps({"op": "subscribe", "streams": streams}))
        self._task = asyncio.create_task(self._read(ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            doc = json.loads(msg.data)
            if "stream" in doc:
                self.payloads.setdefault(doc["stream"], []).append(doc["data"])
                self.seqs.setdefault(doc["stream"], []).append(doc["seq"])

    def count(self, stream: str) -> int:
        return len(self.payloads.get(stream, []))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


def exchange_seq(dialect: str, payload: Any) -> int:
    """The mock's sequence number inside a delivered private payload."""
    if dialect == "binance-spot":
        return payload["u"]
    if dialect == "bybit":
        return payload["data"][0]["seq"]
    return payload["data"][0]["seqId"]


def assert_gapless(values: list[int]) -> None:
    assert values == list(range(values[0], values[0] + len(values))), values[:20]


async def text_of(harness, gw, path: str) -> str:
    async with harness.http.get(gw.base_url + path) as resp:
        return await resp.text()


def refused_probe(harness, gw):
    """A probe for wait_for: the gateway's first connection once it reports `auth-refused`."""

    async def refused() -> dict | None:
        st = await harness.status(gw)
        conn = st["connections"][0] if st and st["connections"] else {}
        return conn if conn.get("state") == "auth-refused" else None

    return refused


async def assert_no_secret_anywhere(harness, gw, secrets: list[str]) -> None:
    """Grep the gateway's logs, /status and /metrics for every secret (and PEM key line)."""
    places = {
        "logs": harness.logs(),
        "status": await text_of(harness, gw, "/status"),
        "metrics": await text_of(harness, gw, "/metrics"),
    }
    for secret in secrets:
        needles = [line for line in secret.splitlines() if len(line) > 16 and "-----" not in line]
        for needle in needles or [secret]:
            for place, text in places.items():
                assert needle not in text, f"a secret appears in the gateway's {place}"
    state = harness.tmp_path / "state"
    for report in state.glob("*.json"):
        for secret in secrets:
            assert secret.strip().splitlines()[1 if "-----" in secret else 0] not in (
                report.read_text()
            )


def private_setup(tmp_path: Path, dialect: str) -> tuple[list[TestAccount], list, list[str]]:
    """Mock accounts, (credential, streams) per private connection, and the secrets used."""
    if dialect == "binance-spot":
        ed_account, ed_private = asymmetric_account("ed-key", "acct-ed")
        hmac_account = TestAccount("hmac-key", "hmac-secret-0123456789", account_id="acct-hmac")
        ed = write_secret(tmp_path, "ed", {"apiKey": "ed-key", "apiSecret": ed_private})
        hm = write_secret(
            tmp_path, "hmac", {"apiKey": "hmac-key", "apiSecret": "hmac-secret-0123456789"}
        )
        ed = ed.model_copy(update={"accountId": "acct-ed"})
        hm = hm.model_copy(update={"accountId": "acct-hmac"})
        conns = [(ed, ["userData"]), (hm, ["userData#hmac"])]
        return [ed_account, hmac_account], conns, [ed_private, "hmac-secret-0123456789"]
    account = TestAccount("k-1", "s3cr3t-value-0123456789", "pass-phrase-42", "acct-k")
    files = {"apiKey": "k-1", "apiSecret": "s3cr3t-value-0123456789"}
    if dialect == "okx":
        files["passphrase"] = "pass-phrase-42"
    cred = write_secret(tmp_path, "k", files)
    if dialect == "okx":
        # two connections on the `orders` channel: the shrunk limit of 2 per account
        conns = [(cred, ["orders:instType=SPOT"]), (cred, ["orders:instType=SWAP"])]
    else:
        conns = [(cred, ["order", "wallet"])]
    secrets = ["s3cr3t-value-0123456789"] + (["pass-phrase-42"] if dialect == "okx" else [])
    return [account], conns, secrets


def account_slice(account: str, value: int) -> Slice:
    """The pod's slice of concurrent connections of `account` (OKX counts per account)."""
    return Slice(
        limit=LimitName.CONCURRENT_CONNECTIONS,
        scope=LimitScope.ACCOUNT,
        key=account,
        value=value,
        shape=LimitShape.CONCURRENT,
    )


def private_plan(harness, conns: list, extra_slices: list[Slice] | None = None):
    connections = [
        ConnectionPlan(id=f"p{i}", address="a0", credential=cred.name, streams=streams)
        for i, (cred, streams) in enumerate(conns)
    ]
    creds = list({cred.name: cred for cred, _ in conns}.values())
    return pod_plan(
        harness.gateway_profile(),
        connections,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
        credentials=creds,
        account_slices=extra_slices,
    )


@pytest.mark.parametrize("dialect", ["binance-spot", "okx", "bybit"])
async def test_private_streams_reach_consumers_after_login_and_again_after_a_reconnect(
    harness, tmp_path, dialect
):
    accounts, conns, secrets = private_setup(tmp_path, dialect)
    limits = shrunk(dialect, connectionAttempts=(10, 20.0))
    account_slices = []
    if dialect == "okx":
        # OKX: 30 connections per private channel per sub-account, shrunk to 2
        limits.append(
            Limit(
                name=LimitName.CONCURRENT_CONNECTIONS,
                value=2,
                scope=LimitScope.ACCOUNT,
                shape=LimitShape.CONCURRENT,
            )
        )
        account_slices.append(account_slice("acct-k", 2))
    mock = await harness.start_mock(
        dialect,
        limits,
        settings=_settings(accounts),
    )
    if dialect != "okx":
        conns = [(c.model_copy(update={"accountId": _acct(c, accounts)}), s) for c, s in conns]
    else:
        conns = [(c.model_copy(update={"accountId": "acct-k"}), s) for c, s in conns]
    plan = private_plan(harness, conns, account_slices)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    streams = [s for _, names in conns for s in names]
    await harness.wait_live(gw, len(streams), timeout_s=30)
    consumer = PrivateConsumer(harness.http, gw.ws_url)
    await consumer.connect(streams)

    async def frames_on_every_stream(n: int):
        return all(consumer.count(s) >= n for s in streams)

    await wait_for(lambda: frames_on_every_stream(5), 20, f"private frames on {streams}")
    before = {s: consumer.count(s) for s in streams}

    # the exchange drops every connection: the gateway reconnects and logs in again
    logins_before = mock.metrics.registry.get_sample_value("mockexchange_websockets_opened_total")
    await mock.disconnect(GW_IP)
    await wait_for(
        lambda: frames_on_every_stream(max(before.values()) + 5), 30, "frames after reconnecting"
    )
    logged_in = [c for c in mock.websockets(GW_IP) if c.account is not None]
    assert len(logged_in) == len(conns)
    assert mock.metrics.registry.get_sample_value("mockexchange_websockets_opened_total") >= (
        logins_before + len(conns)
    )
    consumer.close()
    for stream in streams:
        assert_gapless(consumer.seqs[stream])
        # the exchange's own sequence is gapless between reconnects (each session starts
        # where the account's feed is): check within the first session's frames
        first = [exchange_seq(dialect, p) for p in consumer.payloads[stream][: before[stream]]]
        assert_gapless(first)
    if dialect == "binance-spot":
        kinds = {p["e"] for s in streams for p in consumer.payloads[s]}
        assert kinds == {"outboundAccountPosition", "executionReport"}
    harness.assert_no_violation()
    if dialect == "okx":
        harness.assert_peak_at_least(LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT)
    await assert_no_secret_anywhere(harness, gw, secrets)


def _settings(accounts: list[TestAccount]):
    from connquota.mockexchange.settings import MockSettings

    return MockSettings(
        accounts=tuple(accounts),
        private_rate_hz=PRIVATE_RATE_HZ,
        ban_after_violations=100,
    )


def _acct(cred: PlanCredential, accounts: list[TestAccount]) -> str:
    key = Path(cred.mountPath, cred.apiKeyKey).read_text().strip()
    return next(a.account for a in accounts if a.api_key == key)


WRONG = {
    # dialect: (what the gateway's status names, the mock's documented answer)
    "binance-spot": "-1022",
    "okx": "60007",
    "bybit": "code auth",
}


@pytest.mark.parametrize("dialect", ["binance-spot", "okx", "bybit"])
async def test_a_refused_key_is_reported_and_retried_only_when_the_secret_changes(
    harness, tmp_path, dialect
):
    accounts, conns, secrets = private_setup(tmp_path, dialect)
    cred, streams = conns[0]
    good = Path(cred.mountPath, "apiSecret").read_text().strip()
    if dialect == "binance-spot":
        from connquota.mockexchange.keys import generate_key_pair

        wrong = generate_key_pair()[0]
    else:
        wrong = "wrong-secret-0123456789"
    write_secret(tmp_path, cred.name, {"apiSecret": wrong})
    mock = await harness.start_mock(
        dialect, shrunk(dialect, connectionAttempts=(10, 20.0)), settings=_settings(accounts)
    )
    cred = cred.model_copy(update={"accountId": _acct(cred, accounts)})
    slices = [account_slice(cred.accountId, 30)] if dialect == "okx" else []
    gw = harness.gateway(harness.write_plan(private_plan(harness, [(cred, streams)], slices)))
    gw.start()

    async def refused():
        st = await harness.status(gw)
        conn = st["connections"][0] if st and st["connections"] else {}
        return conn if conn.get("state") == "auth-refused" else None

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert WRONG[dialect] in conn["status"] and "credential files change" in conn["status"]
    attempts = mock_attempts(mock)
    # no tight loop: with a 1 s backoff cap a retrying gateway would make several attempts here
    for _ in range(20):
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    assert "login refused by the exchange" in harness.logs()

    # the Secret is rotated to the right key: the gateway tries again and serves the stream
    write_secret(tmp_path, cred.name, {"apiSecret": good})
    await harness.wait_live(gw, len(streams), timeout_s=20)
    harness.assert_no_violation()
    await assert_no_secret_anywhere(harness, gw, [*secrets, wrong])


REVOKED = {"binance-spot": "-2015", "okx": "60005", "bybit": "code auth"}


@pytest.mark.parametrize("dialect", ["binance-spot", "okx", "bybit"])
async def test_a_key_revoked_mid_session_stops_the_connection_without_a_retry_loop(
    harness, tmp_path, dialect
):
    accounts, conns, _ = private_setup(tmp_path, dialect)
    cred, streams = conns[0]
    cred = cred.model_copy(update={"accountId": _acct(cred, accounts)})
    mock = await harness.start_mock(
        dialect, shrunk(dialect, connectionAttempts=(10, 20.0)), settings=_settings(accounts)
    )
    slices = [account_slice(cred.accountId, 30)] if dialect == "okx" else []
    gw = harness.gateway(harness.write_plan(private_plan(harness, [(cred, streams)], slices)))
    gw.start()
    await harness.wait_live(gw, len(streams), timeout_s=30)
    api_key = Path(cred.mountPath, cred.apiKeyKey).read_text().strip()
    assert mock.revoke_key(api_key) == 1

    async def refused():
        st = await harness.status(gw)
        conn = st["connections"][0]
        return conn if conn["state"] == "auth-refused" else None

    conn = await wait_for(refused, 20, "the connection reported as refused")
    assert REVOKED[dialect] in conn["status"], conn
    attempts = mock_attempts(mock)
    for _ in range(15):
        await asyncio.sleep(0.1)
        assert (await refused()) is not None
    assert mock_attempts(mock) == attempts
    harness.assert_no_violation()


async def test_sessions_per_api_key_are_held_per_key_while_the_account_is_shared(harness, tmp_path):
    """Two keys of one sub-account (Deribit's rule: sessions per key, credits per account):
    each key's concurrent slice holds its own sessions, the other key is not held back, and
    the exchange sees no more sessions per key than the slice."""
    per_key = Limit(
        name=LimitName.CONCURRENT_CONNECTIONS,
        value=1,
        scope=LimitScope.API_KEY,
        shape=LimitShape.CONCURRENT,
    )
    accounts = [
        TestAccount(f"key-{n}", f"s3cr3t-value-{n}-0123456789", account_id="sub-1") for n in (1, 2)
    ]
    creds = [
        write_secret(
            tmp_path, f"k{n}", {"apiKey": f"key-{n}", "apiSecret": f"s3cr3t-value-{n}-0123456789"}
        ).model_copy(update={"accountId": "sub-1", "keyId": f"key-{n}"})
        for n in (1, 2)
    ]
    mock = await harness.start_mock(
        "bybit",
        [*shrunk("bybit", connectionAttempts=(10, 20.0)), per_key],
        settings=_settings(accounts),
    )
    key_slices = [
        Slice(
            limit=LimitName.CONCURRENT_CONNECTIONS,
            scope=LimitScope.API_KEY,
            key=c.keyId,
            value=1,
            shape=LimitShape.CONCURRENT,
        )
        for c in creds
    ]
    # key-1 wants two sessions, key-2 one: key-1's second waits for its own slot
    conns = [(creds[0], ["order"]), (creds[0], ["wallet"]), (creds[1], ["order#2"])]
    gw = harness.gateway(harness.write_plan(private_plan(harness, conns, key_slices)))
    gw.start()

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
    st = await harness.status(gw)
    held = {(u["scope"], u["key"]): (u["connections"], u["connectionSlice"]) for u in st["usage"]}
    assert held[("apiKey", "key-1")] == held[("apiKey", "key-2")] == (1, 1)
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONCURRENT_CONNECTIONS, LimitScope.API_KEY)
