"""The Helm chart ships exactly the CRDs the models render, and its values table is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (REPO / "charts/connquota/crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert shipped == generated, "run `make crds` to copy crds/ into charts/connquota/crds/"


def test_chart_readme_values_table_matches_values_yaml_and_schema() -> None:
    """Every value is commented in values.yaml, typed in values.schema.json, and the README's
    generated table is up to date."""
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "chart-values-table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
