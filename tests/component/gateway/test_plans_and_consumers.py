"""Plan changes touch only what changed; rotations have no gap; consumers get clear answers."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest
from conftest import GW_IP, Consumer, base_plan, mock_attempts, shrunk, stream_names, wait_for
from prometheus_client.parser import text_string_to_metric_families

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import ConnectionPlan, SpareRoom
from connquota.testing.gateway_plans import bind_address, pod_plan


async def test_a_plan_change_reopens_nothing_it_keeps_and_paces_new_subscribes(harness):
    limits = shrunk(
        "binance-spot",
        connectionAttempts=(10, 40.0),
        messagesPerConnection=(10, 20.0),  # 10 per second at the test's time scale
        argsPerSubscribe=(1, None),
    )
    await harness.start_mock("binance-spot", limits)
    plan, names = base_plan(harness, "binance-spot", conns=6)
    path = harness.write_plan(plan)
    gw = harness.gateway(path)
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    extra = stream_names("binance-spot", 12, tag="new")
    conns = list(plan.connections)
    c0 = conns[0]
    leaving = c0.streams[0]
    conns[0] = c0.model_copy(update={"streams": c0.streams[1:] + extra})
    conns[5] = ConnectionPlan(id="c6", address="a0", streams=stream_names("binance-spot", 2, "six"))
    plan2 = pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
        generation=2,
    )
    consumer = Consumer(harness.http, gw.ws_url)
    harness.write_plan(plan2)

    async def applied():
        st = await harness.status(gw)
        return st if st["planGeneration"] == 2 and st["streams"]["live"] == 23 else None

    st = await wait_for(applied, 30, "generation 2 live")
    opened = {c["id"]: c["sessionsOpened"] for c in st["connections"]}
    assert set(opened) == {"c0", "c1", "c2", "c3", "c4", "c6"}
    assert all(opened[c] == 1 for c in ("c0", "c1", "c2", "c3", "c4")), opened
    await consumer.connect(extra)

    async def delivered():
        return consumer.streams_seen() >= set(extra)

    await wait_for(delivered, 20, "the new streams at the consumer")
    mock = harness.mock

    async def unsubscribed():
        return not any(leaving in c.streams for c in mock.websockets(GW_IP))

    await wait_for(unsubscribed, 10, "the leaving stream unsubscribed after its linger")
    report_path = gw.state_dir / "gateway-0.report.json"

    async def reported():
        report = json.loads(report_path.read_text())
        return report if report["planGeneration"] == 2 and report["streams"] == 23 else None

    report = await wait_for(reported, 10, "the report to acknowledge generation 2")
    assert report["bootId"] and report["connections"] == 6
    assert {(a["scope"], a["key"]) for a in report["attempts"]} == {("ip", "a0")}
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION)
    await consumer.close()


def _trade_id(profile: str, data: Any) -> int:
    """The exchange's own id of one trade push: Binance spot ``t``, USD-M aggTrade ``a``, OKX
    ``tradeId``, Bybit ``seq``."""
    if profile == "binance-spot":
        return int(data["t"])
    if profile == "binance-usdm":
        return int(data["a"])
    if profile == "okx":
        return int(data["data"][0]["tradeId"])
    return int(data["data"][0]["seq"])


ROTATION_STREAMS = {
    "binance-spot": stream_names("binance-spot", 8),
    "binance-usdm": stream_names("binance-usdm", 8),  # aggTrade on the /market route
    "okx": [f"trades:R{i}-USDT" for i in range(8)],
    "bybit": stream_names("bybit", 8),  # publicTrade
}


@pytest.mark.parametrize("profile_name", list(ROTATION_STREAMS))
async def test_max_age_rotation_is_make_before_break_without_a_gap(harness, profile_name):
    """Every connection reaches the profile's maximum connection age (24 h, shrunk to 100 s,
    5 s at the test's time scale) and is replaced make-before-break: the consumer sees no
    gap in the gateway's seq nor in the exchange's own trade ids, the exchange closes nothing
    for its age and counts 0 violations."""
    max_age_profile_s = 100.0  # 5 s at the test's time scale
    limits = shrunk(
        profile_name,
        connectionAttempts=(10, 40.0),
        maxConnectionAge=(max_age_profile_s, None),
    )
    await harness.start_mock(profile_name, limits, rate_per_stream_hz=20.0)
    profile = harness.gateway_profile().model_copy(update={"connectTimeoutSeconds": 0.1})
    names = ROTATION_STREAMS[profile_name]
    conns = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=names[i * 2 : i * 2 + 2]) for i in range(4)
    ]
    plan = pod_plan(
        profile, conns, addresses=[bind_address(0, harness.egress_check())], margin_s=0.2
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)
    mock = harness.mock
    oldest_age = 0.0

    async def rotated():
        nonlocal oldest_age
        now = time.monotonic()
        for c in mock.websockets(GW_IP):
            oldest_age = max(oldest_age, now - c.opened_at)
        st = await harness.status(gw)
        return all(c["sessionsOpened"] >= 2 for c in st["connections"])

    await wait_for(rotated, 30, "every connection rotated", step_s=0.02)
    for stream, seqs in consumer.frames.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), stream
    # The exchange's own trade ids: no gap and no duplicate across the switch.
    assert set(consumer.data) == set(names)
    for stream, payloads in consumer.data.items():
        ids = [_trade_id(profile_name, data) for data in payloads]
        assert len(ids) > 20 and ids == list(range(ids[0], ids[0] + len(ids))), stream
    closes = mock.metrics.registry.get_sample_value
    assert not any(
        (closes("mockexchange_server_closes_total", {"code": str(code)}) or 0)
        for code in (1000, 1001, 1006, 1008)
    ), "the exchange had to close a connection for its age"
    assert oldest_age >= 0.9 * max_age_profile_s / 20.0
    harness.assert_no_violation()
    await consumer.close()


async def test_rotations_due_together_take_the_spare_room_in_turn_each_make_before_break(harness):
    """Four connections opened together reach their maximum age together; the plan leaves the
    pod one connection of spare room (5 of 5 concurrent: 4 held, 1 spare). Each rotation waits
    for the spare room another one holds instead of closing first: every connection rotates
    make-before-break, the exchange's trade ids show no gap, and never more than 5 are open."""
    max_age_profile_s = 200.0  # 10 s at the test's time scale
    limits = shrunk(
        "binance-spot",
        connectionAttempts=(10, 40.0),
        concurrentConnections=(5, None),
        maxConnectionAge=(max_age_profile_s, None),
    )
    await harness.start_mock("binance-spot", limits, rate_per_stream_hz=20.0)
    profile = harness.gateway_profile().model_copy(update={"connectTimeoutSeconds": 0.1})
    names = stream_names("binance-spot", 8)
    conns = [
        ConnectionPlan(id=f"c{i}", address="a0", streams=names[i * 2 : i * 2 + 2]) for i in range(4)
    ]
    plan = pod_plan(
        profile,
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
        concurrent_slice=5,
    ).model_copy(update={"spare": [SpareRoom(address="a0", connections=1, attempts=1)]})
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)

    async def rotated():
        st = await harness.status(gw)
        return all(c["sessionsOpened"] >= 2 for c in st["connections"])

    await wait_for(rotated, 40, "every connection rotated", step_s=0.05)
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        reconnects = {
            sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(await resp.text())
            if family.name == "connquota_gateway_reconnects"
            for sample in family.samples
        }
    assert reconnects.get("rotation", 0) >= 4, reconnects
    assert "rotation-break-before-make" not in reconnects, reconnects
    for stream, ids in consumer.trade_ids.items():
        assert ids == list(range(ids[0], ids[0] + len(ids))), stream
    harness.assert_peak_at_least(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP, 1.0)
    harness.assert_no_violation()
    await consumer.close()


