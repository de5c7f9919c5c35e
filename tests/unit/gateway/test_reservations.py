"""Write-ahead attempt reservations on the Lease, fresh certificates, and what a successor pod
inherits: successive pods of one ordinal, each wiped (new emptyDir), never exceed the slice in
any window, and start without a blind wait whenever the Lease's record allows it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_limiter import starts_in_any_window, wait_until

from connquota.api.lease_record import (
    ATTEMPTS_ANNOTATION,
    FRESH_ANNOTATION,
    AttemptReservations,
    FreshCertificate,
    Reservation,
)
from connquota.api.limits import LimitScope
from connquota.gateway.clock import ManualClock
from connquota.gateway.limiter import Limiter, WaitKind
from connquota.gateway.reservations import (
    Inheritance,
    ReservationBook,
    batch_size,
    inheritance_from_lease,
)
from connquota.testing.gateway_plans import connections, pod_plan, small_profile

CAPACITY = 8
WINDOW_S = 10.0
PROFILE = small_profile(
    attempts=CAPACITY, attempt_window_s=WINDOW_S, connect_timeout_s=1, concurrent=100
)
PLAN = pod_plan(PROFILE, connections(1, 1), margin_s=0.5)
HOLD_S = WINDOW_S + 1 + 0.5 + 0.25
CERT = FreshCertificate(issuedAt=1.0, generation=1).model_dump_json()


class FakeLease:
    """The ordinal's Lease as the gateways see it: annotations, a holder, a write counter."""

    def __init__(self, certified: bool) -> None:
        self.annotations: dict[str, str] = {FRESH_ANNOTATION: CERT} if certified else {}
        self.holder: str | None = None
        self.ever_held = False
        self.writes = 0
        self.fail = False

    def take(self, holder: str, now_wall: float) -> Inheritance:
        taken = inheritance_from_lease(self.annotations, self.holder, not self.ever_held, now_wall)
        self.holder, self.ever_held = holder, True
        self.annotations[ATTEMPTS_ANNOTATION] = AttemptReservations(
            holder=holder, blindFrom=taken.blind_from, reservations=list(taken.reservations)
        ).model_dump_json(exclude_none=True)
        return taken

    def writer(self, holder: str):
        async def write(record: str) -> None:
            if self.fail or self.holder != holder:
                raise ConnectionError("Lease write failed")
            self.annotations[ATTEMPTS_ANNOTATION] = record
            self.writes += 1

        return write


def start_pod(lease: FakeLease, clock: ManualClock, n: int) -> Limiter:
    """A new pod of the ordinal (empty emptyDir: no state file) that just took the Lease."""
    holder = f"pod-{n}"
    limiter = Limiter(clock, None)
    limiter.book = ReservationBook(clock, lease.writer(holder), lambda: holder, horizon_s=5.0)
    limiter.load_state(lease.take(holder, clock.wall()))
    limiter.configure(PLAN)
    limiter.set_attempts_allowed(True)
    return limiter


def test_inheritance_from_each_kind_of_lease():
    wall = 1000.0
    r = Reservation(scope=LimitScope.IP, key="a0", count=3, expiresAt=wall + 5)
    old = Reservation(scope=LimitScope.IP, key="a0", count=9, expiresAt=wall - 10)
    record = AttemptReservations(holder="p/1", reservations=[r, old]).model_dump_json()
    new_cert = inheritance_from_lease({FRESH_ANNOTATION: CERT}, None, True, wall)
    assert new_cert.blind_from is None and new_cert.reservations == ()
    uncertified = inheritance_from_lease({}, None, True, wall)
    assert uncertified.blind_from == wall
    mine = inheritance_from_lease({ATTEMPTS_ANNOTATION: record}, "p/1", False, wall)
    assert mine.blind_from is None and mine.reservations == (r,)  # expired ones dropped
    released = inheritance_from_lease({ATTEMPTS_ANNOTATION: record}, None, False, wall)
    assert released.blind_from is None
    # Someone else took the Lease after the record was written (an older gateway): blind.
    other = inheritance_from_lease({ATTEMPTS_ANNOTATION: record}, "old/9", False, wall)
    assert other.blind_from == wall and other.reservations == (r,)
    # A certificate on a Lease that was already held vouches for nothing any more.
    held = inheritance_from_lease({FRESH_ANNOTATION: CERT}, "x/1", False, wall)
    assert held.blind_from == wall
    blind = AttemptReservations(holder="p/1", blindFrom=wall - 3).model_dump_json()
    assert inheritance_from_lease({ATTEMPTS_ANNOTATION: blind}, "p/1", False, wall).blind_from == (
        wall - 3
    )


def test_batch_sizes():
    assert [batch_size(c) for c in (0, 1, 2, 5, 16, 300)] == [1, 1, 2, 2, 2, 38]


