"""The chaos suite (issue 17): whole scenarios on the real API server, the operator and real
gateway processes run by the pod harness, the mock exchange as referee. Each scenario runs the
fleet at its tightest limit (4 connections per IP, all 4 open: 100%), breaks something, and
leaves a row in the table docs/reliability.md keeps (`connquota.testing.chaos`,
`hack/chaos-table.py`): peak use of the tightest limit, violations, streams down at most and
the longest outage against the planned recovery bound, upstream duplicates, consumer seq gaps.

Marked `chaos`: `make chaos` runs them (CI runs the tier after the soak tier).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.testing.chaos import (
    ChaosRow,
    ConsumerFlood,
    SeqConsumer,
    StreamWatch,
    record_row,
)
from connquota.testing.controlplane import ControlPlane
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

STREAMS = [f"s{i}usdt@trade" for i in range(8)]
QUOTA = "md"
LEASE_S = 15.0
"""The gateways' Lease duration (a SIGKILLed pod's successor waits it out)."""


class Fleet:
    """One quota of 8 streams on 2 pods (4 connections: the IP's whole concurrent limit)."""

    def __init__(
        self, api_client: Any, namespace: str, operator: OperatorProcess, mock: MockThread
    ) -> None:
        self.api, self.ns, self.operator, self.mock = api_client, namespace, operator, mock
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)

    def log(self) -> str:
        return self.operator.log()

    def ready(self, timeout_s: float = 120) -> None:
        wait_ready(self.api, self.ns, QUOTA, timeout_s, self.log)

    def bound_s(self) -> float:
        """The planned recovery bound: the slowest address's, from the quota's status."""
        quota = get_quota(self.api, self.ns, QUOTA) or {}
        bounds = (quota.get("status") or {}).get("recoveryBounds") or []
        return max((b["seconds"] for b in bounds), default=0.0)

    def all_up(self, watch: StreamWatch, timeout_s: float, what: str) -> float:
        """Wait until every planned stream is subscribed upstream; seconds it took."""
        started = time.monotonic()
        wait_for(
            lambda: watch.samples > 0 and not watch.down_now(),
            timeout_s,
            f"every stream back upstream ({what})\n{self.log()}",
            interval_s=0.1,
        )
        return time.monotonic() - started

    def consumer(self) -> SeqConsumer:
        ips = pod_ips(self.api, self.ns, QUOTA)
        return SeqConsumer.on_pod(ips[min(ips)], STREAMS)

    def row(
        self, scenario: str, watch: StreamWatch, bound_s: float, gaps: int, notes: str = ""
    ) -> ChaosRow:
        return ChaosRow(
            scenario=scenario,
            tightestLimit="concurrentConnections per IP (4)",
            peakPercent=100
            * self.mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP),
            violations=len(self.mock.violations()),
            maxStreamsDown=watch.max_down,
            longestOutageSeconds=watch.longest_outage_s,
            boundSeconds=bound_s,
            upstreamDuplicates=watch.duplicates,
            consumerGaps=gaps,
            notes=notes,
        )


@dataclass
class PoolSetup:
    """The pool a scenario's quotas share."""

    name: str
    domain: str
    addresses: list[dict[str, Any]]


@contextlib.contextmanager
def _quotas_on_pool(
    api_client: Any,
    namespace: str,
    operator: OperatorProcess,
    mock: MockThread,
    echo_url: str,
    streams_of: dict[str, list[str]],
    *,
    addresses: int = 1,
    connections_per_pod: int = 2,
    max_replicas: int = 3,
    gateway: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
) -> Iterator[tuple[Fleet, PoolSetup]]:
    """A fresh pool of `addresses` loopback addresses and one quota per `streams_of` entry
    (name -> streams; `spec`: more spec fields of each) on the mock; every quota deleted (and
    waited gone) and the pool deleted afterwards."""
    objects = custom_object(api_client)
    name = f"p-{uuid.uuid4().hex[:8]}"
    body = pool_body(name, addresses=addresses, echo_url=echo_url)
    setup = PoolSetup(name, f"{name}.test", body["spec"]["addresses"])
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", body)
    quotas = (GROUP, VERSION, namespace, "exchangeconnectionquotas")
    try:
        for quota, streams in streams_of.items():
            doc = quota_body(
                namespace,
                quota,
                name,
                mock.quota_exchange(setup.domain),
                streams,
                max_replicas=max_replicas,
                connections_per_pod=connections_per_pod,
                gateway=gateway,
            )
            doc["spec"].update(spec or {})
            objects.create_namespaced_custom_object(*quotas, doc)
        yield Fleet(api_client, namespace, operator, mock), setup
    finally:
        for quota in streams_of:
            with contextlib.suppress(client.ApiException):
                objects.delete_namespaced_custom_object(*quotas, quota)
        for quota in streams_of:
            wait_for(lambda q=quota: get_quota(api_client, namespace, q) is None, 180, "deletion")
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", name)