async def test_consumers_get_error_frames_auth_and_a_1012_on_shutdown(harness, tmp_path):
    await harness.start_mock("binance-spot", shrunk("binance-spot", connectionAttempts=(10, 40.0)))
    plan, names = base_plan(harness, "binance-spot", conns=2)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    gw = harness.gateway(harness.write_plan(plan), args=["--consumer-token-file", str(token)])
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    http = harness.http
    try:
        await http.ws_connect(gw.ws_url)
        raise AssertionError("connected without the token")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    ws = await http.ws_connect(gw.ws_url, headers={"Authorization": "Bearer s3cret-token"})

    async def ask(text: str) -> dict:
        await ws.send_str(text)
        while True:
            doc = json.loads((await ws.receive(timeout=5)).data)
            if "stream" not in doc:
                return doc

    assert (await ask("{not json"))["error"]["code"] == "bad_json"
    assert (await ask('{"op":"dance"}'))["error"]["code"] == "unknown_op"
    assert (await ask(json.dumps({"op": "subscribe", "streams": "x"})))["error"][
        "code"
    ] == "bad_request"
    assert (await ask("x" * 70_000))["error"]["code"] == "too_large"
    reply = await ask(json.dumps({"op": "subscribe", "streams": [names[0], "nope@trade"], "id": 7}))
    assert reply == {"op": "subscribed", "streams": [names[0]], "id": 7}
    assert (await ws.receive(timeout=5)).json()["error"]["code"] == "unknown_stream"
    frame = None
    while frame is None or "stream" not in frame:
        frame = json.loads((await ws.receive(timeout=5)).data)
    assert frame["stream"] == names[0] and frame["seq"] >= 1
    async with http.get(gw.base_url + "/metrics") as resp:
        metrics = await resp.text()
    assert "s3cret" not in metrics and "connquota_gateway_consumers 1.0" in metrics
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if not sample.labels or sample.labels == {"le": "+Inf"}
    }
    # The frame received above was written to this consumer: its delivery latency is counted.
    assert samples["connquota_gateway_delivery_seconds_count"] >= 1
    assert samples["connquota_gateway_delivery_seconds_bucket"] >= 1
    assert samples["connquota_gateway_lease_held"] == 1.0
    async with http.get(gw.base_url + "/status") as resp:
        assert "s3cret" not in await resp.text()
    gw.signal(15)
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
            break
    assert ws.close_code == 1012
    assert await gw.wait_exit(15) == 0
    harness.assert_no_violation()
    assert "s3cret" not in harness.logs()


