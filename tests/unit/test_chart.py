"""The Helm chart ships exactly the CRDs the models render."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (REPO / "charts/connquota/crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert shipped == generated, "run `make crds` to copy crds/ into charts/connquota/crds/"
