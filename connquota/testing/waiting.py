"""Waiting on a condition instead of sleeping: the polling helpers of the tests and benchmarks.

``wait_for`` blocks (threads, the real API server: an object may not exist yet, so errors
other than AssertionError are retried); ``wait_until`` is its asyncio twin for in-process
state and awaitable probes (errors propagate: in-process state does not "appear later").
Both return the predicate's first truthy value and fail with ``what``, the timeout and the
last value or error, so a failure says what never happened.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1) -> T:
    """Poll ``predicate`` every ``interval_s`` until it returns something truthy; return it.

    Raises AssertionError after ``timeout_s`` (an AssertionError from the predicate fails at
    once; other exceptions are retried and reported if the time runs out).
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    last_value: T | None = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
        except AssertionError:
            raise
        except Exception as err:  # the object may not exist yet
            last_error = err
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what} "
                f"(last value: {last_value!r}, last error: {last_error})"
            )
        time.sleep(interval_s)


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout_s: float = 5.0,
    what: str = "",
    interval_s: float = 0.01,
) -> T:
    """Poll ``predicate`` (plain or async) every ``interval_s`` until it returns something
    truthy; return it. Raises AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        result: T = await value if inspect.isawaitable(value) else value
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s}s waiting for {what or predicate} (last: {result!r})"
            )
        await asyncio.sleep(interval_s)
