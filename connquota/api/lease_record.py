"""What an ordinal's Lease carries besides the fence: the operator's fresh certificate and the
gateways' write-ahead attempt reservations.

Two annotations, each JSON of a model below:

- `connquota.io/fresh` (`FreshCertificate`), written once by the operator when it creates the
  Lease: at `issuedAt` no connection attempt of this ordinal (any earlier pod, any earlier
  Lease of the same name) still counted at the exchange, by the operator's ledger. It voids
  itself with its Lease: a Lease deleted and created again without a certificate carries none.
- `connquota.io/attempts` (`AttemptReservations`), rewritten by the holder before it uses any
  attempt the annotation does not already cover (write-ahead): every attempt the ordinal may
  have made that still counts is inside one of its reservations.

A gateway that takes the Lease reads both from the version it replaced (the predecessor can no
longer write it: its writes would conflict) and starts its attempt log with the reservations
instead of a full hold when the record is complete (see `inheritance`). Docs: docs/gateway.md,
"Starting without a blind wait".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError

from connquota.api.base import ApiModel
from connquota.api.limits import LimitScope

FRESH_ANNOTATION = "connquota.io/fresh"
"""The Lease annotation holding the operator's `FreshCertificate` (set at creation only)."""

ATTEMPTS_ANNOTATION = "connquota.io/attempts"
"""The Lease annotation holding the holder's `AttemptReservations` (write-ahead)."""

RECORD_FORMAT: Literal[1] = 1

CLOCK_SKEW_S = 2.0
"""Reservations carry wall-clock expiries written on one node and read on another: a successor
counts each one this much longer (NTP keeps nodes within milliseconds; 2 s is generous)."""


class FreshCertificate(ApiModel):
    """The operator's word that nothing this ordinal did before `issuedAt` still counts."""

    format: Literal[1] = RECORD_FORMAT
    issuedAt: float = Field(description="Operator wall-clock time (epoch seconds).")
    generation: Annotated[int, Field(ge=0)] = Field(
        description="The newest plan generation the ledger had published at issue time."
    )


class Reservation(ApiModel):
    """Up to `count` attempts on one key, each counting at the exchange until `expiresAt`."""

    scope: LimitScope
    key: str = Field(description="Address name (ip) or account/key id, as the plan names it.")
    count: Annotated[int, Field(ge=1)]
    expiresAt: float = Field(description="Wall-clock time (epoch seconds).")
    holdSeconds: float | None = Field(
        default=None,
        description="How long one attempt counts: an attempt made before the successor took "
        "the Lease counts at most this long after the take.",
    )


class AttemptReservations(ApiModel):
    """The holder's write-ahead record: every attempt of the ordinal that may still count."""

    format: Literal[1] = RECORD_FORMAT
    holder: str = Field(description="The Lease holder identity that wrote it.")
    blindFrom: float | None = Field(
        default=None,
        description="When set, attempts not listed may count: a successor counts its whole "
        "rate slice as used from this wall-clock time (a full hold from then).",
    )
    reservations: list[Reservation] = Field(default_factory=list)


def parse_certificate(text: str | None) -> FreshCertificate | None:
    """The certificate in an annotation value, or None when absent or unreadable."""
    if not text:
        return None
    try:
        return FreshCertificate.model_validate_json(text)
    except ValidationError:
        return None


def parse_reservations(text: str | None) -> AttemptReservations | None:
    """The reservations in an annotation value, or None when absent or unreadable."""
    if not text:
        return None
    try:
        return AttemptReservations.model_validate_json(text)
    except ValidationError:
        return None
