"""Suite-wide test plumbing: tier markers (docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/cluster needs the control plane: mark it `cluster`.

    The Makefile's tiers select by marker, so a cluster test that forgot its module-level
    ``pytestmark`` would otherwise land in the parallel unit/component run.
    """
    for item in items:
        if CLUSTER_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.cluster)
