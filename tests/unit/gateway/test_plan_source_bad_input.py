"""Hand-edited plans the gateway refuses with a reason, keeping its last good plan."""

from __future__ import annotations

import json

import pytest

from connquota.gateway.plan_source import NewerPlans, PlanError, parse_plan
from connquota.testing.gateway_plans import connections, pod_plan, small_profile


def plan_doc(generation: int) -> dict:
    plan = pod_plan(small_profile(), connections(2, 2), generation=generation)
    return json.loads(plan.model_dump_json())


def test_deep_nesting_and_invalid_utf8_are_plan_errors_not_exceptions():
    with pytest.raises(PlanError, match="nested too deeply"):
        parse_plan("[" * 100_000, 0)
    with pytest.raises(PlanError, match="not UTF-8"):
        parse_plan(b'{"formatVersion": "\xff"}', 0)
    assert parse_plan(json.dumps(plan_doc(1)).encode(), 0).generation == 1


def test_a_lower_generation_or_another_quota_is_refused_with_a_reason():
    newer = NewerPlans()
    assert newer.accept(json.dumps(plan_doc(5)), 0) is not None
    assert newer.accept(json.dumps(plan_doc(3)), 0) is None
    assert "generation 3 is older than generation 5" in newer.last_error
    assert newer.accept(json.dumps(plan_doc(5)), 0) is None  # the same one again: no error
    assert newer.last_error == ""
    other = plan_doc(6)
    other["quota"] = {"namespace": "elsewhere", "name": "q"}
    assert newer.accept(json.dumps(other), 0) is None
    assert "plan is for quota elsewhere/q" in newer.last_error
    assert newer.accept(json.dumps(plan_doc(6)), 0).generation == 6
    assert newer.last_error == ""
