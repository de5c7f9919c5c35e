"""The limiter keeps every slice: attempts, connections at once, messages, quarantines."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connquota.api.limits import Limit, LimitName, LimitScope, LimitShape
from connquota.api.plan import Slice
from connquota.gateway.attempt_log import AttemptLogFile
from connquota.gateway.clock import ManualClock
from connquota.gateway.limiter import Limiter, MessageKind, SlidingLog, WaitKind
from connquota.testing.gateway_plans import connections, pod_plan, small_profile


def starts_in_any_window(starts: list[float], window_s: float) -> int:
    """The most start times inside any half-open interval of length `window_s`."""
    starts = sorted(starts)
    best, lo = 0, 0
    for hi, t in enumerate(starts):
        while starts[lo] <= t - window_s + 1e-9:  # float rounding at the edge
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=8),
    window_s=st.floats(min_value=0.5, max_value=10),
    gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=60),
)
def test_no_window_ever_holds_more_than_the_slice(capacity, window_s, gaps):
    sliding = SlidingLog(capacity, window_s)
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        wait = sliding.wait_s(now)
        now += max(0.0, wait)  # the caller waits as long as it is told
        assert sliding.wait_s(now) <= 1e-9
        sliding.record(now)
        starts.append(now)
    assert starts_in_any_window(starts, window_s) <= capacity


async def wait_until(condition, steps: int = 1000) -> None:
    """Yield to the event loop until `condition()` holds (bounded: fails after `steps`)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not met")


def limiter_with(plan, tmp_path=None, clock=None, boot_id="boot-a"):
    clock = clock or ManualClock()
    log_file = AttemptLogFile(tmp_path / "attempts.json", boot_id) if tmp_path else None
    limiter = Limiter(clock, log_file)
    limiter.load_state()
    limiter.configure(plan)
    limiter.set_attempts_allowed(True)
    return limiter, clock


async def test_fresh_start_waits_one_full_window_before_the_first_attempt(tmp_path):
    profile = small_profile(attempts=5, attempt_window_s=10, connect_timeout_s=1)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.5)
    limiter, clock = limiter_with(plan, tmp_path)
    start = clock.monotonic()
    await limiter.acquire_attempt("c0", "a0")
    assert clock.monotonic() - start >= 10 + 1 + 0.5


async def test_attempts_over_the_slice_wait_for_the_oldest_to_leave_the_window(tmp_path):
    profile = small_profile(attempts=3, attempt_window_s=10, connect_timeout_s=1, concurrent=100)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.5)
    limiter, clock = limiter_with(plan, tmp_path)
    await limiter.acquire_attempt("warmup", "a0")  # pays the fresh-start window
    t0 = clock.monotonic()
    times = [t0]
    for i in range(5):
        await limiter.acquire_attempt(f"c{i}", "a0")
        times.append(clock.monotonic())
    assert starts_in_any_window(times, 10) <= 3
    assert times[3] - t0 >= 10 + 1 + 0.5


async def test_attempt_log_survives_a_restart_with_the_same_boot(tmp_path):
    profile = small_profile(attempts=2, attempt_window_s=10, connect_timeout_s=1, concurrent=100)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.5)
    limiter, clock = limiter_with(plan, tmp_path)
    await limiter.acquire_attempt("c0", "a0")
    await limiter.acquire_attempt("c1", "a0")
    t_last = clock.monotonic()
    restarted, _ = limiter_with(plan, tmp_path, clock=clock)
    assert restarted.start_reason.startswith("2 attempts")
    await restarted.acquire_attempt("c2", "a0")
    assert clock.monotonic() >= t_last + 10  # waited for the reloaded attempts, not less
    assert clock.monotonic() < t_last + 2 * (10 + 1.5 + 0.25)  # and not a fresh start


