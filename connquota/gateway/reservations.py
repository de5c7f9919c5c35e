"""Write-ahead attempt reservations on the ordinal's Lease, and what a successor inherits.

A gateway reserves connection attempts in small batches and writes each batch to its Lease
(`connquota.io/attempts`, `connquota.api.lease_record`) before using any attempt of it. A
batch is `count` attempts on one key, usable for `horizon_s` (one renewal period) from the
write; an attempt made at t counts at the exchange until t + its hold, so the batch's
`expiresAt` is write time + horizon + hold. Every attempt the ordinal made that may still count
is therefore inside a reservation on the Lease, whatever happens to the pod.

The successor (same ordinal, new pod, empty emptyDir) takes the Lease only after its
predecessor's has expired, so the version it replaces is final: it starts its attempt log with
those reservations (each as `count` attempts expiring at `expiresAt`, plus `CLOCK_SKEW_S`)
instead of a full hold, when the record is complete (see `inheritance_from_lease`).

Batch size: `ceil(capacity / BATCH_DIVISOR)` attempts (at least `MIN_BATCH`, at most the
slice): a mass reconnect of a whole slice costs about `BATCH_DIVISOR` Lease writes, and a
successor counts at most one batch per key it never used. A gateway that makes no attempts
writes nothing beyond its renewals.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from connquota.api.lease_record import (
    ATTEMPTS_ANNOTATION,
    CLOCK_SKEW_S,
    FRESH_ANNOTATION,
    AttemptReservations,
    Reservation,
    parse_certificate,
    parse_reservations,
)
from connquota.api.limits import LimitScope
from connquota.gateway.clock import Clock

log = logging.getLogger(__name__)

BATCH_DIVISOR = 8
MIN_BATCH = 2

ScopeKey = tuple[LimitScope, str]


@dataclass(frozen=True)
class Inheritance:
    """What a new holder of the Lease knows about its ordinal's attempts that may still count.

    `reservations`: the predecessors' reservations still counting. `blind_from`: None when
    they are every attempt that may still count; otherwise a wall-clock time from which the
    holder must count its whole rate slice as just used (a full hold measured from then)."""

    reservations: tuple[Reservation, ...]
    blind_from: float | None
    reason: str


def inheritance_from_lease(
    annotations: Mapping[str, str],
    holder_identity: str | None,
    never_held: bool,
    now_wall: float,
) -> Inheritance:
    """Read the version of the Lease a holder replaced when it took it.

    Complete (no blind window) when the Lease carries a write-ahead record written by the
    holder it names (or released: no holder), or when it was never held and carries the
    operator's fresh certificate. Otherwise a full hold from now, with whatever reservations
    the record has.
    """
    record = parse_reservations(annotations.get(ATTEMPTS_ANNOTATION))
    live = (
        tuple(r for r in record.reservations if r.expiresAt + CLOCK_SKEW_S > now_wall)
        if record
        else ()
    )
    if record is not None and holder_identity in (None, "", record.holder):
        blind = record.blindFrom
        attempts = sum(r.count for r in live)
        if blind is not None:
            return Inheritance(live, blind, f"inherited {attempts} attempts and a blind window")
        return Inheritance(live, None, f"inherited {attempts} attempts from the Lease")
    if record is not None:
        return Inheritance(live, now_wall, "the Lease was last held without a record")
    cert = parse_certificate(annotations.get(FRESH_ANNOTATION))
    if never_held and cert is not None:
        return Inheritance((), None, f"certified fresh at generation {cert.generation}")
    if never_held:
        return Inheritance((), now_wall, "a new Lease without a fresh certificate")
    return Inheritance((), now_wall, "the Lease was held without a record")


@dataclass
class _Batch:
    scope: LimitScope
    key: str
    count: int
    left: int
    usable_until_mono: float
    expires_wall: float
    hold_s: float


class ReservationBook:
    """The holder's reservations, and the only way an attempt gets one (write-ahead)."""

    def __init__(
        self,
        clock: Clock,
        write: Callable[[str], Awaitable[None]],
        holder: Callable[[], str],
        horizon_s: float,
    ) -> None:
        self.clock = clock
        self._write = write
        self._holder = holder
        self.horizon_s = horizon_s
        self._batches: list[_Batch] = []
        self._carried: list[Reservation] = []
        self.blind_from: float | None = None
        self.max_hold_s = 0.0
        self._lock = asyncio.Lock()
        self.writes = 0

    def inherit(self, inheritance: Inheritance) -> None:
        """Carry `inheritance` forward in every record this holder writes."""
        self._carried.extend(inheritance.reservations)
        if inheritance.blind_from is not None:
            self.blind_from = (
                inheritance.blind_from
                if self.blind_from is None
                else min(self.blind_from, inheritance.blind_from)
            )

    def set_blind_from(self, wall: float | None) -> None:
        """The holder's own blind window (its full hold) starts at `wall` (None: none)."""
        self.blind_from = wall

    def covers(self, keys: Iterable[ScopeKey]) -> bool:
        """Whether one more attempt on every key in `keys` is reserved on the Lease now."""
        now = self.clock.monotonic()
        return all(self._usable(scope, key, now) is not None for scope, key in keys)

    def _usable(self, scope: LimitScope, key: str, now: float) -> _Batch | None:
        for b in self._batches:
            if b.scope == scope and b.key == key and b.left > 0 and b.usable_until_mono >= now:
                return b
        return None

    def consume(self, keys: Iterable[ScopeKey]) -> None:
        """Spend one reserved attempt on every key (the caller checked `covers` just before)."""
        now = self.clock.monotonic()
        for scope, key in keys:
            b = self._usable(scope, key, now)
            if b is None:
                raise RuntimeError(f"attempt on {scope} {key} without a reservation")
            b.left -= 1

    async def reserve(self, wants: Mapping[ScopeKey, tuple[int, float]]) -> None:
        """Write a batch for every key in `wants` (capacity, hold) not covered, then return.

        Raises what the Lease write raised (the attempt must then wait): nothing is reserved.
        """
        async with self._lock:
            now, wall = self.clock.monotonic(), self.clock.wall()
            new = [
                _Batch(
                    scope,
                    key,
                    n,
                    n,
                    now + self.horizon_s,
                    wall + self.horizon_s + hold_s,
                    hold_s,
                )
                for (scope, key), (capacity, hold_s) in wants.items()
                if self._usable(scope, key, now) is None
                for n in [batch_size(capacity)]
            ]
            if not new:
                return
            for b in new:
                self.max_hold_s = max(self.max_hold_s, b.expires_wall - wall)
            record = self.record(wall, extra=new)
            await self._write(record.model_dump_json(exclude_none=True))
            self.writes += 1
            self._batches = [
                b for b in self._batches if b.expires_wall > wall and b.usable_until_mono >= now
            ]
            self._batches.extend(new)

    def record(self, now_wall: float, extra: Iterable[_Batch] = ()) -> AttemptReservations:
        """The record to write: carried and own reservations still counting (a batch still
        usable counts whole, a spent one what it used), and the blind window."""
        now = self.clock.monotonic()
        self._carried = [r for r in self._carried if r.expiresAt + CLOCK_SKEW_S > now_wall]
        own = [
            Reservation(
                scope=b.scope,
                key=b.key,
                count=b.count if b.usable_until_mono >= now else b.count - b.left,
                expiresAt=b.expires_wall,
                holdSeconds=b.hold_s,
            )
            for b in [*self._batches, *extra]
            if b.expires_wall > now_wall and (b.usable_until_mono >= now or b.count > b.left)
        ]
        blind = self.blind_from
        if blind is not None and self.max_hold_s and now_wall - blind > self.max_hold_s:
            blind = self.blind_from = None
        return AttemptReservations(
            holder=self._holder(), blindFrom=blind, reservations=[*self._carried, *_merge(own)]
        )


