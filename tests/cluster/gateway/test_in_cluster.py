"""`connquota gateway --in-cluster` against the real API server, as the operator deploys it.

Each test runs one gateway pod (the operator's pod template, its ServiceAccount, and exactly
the Role and RoleBinding the operator builds: its plan ConfigMaps and Leases by name) through
the pod harness, with the mock exchange as the referee of every TCP connection it accepts.
Lease timing (docs/gateway.md): duration D = LEASE_DURATION_S, renewed every D/3; a failed
renewal stops new attempts at once; connections close D after the last successful renewal was
sent; a Lease found naming another holder closes them at once.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.conftest import wait_for
from connquota.api.limits import LimitScope
from connquota.api.report import GatewayReport

from .conftest import (
    LEASE_DURATION_S,
    REPORT_INTERVAL_S,
    InClusterGateway,
    LeaseVersion,
    connections,
    micro_now,
    parse_micro,
)

pytestmark = pytest.mark.cluster

RENEW_EVERY_S = LEASE_DURATION_S / 3
SLACK_S = 1.5
"""Scheduling and API latency allowed on top of documented times (2 shared cores)."""


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def assert_no_api_errors(gw: InClusterGateway) -> None:
    """With exactly the operator's Role, no API call of the gateway was refused or failed
    (the Lease and the plan source log every failed call)."""
    failed = ("cannot renew", f"Lease {gw.lease_name}: ", "plan ConfigMap")
    bad = [line for line in gw.full_log().splitlines() if any(f in line for f in failed)]
    assert bad == [], "\n".join(bad[:20])


def attempt_ids(gw: InClusterGateway) -> list[str]:
    """Every TCP connection (attempt or egress check) the exchange accepted from the gateway."""
    return [r.conn_id for r in gw.mock.records()]


def assert_no_violation(gw: InClusterGateway) -> None:
    found = gw.mock.violations()
    assert found == [], found


def held_by_gateway(gw: InClusterGateway, versions: list[LeaseVersion]) -> list[LeaseVersion]:
    return [v for v in versions if (v.holder or "").startswith(f"{gw.pod_name}/")]


def wall_of(mono: float) -> float:
    """Wall-clock time of a monotonic instant of this process."""
    return time.time() - (time.monotonic() - mono)


def wait_report(gw: InClusterGateway, check: Any, timeout_s: float, what: str) -> GatewayReport:
    def probe() -> GatewayReport | None:
        report = gw.report()
        return report if report is not None and check(report) else None

    try:
        return wait_for(probe, timeout_s, what, interval_s=0.2)
    except BaseException:
        print(gw.log())
        raise


def test_no_attempt_before_the_predecessors_lease_has_expired(gateway: InClusterGateway) -> None:
    predecessor_s = 6
    gw = gateway
    renew = micro_now()
    gw.create_objects(
        gw.plan(connections(3, 2)),
        lease_spec={
            "holderIdentity": "q-gw-0/predecessor",
            "leaseDurationSeconds": predecessor_s,
            "acquireTime": renew,
            "renewTime": renew,
            "leaseTransitions": 0,
        },
    )
    expires_wall = parse_micro(renew) + predecessor_s
    gw.start()
    waiting = wait_for(
        lambda: (st := gw.status()) is not None and "predecessor" in st["lease"] and st,
        predecessor_s,
        "the gateway waiting for the predecessor's Lease",
    )
    assert time.time() < expires_wall, "the pod took too long to start for this test to tell"
    assert waiting["leaseHeld"] is False, waiting
    assert all(c["sessionsOpened"] == 0 for c in waiting["connections"]), waiting["connections"]

    gw.wait_live(3, 6, timeout_s=predecessor_s + 20)
    records = gw.mock.records()
    first_attempt = records[0].accepted_wall
    assert first_attempt >= expires_wall, (
        f"first attempt {first_attempt - expires_wall:+.2f}s from the predecessor's expiry"
    )
    lease = gw.lease()
    assert lease.spec.holder_identity.startswith(f"{gw.pod_name}/")
    assert lease.spec.lease_transitions == 1
    assert lease.spec.lease_duration_seconds == LEASE_DURATION_S
    assert_no_api_errors(gw)
    assert_no_violation(gw)


def test_renews_its_lease_and_writes_its_report_only_on_change(gateway: InClusterGateway) -> None:
    gw = gateway
    gw.create_objects(gw.plan(connections(4, 2)))
    gw.start()
    gw.wait_live(4, 8)
    records = gw.mock.records()
    ids = attempt_ids(gw)
    report = wait_report(
        gw,
        lambda r: r.connections == 4 and r.streams == 8 and all(a.count == 0 for a in r.attempts),
        REPORT_INTERVAL_S + 10,
        "a report with every connection and stream live and no attempt left in the window",
    )
    assert report.pod == gw.pod_name and report.ordinal == 0
    assert (report.quota.namespace, report.quota.name) == (gw.namespace, gw.quota_name)
    assert report.planGeneration == 1 and report.ready
    assert report.bootId == boot_id()
    assert [(a.scope, a.key) for a in report.attempts] == [(LimitScope.IP, "a0")]

    # Every attempt the exchange saw was in some report while it was in the window.
    assert gw.recorder is not None
    reports = [
        GatewayReport.model_validate_json(v.report)
        for v in gw.recorder.snapshot()
        if v.report is not None
    ]
    peak = max(a.count for r in reports for a in r.attempts if a.key == "a0")
    assert peak == len(records), (peak, [r.conn_id for r in records])
    newest = max(a.lastAttemptAt or 0 for r in reports for a in r.attempts)
    assert abs(newest - records[-1].accepted_wall) < 0.5

    # A quiet period: only renewals, every D/3, each carrying the same report.
    before = len(gw.recorder.snapshot())
    renewals = 6
    wait_for(
        lambda: len(gw.recorder.snapshot()) >= before + renewals,  # type: ignore[union-attr]
        renewals * RENEW_EVERY_S + 5,
        f"{renewals} renewals",
    )
    quiet = gw.recorder.snapshot()[before - 1 : before + renewals]
    assert {v.report for v in quiet} == {quiet[0].report}, "the report changed while quiet"
    gaps = [b.seen_mono - a.seen_mono for a, b in itertools.pairwise(quiet)]
    assert max(gaps) < RENEW_EVERY_S + SLACK_S, gaps
    assert min(gaps) > RENEW_EVERY_S - 0.5, f"written more often than renewals: {gaps}"
    renew_walls = [v.renew_wall or 0 for v in quiet]
    assert renew_walls == sorted(set(renew_walls)), "every write renews the Lease"

    # Report changes (after the take) are at least one report interval apart.
    versions = held_by_gateway(gw, gw.recorder.snapshot())
    changes = [b for a, b in itertools.pairwise(versions) if a.report != b.report]
    change_gaps = [b.seen_mono - a.seen_mono for a, b in itertools.pairwise(changes)]
    assert all(g > REPORT_INTERVAL_S - 0.3 for g in change_gaps), change_gaps
    assert attempt_ids(gw) == ids, "a quiet gateway made no attempt"
    assert_no_api_errors(gw)
    assert_no_violation(gw)


def test_a_lease_taken_by_another_holder_closes_everything_at_once_and_is_waited_out(
    gateway: InClusterGateway,
) -> None:
    gw = gateway
    gw.create_objects(gw.plan(connections(4, 2)))
    gw.start()
    gw.wait_live(4, 8)
    before = gw.mock.records()

    lease = gw.lease()
    transitions = lease.spec.lease_transitions or 0
    lease.spec.holder_identity = "intruder/1"
    lease.spec.renew_time = micro_now()
    lease.spec.lease_duration_seconds = LEASE_DURATION_S
    gw.coordination.replace_namespaced_lease(gw.lease_name, gw.namespace, lease)
    taken = time.monotonic()

    wait_for(
        lambda: not gw.mock.open_websockets(),
        RENEW_EVERY_S + SLACK_S + 1,
        "every connection closed",
    )
    closed_after = [r.ended_mono - taken for r in gw.mock.records() if r.ended_mono]
    assert max(closed_after) < RENEW_EVERY_S + SLACK_S, closed_after

    # The intruder's Lease is waited out like a predecessor's; then the plan is reopened.
    gw.wait_live(4, 8, timeout_s=LEASE_DURATION_S + 20)
    after = gw.mock.records()[len(before) :]
    assert after, "reopened"
    assert min(r.accepted_mono for r in after) - taken >= LEASE_DURATION_S, [
        round(r.accepted_mono - taken, 2) for r in after
    ]
    lease = gw.lease()
    assert lease.spec.holder_identity.startswith(f"{gw.pod_name}/")
    assert lease.spec.lease_transitions == transitions + 1  # the retake
    assert_no_api_errors(gw)
    assert_no_violation(gw)


def test_without_its_rights_it_stops_attempts_at_once_and_closes_after_the_lease_duration(
    gateway: InClusterGateway,
) -> None:
    gw = gateway
    gw.create_objects(gw.plan(connections(4, 2)))
    gw.start()
    gw.wait_live(4, 8)
    assert gw.recorder is not None

    gw.delete_role_binding()
    revoked = time.monotonic()
    wait_for(
        lambda: (gw.status() or {}).get("leaseHeld") is False,
        RENEW_EVERY_S + SLACK_S + 1,
        "the first failed renewal",
    )
    stopped = time.monotonic()
    last_renew_wall = max(v.renew_wall or 0 for v in held_by_gateway(gw, gw.recorder.snapshot()))
    # The exchange drops two connections: the gateway must not reconnect them.
    dropped = gw.mock.close_websockets(2)
    assert len(dropped) == 2
    wait_for(
        lambda: not gw.mock.open_websockets(),
        LEASE_DURATION_S + SLACK_S + 1,
        "the remaining connections closed by the gateway",
    )
    records = gw.mock.records()
    closed_by_gateway = [
        wall_of(r.ended_mono)
        for r in records
        if r.websocket and r.ended_mono and r.conn_id not in dropped
    ]
    assert len(closed_by_gateway) == 2
    for closed in closed_by_gateway:
        since_renewal = closed - last_renew_wall
        assert LEASE_DURATION_S - 1.0 < since_renewal < LEASE_DURATION_S + SLACK_S, since_renewal
    assert [r for r in records if r.accepted_mono > stopped] == [], "an attempt without the Lease"

    # Rights back: the Lease still names this process, so it takes it at once and reopens.
    restored = time.monotonic()
    gw.create_role_binding()
    gw.wait_live(4, 8, timeout_s=20)
    assert [r for r in gw.mock.records() if stopped < r.accepted_mono < restored] == []
    lease = gw.lease()
    assert lease.spec.holder_identity.startswith(f"{gw.pod_name}/")
    assert revoked < stopped
    assert_no_violation(gw)


def test_a_new_plan_generation_applies_within_a_second_and_an_unknown_format_is_ignored(
    gateway: InClusterGateway,
) -> None:
    gw = gateway
    gen1 = connections(3, 2)
    gw.create_objects(gw.plan(gen1))
    gw.start()
    gw.wait_live(3, 6)
    before = attempt_ids(gw)
    opened = set(gw.mock.open_websockets())

    # Generation 2: c1 trades one stream for another; c0 and c2 are unchanged.
    kept, leaving = gen1[1].streams
    gen2 = [gen1[0], gen1[1].model_copy(update={"streams": [kept, "new1usdt@trade"]}), gen1[2]]
    published = time.monotonic()
    gw.publish_plan(gw.plan(gen2, generation=2))

    def c1_streams() -> frozenset[str]:
        for streams in gw.mock.open_websockets().values():
            if kept in streams:
                return streams
        return frozenset()

    wait_for(lambda: "new1usdt@trade" in c1_streams(), 2.0, "the new stream subscribed")
    applied_s = time.monotonic() - published
    wait_for(lambda: leaving not in c1_streams(), 3.0, "the leaving stream unsubscribed")
    assert set(gw.mock.open_websockets()) == opened, "an unchanged connection was reopened"
    assert attempt_ids(gw) == before, "no attempt for a plan change that opens nothing"
    wait_report(gw, lambda r: r.planGeneration == 2, REPORT_INTERVAL_S + 5, "generation 2")

    # Generation 3 in a format this gateway does not know: ignored, said so, 2 stays in force.
    bad = gw.plan([gen1[0]], generation=3).to_wire()
    bad["formatVersion"] = 999
    gw.publish_plan(json.dumps(bad))
    report = wait_report(
        gw, lambda r: "formatVersion" in r.message, REPORT_INTERVAL_S + 5, "the ignored plan"
    )
    assert report.planGeneration == 2 and report.connections == 3 and report.streams == 6
    status = gw.status()
    assert status is not None and "999" in status["planError"]
    assert set(gw.mock.open_websockets()) == opened
    assert attempt_ids(gw) == before

    # A later good generation applies again.
    gen4 = [*gen2[:2], gen1[2].model_copy(update={"streams": [*gen1[2].streams, "new2usdt@trade"]})]
    gw.publish_plan(gw.plan(gen4, generation=4))
    wait_for(
        lambda: any("new2usdt@trade" in s for s in gw.mock.open_websockets().values()),
        2.0,
        "generation 4 applied",
    )
    wait_report(
        gw,
        lambda r: r.planGeneration == 4 and "formatVersion" not in r.message,
        REPORT_INTERVAL_S + 5,
        "generation 4 reported",
    )
    assert attempt_ids(gw) == before
    print(f"generation 2 applied {applied_s:.3f}s after the ConfigMap update")
    assert_no_api_errors(gw)
    assert_no_violation(gw)