async def test_the_attempt_log_records_which_attempts_were_sent_to_a_proxy(tmp_path):
    profile = small_profile(attempts=4, attempt_window_s=10, connect_timeout_s=1, concurrent=100)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.5)
    limiter, clock = limiter_with(plan, tmp_path)
    await limiter.acquire_attempt("c0", "a0")
    await limiter.acquire_attempt("c1", "a0", via="proxy")
    doc = json.loads((tmp_path / "attempts.json").read_text())
    assert [r["via"] for r in doc["attempts"]] == ["direct", "proxy"]
    restarted, _ = limiter_with(plan, tmp_path, clock=clock)
    loaded = restarted.load_state()
    assert [r.via for r in loaded.records] == ["direct", "proxy"]


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other boot", "clock stepped back"])
async def test_without_a_valid_record_the_gateway_waits_a_full_window(tmp_path, damage):
    profile = small_profile(attempts=4, attempt_window_s=10, connect_timeout_s=1, concurrent=100)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.5)
    limiter, clock = limiter_with(plan, tmp_path)
    await limiter.acquire_attempt("c0", "a0")
    clock.advance(30)  # the old attempt has left its window
    state = tmp_path / "attempts.json"
    boot_id = "boot-a"
    if damage == "missing":
        state.unlink()
    elif damage == "corrupt":
        state.write_text("{not json")
    elif damage == "other boot":
        boot_id = "boot-b"
    else:
        clock.wall_offset_s -= 3600
    restarted, _ = limiter_with(plan, tmp_path, clock=clock, boot_id=boot_id)
    t0 = clock.monotonic()
    await restarted.acquire_attempt("c1", "a0")
    assert clock.monotonic() - t0 >= 10 + 1 + 0.5


async def test_state_file_is_written_before_the_attempt_is_granted(tmp_path):
    profile = small_profile(attempts=4, attempt_window_s=10, concurrent=100)
    plan = pod_plan(profile, connections(1, 1))
    limiter, _ = limiter_with(plan, tmp_path)
    for i in range(3):
        await limiter.acquire_attempt(f"c{i}", "a0")
        doc = json.loads((tmp_path / "attempts.json").read_text())
        assert len(doc["attempts"]) == i + 1
        assert doc["bootId"] == "boot-a"


async def test_concurrent_slice_blocks_until_a_release_and_unclean_ends_hold_the_slot():
    profile = small_profile(attempts=100, concurrent=2, dead_timeout_s=7)
    plan = pod_plan(profile, connections(1, 1))
    limiter, clock = limiter_with(plan)
    a = await limiter.acquire_attempt("c0", "a0")
    await limiter.acquire_attempt("c1", "a0")
    third = asyncio.create_task(limiter.acquire_attempt("c2", "a0"))
    await wait_until(lambda: "c2" in limiter.waiting_kind)
    assert not third.done()
    assert limiter.waiting_kind["c2"] == WaitKind.CONCURRENT_SLICE
    assert "concurrent slice on ip a0" in limiter.waiting["c2"]
    t0 = clock.monotonic()
    a.release(clean=False)
    await asyncio.wait_for(third, 1)
    assert clock.monotonic() - t0 >= 7  # the exchange still counts the dead connection


async def test_quarantined_address_gets_no_attempt_until_retry_after():
    profile = small_profile(attempts=100)
    plan = pod_plan(profile, connections(1, 1))
    limiter, clock = limiter_with(plan)
    await limiter.acquire_attempt("c0", "a0")
    limiter.quarantine(LimitScope.IP, "a0", 418, 120, "banned")
    assert [q.statusCode for q in limiter.quarantines()] == [418]
    t0 = clock.monotonic()
    await limiter.acquire_attempt("c1", "a0")
    assert clock.monotonic() - t0 >= 120


async def test_after_a_throttle_one_handshake_probes_and_the_others_wait_for_its_outcome():
    """A 429 storm answered by every waiting connection at once is how Binance's 418 bans
    start: after a throttle one handshake goes, the others wait until it connected."""
    plan = pod_plan(small_profile(attempts=100), connections(3, 1))
    limiter, clock = limiter_with(plan)
    limiter.quarantine(LimitScope.IP, "a0", 429, 5, "handshake answered 429")
    clock.advance(5)
    probe = await limiter.acquire_attempt("c0", "a0")
    wait = limiter.attempt_wait_reason("a0")
    assert wait.kind == WaitKind.PROBING and wait.seconds > 0, wait
    assert "one handshake at a time" in wait.text
    task = asyncio.create_task(limiter.acquire_attempt("c1", "a0"))
    await wait_until(lambda: limiter.waiting_kind.get("c1") == WaitKind.PROBING)
    probe.connected()
    await asyncio.wait_for(task, 1)
    assert limiter.attempt_wait_reason("a0").kind == WaitKind.NONE, "trusted again"


