"""Adaptive budgets (issue 17): the exchange's real limit is below the profile's, the fleet
converges to it without a ban, and back when the limit is restored.

The standard chaos fleet (8 streams, 2 pods, 4 connections on one address whose profile limit
is 4 concurrent connections). The mock then enforces 3: after a mass disconnect the fourth
handshake is refused (429), the operator counts it as unexplained (the fleet was inside its
plan) and cuts the address's budget to 3; the fleet runs on 3 connections with 2 streams
unserved, and probes 4 again once per clean period (a refused probe cuts back to 3). With the
limit restored, the next probe holds and the budget is back at 4.

Marked `chaos`: `make chaos` runs it with the other scenarios, and it leaves row 13 of the
table in docs/reliability.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import GROUP, TIME_SCALE, VERSION, MockThread, get_quota
from cluster.operator.test_chaos import QUOTA, STREAMS, _quotas_on_pool
from connquota.api.limits import LimitName
from connquota.testing.chaos import StreamWatch, record_row
from connquota.testing.controlplane import ControlPlane
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

CLEAN_S = 300.0 / TIME_SCALE
"""The operator's clean period: the mock's violation memory (300 profile seconds), time-scaled,
so a refused probe adds at most one penalised violation per memory window."""
MEMORY_S = 300.0 / TIME_SCALE
BAN_AFTER = 3
"""The mock bans an IP after this many penalised violations within its memory."""
CONC = LimitName.CONCURRENT_CONNECTIONS.value


@pytest.fixture(scope="module")
def operator_process(control_plane: ControlPlane, crds: None) -> Iterator[OperatorProcess]:
    """The operator with the time-scaled clean period."""
    proc = OperatorProcess(control_plane)
    proc.start(extra_env={"CONNQUOTA_OPERATOR_ADAPTIVE_CLEAN_SECONDS": str(CLEAN_S)})
    try:
        yield proc
    finally:
        proc.stop()


def _limit_use(quota: dict[str, Any], limit: str) -> dict[str, Any]:
    for address in (quota.get("status") or {}).get("addresses") or []:
        for use in address.get("limits") or []:
            if use["limit"] == limit:
                return dict(use)
    return {}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_),
        None,
    )


def _bans(mock: MockThread) -> int:
    """IP bans the mock imposed."""
    return mock.counter_total("bans")


def _most_in_memory(violations: list[dict[str, Any]]) -> int:
    """The most violations of one IP within any window of the mock's memory."""
    times: dict[str, list[float]] = {}
    for v in violations:
        times.setdefault(v["ip"], []).append(float(v["wall_time"]))
    most = 0
    for ts in times.values():
        ts.sort()
        for i, t in enumerate(ts):
            most = max(most, sum(1 for u in ts[i:] if u - t < MEMORY_S))
    return most


def test_adaptive_budget_converges_to_a_lower_real_limit_without_a_ban(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 13: the exchange's concurrent limit is 3 where the profile says 4. After a mass
    disconnect the fleet converges to 3 connections (effectiveBudget 3, BudgetReduced on the
    quota and the pool) with no ban and at most 2 penalised violations per memory window; with
    the limit back at 4 the budget is restored (effectiveBudget absent, 4 connections, every
    stream up)."""
    mock = mock_exchange
    objects = custom_object(api_client)
    with _quotas_on_pool(
        api_client, namespace, operator_process, mock, ip_echo.url, {QUOTA: STREAMS}
    ) as (fleet, setup):
        ip = setup.addresses[0]["publicAddress"]
        fleet.ready()
        bound = fleet.bound_s()

        def quota() -> dict[str, Any]:
            return get_quota(api_client, namespace, QUOTA) or {}

        def pool() -> dict[str, Any]:
            return objects.get_cluster_custom_object(
                GROUP, VERSION, "exchangeegresspools", setup.name
            )

        with StreamWatch(mock.open_streams, STREAMS) as watch:
            fleet.all_up(watch, 60, "before")
            assert mock.open_by_ip() == {ip: 4}
            mock.set_limits(concurrentConnections=(3, None))
            lowered_at = time.monotonic()
            assert mock.disconnect_all() == 4
            wait_for(
                lambda: (
                    _limit_use(quota(), CONC).get("effectiveBudget") == 3
                    and _condition(quota(), "BudgetReduced") is not None
                    and _condition(pool(), "BudgetReduced") is not None
                ),
                bound + 30,
                f"effectiveBudget 3 with BudgetReduced on quota and pool\n{fleet.log()}",
                0.3,
            )
            cut_s = time.monotonic() - lowered_at
            wait_for(
                lambda: mock.open_by_ip().get(ip) == 3,
                bound + 30,
                f"3 connections on {ip}\n{fleet.log()}",
                0.2,
            )
            converged_s = time.monotonic() - lowered_at
            entries = (pool().get("status") or {}).get("adaptiveBudgets") or []
            conc = [e for e in entries if e["limit"] == CONC]
            assert conc and conc[0]["effectiveBudget"] == 3 and conc[0]["budget"] == 4, entries
            low_violations = len(mock.violations())
            assert _bans(mock) == 0

            mock.set_limits(concurrentConnections=(4, None))
            restored_at = time.monotonic()
            wait_for(
                lambda: (
                    "effectiveBudget" not in _limit_use(quota(), CONC)
                    and _condition(quota(), "BudgetReduced") is None
                    and _condition(pool(), "BudgetReduced") is None
                ),
                2 * CLEAN_S + bound + 60,
                f"the budget restored\n{fleet.log()}",
                0.5,
            )
            wait_for(
                lambda: mock.open_by_ip().get(ip) == 4,
                bound + 30,
                f"4 connections on {ip} again\n{fleet.log()}",
                0.2,
            )
            back_s = fleet.all_up(watch, bound + 30, "after the restore")
            restore_s = time.monotonic() - restored_at
        violations = mock.violations()
        assert _bans(mock) == 0, violations
        assert all(v["limit"] == CONC for v in violations), violations
        most = _most_in_memory(violations)
        assert most < BAN_AFTER, violations
        assert watch.duplicates == 0
        row = fleet.row("13. adaptive budget: exchange limit below the profile", watch, bound, 0)
        row.tightestLimit = "concurrentConnections per IP (profile 4, exchange 3, then 4)"
        row.notes = (
            f"cut 4 -> 3 {cut_s:.1f} s after the drop, 3 connections after {converged_s:.1f} s "
            f"(2 streams unserved meanwhile); {low_violations} refused handshakes while the "
            f"limit was 3 ({len(violations)} in all, at most {most} per {MEMORY_S:.0f} s "
            f"memory, 0 bans); restored to 4 {restore_s:.1f} s after the exchange's limit "
            f"(clean period {CLEAN_S:.0f} s), every stream back {back_s:.1f} s later"
        )
        record_row(row)
