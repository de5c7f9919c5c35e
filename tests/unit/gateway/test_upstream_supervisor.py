"""A connection loop that fails unexpectedly is logged, counted and started again, never left
down with its last state frozen."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from connquota.api.plan import ConnectionPlan
from connquota.gateway import upstream
from connquota.gateway.upstream import UpstreamConnection
from connquota.gateway.upstream_policy import ConnectionState


async def test_a_failed_connection_loop_is_logged_counted_and_restarted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(upstream, "SUPERVISOR_RESTART_S", 0.01)
    ctx: Any = SimpleNamespace(credentials={}, stats=Counter(), log_extra={"quota": "q"})
    conn = UpstreamConnection(ctx, ConnectionPlan(id="g1-0", address="a0", streams=["s"]))
    runs: list[int] = []
    states: list[ConnectionState] = []
    done = asyncio.Event()

    async def run() -> None:
        runs.append(len(runs))
        states.append(conn.state)
        if len(runs) == 1:
            raise KeyError("a bug")
        done.set()

    monkeypatch.setattr(conn, "_run", run)
    with caplog.at_level(logging.ERROR, logger="connquota.gateway.upstream"):
        conn.start()
        await asyncio.wait_for(done.wait(), 5)
    assert runs == [0, 1]
    assert states[1] == ConnectionState.BACKOFF and "internal error" in conn.status
    assert ctx.stats[("reconnect", "internal-error")] == 1
    assert any("connection loop failed" in r.getMessage() and r.exc_info for r in caplog.records)
    await conn.stop()
    assert conn.state == ConnectionState.STOPPED
