"""Late joiners (issue 12 §3): a consumer may ask for each stream's newest message when it
subscribes (`lastValue`), from the pod holding the stream or through a relaying pod, when the
quota keeps last values; the gateway's sequence stays consecutive after it."""

from __future__ import annotations

import asyncio
import json

from conftest import shrunk, stream_names, wait_for

from connquota.api.plan import ConnectionPlan
from connquota.testing.gateway_plans import bind_address, pod_plan

RECEIVE_S = 15.0
SLOW_HZ = 0.5
"""One message per stream every 2 s: a cached message arrives long before the next one."""


async def _frames(ws, n: int) -> list[dict]:
    out = []
    while len(out) < n:
        body = json.loads((await ws.receive(timeout=RECEIVE_S)).data)
        if "seq" in body or "error" in body:
            out.append(body)
    return out


async def _start(harness, tmp_path, held: list[list[str]], args: list[str]):
    await harness.start_mock(
        "binance-spot",
        shrunk("binance-spot", connectionAttempts=(20, 20.0)),
        rate_per_stream_hz=SLOW_HZ,
    )
    token = tmp_path / "peer-token"
    token.write_text("peer-token-0123456789\n")
    gateways = []
    for ordinal, streams in enumerate(held):
        conns = [ConnectionPlan(id=f"p{ordinal}", address="a0", streams=streams)]
        plan = pod_plan(harness.gateway_profile(), conns,
                        addresses=[bind_address(0, harness.egress_check())], margin_s=0.2,
                        ordinal=ordinal)  # fmt: skip
        path = harness.write_plan(plan, f"plan-{ordinal}.json")
        gateways.append(harness.gateway(path, ordinal=ordinal, state=f"state-{ordinal}"))
    for gw in gateways:
        peers = [a for other in gateways if other is not gw for a in ("--peer", other.base_url)]
        gw.extra_args += [*args, "--peer-token-file", str(token), *peers]
        gw.start()
    for gw, streams in zip(gateways, held, strict=True):
        await harness.wait_live(gw, len(streams), timeout_s=30)
    return gateways


async def test_a_late_consumer_gets_the_newest_message_at_once_then_the_next_in_sequence(
    harness, tmp_path
):
    (name,) = stream_names("binance-spot", 1)
    (gw,) = await _start(harness, tmp_path, [[name]], ["--last-value-cache"])
    async with harness.http.ws_connect(gw.ws_url) as early:
        await early.send_str(json.dumps({"op": "subscribe", "streams": [name]}))
        (seen,) = await _frames(early, 1)
        async with harness.http.ws_connect(gw.ws_url) as late:
            request = {"op": "subscribe", "streams": [name], "lastValue": True}
            await late.send_str(json.dumps(request))
            cached, fresh = await _frames(late, 2)
        assert cached["cached"] is True and cached["data"] == seen["data"]
        assert cached["seq"] == seen["seq"] and "cached" not in fresh
        assert fresh["seq"] == cached["seq"] + 1
    harness.assert_no_violation()


async def test_without_the_cache_a_last_value_request_gets_a_clear_error(harness, tmp_path):
    (name,) = stream_names("binance-spot", 1)
    (gw,) = await _start(harness, tmp_path, [[name]], [])
    async with harness.http.ws_connect(gw.ws_url) as ws:
        request = {"op": "subscribe", "streams": [name], "lastValue": True, "id": 7}
        await ws.send_str(json.dumps(request))
        (error,) = await _frames(ws, 1)
        assert error["error"]["code"] == "last_value_off" and error["id"] == 7
        (data,) = await _frames(ws, 1)  # still subscribed
        assert data["stream"] == name


async def test_a_relaying_pod_passes_on_the_owners_newest_message(harness, tmp_path):
    names = stream_names("binance-spot", 2)
    gw0, gw1 = await _start(harness, tmp_path, [names[:1], names[1:]], ["--last-value-cache"])
    relayed = names[1]

    async def linked() -> bool:
        st = await harness.status(gw0)
        peers = (st or {}).get("relay", {}).get("peers", {})
        return any(p["connected"] and p["holds"] == 1 for p in peers.values())

    await wait_for(linked, 20, "pod 0's link to pod 1")
    async with harness.http.ws_connect(gw1.ws_url) as at_owner:
        await at_owner.send_str(json.dumps({"op": "subscribe", "streams": [relayed]}))
        (newest,) = await _frames(at_owner, 1)
        async with harness.http.ws_connect(gw0.ws_url) as through_peer:
            request = {"op": "subscribe", "streams": [relayed], "lastValue": True}
            await through_peer.send_str(json.dumps(request))
            (first,) = await _frames(through_peer, 1)
            # it is the owner's newest message, not the next one: the owner has sent nothing
            # newer yet (one message every 2 s)
            latest = await asyncio.wait_for(_newest_so_far(at_owner), 0.5)
            assert first["data"]["t"] in (newest["data"]["t"], latest)
    harness.assert_no_violation()


async def _newest_so_far(ws) -> int | None:
    """The trade id of a frame already waiting on `ws`, if any (None when none is queued)."""
    try:
        body = json.loads((await ws.receive(timeout=0.2)).data)
    except TimeoutError:
        return None
    return body["data"]["t"]