async def test_an_egress_mismatch_refuses_to_connect_with_a_clear_status(harness):
    await harness.start_mock("binance-spot", shrunk("binance-spot", connectionAttempts=(10, 40.0)))
    plan, _ = base_plan(harness, "binance-spot", conns=2)
    wrong = plan.addresses[0].model_copy(update={"publicAddress": "127.0.0.9"})
    plan = plan.model_copy(update={"addresses": [wrong]})
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def refused():
        st = await harness.status(gw)
        return st if st and st["egress"].get("a0", {}).get("state") == "mismatch" else None

    st = await wait_for(refused, 20, "the egress check to find the mismatch")
    assert (
        "127.0.0.2" in st["egress"]["a0"]["message"]
        and "127.0.0.9" in st["egress"]["a0"]["message"]
    )

    async def all_refused():
        st = await harness.status(gw)
        return all(c["state"] == "refused" for c in st["connections"])

    await wait_for(all_refused, 10, "every connection refused")
    assert harness.mock.websockets() == []
    assert mock_attempts(harness.mock) == 0, "a mismatched address spends no exchange attempt"
    assert (
        harness.mock.metrics.registry.get_sample_value("mockexchange_websockets_opened_total") or 0
    ) == 0
    assert harness.echo.requests["127.0.0.2"] >= 1, "the check went to the echo service"


