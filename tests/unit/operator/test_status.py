"""Quota status and conditions: the standard shape, transitions only on real change."""

from __future__ import annotations

import datetime as dt
import json

from operator_factories import make_pod_plan

from connquota.api.plan import QuotaPlan, QuotaRef, UnservedStream
from connquota.api.report import GatewayReport, Quarantine
from connquota.operator.status import (
    Problem,
    QuotaObservation,
    quota_status,
    set_condition,
    status_differs,
)

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def _plan(unserved: int = 0) -> QuotaPlan:
    return QuotaPlan(
        generation=3,
        quota=QuotaRef(namespace="trading", name="md"),
        replicas=2,
        pods=[make_pod_plan(0), make_pod_plan(1)],
        unserved=[UnservedStream(stream=f"s{i}", reason="streams") for i in range(unserved)],
    )


def _report(ordinal: int, generation: int = 3) -> GatewayReport:
    return GatewayReport(
        quota=QuotaRef(namespace="trading", name="md"),
        pod=f"md-gw-{ordinal}",
        ordinal=ordinal,
        bootId="b",
        planGeneration=generation,
        connections=1,
        streams=1,
    )


def _cond(status: dict, type_: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type_)


def _types(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_a_fleet_enforcing_the_newest_plan_is_ready() -> None:
    obs = QuotaObservation(
        generation=4,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        desired_streams=2,
        reports={0: _report(0), 1: _report(1)},
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Ready")["status"] == "True"
    # kstatus: abnormal-true conditions are absent, not False, when they do not apply.
    assert _types(status) == {"Ready": "True"}
    assert status["observedGeneration"] == 4
    assert status["streams"] == {"desired": 2, "planned": 2, "live": 2, "unserved": 0}
    assert status["connections"] == {"planned": 2, "live": 2}
    assert [p["generation"] for p in status["pods"]] == [3, 3]
    assert all(c["observedGeneration"] == 4 for c in status["conditions"])


def test_a_fleet_whose_planned_streams_are_not_all_live_yet_is_not_ready() -> None:
    # Pods ready and acknowledged, but gateway 1 still waits out its attempt window.
    waiting = _report(1).model_copy(update={"connections": 0, "streams": 0})
    obs = QuotaObservation(
        generation=4,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        desired_streams=2,
        reports={0: _report(0), 1: waiting},
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Ready")["status"] == "False"
    reconciling = _cond(status, "Reconciling")
    assert reconciling["status"] == "True"
    assert "1/2 planned streams live" in reconciling["message"]
    assert "Degraded" not in _types(status)


def test_unacknowledged_plan_is_reconciling_not_ready() -> None:
    obs = QuotaObservation(
        generation=1, plan=_plan(), replicas=2, ready_replicas=2, reports={0: _report(0, 2)}
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Ready")["status"] == "False"
    assert _cond(status, "Reconciling")["status"] == "True"


def test_a_bad_edit_is_stalled_and_keeps_the_last_good_plan_counts() -> None:
    obs = QuotaObservation(
        generation=5,
        problem=Problem("SecretMissing", "secret binance-main not found in trading"),
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        reports={0: _report(0), 1: _report(1)},
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Stalled")["status"] == "True"
    assert _cond(status, "Stalled")["reason"] == "SecretMissing"
    assert _cond(status, "Ready")["status"] == "False"
    assert "Reconciling" not in _types(status), "kstatus: never Stalled and Reconciling at once"
    assert status["planGeneration"] == 3


def test_a_stalled_quota_that_was_converging_drops_reconciling_and_fixed_drops_stalled() -> None:
    converging = QuotaObservation(
        generation=1, plan=_plan(), replicas=2, ready_replicas=2, reports={0: _report(0, 2)}
    )
    first = quota_status(None, converging, T0)
    assert _types(first)["Reconciling"] == "True"
    stalled = QuotaObservation(
        generation=2,
        problem=Problem("SecretMissing", "secret x not found"),
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        reports={0: _report(0, 2)},
    )
    second = quota_status(first, stalled, T0)
    assert _types(second) == {"Ready": "False", "Stalled": "True"}
    fixed = QuotaObservation(
        generation=3,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        desired_streams=2,
        reports={0: _report(0), 1: _report(1)},
    )
    third = quota_status(second, fixed, T0)
    assert _types(third) == {"Ready": "True"}
    assert all(c["observedGeneration"] == 3 for c in third["conditions"])


def test_pods_not_ready_is_degraded_with_a_message_that_says_so() -> None:
    obs = QuotaObservation(
        generation=1,
        plan=_plan(),
        replicas=2,
        ready_replicas=1,
        desired_streams=2,
        reports={0: _report(0), 1: _report(1)},
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Degraded")["status"] == "True"
    assert _cond(status, "Degraded")["message"] == "1/2 gateway pods ready"


def test_egress_checks_reported_by_gateways_show_as_conditions() -> None:
    from connquota.api.report import EgressCheckResult, EgressCheckState

    failed = _report(0).model_copy(
        update={
            "egressChecks": [
                EgressCheckResult(
                    address="a0",
                    publicAddress="198.51.100.1",
                    state=EgressCheckState.MISMATCH,
                    seenAddress="198.51.100.9",
                    reason="the echo service sees 198.51.100.9",
                ),
                EgressCheckResult(
                    address="a1",
                    publicAddress="198.51.100.2",
                    state=EgressCheckState.UNVERIFIED,
                    reason="NAT audited",
                ),
            ]
        }
    )
    obs = QuotaObservation(
        generation=1,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        desired_streams=2,
        reports={0: failed, 1: _report(1)},
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "Degraded")["reason"] == "EgressCheckFailed"
    assert "a0 (mismatch" in _cond(status, "Degraded")["message"]
    assert "a1 (unverified: NAT audited)" in _cond(status, "EgressUnverified")["message"]


def test_a_misspelled_status_field_fails_before_it_is_written() -> None:
    import pytest
    from pydantic import ValidationError

    from connquota.api.quota import ExchangeConnectionQuotaStatus
    from connquota.operator.status import validated

    with pytest.raises(ValidationError):
        validated(ExchangeConnectionQuotaStatus, {"observedGeneration": 1, "readyReplica": 2})


def test_unserved_streams_set_capacity_exceeded_and_quarantine_sets_rate_limited() -> None:
    obs = QuotaObservation(
        generation=1,
        plan=_plan(unserved=3),
        desired_streams=5,
        quarantines=[Quarantine(scope="ip", key="a1", statusCode=429, until=0)],
    )
    status = quota_status(None, obs, T0)
    assert _cond(status, "CapacityExceeded")["status"] == "True"
    assert "3 of 5" in _cond(status, "CapacityExceeded")["message"]
    assert _cond(status, "RateLimited")["status"] == "True"
    assert status["unserved"][0] == {"stream": "s0", "reason": "streams"}


def test_addresses_planned_without_set_degraded_and_are_named_beside_unserved_streams() -> None:
    """A lost node's bind address (or a proxy that is down) is planned without: the quota is
    Degraded naming it and why, and CapacityExceeded says so beside the unserved count."""
    obs = QuotaObservation(
        generation=1,
        plan=_plan(unserved=2),
        replicas=2,
        ready_replicas=2,
        desired_streams=4,
        reports={0: _report(0), 1: _report(1)},
        unavailable={"a1": "its node n1 is lost", "p0": "its proxy is down: refused"},
    )
    status = quota_status(None, obs, T0)
    degraded = _cond(status, "Degraded")
    assert degraded["status"] == "True"
    assert degraded["reason"] == "AddressesUnavailable"
    assert "address a1 (its node n1 is lost)" in degraded["message"]
    assert "address p0 (its proxy is down: refused)" in degraded["message"]
    capacity = _cond(status, "CapacityExceeded")["message"]
    assert "2 of 4" in capacity and "planned without address a1 (its node n1 is lost)" in capacity
    healed = quota_status(status, QuotaObservation(**{**obs.__dict__, "unavailable": {}}), T1)
    assert "Degraded" not in _types(healed)


def test_last_transition_time_moves_only_when_the_status_changes() -> None:
    first = set_condition([], "Ready", False, "Progressing", "a", 1, T0)
    same = set_condition(first, "Ready", False, "Progressing", "b", 2, T1)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"]
    flipped = set_condition(same, "Ready", True, "FleetReady", "c", 2, T1)
    assert flipped[0]["lastTransitionTime"] != first[0]["lastTransitionTime"]


def test_recomputing_an_unchanged_status_later_changes_nothing() -> None:
    obs = QuotaObservation(
        generation=1,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        reports={0: _report(0), 1: _report(1)},
    )
    first = quota_status(None, obs, T0)
    again = quota_status(first, obs, T1)
    assert not status_differs(first, again)


def test_a_status_read_back_from_the_api_server_is_not_a_change() -> None:
    """After a restart the operator compares with the live status only: JSON numbers read back
    (6.0 as 6) and dropped empty values do not make an unchanged quota's status a write."""
    from connquota.api.plan import RecoveryBound

    plan = _plan().model_copy(
        update={"recoveryBounds": [RecoveryBound(address="lo-2", connections=4, seconds=6.0)]}
    )
    obs = QuotaObservation(generation=1, plan=plan, replicas=2, ready_replicas=2)
    desired = quota_status(None, obs, T0)
    read_back = json.loads(json.dumps(desired).replace("6.0", "6"))
    read_back.pop("unserved", None)
    assert read_back["recoveryBounds"][0]["seconds"] == 6
    assert not status_differs(read_back, quota_status(read_back, obs, T1))
    changed = QuotaObservation(generation=1, plan=plan, replicas=2, ready_replicas=1)
    assert status_differs(read_back, quota_status(read_back, changed, T1))


def test_refused_writes_get_the_api_servers_reason_and_transient_errors_none() -> None:
    from connquota.operator.kube import KubeError
    from connquota.operator.status_writer import write_failure

    quota = KubeError(
        'PATCH /api/v1/namespaces/t/configmaps/md-plan-0: 403 Forbidden: {"kind":"Status",'
        '"message":"configmaps \\"md-plan-0\\" is forbidden: exceeded quota: cm, requested: '
        'configmaps=1, used: configmaps=1, limited: configmaps=1","reason":"Forbidden"}',
        403,
    )
    reason, message = write_failure(quota)
    assert reason == "QuotaExceeded" and "exceeded quota: cm" in message
    rbac = KubeError('PATCH /x: 403 Forbidden: {"message":"roles is forbidden: User x"}', 403)
    assert write_failure(rbac)[0] == "Forbidden"
    hook = KubeError(
        'PATCH /x: 400 Bad Request: {"message":"admission webhook \\"v\\" denied the request"}',
        400,
    )
    assert write_failure(hook)[0] == "AdmissionDenied"
    for status in (0, 409, 429, 503):
        assert write_failure(KubeError("x", status)) is None


def test_a_credential_the_exchange_refuses_sets_credential_refused_naming_it_and_the_error() -> (
    None
):
    refused = _report(1).model_copy(
        update={
            "authRefused": {"main": "code -2015: Invalid API-key, IP, or permissions"},
            "streams": 0,
        }
    )
    obs = QuotaObservation(
        generation=1,
        plan=_plan(),
        replicas=2,
        ready_replicas=2,
        desired_streams=2,
        reports={0: _report(0), 1: refused},
    )
    status = quota_status(None, obs, T0)
    cond = _cond(status, "CredentialRefused")
    assert (cond["status"], cond["reason"]) == ("True", "ExchangeRefusedKey")
    assert "credential main (code -2015: Invalid API-key" in cond["message"]
    # its private stream is not live: not Ready, and Reconciling says what it waits for
    assert "wait for its Secret to change" in _cond(status, "Reconciling")["message"]
    # the rotated key works again: the condition is removed, not set False
    obs.reports = {0: _report(0), 1: _report(1)}
    assert "CredentialRefused" not in _types(quota_status(status, obs, T0))
