"""The operator's fleet test once per built-in profile (issue 15): a quota in each profile's
dialect, with every limit of the profile, applied on the real API server; real gateway
processes (the pod harness) against the mock exchange speaking that dialect as referee.

As in test_fleet.py the limits are shrunk (4 connections per IP, 2 streams per connection,
6 attempts per 2 s) and time is scaled (`fleet.TIME_SCALE`), so 8 streams fill the address's
concurrent connections, the tightest limit, to 100%. Each run: Ready, the limit at >= 90% of
its value as the mock recorded it, a consumer of every pod gets its streams, and after a mass
disconnect at the exchange every connection is back and consumed with 0 violations.

The quota names the profile's dialect and limits through `spec.custom` (the way every fleet
test scales time: the heartbeats and timeouts scale too); test_examples.py applies the same
profiles by name, unscaled.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    consume,
    pod_ips,
    pool_body,
    profile_limits,
    quota_body,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges import PROFILES, get_profile
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]

STREAM_OF = {
    "binance-spot": "f{i}usdt@trade",
    "binance-usdm": "f{i}usdt@aggTrade",  # a /market channel (the profile's endpoint)
    "okx": "trades:F{i}-USDT",
    "bybit": "publicTrade.F{i}USDT",
    "coinbase": "market_trades:F{i}-USD",
    "kraken": "trade:F{i}/USD",
    "deribit": "trades.F{i}-PERPETUAL.100ms",
}
"""A public channel of each built-in profile, `{i}` the symbol's number."""

CONNECTIONS = 4
"""concurrentConnections per IP the mock enforces: the fleet's 8 streams fill it."""


def test_every_built_in_profile_has_a_fleet_run() -> None:
    assert sorted(STREAM_OF) == sorted(PROFILES)


@pytest.mark.parametrize("profile", sorted(STREAM_OF))
def test_fleet_fills_the_tightest_limit_and_recovers_a_mass_disconnect(
    profile: str,
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
) -> None:
    started = time.monotonic()
    streams = [STREAM_OF[profile].format(i=i) for i in range(2 * CONNECTIONS)]
    mock = MockThread(
        profile_limits(
            profile,
            concurrentConnections=(CONNECTIONS, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        ),
        profile=profile,
    )
    objects = custom_object(api_client)
    core = client.CoreV1Api(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    path = urlsplit(get_profile(profile).endpoint).path.rstrip("/")
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_body(pool))
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "md", pool, mock.quota_exchange(f"{pool}.test", path), streams),
    )

    def log() -> str:
        out = [operator_process.log()]
        for ordinal in range(3):
            pod = f"md-gw-{ordinal}"
            out += [f"--- {pod}", *pod_harness.logs(namespace, pod).splitlines()[-30:]]
        return "\n".join(out)

    def consumers_get_every_stream() -> None:
        ips = pod_ips(api_client, namespace, "md")
        held = streams_by_pod(core, namespace, "md")
        assert sorted(s for v in held.values() for s in v) == sorted(streams), held
        for ordinal, mine in held.items():
            for stream, seqs in consume(ips[ordinal], mine, timeout_s=30).items():
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (stream, seqs)

    try:
        wait_ready(api_client, namespace, "md", 60, log)
        consumers_get_every_stream()
        upstream = sorted(s for v in mock.open_streams().values() for s in v)
        assert upstream == sorted(streams), upstream
        ready_s = time.monotonic() - started

        # A mass disconnect at the exchange: every connection back within the limits.
        assert mock.disconnect_all() == CONNECTIONS
        wait_for(
            lambda: len(mock.open_connections()) == CONNECTIONS,
            60,
            f"reconnection after the mass disconnect\n{log()}",
            interval_s=0.2,
        )
        consumers_get_every_stream()
        mock.assert_no_violation()
        # The tightest limit is the one the referee saw closest to its value.
        peaks = {
            f"{limit.name.value}/{limit.scope.value}": mock.peak_fraction(limit.name, limit.scope)
            for limit in mock.mock.profile.limits
        }
        tightest = max(peaks, key=lambda k: peaks[k])
        concurrent = peaks[f"{LimitName.CONCURRENT_CONNECTIONS.value}/{LimitScope.IP.value}"]
        assert concurrent >= 0.9, peaks
        assert peaks[tightest] == concurrent, peaks
        print(
            f"{profile}: Ready and consumed {ready_s:.1f} s, run {time.monotonic() - started:.1f}"
            f" s, tightest {tightest} peak {peaks[tightest]:.0%}, attempts peak "
            f"{peaks[f'{LimitName.CONNECTION_ATTEMPTS.value}/{LimitScope.IP.value}']:.0%}"
        )
    finally:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
        # Its gateways go at once and close everything; the finalizer stays until nothing of
        # the quota counts at the exchange any more (the profile's dead-connection timeout,
        # docs/operator.md), which this test does not wait for.
        wait_for(
            lambda: not pod_ips(api_client, namespace, "md") and not mock.open_connections(),
            90,
            f"the deleted quota's gateways gone and their connections closed\n{log()}",
        )
        after_deletion = (mock.open_connections(), mock.violations())
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        mock.stop()
    assert after_deletion == (set(), [])
