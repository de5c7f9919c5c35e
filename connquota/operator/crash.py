"""A test-only hook: kill the operator right after one of its write points.

With `CONNQUOTA_OPERATOR_CRASH_AT=<point>` in its environment, the operator calls `os._exit`
(no cleanup, like SIGKILL) right after the first write of that kind. The cluster tests use it
to check that a crash at any write point of a transition never breaks a limit. Unset (always,
outside tests), `crash_point` does nothing.

Points, in the order a reconcile reaches them:

- `ledger`: the quota's ledger ConfigMap was written (a new generation recorded, not yet
  published, or acknowledgements recorded);
- `plan`: the first plan ConfigMap of a generation was written (others not yet);
- `plans`: every plan ConfigMap of the generation was written;
- `scale`: the StatefulSet's replicas were changed;
- `status`: the quota's status was written.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

CRASH_ENV = "CONNQUOTA_OPERATOR_CRASH_AT"
POINTS = ("ledger", "plan", "plans", "scale", "status")
EXIT_CODE = 86
"""The exit status of a crash on purpose (tests tell it from a real failure)."""

_AT = os.environ.get(CRASH_ENV, "")


def crash_point(point: str) -> None:
    """Exit the process at once when `point` is the configured crash point."""
    if _AT and point == _AT:
        log.error("crashing on purpose at write point %s (%s)", point, CRASH_ENV)
        logging.shutdown()
        os._exit(EXIT_CODE)
