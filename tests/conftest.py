"""Suite-wide test plumbing: tier markers (docs/testing.md) and the real proxy servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connquota.testing.proxies import ProxyUnavailable, proxy_binaries

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


@pytest.fixture(scope="session")
def proxy_servers() -> Path:
    """The installed real proxy servers (hack/install-proxies.sh): missing is a failure with
    CI=true, a skip saying how to install them otherwise."""
    try:
        return proxy_binaries()
    except ProxyUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"proxy servers missing in CI: {exc}", pytrace=False)
        pytest.skip(f"proxy servers not installed ({exc}); run `make proxies`")
