"""Fixtures for operator unit tests."""

from __future__ import annotations

import pytest
from operator_factories import POOL, make_quota

from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota


@pytest.fixture
def quota() -> ExchangeConnectionQuota:
    return make_quota()


@pytest.fixture
def pool() -> ExchangeEgressPool:
    return ExchangeEgressPool.model_validate(POOL)
