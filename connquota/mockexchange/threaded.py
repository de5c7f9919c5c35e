"""A mock exchange served by its own event loop in a daemon thread.

For synchronous callers (cluster tests, benchmarks) that run the referee beside a control plane
and gateway processes: every access to the mock's state goes through its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from connquota.mockexchange.server import MockExchange

T = TypeVar("T")
M = TypeVar("M", bound=MockExchange)


class ThreadedMockExchange(Generic[M]):
    """Starts `mock` on a new event loop in a daemon thread; `stop()` ends both."""

    def __init__(self, mock: M, start_timeout_s: float = 10.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.mock = mock
        self.call(self.mock.start(), start_timeout_s)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 10) -> T:
        """Run `coro` on the mock's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def sync(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the mock's loop (its state is only touched there)."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def violations(self) -> list[dict[str, Any]]:
        """Every violation the referee recorded, as JSON documents."""
        return self.sync(lambda: [v.to_json() for v in self.mock.violations()])

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the mock, then its loop and thread."""
        with contextlib.suppress(Exception):
            self.call(self.mock.stop(), timeout_s)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