def batch_size(capacity: int) -> int:
    """Attempts per reservation for a slice of `capacity` attempts per hold."""
    if capacity <= 0:
        return 1
    return min(capacity, max(MIN_BATCH, math.ceil(capacity / BATCH_DIVISOR)))


def _merge(rs: list[Reservation]) -> list[Reservation]:
    """One reservation per (scope, key, expiry): counts added."""
    out: dict[tuple[LimitScope, str, float, float | None], int] = {}
    for r in rs:
        k = (r.scope, r.key, r.expiresAt, r.holdSeconds)
        out[k] = out.get(k, 0) + r.count
    return [
        Reservation(scope=s, key=k, count=n, expiresAt=e, holdSeconds=h)
        for (s, k, e, h), n in out.items()
        if n > 0
    ]


def seeds(
    inheritance: Inheritance, now_mono: float, now_wall: float
) -> list[tuple[ScopeKey, float]]:
    """The inherited attempts as (key, expiry on this process's monotonic clock), one per
    attempt, each counted `CLOCK_SKEW_S` longer; an attempt the predecessor made before this
    process took the Lease (all of them: the fence) counts at most its hold from now."""
    out = []
    for r in inheritance.reservations:
        expiry = now_mono + (r.expiresAt - now_wall) + CLOCK_SKEW_S
        if r.holdSeconds is not None:
            expiry = min(expiry, now_mono + r.holdSeconds)
        out.extend([((r.scope, r.key), expiry)] * r.count)
    return out
