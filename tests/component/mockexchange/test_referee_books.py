"""The referee's own counting: sliding logs, late inserts, Retry-After, feeds, limit specs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connquota.api.limits import LimitName, LimitScope, LimitShape
from connquota.mockexchange.feeds import FeedBook
from connquota.mockexchange.ledger import Ledger, SlidingLog, SortedLog, Violation
from connquota.mockexchange.settings import parse_limit_spec

WINDOW_S = 5.0


def _brute_worst(times: list[float], at: float) -> int:
    """The largest count of events in any window [s, s + W) that contains ``at``."""
    starts = [t for t in times if at - WINDOW_S < t <= at] or [at]
    return max(sum(1 for t in times if s <= t < s + WINDOW_S) for s in starts)


# quarter seconds: exact in binary floating point, and they hit window edges exactly
@given(
    st.lists(st.integers(min_value=0, max_value=80).map(lambda q: q / 4), min_size=1, max_size=40)
)
def test_late_inserted_attempts_report_the_worst_window_that_contains_them(
    times: list[float],
) -> None:
    log = SortedLog(WINDOW_S)
    seen: list[float] = []
    for at in times:
        seen.append(at)
        assert log.insert(at, now=0.0) == _brute_worst(seen, at)


def test_sliding_log_forgets_events_exactly_one_window_later() -> None:
    log = SlidingLog(1.0)
    assert [log.add(t) for t in (0.0, 0.5, 0.9)] == [1, 2, 3]
    assert log.count(1.0) == 2  # the event at 0.0 left at 1.0
    assert log.count(1.91) == 0


def test_retry_after_is_the_time_until_one_more_event_fits() -> None:
    log = SortedLog(10.0)
    for at in (0.0, 1.0, 2.0):
        log.insert(at, now=2.0)
    assert log.wait_s(now=2.0, limit=3) == pytest.approx(8.0)  # the event at 0.0 leaves at 10
    assert log.wait_s(now=2.0, limit=2) == pytest.approx(9.0)  # two must leave: 0.0 and 1.0
    assert log.wait_s(now=2.0, limit=4) == 0.0


def test_penalised_violations_ban_the_ip_and_bans_expire() -> None:
    ledger = Ledger(violation_memory_s=10.0, ban_after_violations=2, ban_s=3.0)
    violation = Violation(0.0, "connectionAttempts", "ip", 2, 1, "127.0.0.2")
    assert ledger.record(violation, now=1.0) is None
    assert ledger.record(violation, now=2.0) is not None
    assert "127.0.0.2" in ledger.active_bans(4.9)
    assert "127.0.0.2" not in ledger.active_bans(5.0)
    assert ledger.record(violation, now=20.0, penalised=False) is None
    assert len(ledger.violations) == 3


def test_peaks_keep_the_maximum_per_key_and_overall() -> None:
    ledger = Ledger(10.0, 3, 1.0)
    for key, value in (("a", 3), ("a", 1), ("b", 5)):
        ledger.observe(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP, key, value)
    assert ledger.peak(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP, "a") == 3
    assert ledger.peak(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) == 5


class _Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def deliver(self, stream: str, seq: int, event_time_ms: int) -> None:
        self.seqs.append(seq)


def test_feeds_are_gapless_shared_and_advance_without_listeners() -> None:
    book = FeedBook(rate_hz=10.0)
    a, b = _Recorder(), _Recorder()
    book.subscribe("s", a, now=0.0)
    book.pump(now=0.55, wall_ms=0)
    book.subscribe("s", b, now=0.55)
    book.pump(now=1.0, wall_ms=0)
    assert a.seqs == list(range(1001, 1011))
    assert b.seqs == list(range(1006, 1011))
    book.unsubscribe("s", a)
    book.unsubscribe("s", b)
    book.subscribe("s", a, now=2.0)
    book.pump(now=2.1, wall_ms=0)
    assert a.seqs[-1] == 1021, "ten events happened while nobody listened"


def test_limit_specs_parse_with_default_scopes_and_windows() -> None:
    attempts = parse_limit_spec("connectionAttempts:ip=10/5")
    assert (attempts.value, attempts.windowSeconds, attempts.shape) == (
        10,
        5,
        LimitShape.SLIDING_WINDOW,
    )
    accounts = parse_limit_spec("concurrentConnections:account=2")
    assert (accounts.scope, accounts.shape) == (LimitScope.ACCOUNT, LimitShape.CONCURRENT)
    assert parse_limit_spec("maxConnectionAge=30").scope == LimitScope.CONNECTION
    with pytest.raises(ValueError):
        parse_limit_spec("messagesPerConnection=5")
    with pytest.raises(ValueError):
        parse_limit_spec("streamsPerConnection=5/1")
