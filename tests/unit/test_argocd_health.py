"""The Argo CD health check judges quotas and pools the way an on-call engineer would.

The shipped Lua runs in a real Lua interpreter (lupa) against objects whose status is built
from the pydantic status models, in every state Argo CD distinguishes.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lupa
import pytest
import yaml

from connquota.api import (
    Condition,
    ConditionStatus,
    ConditionType,
    ExchangeConnectionQuota,
    ExchangeConnectionQuotaStatus,
    ExchangeEgressPool,
    ExchangeEgressPoolStatus,
)
from connquota.api.quota import StreamCounts

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "charts/connquota/files/argocd-health/health.lua"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _condition(kind: ConditionType, status: bool, reason: str, message: str = "") -> Condition:
    return Condition(
        type=kind,
        status=ConditionStatus.TRUE if status else ConditionStatus.FALSE,
        reason=reason,
        message=message,
        lastTransitionTime=NOW,
        observedGeneration=3,
    )


def _quota(
    conditions: list[Condition] | None, *, observed: int | None = 3, paused: bool = False
) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "examples/10-quota-binance-spot.yaml").read_text())
    quota = ExchangeConnectionQuota.model_validate(raw)
    quota.metadata.generation = 3
    quota.spec.paused = paused
    if conditions is not None:
        quota.status = ExchangeConnectionQuotaStatus(
            observedGeneration=observed,
            conditions=conditions,
            streams=StreamCounts(desired=4, planned=4, live=4),
        )
    return quota.model_dump(mode="json", by_alias=True, exclude_none=True)


def _pool(conditions: list[Condition], observed: int = 3) -> dict[str, Any]:
    raw = yaml.safe_load((REPO / "examples/01-pool-bind.yaml").read_text())
    pool = ExchangeEgressPool.model_validate(raw)
    pool.metadata.generation = 3
    pool.status = ExchangeEgressPoolStatus(observedGeneration=observed, conditions=conditions)
    return pool.model_dump(mode="json", by_alias=True, exclude_none=True)


def _health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return str(result["status"]), str(result["message"])


def _run(obj: dict[str, Any]) -> tuple[str, str]:
    return _health(SCRIPT.read_text(), obj)


READY = _condition(ConditionType.READY, True, "Serving", "4/4 streams live")
NOT_READY = _condition(ConditionType.READY, False, "Reconciling", "2/4 streams live")
RECONCILING = _condition(ConditionType.RECONCILING, True, "Opening", "2/4 streams live")
STALLED = _condition(ConditionType.STALLED, True, "Forbidden", "roles is forbidden")
DEGRADED = _condition(ConditionType.DEGRADED, True, "PodsNotReady", "1/2 gateway pods ready")
CAPACITY = _condition(ConditionType.CAPACITY_EXCEEDED, True, "NoRoom", "3 streams unserved")


def test_ready_quota_is_healthy() -> None:
    assert _run(_quota([READY])) == ("Healthy", "4/4 streams live")


def test_quota_without_status_is_progressing() -> None:
    assert _run(_quota(None))[0] == "Progressing"


def test_reconciling_quota_is_progressing_with_its_message() -> None:
    assert _run(_quota([NOT_READY, RECONCILING])) == ("Progressing", "2/4 streams live")


def test_ready_quota_whose_edit_is_not_yet_observed_is_progressing() -> None:
    status, message = _run(_quota([READY], observed=2))
    assert status == "Progressing"
    assert "generation 3" in message


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ([NOT_READY, STALLED], "roles is forbidden"),
        ([READY, DEGRADED], "1/2 gateway pods ready"),
        ([READY, CAPACITY], "3 streams unserved"),
    ],
)
def test_stalled_degraded_or_short_of_capacity_quota_is_degraded(
    conditions: list[Condition], message: str
) -> None:
    assert _run(_quota(conditions)) == ("Degraded", message)


def test_conditions_present_but_false_do_not_degrade() -> None:
    false_ones = [
        _condition(ConditionType.STALLED, False, "NotStalled"),
        _condition(ConditionType.DEGRADED, False, "AllPodsReady"),
        _condition(ConditionType.CAPACITY_EXCEEDED, False, "AllServed"),
        _condition(ConditionType.RECONCILING, False, "Done"),
        READY,
    ]
    assert _run(_quota(false_ones))[0] == "Healthy"


def test_paused_quota_is_suspended_whatever_its_conditions() -> None:
    assert _run(_quota([NOT_READY, STALLED], paused=True))[0] == "Suspended"


def test_pool_health_follows_its_conditions() -> None:
    assert _run(_pool([_condition(ConditionType.READY, True, "Budgeted")]))[0] == "Healthy"
    assert _run(_pool([DEGRADED]))[0] == "Degraded"
    assert _run(_pool([READY], observed=1))[0] == "Progressing"


def test_docs_snippet_for_argocd_cm_is_the_shipped_script() -> None:
    text = (REPO / "docs/gitops.md").read_text()
    blocks = [
        yaml.safe_load(block)
        for block in re.findall(r"```yaml\n(.*?)```", text, re.S)
        if "argocd-cm" in block
    ]
    assert len(blocks) == 1
    data = blocks[0]["data"]
    script = SCRIPT.read_text()
    assert data == {
        "resource.customizations.health.connquota.io_ExchangeConnectionQuota": script,
        "resource.customizations.health.connquota.io_ExchangeEgressPool": script,
    }
