"""Invalid objects are rejected with a message naming the field.

Each file in tests/data/invalid/ is a complete object with one defect and a `# expect:` comment
giving a fragment (a field name or message part) the rejection must contain. The same files are
applied to the real API server by the cluster tests, where the CRD's schema and CEL rules must
reject them too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from connquota.api import ExchangeConnectionQuota, ExchangeEgressPool

INVALID = Path(__file__).resolve().parents[2] / "tests" / "data" / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))
MODELS: dict[str, type[BaseModel]] = {
    "ExchangeConnectionQuota": ExchangeConnectionQuota,
    "ExchangeEgressPool": ExchangeEgressPool,
}


def expected_fragment(path: Path) -> str:
    """The `# expect: <fragment>` comment of an invalid-object file."""
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1).strip()


def test_there_is_an_invalid_object_for_every_bound_and_rule() -> None:
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_object_is_rejected_with_a_message_naming_the_field(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    with pytest.raises(ValidationError) as info:
        MODELS[doc["kind"]].model_validate(doc)
    assert expected_fragment(path) in str(info.value)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_invalid_object_is_complete_apart_from_its_defect(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "connquota.io/v1alpha1"
    assert doc["metadata"]["name"]
    if doc["kind"] == "ExchangeConnectionQuota":
        assert doc["metadata"]["namespace"]
