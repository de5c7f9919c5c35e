"""Proxy addresses whose proxy is down are planned without, for every quota of the pool."""

from __future__ import annotations

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import QuotaRef
from connquota.api.report import EgressCheckResult, EgressCheckState, GatewayReport
from connquota.operator.planning import without_addresses
from connquota.operator.proxy_outages import OUTAGE_HOLD_S, ProxyOutages
from connquota.planner.shares import QuotaShares


def report(faults: dict[str, str | None]) -> GatewayReport:
    return GatewayReport(
        quota=QuotaRef(namespace="t", name="q"),
        pod="q-gw-0",
        ordinal=0,
        bootId="b",
        planGeneration=1,
        egressChecks=[
            EgressCheckResult(
                address=a,
                publicAddress="203.0.113.1",
                state=EgressCheckState.VERIFIED,
                proxyFault=f,
            )
            for a, f in faults.items()
        ],
    )


def test_down_faults_take_an_address_out_until_a_hold_after_the_last_report():
    outages = ProxyOutages()
    outages.observe("p", [report({"a": "unreachable", "b": "upstream-refused", "c": None})], 100)
    outages.observe("other", [report({"z": "auth-refused"})], 100)
    assert outages.down("p", 100) == {"a": "unreachable"}  # upstream faults are the exchange's
    assert outages.down("other", 100) == {"z": "auth-refused"}
    assert outages.next_change_s("p", 100) == OUTAGE_HOLD_S + 0.5
    outages.observe("p", [report({"a": None})], 105)  # the fault cleared: held until it lapses
    assert outages.down("p", 100 + OUTAGE_HOLD_S - 0.1) == {"a": "unreachable"}
    assert outages.down("p", 100 + OUTAGE_HOLD_S) == {}
    assert outages.next_change_s("p", 200) is None


def test_planning_without_an_address_zeroes_only_its_shares():
    shares = QuotaShares(
        quota="t/q",
        domain="d",
        ip={("a", LimitName.CONNECTION_ATTEMPTS): 5, ("b", LimitName.CONNECTION_ATTEMPTS): 5},
        bursts={(LimitScope.IP, "a", LimitName.CONNECTION_ATTEMPTS): 2},
    )
    out = without_addresses(shares, {"a": "unreachable"})
    assert out.ip == {
        ("a", LimitName.CONNECTION_ATTEMPTS): 0,
        ("b", LimitName.CONNECTION_ATTEMPTS): 5,
    }
    assert out.bursts == {(LimitScope.IP, "a", LimitName.CONNECTION_ATTEMPTS): 0}
    assert out.reasons == ["address a: its proxy is down (unreachable)"]
    assert without_addresses(shares, {}) is shares


def test_a_plan_format_a_running_pod_does_not_read_is_held_back():
    from connquota.api.plan import QuotaPlan
    from connquota.operator.planning import cannot_read

    plan = QuotaPlan(generation=2, quota=QuotaRef(namespace="t", name="q"), replicas=2)
    old = report({}).model_copy(update={"planFormats": [1]})
    assert cannot_read({0: old, 1: old}, plan) == []
    newer = plan.model_copy(update={"formatVersion": 2})
    assert cannot_read({0: old, 1: old.model_copy(update={"planFormats": [1, 2]})}, newer) == [0]
    assert cannot_read({0: old}, None) == []