async def test_a_certified_lease_starts_at_once_and_reserves_before_each_batch():
    clock = ManualClock()
    lease = FakeLease(certified=True)
    limiter = start_pod(lease, clock, 0)
    start = clock.monotonic()
    for i in range(3):
        await limiter.acquire_attempt(f"c{i}", "a0")
    assert clock.monotonic() == start  # no blind wait
    assert lease.writes == 2  # batches of 2
    record = AttemptReservations.model_validate_json(lease.annotations[ATTEMPTS_ANNOTATION])
    assert sum(r.count for r in record.reservations) == 4  # 3 used + 1 still usable


async def test_no_attempt_when_its_reservation_cannot_be_written():
    clock = ManualClock()
    lease = FakeLease(certified=True)
    limiter = start_pod(lease, clock, 0)
    lease.fail = True
    task = asyncio.create_task(limiter.acquire_attempt("c0", "a0"))
    await wait_until(lambda: limiter.waiting_kind.get("c0") == WaitKind.STOPPED)
    assert limiter.stats.attempts == {}
    lease.fail = False
    await asyncio.wait_for(task, 5)
    assert sum(limiter.stats.attempts.values()) == 1


async def test_a_successor_inherits_the_attempts_instead_of_a_full_hold():
    clock = ManualClock()
    lease = FakeLease(certified=True)
    first = start_pod(lease, clock, 0)
    for i in range(3):  # two batches of 2 reserved
        await first.acquire_attempt(f"c{i}", "a0")
    t_last = clock.monotonic()
    clock.advance(1.0)  # the pod dies; its successor takes the Lease
    second = start_pod(lease, clock, 1)
    assert second.start_reason.startswith("inherited 4 attempts"), second.start_reason
    for i in range(CAPACITY - 4):  # the rest of the slice at once
        await second.acquire_attempt(f"d{i}", "a0")
        second._slots_for(LimitScope.IP, "a0").active.clear()
    assert clock.monotonic() == t_last + 1.0
    await second.acquire_attempt("late", "a0")
    # Then it waits for the inherited attempts to leave their window: at most their hold from
    # the take, however far ahead the batches were reserved.
    assert clock.monotonic() >= t_last + WINDOW_S
    assert clock.monotonic() <= t_last + 1.0 + HOLD_S


async def test_an_uncertified_lease_waits_a_full_hold():
    clock = ManualClock()
    limiter = start_pod(FakeLease(certified=False), clock, 0)
    start = clock.monotonic()
    await limiter.acquire_attempt("c0", "a0")
    assert clock.monotonic() - start >= HOLD_S


EVENT = st.one_of(
    st.tuples(st.just("attempts"), st.integers(1, 12)),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 1.0, 4.0, 11.0])),
    st.tuples(st.just("replace"), st.just(0)),
)


async def run_ordinal(events, certified: bool, wrong_certificate: bool) -> list[float]:
    """Successive pods of one ordinal doing `events`; returns every attempt's start."""
    clock = ManualClock()
    lease = FakeLease(certified)
    n = 0
    pod = start_pod(lease, clock, n)
    starts: list[float] = []
    for kind, value in events:
        if kind == "attempts":
            for _ in range(value):
                await pod.acquire_attempt(f"c{len(starts)}", "a0")
                starts.append(clock.monotonic())
                pod._slots_for(LimitScope.IP, "a0").active.clear()
        elif kind == "advance":
            clock.advance(value)
        else:  # the pod is replaced: the successor takes the Lease (a wiped emptyDir)
            n += 1
            if wrong_certificate:  # the Lease deleted and created again with a certificate
                lease = FakeLease(certified=True)
            pod = start_pod(lease, clock, n)
    return starts


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(events=st.lists(EVENT, max_size=25), certified=st.booleans())
def test_successive_pods_of_an_ordinal_never_exceed_the_slice_in_any_window(events, certified):
    starts = asyncio.run(run_ordinal(events, certified, wrong_certificate=False))
    assert starts_in_any_window(starts, WINDOW_S) <= CAPACITY


def test_a_wrong_certificate_is_caught_by_the_same_check():
    """A certificate on a Lease re-created while the ordinal's attempts still count (what the
    operator must never issue) lets the successor exceed the slice: the referee sees it."""
    events = [("attempts", CAPACITY), ("advance", 0.1), ("replace", 0), ("attempts", CAPACITY)]
    right = asyncio.run(run_ordinal(events, True, wrong_certificate=False))
    assert starts_in_any_window(right, WINDOW_S) <= CAPACITY
    wrong = asyncio.run(run_ordinal(events, True, wrong_certificate=True))
    assert starts_in_any_window(wrong, WINDOW_S) == 2 * CAPACITY


@pytest.mark.parametrize("certified", [True, False])
async def test_lease_writes_in_a_reconnect_storm_are_bounded_by_the_batches(certified):
    clock = ManualClock()
    lease = FakeLease(certified)
    pod = start_pod(lease, clock, 0)
    for i in range(4 * CAPACITY):
        await pod.acquire_attempt(f"c{i}", "a0")
        pod._slots_for(LimitScope.IP, "a0").active.clear()
    # 4 slices of attempts, 2 per batch, plus the batches whose horizon passed while waiting.
    assert lease.writes <= 4 * CAPACITY // batch_size(CAPACITY) + 4 * 2
