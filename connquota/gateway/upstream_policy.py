"""How upstream connections behave over time: their states, why a session ended, backoff
with full jitter, Retry-After, and when to rotate before the maximum age."""

from __future__ import annotations

import email.utils
import random
from enum import StrEnum
from typing import Any

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import CONNECTION_SCOPE_KEY, PodPlan

RATE_LIMIT_STATUSES = (429, 418)
"""Handshake answers that quarantine the address (and, for 418, the account)."""


class ConnectionState(StrEnum):
    """Where an upstream connection is (its `/status` `state`)."""

    STARTING = "starting"
    REFUSED = "refused"
    CONNECTING = "connecting"
    WAITING = "waiting"
    BACKOFF = "backoff"
    SUBSCRIBING = "subscribing"
    CREDENTIAL_ERROR = "credential-error"
    AUTH_REFUSED = "auth-refused"
    LIVE = "live"
    STOPPED = "stopped"


def plan_max_age_s(plan: PodPlan) -> float | None:
    """The maximum connection age the plan allows (its connection slice, headroom applied).

    The planner gives every pod a connection-scoped `maxConnectionAge` slice of
    floor(headroom x the exchange's value); the gateway rotates within that, not within the
    profile's published value. A plan without the slice falls back to the profile's limit.
    """
    got = plan.slice(LimitName.MAX_CONNECTION_AGE, LimitScope.CONNECTION, CONNECTION_SCOPE_KEY)
    if got is not None:
        return float(got.value)
    limit = plan.profile.limit(LimitName.MAX_CONNECTION_AGE)
    return None if limit is None else float(limit.value)


def rotation_after_s(max_age_s: float, connect_timeout_s: float, lead_fraction: float) -> float:
    """Seconds after a session opened to start its make-before-break rotation.

    Early enough that the replacement can take its attempt and connect (two connect timeouts,
    or `lead_fraction` of the age, whichever is longer) — and never before half the age.
    """
    lead = max(connect_timeout_s * 2, max_age_s * lead_fraction)
    return max(max_age_s * 0.5, max_age_s - lead)


class SessionEnded(Exception):
    """A session ended; `reason` says why, `clean` whether the exchange knows it ended."""

    def __init__(self, reason: str, clean: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


def retry_after_s(headers: Any, now_wall_s: float) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date), or None."""
    if headers is None:
        return None
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_wall_s)


def backoff_delay_s(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with full jitter: uniform(0, min(cap, base * 2**failures))."""
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** min(failures, 30))))