async def test_a_failed_probe_hands_the_probe_on_and_a_silent_one_is_given_up():
    plan = pod_plan(small_profile(attempts=100, connect_timeout_s=1.0), connections(3, 1))
    limiter, clock = limiter_with(plan)
    limiter.quarantine(LimitScope.IP, "a0", 429, 5, "handshake answered 429")
    clock.advance(5)
    first = await limiter.acquire_attempt("c0", "a0")
    first.release(clean=True)  # refused or unreachable: the next attempt probes
    second = await limiter.acquire_attempt("c1", "a0")
    assert limiter.attempt_wait_reason("a0").kind == WaitKind.PROBING
    t0 = clock.monotonic()
    await limiter.acquire_attempt("c2", "a0")  # `second` never reports: given up
    assert clock.monotonic() - t0 >= 2 * 1.0 - 1e-9
    assert not second.released


async def test_no_attempt_without_the_lease():
    profile = small_profile()
    plan = pod_plan(profile, connections(1, 1))
    limiter, _ = limiter_with(plan)
    limiter.set_attempts_allowed(False, "lease held by another process")
    task = asyncio.create_task(limiter.acquire_attempt("c0", "a0"))
    await wait_until(lambda: "c0" in limiter.waiting)
    assert limiter.waiting["c0"] == "lease held by another process"
    assert limiter.waiting_kind["c0"] == WaitKind.STOPPED
    limiter.set_attempts_allowed(True)
    await asyncio.wait_for(task, 1)


async def test_address_without_a_slice_gets_nothing():
    profile = small_profile()
    plan = pod_plan(profile, connections(1, 1))
    limiter, _ = limiter_with(plan)
    wait, why = limiter.attempt_wait("a9")
    assert wait == float("inf")
    assert "a9" in why


async def test_subscribes_leave_the_heartbeat_reserve_to_pongs():
    profile = small_profile(messages=5, message_window_s=1.0)
    plan = pod_plan(profile, connections(1, 1), reserve=2, margin_s=0.1)
    limiter, clock = limiter_with(plan)
    gate = limiter.message_gate("c0", "a0")
    t0 = clock.monotonic()
    for _ in range(3):
        await gate.acquire(MessageKind.CONTROL)
    assert clock.monotonic() == t0
    assert gate.wait_s(MessageKind.CONTROL) > 0  # control has used its 3 of 5
    await gate.acquire(MessageKind.HEARTBEAT)
    await gate.acquire(MessageKind.HEARTBEAT)
    assert clock.monotonic() == t0  # the reserve was there for the pongs
    assert gate.wait_s(MessageKind.HEARTBEAT) > 0  # and nothing beyond the slice


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(list(MessageKind)), min_size=1, max_size=40))
def test_messages_of_any_mix_never_exceed_the_per_connection_slice(kinds):
    async def scenario() -> list[float]:
        profile = small_profile(messages=5, message_window_s=1.0)
        plan = pod_plan(profile, connections(1, 1), reserve=1, margin_s=0.1)
        limiter, clock = limiter_with(plan)
        gate = limiter.message_gate("c0", "a0")
        times = []
        for kind in kinds:
            await gate.acquire(kind)
            times.append(clock.monotonic())
        return times

    times = asyncio.run(scenario())
    assert starts_in_any_window(times, 1.0) <= 5


async def test_control_message_slice_per_hour_is_kept():
    extra = [
        Limit(
            name=LimitName.CONTROL_MESSAGES_PER_CONNECTION,
            value=3,
            windowSeconds=3600,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
        )
    ]
    profile = small_profile(extra_limits=extra)
    plan = pod_plan(profile, connections(1, 1))
    limiter, clock = limiter_with(plan)
    gate = limiter.message_gate("c0", "a0")
    for _ in range(3):
        await gate.acquire(MessageKind.CONTROL)
    t0 = clock.monotonic()
    await gate.acquire(MessageKind.HEARTBEAT)  # heartbeats are not control messages
    await gate.acquire(MessageKind.CONTROL)
    assert clock.monotonic() - t0 >= 3600


