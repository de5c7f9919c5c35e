"""One watch of Kubernetes objects from a blocking thread (the kubernetes client is sync).

`watch_events` streams events after a list or read at `resource_version` until the server
ends the watch (at most a minute), the connection dies silently (75 s request timeout) or
`stop` is set; callers loop list-then-watch around it and keep their last good state while
the API server is away.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

WATCH_TIMEOUT_S = 60
"""The server ends each watch after this long; the caller lists again."""
REQUEST_TIMEOUT_S = 75
"""A connection that dies silently must not stall the watch for ever."""


def watch_events(
    list_call: Callable[..., Any],
    namespace: str,
    resource_version: str | None,
    stop: threading.Event,
    **selectors: str,
) -> Iterator[tuple[str, Any]]:
    """(event type, object) of `list_call`'s watch in `namespace`, until it ends or `stop`."""
    from kubernetes import watch

    w = watch.Watch()  # type: ignore[no-untyped-call]
    for event in w.stream(  # type: ignore[no-untyped-call]
        list_call,
        namespace,
        resource_version=resource_version,
        timeout_seconds=WATCH_TIMEOUT_S,
        _request_timeout=REQUEST_TIMEOUT_S,
        **selectors,
    ):
        if stop.is_set():
            w.stop()  # type: ignore[no-untyped-call]
            return
        yield event["type"], event["object"]