async def test_against_an_exchange_without_whoami_every_connection_opens_and_the_check_costs_no_attempt(
    harness,
):
    """Real exchanges serve no /whoami: the check goes to the pool's echo service, once."""
    mx = await harness.start_mock(
        "binance-spot", shrunk("binance-spot", connectionAttempts=(12, 40.0))
    )
    async with harness.http.get(mx.http_url + "/whoami") as resp:
        assert resp.status != 200, "the mock behaves as a real exchange: no /whoami"
    plan, names = base_plan(harness, "binance-spot", conns=12)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    st = await harness.wait_live(gw, len(names), timeout_s=40)
    assert st["egress"]["a0"]["state"] == "verified"
    # One check for the address (not one per connection), at the echo service.
    assert harness.echo.requests == {"127.0.0.2": 1}
    # The exchange saw exactly one attempt per connection: nothing else went there.
    assert mock_attempts(harness.mock) == 12
    report = st["egressReport"]
    assert report == [
        {
            "address": "a0",
            "publicAddress": "127.0.0.2",
            "state": "verified",
            "seenAddress": "127.0.0.2",
            "reason": "",
            "checkedAt": report[0]["checkedAt"],
        }
    ]
    harness.assert_peak_at_least(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, 0.9)
    harness.assert_no_violation()


async def test_an_unverified_address_connects_and_says_why(harness):
    from connquota.api.pool import EgressCheck, EgressCheckMethod

    await harness.start_mock("okx", shrunk("okx", connectionAttempts=(10, 20.0)))
    check = EgressCheck(method=EgressCheckMethod.NONE, reason="NAT verified by the platform team")
    plan, names = base_plan(harness, "okx", conns=2, egress_check=check)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    st = await harness.wait_live(gw, len(names), timeout_s=30)
    assert st["egress"]["a0"]["state"] == "unverified"
    assert "NAT verified by the platform team" in st["egress"]["a0"]["message"]
    assert harness.echo.requests == {}
    assert mock_attempts(harness.mock) == 2, "one exchange attempt per connection, nothing else"
    harness.assert_no_violation()


