"""Real exchange client libraries pointed at a gateway as a user would: the few lines of set-up
each needs (docs/consumers.md), shared by the tests that use them."""

from __future__ import annotations

import threading
from typing import Any

from pybit import unified_trading as unified


def pybit_client(url: str) -> Any:
    """pybit's public WebSocket at `url` (pybit builds its URL from a host template: the URL is
    changed in a subclass), with pybit's ack race tolerated: pybit stores a subscription's
    req_id only after sending it, so an ack that comes back first, as it can from a gateway a
    few hundred microseconds away, raised KeyError in its reader thread and ended the
    connection (docs/consumers.md)."""

    class GatewayWebSocket(unified.WebSocket):
        def _connect(self, _url: str) -> None:
            super()._connect(url)

        def _process_subscription_message(self, message: dict) -> None:
            if message.get("req_id") in self.subscriptions:
                super()._process_subscription_message(message)

    return GatewayWebSocket(testnet=False, channel_type="spot")


def bounded_in_daemon_thread(call: Any, timeout_s: float) -> None:
    """Run a blocking library call in a daemon thread, waiting at most `timeout_s`: pybit's
    exit() polls until its socket is gone, and a thread of the event loop's executor that
    never returns would keep the test process alive after the test."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"{call} did not return in {timeout_s} s"