@contextlib.contextmanager
def _running_fleet(
    api_client: Any,
    namespace: str,
    operator: OperatorProcess,
    mock: MockThread,
    echo_url: str,
    connections_per_pod: int = 2,
    gateway: dict[str, Any] | None = None,
) -> Iterator[Fleet]:
    """The quota of `STREAMS` on a fresh pool, Ready."""
    with _quotas_on_pool(
        api_client,
        namespace,
        operator,
        mock,
        echo_url,
        {QUOTA: STREAMS},
        connections_per_pod=connections_per_pod,
        gateway=gateway,
    ) as (f, _):
        f.ready()
        yield f


@pytest.fixture
def fleet(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> Iterator[Fleet]:
    with _running_fleet(
        api_client, namespace, operator_process, mock_exchange, ip_echo.url
    ) as running:
        yield running


def _sigkill_and_replace(harness: PodHarness, core: Any, namespace: str, pod: str) -> None:
    """SIGKILL the pod's process and force-delete the Pod: the StatefulSet makes a new one
    with a fresh root (state wiped)."""
    for record in harness.processes(namespace, pod):
        if record.exited_at is None:
            os.kill(record.pid, signal.SIGKILL)
    core.delete_namespaced_pod(pod, namespace, grace_period_seconds=0)


def test_gateways_sigkilled_at_random_for_a_minute(fleet: Fleet, pod_harness: PodHarness) -> None:
    """Scenario 2: a random gateway SIGKILLed and its Pod force-deleted every 4-8 s for 60 s.
    Each kill's streams are back within a Lease duration plus the recovery bound of that kill
    (unless the same pod is killed again first: its streams then stay down across both kills,
    which the notes report), and every stream within that bound after the last kill."""
    rng = random.Random(17)
    bound = LEASE_S + fleet.bound_s()
    held = streams_by_pod(fleet.core, fleet.ns, QUOTA)
    kills: list[tuple[float, int]] = []
    with StreamWatch(fleet.mock.open_streams, STREAMS) as watch:
        fleet.all_up(watch, 30, "before the kills")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ips = pod_ips(fleet.api, fleet.ns, QUOTA)
            if ips:
                ordinal = rng.choice(sorted(ips))
                _sigkill_and_replace(pod_harness, fleet.core, fleet.ns, f"{QUOTA}-gw-{ordinal}")
                kills.append((time.monotonic(), ordinal))
            time.sleep(rng.uniform(4, 8))  # the scenario's pace, not a wait for a condition
        back_s = fleet.all_up(watch, bound + 30, "after the last kill")
        fleet.ready()
    fleet.mock.assert_no_violation()
    assert back_s <= bound + 5, (back_s, bound)
    assert watch.duplicates == 0
    recoveries, interrupted = _recoveries(watch, kills, held)
    assert recoveries, "no kill recovered before the next one of its pod"
    assert max(recoveries) <= bound + 5, (recoveries, bound)
    row = fleet.row("2. gateways SIGKILLed at random for 60 s", watch, bound, 0)
    row.longestOutageSeconds = max(recoveries)
    row.notes = (
        f"{len(kills)} kills; each kill's streams back within {max(recoveries):.1f} s; "
        f"{interrupted} kills hit a pod whose streams were not back yet (longest span across "
        f"such kills {watch.longest_outage_s:.1f} s); all back {back_s:.1f} s after the last"
    )
    record_row(row)


def _recoveries(
    watch: StreamWatch, kills: list[tuple[float, int]], held: dict[int, list[str]]
) -> tuple[list[float], int]:
    """Seconds from each kill until every stream of the killed pod was back upstream; and how
    many kills came before the previous kill of the same pod had recovered (not a recovery)."""
    recoveries: list[float] = []
    interrupted = 0
    for i, (at, ordinal) in enumerate(kills):
        later = [t for t, o in kills[i + 1 :] if o == ordinal]
        backs = [watch.back_at(stream, at) for stream in held.get(ordinal, [])]
        back = max((b for b in backs if b is not None), default=at)
        if None in backs or (later and back > later[0]):
            interrupted += 1
            continue
        recoveries.append(back - at)
    return recoveries, interrupted


def test_operator_down_while_the_exchange_drops_every_connection(fleet: Fleet) -> None:
    """Scenario 3: the operator stopped for 60 s; meanwhile the exchange drops every
    connection. The gateways reconnect on their own within their slices (the plan they hold),
    every stream back within the recovery bound with no operator; the operator comes back to a
    fleet that needs nothing."""
    bound = fleet.bound_s()
    consumer = fleet.consumer()
    try:
        with StreamWatch(fleet.mock.open_streams, STREAMS) as watch:
            fleet.all_up(watch, 30, "before")
            wait_for(lambda: consumer.frames > 0, 30, "the consumer's first frames")
            fleet.operator.stop()
            down_at = time.monotonic()
            assert fleet.mock.disconnect_all() == 4
            wait_for(lambda: bool(watch.down_now()), 10, "the drop seen at the exchange")
            back_s = fleet.all_up(watch, bound + 30, "with the operator down")
            left = 60 - (time.monotonic() - down_at)
            if left > 0:  # the operator stays down for its whole minute
                wait_for(lambda: time.monotonic() - down_at >= 60, left + 5, "a minute down")
            fleet.operator.start()
            fleet.ready()
    finally:
        consumer.stop()
    fleet.mock.assert_no_violation()
    assert back_s <= bound + 5, (back_s, bound)
    assert watch.duplicates == 0
    assert consumer.errors == []
    record_row(
        fleet.row(
            "3. operator down 60 s while the exchange drops every connection",
            watch,
            bound,
            consumer.gaps,
            f"back {back_s:.1f} s after the drop, operator still down",
        )
    )


def test_plan_lease_ledger_and_statefulset_deleted(fleet: Fleet) -> None:
    """Scenario 5: a plan ConfigMap, a Lease, the ledger ConfigMap and then the StatefulSet
    deleted, one after the other: the operator restores each, and no slice is exceeded."""
    core, apps, ns = fleet.core, fleet.apps, fleet.ns

    def plan_maps() -> list[Any]:
        selector = f"connquota.io/quota={QUOTA},app.kubernetes.io/component=plan"
        return list(core.list_namespaced_config_map(ns, label_selector=selector).items)

    def ledger_maps() -> list[Any]:
        return [
            cm for cm in core.list_namespaced_config_map(ns).items
            if cm.metadata.name.endswith("ledger")
        ]  # fmt: skip

    steps: list[tuple[str, Callable[[], None], Callable[[], bool]]] = [
        (
            "plan ConfigMap",
            lambda: core.delete_namespaced_config_map(plan_maps()[0].metadata.name, ns),
            lambda: len(plan_maps()) >= 2,
        ),
        (
            "Lease",
            lambda: client.CoordinationV1Api(fleet.api).delete_namespaced_lease(
                f"{QUOTA}-gw-1", ns
            ),
            lambda: _lease_exists(fleet.api, ns, f"{QUOTA}-gw-1"),
        ),
        (
            "ledger ConfigMap",
            lambda: (
                [core.delete_namespaced_config_map(cm.metadata.name, ns) for cm in ledger_maps()]
                and None
            ),
            lambda: bool(ledger_maps()),
        ),
        (
            "StatefulSet",
            lambda: apps.delete_namespaced_stateful_set(f"{QUOTA}-gw", ns),
            lambda: _statefulset_exists(apps, ns, f"{QUOTA}-gw"),
        ),
    ]
    bound = LEASE_S + fleet.bound_s()
    notes = []
    with StreamWatch(fleet.mock.open_streams, STREAMS) as watch:
        fleet.all_up(watch, 30, "before")
        for what, delete, restored in steps:
            delete()
            wait_for(restored, 60, f"the {what} restored\n{fleet.log()}", interval_s=0.2)
            back_s = fleet.all_up(watch, bound + 60, f"after the {what} was deleted")
            fleet.ready()
            fleet.mock.assert_no_violation()
            notes.append(f"{what} {back_s:.1f} s")
    assert watch.duplicates == 0
    record_row(
        fleet.row(
            "5. plan ConfigMap, Lease, ledger, StatefulSet deleted",
            watch,
            bound,
            0,
            "streams back after: " + ", ".join(notes),
        )
    )


def _lease_exists(api: Any, ns: str, name: str) -> bool:
    try:
        client.CoordinationV1Api(api).read_namespaced_lease(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _statefulset_exists(apps: Any, ns: str, name: str) -> bool:
    try:
        sts = apps.read_namespaced_stateful_set(name, ns)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return sts.metadata.deletion_timestamp is None


AGE_S = 600.0
"""Scenario 10's maximum connection age in profile seconds (the exchange's 24 h compressed:
30 s of wall time at the fleet tests' time scale)."""


@pytest.fixture
def aging_fleet(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    ip_echo: ThreadedIpEcho,
) -> Iterator[Fleet]:
    """The fleet (one pod of 4 connections) on an exchange whose connections live `AGE_S`, with
    room for the fifth connection a make-before-break rotation holds for a moment (5 per IP:
    the plan gives the pod 4 connections and 1 of spare room)."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(5, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
            maxConnectionAge=(AGE_S, None),
        )
    )
    try:
        with _running_fleet(
            api_client, namespace, operator_process, mock, ip_echo.url, connections_per_pod=4
        ) as f:
            yield f
    finally:
        mock.stop()


def test_every_connection_reaches_its_maximum_age_and_rotates_with_no_gap(
    aging_fleet: Fleet,
) -> None:
    """Scenario 10: a compressed day. Every connection reaches the exchange's maximum age twice
    and is rotated make-before-break (the new session subscribed before the old one closes):
    no stream down at the exchange, no consumer gap, the exchange never closes a connection
    for its age, 0 violations."""
    fleet = aging_fleet
    age_wall_s = AGE_S / TIME_SCALE
    consumer = fleet.consumer()
    seen: set[str] = set()

    def rotated_twice() -> bool:
        seen.update(fleet.mock.open_connections())
        return len(seen) >= 3 * 4

    try:
        with StreamWatch(fleet.mock.open_streams, STREAMS) as watch:
            fleet.all_up(watch, 30, "before")
            wait_for(lambda: consumer.frames > 0, 30, "the consumer's first frames")
            wait_for(rotated_twice, 3 * age_wall_s + 30, "every connection rotated twice", 0.2)
            frames_before = consumer.frames
            wait_for(lambda: consumer.frames > frames_before, 10, "frames after the rotations")
    finally:
        consumer.stop()
    fleet.mock.assert_no_violation()
    assert consumer.errors == [], consumer.errors
    assert consumer.gaps == 0
    assert watch.max_down == 0, watch.episodes
    assert watch.duplicates == 0
    assert _server_closes(fleet.mock) == 0, "the exchange closed a connection (its age?)"
    peak = fleet.mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    assert peak >= 0.9, peak
    row = fleet.row("10. compressed day: every connection rotated at its maximum age", watch, 0, 0)
    row.tightestLimit = "concurrentConnections per IP (5: 4 planned, 1 rotating)"
    row.notes = (
        f"max age {age_wall_s:.0f} s wall (24 h compressed); {len(seen)} connections seen, "
        f"each rotated twice make-before-break; {consumer.frames} frames to the consumer"
    )
    record_row(row)


def _server_closes(mock: MockThread) -> float:
    """Connections the exchange itself closed (for age, heartbeats or a violation)."""

    def read() -> float:
        return sum(
            sample.value
            for family in mock.mock.metrics.registry.collect()
            for sample in family.samples
            if sample.name == "mockexchange_server_closes_total"
        )

    return mock.sync(read)


WIDE_STREAMS = [f"w{i}usdt@trade" for i in range(16)]
"""Scenario 6's streams: 8 connections of 2, the whole concurrent limit of two addresses."""


def _stream_counts(fleet: Fleet) -> dict[str, int]:
    quota = get_quota(fleet.api, fleet.ns, QUOTA) or {}
    return (quota.get("status") or {}).get("streams") or {}


def test_pool_addresses_removed_added_and_reserved_raised_at_full_use(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 6: 16 streams on two addresses at 100% of their concurrent limit. An address is
    removed while its connections are live (they close; its streams are reported unserved,
    never squeezed onto the other address beyond its limit); it is added back (all served
    again); then the pool reserves half the domain while at 100% (the fleet shrinks to half of
    every address and reports the rest unserved). 0 violations throughout."""
    pools = (GROUP, VERSION, "exchangeegresspools")
    notes = []
    with _wide_fleet(api_client, namespace, operator_process, mock_exchange, ip_echo.url) as (
        fleet,
        setup,
    ):
        addresses, domain = setup.addresses, setup.domain
        ips = [a["publicAddress"] for a in addresses]

        def set_pool(spec: dict[str, Any]) -> None:
            custom_object(api_client).patch_cluster_custom_object(
                *pools, setup.name, {"spec": spec}
            )

        def open_by_ip() -> dict[str, int]:
            return fleet.mock.open_by_ip()

        fleet.ready()
        with StreamWatch(fleet.mock.open_streams, WIDE_STREAMS) as watch:
            fleet.all_up(watch, 60, "before")
            assert open_by_ip() == {ips[0]: 4, ips[1]: 4}
            started = time.monotonic()
            set_pool({"addresses": addresses[:1]})
            wait_for(lambda: ips[1] not in open_by_ip(), 60, f"{ips[1]} left\n{fleet.log()}", 0.2)
            notes.append(
                f"address removed: its connections closed in {time.monotonic() - started:.1f} s"
            )
            wait_for(
                lambda: _stream_counts(fleet).get("unserved") == 8,
                60,
                f"8 streams reported unserved\n{fleet.log()}",
                0.3,
            )
            assert open_by_ip().get(ips[0], 0) <= 4
            fleet.mock.assert_no_violation()
            bound = fleet.bound_s()
            started = time.monotonic()
            set_pool({"addresses": addresses})
            wait_for(
                lambda: open_by_ip() == {ips[0]: 4, ips[1]: 4} and not watch.down_now(),
                90,
                f"every stream served again on both addresses\n{fleet.log()}",
                0.2,
            )
            back_s = time.monotonic() - started
            notes.append(f"added back: all served in {back_s:.1f} s")
            fleet.mock.assert_no_violation()
            started = time.monotonic()
            set_pool({"addresses": addresses, "reserved": [{"domain": domain, "fraction": 0.5}]})
            wait_for(
                lambda: (
                    all(n <= 2 for n in open_by_ip().values())
                    and _stream_counts(fleet).get("unserved") == 8
                ),
                90,
                f"half of every address kept back\n{fleet.log()}",
                0.2,
            )
            notes.append(
                f"reserved 50%: shrunk to 2 per address in {time.monotonic() - started:.1f} s"
            )
        fleet.mock.assert_no_violation()
        assert watch.duplicates == 0
        row = fleet.row("6. addresses removed and added, reserved raised at 100%", watch, bound, 0)
        # Streams the smaller pool cannot hold are unserved on purpose (reported in status):
        # the outage that counts is theirs once the address is back.
        row.longestOutageSeconds = back_s
        row.notes = "; ".join(notes) + "; the streams down are those the smaller pool cannot hold"
        record_row(row)


def _patch_share(objects: Any, ns: str, name: str, fraction: float) -> None:
    objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "exchangeconnectionquotas",
        name,
        {"spec": {"shares": [{"address": "*", "fraction": fraction}]}},
    )


def test_two_quotas_grow_and_shrink_against_each_other(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 9: two quotas of 8 streams each on one address (4 connections) swap their
    share requests six times, 3/4 and 1/4 of every budget, then the other way round. Every
    growth waits for the other quota's acknowledged shrink, so the exchange never sees more
    than 4 connections; each swap settles with every planned stream live and the address at
    100%."""
    names = {
        "md": [f"a{i}usdt@trade" for i in range(8)],
        "mx": [f"b{i}usdt@trade" for i in range(8)],
    }
    with _quotas_on_pool(
        api_client,
        namespace,
        operator_process,
        mock_exchange,
        ip_echo.url,
        names,
        spec={"shares": [{"address": "*", "fraction": 0.5}]},
    ) as (fleet, _):
        _swap_shares(fleet, names)


def _swap_shares(fleet: Fleet, names: dict[str, list[str]]) -> None:
    """Scenario 9's six swaps, on the two quotas `names` (each at half of every budget)."""
    api_client, namespace = fleet.api, fleet.ns
    objects = custom_object(api_client)

    def counts(name: str) -> dict[str, int]:
        quota = get_quota(api_client, namespace, name) or {}
        return (quota.get("status") or {}).get("streams") or {}

    last: dict[str, Any] = {}

    def settled(big: str) -> bool:
        mine = counts(big)
        other = counts("mx" if big == "md" else "md")
        last.update(mine=mine, other=other, open=fleet.mock.open_by_ip())
        return (
            sum(fleet.mock.open_by_ip().values()) == 4
            and mine.get("planned") == 6
            and other.get("planned") == 2
            and all(c.get("live") == c.get("planned") for c in (mine, other))
        )

    notes = []
    all_streams = names["md"] + names["mx"]
    wait_for(lambda: all(counts(n).get("live") == 4 for n in names), 120, "both quotas live")
    with StreamWatch(fleet.mock.open_streams, all_streams) as watch:
        for swap in range(6):
            big, small = ("md", "mx") if swap % 2 == 0 else ("mx", "md")
            started = time.monotonic()
            _patch_share(objects, namespace, small, 0.25)
            _patch_share(objects, namespace, big, 0.75)
            try:
                wait_for(lambda b=big: settled(b), 120, f"swap {swap}: {big} grown", 0.3)
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {last}\n{fleet.log()[-5000:]}") from None
            notes.append(f"{time.monotonic() - started:.1f}")
            fleet.mock.assert_no_violation()
    peak = fleet.mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    assert peak >= 0.9, peak
    assert watch.duplicates == 0
    row = fleet.row("9. two quotas on one pool grow and shrink against each other", watch, 0, 0)
    row.notes = (
        "6 swaps of share requests (3/4 and 1/4 of every budget), each settled in "
        + ", ".join(notes)
        + " s; 8 of the 16 streams are beyond the two shares at any time (unserved, in "
        "status), and a growing quota's streams wait for the other's acknowledged shrink"
    )
    record_row(row)


@contextlib.contextmanager
def _wide_fleet(
    api_client: Any,
    namespace: str,
    operator: OperatorProcess,
    mock: MockThread,
    echo_url: str,
) -> Iterator[tuple[Fleet, PoolSetup]]:
    """`WIDE_STREAMS` on two addresses at 100% of their concurrent limit (8 connections on 2
    pods)."""
    with _quotas_on_pool(
        api_client,
        namespace,
        operator,
        mock,
        echo_url,
        {QUOTA: WIDE_STREAMS},
        addresses=2,
        connections_per_pod=4,
    ) as got:
        yield got


def _quarantined(fleet: Fleet) -> set[str]:
    """Addresses the quota's status shows quarantined."""
    quota = get_quota(fleet.api, fleet.ns, QUOTA) or {}
    return {
        a["key"]
        for a in (quota.get("status") or {}).get("addresses") or []
        if a.get("quarantinedUntil")
    }


ADAPTIVE_CLEAN_S = 300.0 / TIME_SCALE
"""Scenario 8's clean period of the adaptive budgets: the mock's violation memory, scaled."""


@contextlib.contextmanager
def _operator_with(operator: OperatorProcess, env: dict[str, str]) -> Iterator[None]:
    """The operator restarted with `env`, and restarted with the module's settings after."""
    operator.stop()
    operator.start(extra_env=env)
    try:
        yield
    finally:
        operator.stop()
        operator.start()


def _reduced(api_client: Any, pool: str) -> dict[tuple[str, str], tuple[int, float, int]]:
    """The pool's lowered budgets: (address, limit) -> (effective, configured, cuts)."""
    body = custom_object(api_client).get_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool
    )
    return {
        (e.get("address") or e["key"], e["limit"]): (
            e["effectiveBudget"],
            e["budget"],
            e.get("cuts", 0),
        )
        for e in (body.get("status") or {}).get("adaptiveBudgets") or []
    }


def test_a_429_storm_on_one_address_and_a_418_ban_on_another_at_once(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 8: 16 streams on two addresses at 100%. The exchange drops every connection;
    the first address's next 8 handshakes get 429 (Retry-After 2 s) while the second address
    is banned (418) for 30 s. The gateways honour each Retry-After, quarantine the banned
    address at once (its other connections and the peer pod do not knock again: one 418 per
    pod, and any handshake already in flight), the operator shows the quarantine in status;
    the first address's streams come back after the storm, the second's after the ban is
    lifted. 0 violations.

    The refusals are unexplained throttles (the fleet kept inside its plan), so adaptive
    budgets cut the budgets they may have hit (with the time-scaled clean period); every cut is
    raised back after clean periods, and the test waits until none is left."""
    ban_s = 30.0
    seen: dict[tuple[str, str], tuple[int, float, int]] = {}
    bounds: list[float] = []

    def watch_cuts(pool: str) -> None:
        """Record every lowered budget, and the recovery bound the cuts give."""
        for key, value in _reduced(api_client, pool).items():
            if key not in seen or value[2] > seen[key][2] or value[0] < seen[key][0]:
                seen[key] = value
        bounds.append(fleet.bound_s())

    env = {"CONNQUOTA_OPERATOR_ADAPTIVE_CLEAN_SECONDS": str(ADAPTIVE_CLEAN_S)}
    with (
        _operator_with(operator_process, env),
        _wide_fleet(api_client, namespace, operator_process, mock_exchange, ip_echo.url) as (
            fleet,
            setup,
        ),
    ):
        addresses = setup.addresses
        ips = [a["publicAddress"] for a in addresses]
        fleet.ready()
        bound = fleet.bound_s()
        with StreamWatch(fleet.mock.open_streams, WIDE_STREAMS) as watch:
            fleet.all_up(watch, 60, "before")
            assert fleet.mock.open_by_ip() == {ips[0]: 4, ips[1]: 4}
            fleet.mock.refuse_next_handshakes(8, 429, 2.0, ip=ips[0])
            fleet.mock.ban(ips[1], ban_s)
            banned_at = time.monotonic()
            assert fleet.mock.disconnect_all() == 8
            wait_for(
                lambda: addresses[1]["name"] in _quarantined(fleet),
                15,
                f"{addresses[1]['name']} quarantined in status\n{fleet.log()}",
                0.3,
            )
            # A budget cut by the storm is raised back one step per clean period: the first
            # address reaches its 4 connections again once its concurrency budget is back.
            wait_for(
                lambda: (
                    watch_cuts(setup.name),
                    fleet.mock.open_by_ip().get(ips[0]) == 4,
                )[1],
                bound + 30 + 4 * ADAPTIVE_CLEAN_S,
                f"{ips[0]} back after its 429 storm\n{fleet.log()}",
                0.2,
            )
            storm_s = time.monotonic() - banned_at
            if time.monotonic() - banned_at < ban_s - 1:
                assert ips[1] not in fleet.mock.open_by_ip()
            back_s = fleet.all_up(
                watch, ban_s + bound + 30 + 4 * ADAPTIVE_CLEAN_S, "after the ban was lifted"
            )
            ban_back_s = time.monotonic() - banned_at
            wait_for(
                lambda: (watch_cuts(setup.name), not _reduced(api_client, setup.name))[1],
                8 * ADAPTIVE_CLEAN_S + bound + 30,
                f"every cut budget restored\n{fleet.log()}",
                0.5,
            )
            restored_s = time.monotonic() - banned_at
            fleet.all_up(watch, bound + 30, "with every budget restored")
        refusals = fleet.mock.refusals()
        fleet.mock.assert_no_violation()
        assert ban_back_s >= ban_s - 1  # nothing reopened on the banned address before the ban
        assert ban_back_s <= ban_s + bound + 4 * ADAPTIVE_CLEAN_S + 5, (ban_back_s, bound)
        assert refusals.get("429", 0) == 8, refusals
        # One per pod using the address, plus a handshake already in flight when the first 418
        # came back (a pod's reconnects overlap): never more than the connections planned on
        # it. Without the quarantine every pod would knock again after each backoff for 30 s.
        assert refusals.get("418", 0) <= 4, refusals
        assert seen, "the refusals cut no budget"
        assert all(e < b for e, b, _ in seen.values()), seen
        assert watch.duplicates == 0
        peak = fleet.mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
        # The planned bound while the budgets were cut (a lower attempt budget plans a
        # longer recovery), as the quota's status gave it.
        cut_bound = max([bound, *bounds])
        row = fleet.row(
            "8. a 429 storm on one address and a 418 ban on another", watch, ban_s + cut_bound, 0
        )
        row.peakPercent = 100 * peak
        cuts = ", ".join(
            f"{address} {limit} {b:g} -> {e} ({n} cut{'s' if n > 1 else ''})"
            for (address, limit), (e, b, n) in sorted(seen.items())
        )
        row.notes = (
            f"first address back {storm_s:.1f} s after the drop (8 handshakes answered 429), "
            f"second {ban_back_s:.1f} s after its {ban_s:.0f} s ban began "
            f"({refusals.get('418', 0)} handshakes answered 418); adaptive budgets cut {cuts}, "
            f"all restored {restored_s:.1f} s after the drop (clean period "
            f"{ADAPTIVE_CLEAN_S:.0f} s; recovery bound {bound:.1f} s before the cuts, "
            f"{cut_bound:.1f} s with them); {back_s:.1f} s waited after the storm"
        )
        record_row(row)


def _slow_consumers_closed(ips: dict[int, str]) -> int:
    """Consumers the gateways closed for being too slow, summed over the pods' /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for ip in ips.values():
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total += sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "connquota_gateway_slow_consumers_total"
        )
    return int(total)


@pytest.fixture
def flood_fleet(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> Iterator[Fleet]:
    """The fleet with a short consumer queue (100 frames, slow consumers closed) and 16 KiB
    socket send buffers (a stalled consumer reaches its queue within seconds)."""
    with _running_fleet(
        api_client,
        namespace,
        operator_process,
        mock_exchange,
        ip_echo.url,
        gateway={
            "consumerQueueFrames": 100,
            "slowConsumer": "close",
            "consumerSendBufferBytes": 16384,
        },
    ) as running:
        yield running


def test_a_consumer_flood_half_of_it_never_reading_during_a_mass_disconnect(
    flood_fleet: Fleet,
) -> None:
    """Scenario 12: 1,000 consumers connect and subscribe at once, spread over the pods; 500
    never read. The exchange drops every upstream connection meanwhile. The slow ones are
    closed by the gateways (queue of 100 frames, policy close); the 500 readers see no `seq`
    gap, none is closed, and every one gets frames again after the reconnect; upstream, every
    stream is back within the recovery bound, 0 violations."""
    fleet = flood_fleet
    ips = pod_ips(fleet.api, fleet.ns, QUOTA)
    urls = [f"ws://{ip}:8080/v1/ws" for ip in ips.values()]
    bound = fleet.bound_s()
    flood = ConsumerFlood(urls, STREAMS, readers=500, idle=500)
    try:
        with StreamWatch(fleet.mock.open_streams, STREAMS) as watch:
            fleet.all_up(watch, 30, "before")
            wait_for(
                lambda: flood.acked == 500 and flood.idle_open == 500,
                90,
                "1,000 consumers connected and subscribed",
                0.2,
            )
            flood.mark()
            assert fleet.mock.disconnect_all() == 4
            wait_for(lambda: bool(watch.down_now()), 10, "the drop seen at the exchange")
            back_s = fleet.all_up(watch, bound + 30, "after the drop, with the flood")
            wait_for(
                lambda: flood.readers_fed_since_mark() == 500,
                60,
                "every reader fed again after the reconnect",
                0.2,
            )
            try:
                wait_for(
                    lambda: _slow_consumers_closed(ips) >= 500,
                    90,
                    "every idle consumer closed as too slow",
                    0.5,
                )
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {_slow_consumers_closed(ips)} closed") from None
            closed = _slow_consumers_closed(ips)
    finally:
        flood.stop()
    fleet.mock.assert_no_violation()
    assert flood.reader_errors == [], flood.reader_errors[:5]
    assert flood.gaps == 0
    assert closed == 500, closed  # the idle ones, and no reader
    assert back_s <= bound + 5, (back_s, bound)
    assert watch.duplicates == 0
    row = fleet.row(
        "12. 1,000 consumers at once, half never reading, during a mass disconnect",
        watch,
        bound,
        flood.gaps,
    )
    row.notes = (
        f"{closed} idle consumers closed as too slow (queue 100 frames); 500 readers got "
        f"{flood.frames} frames, none closed; streams back {back_s:.1f} s after the drop"
    )
    record_row(row)


SCALE_STREAMS = [f"z{i}usdt@trade" for i in range(80)]
"""Scenario 1's streams at 20 pods: 40 connections of 2, the concurrent limit of 10 addresses."""


def test_scale_from_1_to_20_pods_and_back_while_consumers_read(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 1: a quota of 4 streams (1 pod) grows to 80 streams (20 pods, 10 addresses at
    their whole concurrent limit) and shrinks back to 4 (1 pod), while a consumer on pod 0
    reads the first 4 streams. Each step waits for the fleet to acknowledge it. The consumer
    sees no gap, no stream is served twice upstream beyond a make-before-break overlap, and the
    exchange sees 0 violations."""
    objects = custom_object(api_client)
    kept = SCALE_STREAMS[:4]
    notes = []
    with (
        _quotas_on_pool(
            api_client,
            namespace,
            operator_process,
            mock_exchange,
            ip_echo.url,
            {QUOTA: kept},
            addresses=10,
            max_replicas=20,
        ) as (fleet, _),
        contextlib.ExitStack() as stack,
    ):
        fleet.ready()
        with StreamWatch(fleet.mock.open_streams, kept) as watch:
            fleet.all_up(watch, 30, "one pod")
            consumer = SeqConsumer.on_pod(pod_ips(fleet.api, fleet.ns, QUOTA)[0], kept)
            stack.callback(consumer.stop)
            wait_for(lambda: consumer.frames > 0, 30, "the consumer's first frames")
            for streams, pods in ((SCALE_STREAMS, 20), (kept, 1)):
                started = time.monotonic()
                _patch_stream_list(objects, namespace, QUOTA, streams)
                wait_for(
                    lambda s=len(streams), p=pods: _settled(fleet, s, p),
                    240,
                    f"{pods} pods serving {len(streams)} streams\n{fleet.log()[-3000:]}",
                    0.5,
                )
                notes.append(f"to {pods} pods in {time.monotonic() - started:.1f} s")
                fleet.mock.assert_no_violation()
            frames_before = consumer.frames
            wait_for(lambda: consumer.frames > frames_before, 10, "frames after scaling back")
    assert consumer.errors == [], consumer.errors
    assert consumer.gaps == 0
    assert watch.duplicates == 0
    assert watch.max_down == 0, watch.episodes
    peak = fleet.mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
    assert peak >= 0.9, peak
    row = fleet.row("1. scale 1 -> 20 -> 1 pods while consumers read", watch, 0, consumer.gaps)
    row.notes = (
        "; ".join(notes) + f"; the consumer's 4 streams never down, {consumer.frames} frames"
    )
    record_row(row)


def _patch_stream_list(objects: Any, ns: str, name: str, streams: list[str]) -> None:
    objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "exchangeconnectionquotas",
        name,
        {"spec": {"streams": [{"name": s} for s in streams]}},
    )


def _settled(fleet: Fleet, streams: int, pods: int) -> bool:
    """Every declared stream live, the StatefulSet at `pods` replicas, all pods Ready."""
    counts = _stream_counts(fleet)
    if counts.get("desired") != streams or counts.get("live") != streams:
        return False
    sts = fleet.apps.read_namespaced_stateful_set(f"{QUOTA}-gw", fleet.ns)
    return (
        sts.spec.replicas == pods
        and (sts.status.ready_replicas or 0) == pods
        and len(pod_ips(fleet.api, fleet.ns, QUOTA)) == pods
    )


API_DOWN_S = 25.0
"""Scenario 4: how long the API server and etcd stay down (longer than the Lease duration)."""


def test_the_api_server_and_etcd_restarted_mid_reconcile_for_longer_than_the_lease(
    fleet: Fleet, control_plane: ControlPlane
) -> None:
    """Scenario 4: the quota drops 2 of its 8 streams and, while the operator publishes that,
    the API server and etcd go down for 25 s, longer than the gateways' Lease (15 s). Unable
    to renew, every gateway closes its connections when its Lease would lapse, and makes no
    attempt until it holds its Lease again; with the API server back the operator finishes the
    reconcile, and every stream is back within a Lease duration plus the recovery bound.
    0 violations."""
    bound = LEASE_S + fleet.bound_s()
    objects = custom_object(fleet.api)
    remaining = STREAMS[:6]
    with StreamWatch(fleet.mock.open_streams, remaining) as watch:
        fleet.all_up(watch, 30, "before")
        accepted_before = sum(fleet.mock.accepted_by_ip().values())
        _patch_stream_list(objects, fleet.ns, QUOTA, remaining)
        down_at = time.monotonic()
        control_plane.stop_components("kube-apiserver", "etcd")
        try:
            wait_for(
                lambda: not fleet.mock.open_connections(),
                LEASE_S + 5,
                "every connection closed by its gateway at the end of its Lease",
                0.1,
            )
            closed_s = time.monotonic() - down_at
            accepted_closed = sum(fleet.mock.accepted_by_ip().values())
            left = API_DOWN_S - (time.monotonic() - down_at)
            if left > 0:
                wait_for(lambda: time.monotonic() - down_at >= API_DOWN_S, left + 5, "the outage")
            assert sum(fleet.mock.accepted_by_ip().values()) == accepted_closed, (
                "a gateway connected without its Lease"
            )
        finally:
            control_plane.start_components("kube-apiserver", "etcd")
            if not control_plane.is_running().get("kube-controller-manager", True):
                control_plane.start_components("kube-controller-manager")
        up_at = time.monotonic()
        back_s = fleet.all_up(watch, bound + 30, "after the API server came back")
        fleet.ready(180)
    assert closed_s <= LEASE_S + 3, closed_s
    assert back_s <= bound + 5, (back_s, bound)
    fleet.mock.assert_no_violation()
    assert watch.duplicates == 0
    plans = streams_by_pod(fleet.core, fleet.ns, QUOTA)
    assert sorted(s for streams in plans.values() for s in streams) == sorted(remaining)
    row = fleet.row(
        "4. API server and etcd down 25 s mid-reconcile (longer than the Lease)",
        watch,
        bound,
        0,
    )
    row.longestOutageSeconds = back_s
    row.notes = (
        f"every connection closed {closed_s:.1f} s after the API went down (Lease {LEASE_S:.0f} "
        f"s from the last renewal); {accepted_closed - accepted_before} handshakes while it was "
        f"down; streams back {back_s:.1f} s after the API server ({up_at - down_at:.0f} s "
        "down), the reconcile (2 streams dropped) finished"
    )
    record_row(row)
