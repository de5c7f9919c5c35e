"""Clocks the gateway reads: monotonic time for durations, wall time for the state file.

Everything that waits on time takes a `Clock`, so the limiter can be tested with a
`ManualClock` that moves only when told (or jumps forward when someone sleeps on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic and wall time, and a way to wait on either time or an event."""

    def monotonic(self) -> float:
        """Seconds on a clock that never steps (shared by every process of one boot)."""
        ...

    def wall(self) -> float:
        """Epoch seconds (for timestamps people and other boots read)."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Return when `event` is set or `timeout_s` seconds have passed (cancellable)."""
        ...


class SystemClock:
    """The real clocks: `time.monotonic` (CLOCK_MONOTONIC) and `time.time`."""

    def monotonic(self) -> float:
        """CLOCK_MONOTONIC seconds: comparable between processes of the same boot."""
        return time.monotonic()

    def wall(self) -> float:
        """Epoch seconds."""
        return time.time()

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait for `event` at most `timeout_s` seconds."""
        if event.is_set():
            return
        if timeout_s == float("inf"):
            await event.wait()
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that
        # arrives in the same loop iteration as the event (the waiter would never stop).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, timeout_s)):
                await event.wait()


class ManualClock:
    """A test clock: time moves by `advance()`, or jumps forward when a waiter times out."""

    def __init__(self, start_s: float = 1000.0, wall_offset_s: float = 1_700_000_000.0) -> None:
        self.now_s = start_s
        self.wall_offset_s = wall_offset_s

    def monotonic(self) -> float:
        """The manual monotonic time."""
        return self.now_s

    def wall(self) -> float:
        """Monotonic time plus a fixed offset (change `wall_offset_s` to step the clock)."""
        return self.now_s + self.wall_offset_s

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now_s += seconds

    async def wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Yield once; unless `event` is set, jump time forward by `timeout_s`."""
        await asyncio.sleep(0)
        if event.is_set():
            return
        if timeout_s == float("inf"):
            await event.wait()
            return
        self.now_s += max(0.0, timeout_s)
