"""Any pod serves any stream of its quota (issue 12 §1): three gateway processes, each holding
other streams upstream, relay them to each other's consumers over one authenticated peer link
per pair; the exchange sees every stream subscribed exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from conftest import stream_names, wait_for
from relay_fleet import TOKEN, fleet_plan, start_fleet, upstream_streams

pytestmark = pytest.mark.slow

RECEIVE_S = 10.0


class Reader:
    """A `/v1/ws` consumer recording seq per stream and notices."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seqs: dict[str, list[int]] = {}
        self.useqs: dict[str, list[int]] = {}
        self.notices: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            body = json.loads(msg.data)
            if "seq" in body:
                self.seqs.setdefault(body["stream"], []).append(body["seq"])
                self.useqs.setdefault(body["stream"], []).append(body["data"]["t"])
            elif "notice" in body:
                self.notices.append(body)
            elif "error" in body:
                self.errors.append(body)

    def count(self, stream: str) -> int:
        return len(self.seqs.get(stream, []))


def _consecutive(values: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(values))


async def test_a_consumer_on_one_pod_reads_the_streams_every_other_pod_holds(harness, tmp_path):
    names = stream_names("binance-spot", 6)
    held = [names[0:2], names[2:4], names[4:6]]
    gateways = await start_fleet(harness, tmp_path, held)
    gw0 = gateways[0]
    async with harness.http.ws_connect(gw0.ws_url) as ws:
        reader = Reader(ws)
        await ws.send_str(json.dumps({"op": "subscribe", "streams": names, "id": 1}))

        async def frames_everywhere() -> bool:
            return all(reader.count(s) >= 5 for s in names)

        await wait_for(frames_everywhere, 20, "frames of every stream through pod 0")
        assert not reader.errors
        for stream in names:
            assert _consecutive(reader.seqs[stream]), stream
            assert _consecutive(reader.useqs[stream]), stream  # no gap, no duplicate
        reader.task.cancel()
    # relaying opened nothing upstream: each stream once, held where its plan says
    assert upstream_streams(harness) == sorted(names)

    # the exchange's own protocol too: ccxt on pod 0 watches a trade stream pod 2 holds
    exchange = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = harness.mock.http_url + "/api/v3"
    exchange.urls["api"]["ws"]["spot"] = gw0.base_url.replace("http", "ws") + "/ws"
    symbol = names[5].split("@")[0].upper().replace("USDT", "/USDT")
    try:
        trades = await asyncio.wait_for(exchange.watch_trades(symbol), RECEIVE_S)
        assert trades[-1]["symbol"] == symbol
    finally:
        await exchange.close()
    assert upstream_streams(harness) == sorted(names)
    harness.assert_no_violation()


async def test_a_peer_link_needs_the_peer_token(harness, tmp_path):
    names = stream_names("binance-spot", 2)
    (gw,) = await start_fleet(harness, tmp_path, [names])
    url = gw.base_url.replace("http", "ws") + "/v1/peer"
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await harness.http.ws_connect(url, headers=headers)
        assert refused.value.status == 401
    async with harness.http.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"}) as peer:
        have = json.loads((await peer.receive(timeout=RECEIVE_S)).data)
        assert have == {"op": "have", "reset": True, "streams": sorted(names)}
        # a peer gets only what this pod holds: never a stream it would have to relay
        await peer.send_str(json.dumps({"op": "subscribe", "streams": [names[0], "x@trade"]}))
        replies = [json.loads((await peer.receive(timeout=RECEIVE_S)).data) for _ in range(2)]
        assert replies[0] == {"op": "subscribed", "streams": [names[0]]}
        assert replies[1]["streams"] == ["x@trade"]


async def test_a_dead_peer_is_noticed_and_its_streams_resume_when_it_is_back(harness, tmp_path):
    names = stream_names("binance-spot", 4)
    gateways = await start_fleet(harness, tmp_path, [names[0:2], names[2:4]])
    gw0, gw1 = gateways
    relayed = names[2]
    async with harness.http.ws_connect(gw0.ws_url) as ws:
        reader = Reader(ws)
        await ws.send_str(json.dumps({"op": "subscribe", "streams": [relayed]}))

        async def flowing() -> bool:
            return reader.count(relayed) > 3

        await wait_for(flowing, 15, "the relayed stream flowing")
        await gw1.kill()

        async def lost() -> bool:
            return any(n["notice"] == "relay_lost" for n in reader.notices)

        await wait_for(lost, 10, "a relay_lost notice")
        assert reader.notices[0]["stream"] == relayed
        before = reader.count(relayed)
        gw1.start()

        async def resumed() -> bool:
            restored = any(n["notice"] == "relay_restored" for n in reader.notices)
            return restored and reader.count(relayed) > before + 3

        await wait_for(resumed, 30, "the stream back after the peer restarted")
        # the gateway's own sequence stays consecutive for the consumer across the outage
        assert _consecutive(reader.seqs[relayed])
        reader.task.cancel()
    assert upstream_streams(harness) == sorted(names)
    harness.assert_no_violation()


async def test_a_stream_moving_between_peers_reaches_the_consumer_without_gap_or_duplicate(
    harness, tmp_path
):
    """The stream moves from pod 1 to pod 2 (make, then break). Its consumers on every pod see
    it without gap, duplicate or notice: on pod 0 (relayed, from 1 then 2), on pod 1 (held,
    then relayed from 2) and on pod 2 (relayed from 1, then held)."""
    names = stream_names("binance-spot", 6)
    gateways = await start_fleet(harness, tmp_path, [names[0:2], names[2:4], names[4:6]])
    moving = names[2]
    async with contextlib.AsyncExitStack() as stack:
        readers = []
        for gw in gateways:
            ws = await stack.enter_async_context(harness.http.ws_connect(gw.ws_url))
            readers.append(Reader(ws))
            await ws.send_str(json.dumps({"op": "subscribe", "streams": [moving]}))

        async def flowing() -> bool:
            return all(r.count(moving) >= 3 for r in readers)

        await wait_for(flowing, 15, "the stream flowing from pod 1 to every pod's consumer")
        # make: pod 2 takes the stream too; break: then pod 1 lets it go
        harness.write_plan(fleet_plan(harness, 2, [*names[4:6], moving], 2), "plan-2.json")

        async def both_hold() -> bool:
            return upstream_streams(harness).count(moving) == 2

        await wait_for(both_hold, 15, "pod 2 holding the stream as well")
        harness.write_plan(fleet_plan(harness, 1, names[3:4], 2), "plan-1.json")
        before = [r.count(moving) for r in readers]

        async def moved() -> bool:
            return upstream_streams(harness).count(moving) == 1 and all(
                r.count(moving) >= n + 20 for r, n in zip(readers, before, strict=True)
            )

        await wait_for(moved, 30, "the stream served by pod 2 alone, still flowing")
        for reader in readers:
            reader.task.cancel()
    for ordinal, reader in enumerate(readers):
        assert _consecutive(reader.seqs[moving]), ordinal
        # the exchange's trade ids: no gap, no duplicate
        assert _consecutive(reader.useqs[moving]), (ordinal, reader.useqs[moving])
        assert reader.notices == [] and reader.errors == [], (ordinal, reader.notices)
    harness.assert_no_violation()
