"""Fixtures for mock-exchange tests: start mock exchanges with shrunk limits, stop them after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from mockexchange_clients import PROFILE_OF

from connquota.exchanges import get_profile
from connquota.mockexchange import MockExchange, MockSettings, parse_limit_spec

StartMock = Callable[..., Awaitable[MockExchange]]


@pytest.fixture
async def start_mock() -> AsyncIterator[StartMock]:
    """``await start_mock("okx", limits=["connectionAttempts:ip=5/2"], time_scale=10, ...)``:
    a running MockExchange for the dialect's built-in profile, stopped after the test."""
    started: list[MockExchange] = []

    async def start(
        dialect: str,
        limits: list[str] | None = None,
        time_scale: float = 1.0,
        rate_per_stream_hz: float = 1.0,
        ssl_context: Any = None,
        **settings: Any,
    ) -> MockExchange:
        mx = MockExchange(
            get_profile(PROFILE_OF[dialect]),
            "127.0.0.1",
            0,
            limits=[parse_limit_spec(spec) for spec in limits or []],
            settings=MockSettings(
                time_scale=time_scale, rate_per_stream_hz=rate_per_stream_hz, **settings
            ),
            ssl_context=ssl_context,
        )
        await mx.start()
        started.append(mx)
        return mx

    yield start
    for mx in started:
        await mx.stop()
