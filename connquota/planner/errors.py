"""Errors the planner raises for input it cannot plan: each message says what to change."""

from __future__ import annotations


class PlanningError(ValueError):
    """The input cannot be planned; the message tells the user what to change."""


class StreamSpecError(PlanningError):
    """The quota's streams cannot be expanded (duplicates, unknown credential, too many)."""


class DuplicateStreamError(StreamSpecError):
    """One stream name declared twice with a different priority or credential."""


class TooManyStreamsError(StreamSpecError):
    """The quota declares more streams than connquota supports for one quota."""


class UnknownCredentialError(StreamSpecError):
    """A private stream names a credential the quota does not declare."""


class MissingStreamSourceError(StreamSpecError):
    """A non-optional `streamsFrom` ConfigMap key was not supplied."""


class PoolError(PlanningError):
    """The egress pool cannot host the quota (no addresses, duplicate public addresses)."""


class ShareRequestError(PlanningError):
    """A quota's share requests are inconsistent (an address the pool does not have)."""