async def test_account_attempt_slice_is_shared_by_every_address():
    extra = [
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=2,
            windowSeconds=10,
            scope=LimitScope.ACCOUNT,
            shape=LimitShape.SLIDING_WINDOW,
        )
    ]
    profile = small_profile(attempts=100, concurrent=100, extra_limits=extra)
    acct = Slice(
        limit=LimitName.CONNECTION_ATTEMPTS,
        scope=LimitScope.ACCOUNT,
        key="acct-1",
        value=2,
        shape=LimitShape.SLIDING_WINDOW,
        windowSeconds=10,
    )
    from connquota.testing.gateway_plans import bind_address

    plan = pod_plan(
        profile,
        connections(1, 1),
        addresses=[bind_address(0), bind_address(1)],
        account_slices=[acct],
    )
    limiter, clock = limiter_with(plan)
    acct_1 = ((LimitScope.ACCOUNT, "acct-1"),)
    await limiter.acquire_attempt("warm", "a0", acct_1)  # pays the fresh-start window
    t0 = clock.monotonic()
    await limiter.acquire_attempt("c1", "a1", acct_1)
    assert clock.monotonic() == t0
    await limiter.acquire_attempt("c2", "a1", acct_1)
    assert clock.monotonic() - t0 >= 10
    counts = {(w.scope, w.key): w.count for w in limiter.attempt_windows()}
    assert counts[(LimitScope.ACCOUNT, "acct-1")] >= 1


async def test_a_key_concurrent_slice_holds_its_keys_sessions_apart_from_the_accounts():
    """Deribit: sessions per API key, credits per sub-account. Two keys of one account each
    hold their own concurrent slice; a key's second session waits for its own slot only."""
    extra = [
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=16,
            scope=LimitScope.API_KEY,
            shape=LimitShape.CONCURRENT,
        )
    ]
    profile = small_profile(attempts=100, concurrent=100, extra_limits=extra)
    keys = [
        Slice(
            limit=LimitName.CONCURRENT_CONNECTIONS,
            scope=LimitScope.API_KEY,
            key=key,
            value=1,
            shape=LimitShape.CONCURRENT,
        )
        for key in ("client-1", "client-2")
    ]
    plan = pod_plan(profile, connections(1, 1), account_slices=keys)
    limiter, _clock = limiter_with(plan)
    key_1 = ((LimitScope.ACCOUNT, "sub-1"), (LimitScope.API_KEY, "client-1"))
    key_2 = ((LimitScope.ACCOUNT, "sub-1"), (LimitScope.API_KEY, "client-2"))
    first = await limiter.acquire_attempt("c1", "a0", key_1)
    wait, why = limiter.attempt_wait("a0", key_1)
    assert wait > 0 and "concurrent slice on apiKey client-1" in why
    assert limiter.attempt_wait("a0", key_2)[0] == 0
    await limiter.acquire_attempt("c2", "a0", key_2)
    first.release(clean=True)
    assert limiter.attempt_wait("a0", key_1)[0] == 0
    rows = {(r["scope"], r["key"]): r["connectionSlice"] for r in limiter.usage()}
    assert rows[("apiKey", "client-1")] == rows[("apiKey", "client-2")] == 1


def test_the_limiter_holds_attempts_and_reserves_heartbeats_by_the_one_definition(tmp_path):
    """The gateway's attempt hold and heartbeat reserve are connquota.api.timing's (the
    planner's and the operator's too): a disagreement would let a moved slice be used twice."""
    from connquota.api import timing
    from connquota.api.limits import LimitName, LimitScope

    profile = small_profile(attempts=5, attempt_window_s=10, connect_timeout_s=1.5)
    plan = pod_plan(profile, connections(1, 1), margin_s=0.7)
    limiter, _ = limiter_with(plan, tmp_path)
    assert limiter.attempt_hold_s("a0") == timing.attempt_hold_s(10, 1.5, 0.7)
    gate = limiter.message_gate("c0#1", "a0")
    own = gate._own_logs()
    if LimitName.MESSAGES_PER_CONNECTION in own:
        sliding, reserve = own[LimitName.MESSAGES_PER_CONNECTION]
        s = plan.slice(LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION, "*")
        assert s is not None
        assert reserve >= timing.heartbeat_reserve(
            profile.heartbeat, s.windowSeconds, sliding.capacity
        )


def test_a_plan_without_a_message_slice_gives_the_connection_no_messages_and_no_error(tmp_path):
    """The profile counts messages per connection but the plan carries no slice for it (an
    older or hand-edited plan): the gate allows nothing instead of failing."""
    from connquota.api.limits import LimitName

    profile = small_profile(messages=5, message_window_s=1.0)
    plan = pod_plan(profile, connections(1, 1))
    plan = plan.model_copy(
        update={"slices": [s for s in plan.slices if s.limit != LimitName.MESSAGES_PER_CONNECTION]}
    )
    limiter, _ = limiter_with(plan, tmp_path)
    gate = limiter.message_gate("c0#1", "a0")
    sliding, _reserve = gate._own_logs()[LimitName.MESSAGES_PER_CONNECTION]
    assert sliding.capacity == 0
