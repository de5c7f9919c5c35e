"""Any pod serves any stream of its quota (issue 12): a 3-pod fleet run by the operator on the
real API server, its pods finding each other by Pod IP, read by real exchange client
libraries through the client Service's address (landing on each pod in turn) and by a `/v1/ws` consumer that stays connected through a pod
deletion and a scale-down, with the mock exchange as referee.

Each pod holds one connection of two streams (the limits of tests/cluster/operator/fleet.py:
two streams per connection, four connections per IP), so every client reads streams that
other pods hold upstream, relayed over the peer links.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from binance_common.configuration import ConfigurationWebSocketStreams
from binance_sdk_spot import spot
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    MockThread,
    pod_ips,
    pool_body,
    quota_body,
    streams_by_pod,
    wait_ready,
)
from connquota.testing.chaos import SeqConsumer
from connquota.testing.podharness import PodHarness
from connquota.testing.service_proxy import ServiceProxy

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]

SYMBOLS = ("btcusdt", "ethusdt", "bnbusdt")
STREAMS = [f"{s}@{kind}" for s in SYMBOLS for kind in ("trade", "miniTicker")]
WATCH_S = 20.0


def _linked_peers(ip: str) -> set[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://{ip}:8080/status", timeout=5) as resp:
        relay = json.loads(resp.read())["relay"]
    return {url for url, link in relay["peers"].items() if link["connected"]}


def _session_ends(mock_exchange: MockThread, ip: str) -> dict[str, Any]:
    """Why upstream sessions ended (a break in a stream's exchange ids outside a planned move
    is an upstream reconnect): the exchange's closes, and pod `ip`'s own count by reason."""
    import urllib.request

    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pod = [line for line in text.splitlines() if line.startswith("connquota_gateway_reconnects")]
    return {"exchange closes": mock_exchange.counter_total("server_closes"), "pod 0": pod}


def _every_pod_linked(api_client: Any, namespace: str, count: int) -> bool:
    ips = pod_ips(api_client, namespace, "md")
    if len(ips) != count:
        return False
    return all(
        _linked_peers(ip) == {f"http://{o}:8080" for k, o in ips.items() if k != ordinal}
        for ordinal, ip in ips.items()
    )


async def _ccxt_reads_every_symbol(address: str, rest_url: str) -> None:
    """ccxt's binance pro client, its WebSocket base URL the gateway's (`host:port`): trades
    and tickers of every symbol of the quota, parsed by ccxt."""
    exchange = ccxtpro.binance({"options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"]["public"] = rest_url + "/api/v3"
    exchange.urls["api"]["ws"]["spot"] = f"ws://{address}/ws"
    try:
        for symbol in ("BTC/USDT", "ETH/USDT", "BNB/USDT"):
            trades = await asyncio.wait_for(exchange.watch_trades(symbol), WATCH_S)
            assert trades and trades[-1]["symbol"] == symbol and trades[-1]["price"] > 0
            ticker = await asyncio.wait_for(exchange.watch_ticker(symbol), WATCH_S)
            assert ticker["symbol"] == symbol and ticker["last"] is not None
    finally:
        await exchange.close()


async def _sdk_reads_trades(address: str, symbols: list[str]) -> None:
    """The official Binance SDK's trade streams, its stream URL the gateway's (`host:port`)."""
    sdk = spot.Spot(config_ws_streams=ConfigurationWebSocketStreams(stream_url=f"ws://{address}"))
    connection = await sdk.websocket_streams.create_connection()
    got: dict[str, list[Any]] = {s.upper(): [] for s in symbols}
    every = asyncio.Event()

    def on_trade(event: Any) -> None:
        got[event.s].append(event)
        if all(got.values()):
            every.set()

    try:
        for symbol in symbols:
            stream = await connection.trade(symbol=symbol)
            stream.on("message", on_trade)
        await asyncio.wait_for(every.wait(), WATCH_S)
    finally:
        await connection.close_connection(close_session=True)
    for symbol, events in got.items():
        assert events[0].e == "trade" and float(events[0].p) > 0, symbol


def _consecutive(values: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(values))


def _increasing(values: list[int]) -> bool:
    return all(b > a for a, b in itertools.pairwise(values))


def test_a_three_pod_fleet_serves_every_stream_through_any_pod_through_a_deletion_and_a_scale_down(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    body = quota_body(namespace, "md", pool, exchange, STREAMS, connections_per_pod=1)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )
    log = operator_process.log
    wait_ready(api_client, namespace, "md", 120, log)
    assert apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 3
    held = streams_by_pod(core, namespace, "md")
    assert sorted(s for v in held.values() for s in v) == sorted(STREAMS)
    assert all(len(v) == 2 for v in held.values()) and len(held) == 3, held
    wait_for(lambda: _every_pod_linked(api_client, namespace, 3), 60, "every pod linked")
    ips = pod_ips(api_client, namespace, "md")

    # Real client libraries through the client Service's address (the harness's kube-proxy
    # stand-in sends each connection to a ready pod, here in turn so every pod is hit):
    # whichever pod they land on, they read the streams of all three.
    turn = itertools.count()
    service = ServiceProxy(
        api_client, namespace, "md-gw", 8080, choose=lambda ips: sorted(ips)[next(turn) % 3]
    ).start()
    try:
        for _ in range(3):
            asyncio.run(_ccxt_reads_every_symbol(service.address, mock_exchange.mock.http_url))
            asyncio.run(_sdk_reads_trades(service.address, list(SYMBOLS)))
    finally:
        service.stop()
    assert set(service.picked) == set(ips.values()), service.picked
    mock_exchange.assert_no_violation()

    # A consumer on pod 0 through a pod deletion and a scale-down.
    consumer = SeqConsumer.on_pod(ips[0], STREAMS)
    try:
        wait_for(lambda: consumer.all_grew(dict.fromkeys(STREAMS, 0), 3), 30, "every stream")
        # Pod 2 deleted: its streams pause with a relay_lost notice and resume, with
        # relay_restored, from its replacement (a new pod, a new Pod IP).
        lost = set(held[2])
        marks = {"deleted": time.monotonic()}
        core.delete_namespaced_pod("md-gw-2", namespace)
        wait_for(lambda: consumer.noticed("relay_lost") >= lost, 60, "relay_lost notices")
        wait_for(
            lambda: consumer.noticed("relay_restored") >= lost,
            120,
            f"relay_restored notices\n{log()}",
        )
        wait_ready(api_client, namespace, "md", 120, log)
        wait_for(lambda: _every_pod_linked(api_client, namespace, 3), 60, "relinked")
        before = consumer.counts()
        wait_for(lambda: consumer.all_grew(before, 5), 30, "every stream after the deletion")

        # Scale-down: one pod of three connections, so pod 0 takes every connection and the
        # StatefulSet shrinks to 1. Pod 0's concurrent slice has spare room for one copy, not
        # for the two connections leaving, so the operator goes break-before-make and says so
        # (docs/operator.md, "No room"): pods 1 and 2 close as pod 0 opens their connections,
        # and the streams moving may miss the trades of that moment (the linger narrows it).
        marks["scale-down"] = time.monotonic()
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {"spec": {"gateway": {"connectionsPerPod": 3, "maxReplicas": 1}}},
        )
        wait_for(
            lambda: apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 1,
            120,
            f"scale-down to one pod\n{log()}",
        )
        wait_ready(api_client, namespace, "md", 60, log)
        before = consumer.counts()
        wait_for(lambda: consumer.all_grew(before, 5), 30, "every stream after the scale-down")
    finally:
        consumer.stop()

    assert consumer.errors == [], consumer.errors
    # Only the deleted pod's streams were ever noticed lost; none after the scale-down.
    assert consumer.noticed("relay_lost") == lost, consumer.notices
    events = [
        (e.reason, (e.message or "")[:160])
        for e in core.list_namespaced_event(namespace).items
        if e.involved_object.kind == "ExchangeConnectionQuota"
    ]
    assert any(
        reason == "ScalingDown" and "break-before-make" in message for reason, message in events
    ), events
    moved = set(held[1]) | set(held[2])
    for stream in STREAMS:
        # The gateway's own sequence: consecutive through both events.
        assert _consecutive(consumer.seqs[stream]), (stream, consumer.seqs[stream])
        ids = consumer.trade_ids[stream]
        if stream.endswith("@trade"):
            # The exchange's trade ids: no duplicate ever; no gap but while its pod was gone.
            # A stream of pod 1 may miss trades only at the break-before-make scale-down.
            check = _increasing if stream in lost | moved else _consecutive
            if stream in moved - lost:
                early = [b for b in consumer.trade_id_breaks(stream) if b[2] < marks["scale-down"]]
                assert early == [], f"{stream}: breaks before the scale-down {early}"
            breaks = [
                (a, b, {k: round(t - v, 2) for k, v in marks.items()})
                for a, b, t in consumer.trade_id_breaks(stream)
            ]
            assert ids and check(ids), (
                f"{stream} (lost with pod 2: {stream in lost}, {len(ids)} trades): breaks "
                f"{breaks}; held {held}; session ends {_session_ends(mock_exchange, ips[0])}; "
                f"quota events {events}"
            )
    upstream = sorted(s for v in mock_exchange.open_streams().values() for s in v)
    assert upstream == sorted(STREAMS), upstream
    mock_exchange.assert_no_violation()
