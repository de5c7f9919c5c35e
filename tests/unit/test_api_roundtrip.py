"""Model round-trips: what the models write, they read back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from connquota.api import ExchangeConnectionQuota, ExchangeEgressPool
from connquota.exchanges import PROFILES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = {
    "ExchangeConnectionQuota": ExchangeConnectionQuota,
    "ExchangeEgressPool": ExchangeEgressPool,
}
DOCS = [
    (p.name, d)
    for p in sorted(EXAMPLES.glob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d and d["kind"] in MODELS
]


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[n for n, _ in DOCS])
def test_example_round_trips_through_the_wire_form(name: str, doc: dict) -> None:
    model = MODELS[doc["kind"]]
    first = model.model_validate(doc)
    again = model.model_validate(first.to_wire())
    assert again == first
    assert again.to_wire() == first.to_wire()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_round_trips_through_json(name: str) -> None:
    profile = PROFILES[name]
    assert type(profile).model_validate_json(profile.model_dump_json()) == profile


def test_quota_with_a_full_status_round_trips() -> None:
    doc = next(d for _, d in DOCS if d["kind"] == "ExchangeConnectionQuota")
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status = {
        "observedGeneration": 3,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Serving", "lastTransitionTime": now},
            {
                "type": "CapacityExceeded",
                "status": "False",
                "reason": "Fits",
                "lastTransitionTime": now,
            },
        ],
        "replicas": 2,
        "readyReplicas": 2,
        "streams": {"desired": 5, "planned": 5, "live": 4, "unserved": 0},
        "connections": {"planned": 2, "live": 2},
        "planGeneration": 7,
        "pods": [{"pod": "q-gw-0", "generation": 7, "connections": 1, "streams": 3}],
        "addresses": [
            {
                "key": "lo-2",
                "limits": [{"limit": "connectionAttempts", "share": 120, "used": 3, "budget": 240}],
            }
        ],
        "recoveryBounds": [{"address": "lo-2", "connections": 2, "seconds": 0.5}],
        "assumedLimits": ["concurrentConnections"],
    }
    quota = ExchangeConnectionQuota.model_validate({**doc, "status": status})
    again = ExchangeConnectionQuota.model_validate_json(quota.model_dump_json(exclude_none=True))
    assert again == quota
    assert again.status is not None and again.status.conditions[0].lastTransitionTime == now


def test_duplicate_condition_types_in_status_are_refused() -> None:
    from pydantic import ValidationError

    doc = next(d for _, d in DOCS if d["kind"] == "ExchangeEgressPool")
    now = datetime(2026, 1, 2, tzinfo=UTC)
    ready = {"type": "Ready", "status": "True", "reason": "Ok", "lastTransitionTime": now}
    with pytest.raises(ValidationError, match="conditions"):
        ExchangeEgressPool.model_validate({**doc, "status": {"conditions": [ready, ready]}})