async def test_an_echo_service_that_fails_blocks_its_address_until_it_answers(harness):
    await harness.start_mock("bybit", shrunk("bybit", connectionAttempts=(10, 20.0)))
    harness.echo.refuse = True
    plan, names = base_plan(harness, "bybit", conns=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def failed():
        st = await harness.status(gw)
        return st if st and st["egress"].get("a0", {}).get("state") == "failed" else None

    st = await wait_for(failed, 20, "the egress check to fail")
    assert "HTTP 503" in st["egress"]["a0"]["message"]
    assert mock_attempts(harness.mock) == 0
    harness.echo.refuse = False
    st = await harness.wait_live(gw, len(names), timeout_s=30)
    assert st["egress"]["a0"]["state"] == "verified"
    # Retried on one backoff for the address, not once per connection every few seconds.
    assert harness.echo.requests["127.0.0.2"] <= 4
    harness.assert_no_violation()


async def test_an_unreachable_echo_service_blocks_only_the_address_it_verifies(harness):
    """a1's check names an echo URL nobody answers: a1 makes no exchange attempt while a0,
    verified through the working echo service, opens all its connections."""
    import socket

    from connquota.api.pool import EgressCheck, EgressCheckMethod

    await harness.start_mock("okx", shrunk("okx", connectionAttempts=(10, 20.0)))
    with socket.socket() as probe:  # a loopback port with no listener: connection refused
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = EgressCheck(
        method=EgressCheckMethod.URL, url=f"http://127.0.0.1:{dead_port}/ip", timeoutSeconds=2
    )
    names = stream_names("okx", 4)
    conns = [ConnectionPlan(id=f"c{i}", address=f"a{i % 2}", streams=[names[i]]) for i in range(4)]
    plan = pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check()), bind_address(1, dead)],
        margin_s=0.2,
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    st = await harness.wait_live(gw, 2, timeout_s=30)

    async def a1_failed():
        st = await harness.status(gw)
        return st if st and st["egress"].get("a1", {}).get("state") == "failed" else None

    st = await wait_for(a1_failed, 20, "a1's egress check to fail")
    assert st["egress"]["a0"]["state"] == "verified"
    assert "could not be reached" in st["egress"]["a1"]["message"]
    states = {c["id"]: c["state"] for c in st["connections"]}
    assert states["c1"] == states["c3"] == "refused", states
    assert states["c0"] == states["c2"] == "live", states
    assert mock_attempts(harness.mock, "127.0.0.3") == 0, "a blocked address tries nothing"
    assert mock_attempts(harness.mock, "127.0.0.2") == 2
    assert harness.echo.requests == {"127.0.0.2": 1}
    async with harness.http.get(gw.base_url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'connquota_gateway_egress_check{address="a0",state="verified"} 1.0' in metrics
    assert 'connquota_gateway_egress_check{address="a1",state="failed"} 1.0' in metrics
    harness.assert_no_violation()


async def test_private_connections_log_in_from_secret_files_within_the_account_slice(
    harness, tmp_path
):
    from connquota.api.limits import Limit, LimitShape
    from connquota.api.plan import PlanCredential, Slice

    per_account = Limit(
        name=LimitName.CONCURRENT_CONNECTIONS,
        value=3,
        scope=LimitScope.ACCOUNT,
        shape=LimitShape.CONCURRENT,
    )
    await harness.start_mock("okx", [*shrunk("okx", connectionAttempts=(10, 20.0)), per_account])
    secret_dir = tmp_path / "credentials" / "key-1"
    secret_dir.mkdir(parents=True)
    (secret_dir / "apiKey").write_text("test-key-1\n")
    (secret_dir / "apiSecret").write_text("test-secret-1\n")
    (secret_dir / "passphrase").write_text("test-passphrase\n")
    cred = PlanCredential(
        name="key-1",
        accountId="acct-1",
        secretName="okx-key-1",
        mountPath=str(secret_dir),
        passphraseKey="passphrase",
    )
    conns = [
        ConnectionPlan(
            id=f"p{i}", address="a0", credential="key-1", streams=["orders:instType=SPOT"]
        )
        for i in range(4)
    ]
    account_slice = Slice(
        limit=LimitName.CONCURRENT_CONNECTIONS,
        scope=LimitScope.ACCOUNT,
        key="acct-1",
        value=3,
        shape=LimitShape.CONCURRENT,
    )
    plan = pod_plan(
        harness.gateway_profile(),
        conns,
        addresses=[bind_address(0, harness.egress_check())],
        margin_s=0.2,
        credentials=[cred],
        account_slices=[account_slice],
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def three_logged_in():
        ws = harness.mock.websockets(GW_IP)
        return len([c for c in ws if c.account == "acct-1" and c.streams]) == 3

    await wait_for(three_logged_in, 30, "three private connections subscribed")

    async def three_live_one_waiting():
        st = await harness.status(gw)
        live = [c for c in st["connections"] if c["state"] == "live"]
        return st if len(live) == 3 else None

    st = await wait_for(three_live_one_waiting, 10, "the gateway to see three live")
    waiting = [c for c in st["connections"] if c["state"] != "live"]
    assert len(waiting) == 1 and "concurrent slice on account acct-1" in waiting[0]["status"]
    assert len(harness.mock.websockets(GW_IP)) == 3  # the fourth waits: it never exceeds
    harness.assert_no_violation()
    harness.assert_peak_at_least(LimitName.CONCURRENT_CONNECTIONS, LimitScope.ACCOUNT)
    assert "test-secret-1" not in harness.logs() and "test-secret-1" not in str(st)
