"""A pool may not list an address (or prefix) inside another entry's IPv6 prefix: an exchange
counting per prefix would see both budgets as one (issue 16: Deribit 32 + 32 against 32)."""

from __future__ import annotations

import pytest
from planner_factories import plan_one, quota, streams

from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.exchanges import get_profile
from connquota.operator import planning
from connquota.planner.errors import PoolError
from connquota.planner.inputs import QuotaInput


def pool_of(*publics: str) -> ExchangeEgressPoolSpec:
    return ExchangeEgressPoolSpec.model_validate(
        {
            "addresses": [
                {"name": f"e{i}", "publicAddress": p, "mode": "proxy",
                 "proxyUrl": f"http://127.0.0.1:{3128 + i}"}
                for i, p in enumerate(publics)
            ]
        }
    )  # fmt: skip


@pytest.mark.parametrize(
    "publics",
    [
        ("2001:db8:9::/48", "2001:db8:9::5"),
        ("2001:db8:9::5", "2001:db8:9::/48"),
        ("2001:db8::/32", "2001:db8:9::/48"),
    ],
)
def test_an_entry_inside_another_entrys_prefix_is_refused_naming_both(publics):
    with pytest.raises(PoolError) as err:
        plan_one(quota(), pool_of(*publics), streams(5))
    message = str(err.value)
    assert "'e0'" in message and "'e1'" in message
    assert publics[0] in message and publics[1] in message


def test_the_operator_door_reports_the_overlap_as_a_stalled_quota():
    deribit = get_profile("deribit")
    q = quota(prof=deribit)
    qin = QuotaInput(q.namespace, q.name, q.spec, deribit)
    with pytest.raises(planning.QuotaProblem) as err:
        planning.divide(pool_of("2001:db8:9::/48", "2001:db8:9::5"), [qin])
    assert err.value.problem.reason == "ImpossibleQuota"
    assert "2001:db8:9::5 (address 'e1') inside 2001:db8:9::/48 (address 'e0')" in str(err.value)


def test_disjoint_prefixes_and_addresses_plan_as_separate_budgets():
    plan = plan_one(quota(), pool_of("2001:db8:9::/48", "2001:db8:a::5", "192.0.2.1"), streams(5))
    assert plan.pods
