"""The limiter: the one door every connection attempt and every upstream message goes through.

It holds the pod's slices of every limit (from the plan) and makes callers wait, never
exceed:

- connection attempts per address (ip) and account: a sliding log; an attempt counts from
  its first SYN and stays in the log until `t_syn + connect_timeout + W + margin`;
- connections at once per address and account: a slot per live connection; a connection that
  ended uncleanly keeps its slot for the profile's dead-connection timeout;
- messages per connection (with a heartbeat reserve subscribes may not eat), control messages
  per connection, messages per address and per account: sliding logs;
- quarantines after a 429/418, and the Lease: no attempt while either forbids it;
- after a 429/418 on an address or account, one probe: a single handshake in flight there
  until one succeeds, so a throttled exchange sees one request per retry, not one per
  waiting connection (Binance turns repeated 429s into a 418 ban).

The attempt log is written to the state file before each attempt returns (see
`attempt_log`). With no valid record at start, every attempt slice is treated as just used.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from connquota.api import timing
from connquota.api.lease_record import CLOCK_SKEW_S
from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import CONNECTION_SCOPE_KEY, Identities, PodPlan, Slice
from connquota.api.report import AttemptWindow, Quarantine, ThrottleEvent
from connquota.gateway.attempt_log import AttemptLogFile, AttemptRecord, LoadedAttempts
from connquota.gateway.clock import Clock
from connquota.gateway.message_gate import MessageGate, MessageKind
from connquota.gateway.rate_logs import (
    INF,
    MAX_WAIT_STEP_S,
    ConcurrentSlots,
    RateRule,
    SlidingLog,
    rate_rule,
)
from connquota.gateway.reservations import Inheritance, ReservationBook, ScopeKey, seeds

log = logging.getLogger(__name__)


RESERVE_RETRY_S = 0.5

THROTTLE_HOLD_S = 20.0
"""How long after a throttle the pod keeps its live count on the key where it was, unless a
new plan generation arrives first (the operator's cut): long enough for the report, the
operator's judgement (3 s after the throttle) and the new plan to arrive, so that a pod does
not knock again (a second violation) before the cut reaches it."""
THROTTLE_HOLD_EMPTY_S = 10.0
"""The hold when the pod had no connection on the key: all of its streams there are down, so
it tries again sooner (each try still waits for the exchange's Retry-After)."""
THROTTLE_REPORTED = 16
"""The newest throttles the report carries."""
THROTTLE_REPORT_S = 120.0
"""How long a throttle stays on the report."""
"""How soon an attempt retries after its reservation could not be written to the Lease."""

SHARED_MESSAGE_LIMITS = {
    LimitScope.IP: LimitName.MESSAGES_PER_IP,
    LimitScope.ACCOUNT: LimitName.MESSAGES_PER_ACCOUNT,
}


class WaitKind(StrEnum):
    """What an attempt waits for: the reasons callers decide on (never by parsing text)."""

    NONE = "none"
    NO_PLAN = "no plan"
    STOPPED = "attempts stopped"
    """No Lease held, or renewal failed: no attempt at all."""
    QUARANTINED = "quarantined"
    FRESH_START = "fresh start"
    """No valid attempt record: the whole slice counts as just used."""
    ATTEMPT_SLICE = "attempt slice"
    CONCURRENT_SLICE = "concurrent slice"
    PROBING = "probing"
    """After a 429/418: another handshake on the key is in flight; wait for its outcome."""


@dataclass(frozen=True)
class AttemptWait:
    """How long an attempt must wait, and the longest-lasting reason."""

    seconds: float
    kind: WaitKind
    text: str


@dataclass
class QuarantineEntry:
    """An address or account the limiter refuses attempts on until `until_mono_s`."""

    scope: LimitScope
    key: str
    status_code: int
    reason: str
    until_mono_s: float
    until_wall_s: float


@dataclass
class ConnectionSlot:
    """A granted attempt: the caller owns its concurrent slots until `release()`."""

    conn_id: str
    address: str
    identities: Identities
    limiter: Limiter
    released: bool = False

    def connected(self) -> None:
        """The handshake succeeded: a probe after a throttle lets the others go."""
        self.limiter._probe_ended(self.conn_id, succeeded=True)

    def release(self, clean: bool) -> None:
        """Give the slots back; an unclean end keeps them for the dead-connection timeout."""
        if not self.released:
            self.released = True
            self.limiter._release(self, clean)


@dataclass
class LimiterStats:
    """Counters the metrics and the report read."""

    attempts: Counter[tuple[str, str]] = field(
        default_factory=Counter
    )  # (scope, key) -> attempts granted
    messages: Counter[str] = field(default_factory=Counter)  # kind -> messages granted
    waits: Counter[str] = field(default_factory=Counter)  # reason -> times a caller had to wait
    quarantines: Counter[int] = field(default_factory=Counter)  # status code -> quarantines


class Limiter:
    """The pod's slices of every limit, and the only way to spend them."""

    def __init__(self, clock: Clock, log_file: AttemptLogFile | None = None) -> None:
        self.clock = clock
        self.log_file = log_file
        self.plan: PodPlan | None = None
        self.stats = LimiterStats()
        self.start_reason = "not loaded"
        self._fresh_start_mono: float | None = clock.monotonic()
        self._attempt_logs: dict[tuple[LimitScope, str], SlidingLog] = {}
        self._records: dict[tuple[LimitScope, str], list[AttemptRecord]] = {}
        self._slots: dict[tuple[LimitScope, str], ConcurrentSlots] = {}
        self._shared_msgs: dict[tuple[LimitScope, str], SlidingLog] = {}
        self._quarantines: dict[tuple[LimitScope, str], QuarantineEntry] = {}
        self._probes: dict[tuple[LimitScope, str], tuple[str, float] | None] = {}
        """(scope, key) throttled and not yet answered by a successful handshake -> the probe
        in flight (slot id, monotonic start) or None (the next attempt is the probe)."""
        self._throttles: list[ThrottleEvent] = []
        self._clamps: dict[tuple[LimitScope, str], tuple[int, float]] = {}
        """(scope, key) -> (live count, until monotonic): after a throttle no attempt takes the
        pod's live count on the key above what it was, until a new plan or THROTTLE_HOLD_S."""
        self._attempts_allowed = False
        self._attempts_block_reason = "no lease yet"
        self._changed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.book: ReservationBook | None = None
        """In cluster: the write-ahead reservations on the Lease (None standalone)."""
        self.waiting: dict[str, str] = {}
        """Connection slot id -> why its attempt waits now (for /status)."""
        self.waiting_kind: dict[str, WaitKind] = {}
        """Connection slot id -> what its attempt waits for (for decisions)."""

    # -- state file -------------------------------------------------------------------------

    def load_state(self, inheritance: Inheritance | None = None) -> LoadedAttempts:
        """Reload recent attempts when this process holds the fence.

        In order: a valid state file (this pod's own log: a container restart); else what the
        Lease's previous version hands down (`inheritance`: a successor pod); else no record,
        and every attempt slice counts as just used (a full hold from now)."""
        now, wall = self.clock.monotonic(), self.clock.wall()
        if self.log_file is None:
            loaded = LoadedAttempts([], False, "no state dir")
        else:
            loaded = self.log_file.load(now, wall)
        if self.book is not None and inheritance is not None:
            self.book.inherit(inheritance)
        if loaded.valid or inheritance is not None:
            # The file holds every attempt this process made (written before each one).
            for sliding in self._attempt_logs.values():
                sliding._expiries.clear()
            self._records.clear()
        if loaded.valid:
            for r in loaded.records:
                scope = LimitScope(r.scope)
                self._records.setdefault((scope, r.key), []).append(r)
                self._log_for(scope, r.key).seed(r.expires_mono_s)
            blind = loaded.blind_from_wall
            self._fresh_start_mono = None if blind is None else now - (wall - blind)
            self.start_reason = loaded.reason
        elif inheritance is not None:
            for (scope, key), expiry in seeds(inheritance, now, wall):
                self._records.setdefault((scope, key), []).append(
                    AttemptRecord(str(scope), key, now, wall, expiry, "inherited")
                )
                self._log_for(scope, key).seed(expiry)
            blind = inheritance.blind_from
            self._fresh_start_mono = (
                None if blind is None else min(now, now - (wall - blind)) + CLOCK_SKEW_S
            )
            self.start_reason = (
                f"{inheritance.reason}"
                if blind is None
                else f"{inheritance.reason}: waiting one window"
            )
        else:
            self._fresh_start_mono = now
            self.start_reason = loaded.reason
        if self.book is not None:
            self.book.set_blind_from(self._blind_from_wall(now, wall))
        log.info(
            "attempt log %s: %s",
            "reloaded" if self._fresh_start_mono is None else "not complete",
            self.start_reason,
        )
        return loaded

    def _blind_from_wall(self, now: float, wall: float) -> float | None:
        if self._fresh_start_mono is None:
            return None
        return wall - (now - self._fresh_start_mono)

    async def _persist(self) -> None:
        if self.log_file is None:
            return
        async with self._write_lock:
            now, wall = self.clock.monotonic(), self.clock.wall()
            records = [r for rs in self._records.values() for r in rs if r.expires_mono_s > now]
            try:
                await asyncio.to_thread(
                    self.log_file.write, records, now, wall, self._blind_from_wall(now, wall)
                )
            except OSError as exc:
                # A restart must not trust an incomplete log: remove it so it starts "fresh".
                log.error("cannot write the attempt log (%s); removing it", exc.strerror)
                try:
                    await asyncio.to_thread(self.log_file.path.unlink, True)
                except OSError:
                    log.error("cannot remove the stale attempt log %s", self.log_file.path)

    # -- configuration ------------------------------------------------------------------------

    def configure(self, plan: PodPlan) -> None:
        """Enforce `plan`'s slices from now on (logs and live slots are kept)."""
        if self.plan is None or plan.generation != self.plan.generation:
            self._clamps.clear()
        self.plan = plan
        for scope_key, slots in self._slots.items():
            slots.capacity = self._concurrent_capacity(*scope_key)
        for (scope, key), sliding in self._attempt_logs.items():
            rule = self._attempt_rule(scope, key)
            sliding.capacity, sliding.hold_s = (rule.capacity, rule.hold_s) if rule else (0, 0)
        for (scope, key), sliding in self._shared_msgs.items():
            name = SHARED_MESSAGE_LIMITS[scope]
            sliding.capacity, sliding.hold_s = self._shared_rule(name, scope, key)
        if self.book is not None:
            holds = [
                rule.hold_s
                for s in plan.slices
                if s.limit == LimitName.CONNECTION_ATTEMPTS
                for rule in [self._attempt_rule(s.scope, s.key)]
                if rule is not None
            ]
            self.book.max_hold_s = max([self.book.max_hold_s, *holds])
        self._notify()

    def set_attempts_allowed(self, allowed: bool, reason: str = "") -> None:
        """Open or close the door for new attempts (the Lease); live connections stay."""
        self._attempts_allowed = allowed
        self._attempts_block_reason = reason
        self._notify()

    @property
    def attempts_allowed(self) -> bool:
        """Whether the Lease currently allows new attempts."""
        return self._attempts_allowed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self, timeout_s: float) -> None:
        """Wait until the slices may have changed (a plan, a release, the Lease) or `timeout_s`."""
        await self.clock.wait(self._changed, timeout_s)

    def _profile_has(self, name: LimitName, scope: LimitScope) -> bool:
        assert self.plan is not None
        return self.plan.profile.limit(name, scope) is not None

    def _slice(self, name: LimitName, scope: LimitScope, key: str) -> Slice | None:
        assert self.plan is not None
        return self.plan.slice(name, scope, key)

    def _attempt_rule(self, scope: LimitScope, key: str) -> RateRule | None:
        """None: the exchange does not count attempts by this scope."""
        if self.plan is None or not self._profile_has(LimitName.CONNECTION_ATTEMPTS, scope):
            return None
        s = self._slice(LimitName.CONNECTION_ATTEMPTS, scope, key)
        if s is None or s.windowSeconds is None:
            return RateRule(0, 0.0, 0.0)
        # hold = SYN grace + connect timeout + window + margin: timing.attempt_hold_s.
        extra = self.plan.profile.connectTimeoutSeconds + timing.SYN_GRACE_S
        return rate_rule(s, self.plan.windowMarginSeconds, extra)

    def _concurrent_capacity(self, scope: LimitScope, key: str) -> int:
        if self.plan is None:
            return 0
        if not self._profile_has(LimitName.CONCURRENT_CONNECTIONS, scope):
            return 1 << 30
        s = self._slice(LimitName.CONCURRENT_CONNECTIONS, scope, key)
        return int(s.value) if s else 0

    def _log_for(self, scope: LimitScope, key: str) -> SlidingLog:
        sliding = self._attempt_logs.get((scope, key))
        if sliding is None:
            rule = self._attempt_rule(scope, key) if self.plan else None
            sliding = SlidingLog(rule.capacity, rule.hold_s) if rule else SlidingLog(0, 0.0)
            self._attempt_logs[(scope, key)] = sliding
        return sliding

    def _slots_for(self, scope: LimitScope, key: str) -> ConcurrentSlots:
        slots = self._slots.get((scope, key))
        if slots is None:
            slots = ConcurrentSlots(self._concurrent_capacity(scope, key))
            self._slots[(scope, key)] = slots
        return slots

    # -- connection attempts ------------------------------------------------------------------

    def _scopes(self, address: str, identities: Identities) -> list[tuple[LimitScope, str]]:
        return [(LimitScope.IP, address), *identities]

    def attempt_wait(self, address: str, identities: Identities = ()) -> tuple[float, str]:
        """Seconds until an attempt on `address` with a credential counted by `identities`
        (account, key) may start, and why it must wait."""
        wait = self.attempt_wait_reason(address, identities)
        return wait.seconds, wait.text

    def attempt_wait_reason(self, address: str, identities: Identities = ()) -> AttemptWait:
        """How long until an attempt on `address` (with `identities`) may start, and the
        longest reason."""
        if self.plan is None:
            return AttemptWait(INF, WaitKind.NO_PLAN, "no plan")
        if not self._attempts_allowed:
            return AttemptWait(
                INF, WaitKind.STOPPED, self._attempts_block_reason or "attempts stopped"
            )
        now = self.clock.monotonic()
        worst = AttemptWait(0.0, WaitKind.NONE, "")
        for scope, key in self._scopes(address, identities):
            q = self._quarantines.get((scope, key))
            if q is not None:
                if q.until_mono_s > now:
                    if q.until_mono_s - now > worst.seconds:
                        worst = AttemptWait(
                            q.until_mono_s - now, WaitKind.QUARANTINED, f"{scope} {key} quarantined"
                        )
                else:
                    del self._quarantines[(scope, key)]
            rule = self._attempt_rule(scope, key)
            if rule is not None:
                if self._fresh_start_mono is not None:
                    wait = self._fresh_start_mono + rule.hold_s - now
                    if wait > worst.seconds:
                        worst = AttemptWait(
                            wait,
                            WaitKind.FRESH_START,
                            "no valid attempt record: waiting one window",
                        )
                wait = self._log_for(scope, key).wait_s(now)
                if wait > worst.seconds:
                    worst = AttemptWait(
                        wait, WaitKind.ATTEMPT_SLICE, f"attempt slice on {scope} {key} used up"
                    )
            probe = self._probe_in_flight(scope, key, now)
            if probe is not None and probe > worst.seconds:
                worst = AttemptWait(
                    probe,
                    WaitKind.PROBING,
                    f"{scope} {key} throttled: one handshake at a time until one succeeds",
                )
            clamp = self._clamps.get((scope, key))
            if clamp is not None:
                if clamp[1] <= now:
                    del self._clamps[(scope, key)]
                elif (
                    self._slots_for(scope, key).used(now) >= clamp[0]
                    and clamp[1] - now > worst.seconds
                ):
                    worst = AttemptWait(
                        clamp[1] - now,
                        WaitKind.QUARANTINED,
                        f"{scope} {key} throttled: no growth until a new plan",
                    )
            wait = self._slots_for(scope, key).wait_s(now)
            if wait > worst.seconds:
                worst = AttemptWait(
                    wait, WaitKind.CONCURRENT_SLICE, f"concurrent slice on {scope} {key} used up"
                )
        return worst

    def attempt_hold_s(self, address: str) -> float | None:
        """How long one attempt on `address` counts (None: the exchange counts no attempts)."""
        rule = self._attempt_rule(LimitScope.IP, address)
        return rule.hold_s if rule is not None else None

    def _reserved_keys(
        self, address: str, identities: Identities
    ) -> dict[ScopeKey, tuple[int, float]]:
        """The keys an attempt counts on, with their attempt slice (capacity, hold)."""
        out = {}
        for scope, key in self._scopes(address, identities):
            rule = self._attempt_rule(scope, key)
            if rule is not None and rule.capacity > 0:
                out[(scope, key)] = (rule.capacity, rule.hold_s)
        return out

    def _take_attempt(
        self, conn_id: str, address: str, identities: Identities, via: str = "direct"
    ) -> ConnectionSlot:
        now, wall = self.clock.monotonic(), self.clock.wall()
        for scope, key in self._scopes(address, identities):
            if (scope, key) in self._probes:
                self._probes[(scope, key)] = (conn_id, now)
            rule = self._attempt_rule(scope, key)
            if rule is not None:
                expiry = self._log_for(scope, key).record(now, rule.hold_s)
                self._records.setdefault((scope, key), []).append(
                    AttemptRecord(str(scope), key, now, wall, expiry, via)
                )
                self._records[(scope, key)] = [
                    r for r in self._records[(scope, key)] if r.expires_mono_s > now
                ]
            self._slots_for(scope, key).active.add(conn_id)
            self.stats.attempts[(str(scope), key)] += 1
        return ConnectionSlot(conn_id, address, identities, self)

    async def acquire_attempt(
        self, conn_id: str, address: str, identities: Identities = (), via: str = "direct"
    ) -> ConnectionSlot:
        """Wait until an attempt fits every slice, count it, persist the log, grant it.

        The caller must start the SYN right after this returns and `release()` the slot when
        the connection (or the failed attempt) ends. Cancellable while waiting. `via` is
        recorded with the attempt: `direct`, or `proxy` (the request sent to a proxy).
        """
        try:
            while True:
                wait = self.attempt_wait_reason(address, identities)
                if wait.seconds <= 0:
                    keys = self._reserved_keys(address, identities)
                    if self.book is None or self.book.covers(keys):
                        slot = self._take_attempt(conn_id, address, identities, via)
                        if self.book is not None:
                            self.book.consume(keys)
                        break
                    try:
                        await self.book.reserve(keys)
                        continue
                    except Exception as exc:  # the Lease write failed: no attempt for now
                        why = getattr(exc, "status", None) or type(exc).__name__
                        log.warning("cannot reserve attempts on the Lease (%s)", why)
                        wait = AttemptWait(
                            RESERVE_RETRY_S,
                            WaitKind.STOPPED,
                            f"cannot reserve attempts on the Lease ({why})",
                        )
                if self.waiting.get(conn_id) != wait.text:
                    self.stats.waits[wait.kind.value] += 1
                self.waiting[conn_id] = wait.text
                self.waiting_kind[conn_id] = wait.kind
                await self.wait_for_change(min(wait.seconds, MAX_WAIT_STEP_S))
        finally:
            self.waiting.pop(conn_id, None)
            self.waiting_kind.pop(conn_id, None)
        await self._persist()
        return slot

    def _probe_in_flight(self, scope: LimitScope, key: str, now: float) -> float | None:
        """Seconds the probe on (scope, key) may still take (None: no probe in flight). A
        probe whose outcome never came is given up after twice the connect timeout."""
        probe = self._probes.get((scope, key))
        if probe is None:
            return None
        bound = 2 * (self.plan.profile.connectTimeoutSeconds if self.plan else 10.0)
        left = probe[1] + bound - now
        if left <= 0:
            self._probes[(scope, key)] = None
            return None
        return left

    def _probe_ended(self, conn_id: str, succeeded: bool) -> None:
        """The probe `conn_id` connected (the keys are trusted again) or failed (the next
        attempt probes)."""
        changed = False
        for scope_key, probe in list(self._probes.items()):
            if probe is not None and probe[0] == conn_id:
                changed = True
                if succeeded:
                    del self._probes[scope_key]
                else:
                    self._probes[scope_key] = None
        if changed:
            self._notify()

    def _release(self, slot: ConnectionSlot, clean: bool) -> None:
        self._probe_ended(slot.conn_id, succeeded=False)
        now = self.clock.monotonic()
        dead_s = 0.0
        if not clean and self.plan is not None:
            dead_s = self.plan.profile.deadConnectionTimeoutSeconds
        for scope, key in self._scopes(slot.address, slot.identities):
            self._slots_for(scope, key).release(slot.conn_id, now, dead_s)
        self._notify()

    def quarantine(
        self, scope: LimitScope, key: str, status_code: int, retry_after_s: float, reason: str
    ) -> None:
        """Refuse attempts on `key` for `retry_after_s` seconds (after a 429/418)."""
        now = self.clock.monotonic()
        until = now + retry_after_s
        self._probes.setdefault((scope, key), None)
        current = self._quarantines.get((scope, key))
        if current is not None and current.until_mono_s >= until:
            return
        self._quarantines[(scope, key)] = QuarantineEntry(
            scope, key, status_code, reason, until, self.clock.wall() + retry_after_s
        )
        self.stats.quarantines[status_code] += 1
        log.warning(
            "quarantined %s %s for %.1fs after %s",
            scope,
            key,
            retry_after_s,
            status_code,
            extra={"scope": str(scope), "key": key, "status_code": status_code},
        )
        self._notify()

    def record_throttle(
        self,
        scope: LimitScope,
        key: str,
        status_code: int,
        on_session: bool,
        cause: LimitName | None = None,
    ) -> None:
        """Remember a 429/418 for the report (the operator's adaptive budgets), and hold the
        pod's live count on `key` where it is until a new plan or THROTTLE_HOLD_S (with no
        connection on the key, THROTTLE_HOLD_EMPTY_S)."""
        now = self.clock.monotonic()
        live = self._slots_for(scope, key).used(now)
        sliding = self._attempt_logs.get((scope, key))
        self._throttles.append(
            ThrottleEvent(
                scope=scope,
                key=key,
                statusCode=status_code,
                at=round(self.clock.wall(), 3),
                onSession=on_session,
                cause=cause.value if cause is not None else None,
                liveOnKey=live,
                attemptsOnKey=sliding.live(now) if sliding is not None else 0,
                planGeneration=self.plan.generation if self.plan is not None else 0,
            )
        )
        del self._throttles[:-THROTTLE_REPORTED]
        hold = THROTTLE_HOLD_S if live > 0 else THROTTLE_HOLD_EMPTY_S
        self._clamps[(scope, key)] = (live, now + hold)
        self._notify()

    def throttles(self) -> list[ThrottleEvent] | None:
        """The newest throttles of the last THROTTLE_REPORT_S, for the report (None: none)."""
        oldest = self.clock.wall() - THROTTLE_REPORT_S
        kept = [t for t in self._throttles if t.at >= oldest]
        return kept or None

    def quarantines(self) -> list[Quarantine]:
        """The quarantines still in force, for the report."""
        now = self.clock.monotonic()
        return [
            Quarantine(
                scope=q.scope,
                key=q.key,
                statusCode=q.status_code,
                reason=q.reason,
                until=round(q.until_wall_s, 3),
            )
            for q in self._quarantines.values()
            if q.until_mono_s > now
        ]

    def attempt_windows(self) -> list[AttemptWindow]:
        """Attempts still counted in each attempt log, for the report."""
        now = self.clock.monotonic()
        out = []
        for (scope, key), sliding in sorted(self._attempt_logs.items()):
            records = [r for r in self._records.get((scope, key), []) if r.expires_mono_s > now]
            out.append(
                AttemptWindow(
                    scope=scope,
                    key=key,
                    windowSeconds=round(sliding.hold_s, 3),
                    count=sliding.live(now),
                    lastAttemptAt=round(records[-1].syn_wall_s, 3) if records else None,
                )
            )
        return out

    def usage(self) -> list[dict[str, Any]]:
        """Per address and account: attempts in the window and connections, against slices."""
        now = self.clock.monotonic()
        rows = []
        keys = sorted(set(self._attempt_logs) | set(self._slots))
        for scope, key in keys:
            sliding = self._attempt_logs.get((scope, key))
            slots = self._slots.get((scope, key))
            rows.append(
                {
                    "scope": str(scope),
                    "key": key,
                    "attemptsInWindow": sliding.live(now) if sliding else 0,
                    "attemptSlice": sliding.capacity if sliding else None,
                    "connections": slots.used(now) if slots else 0,
                    "connectionSlice": slots.capacity
                    if slots and slots.capacity < 1 << 30
                    else None,
                }
            )
        return rows

    # -- messages -----------------------------------------------------------------------------

    def message_gate(self, conn_id: str, address: str, identities: Identities = ()) -> MessageGate:
        """The door for every message one connection sends upstream."""
        return MessageGate(self, conn_id, address, identities)

    def shared_message_log(self, name: LimitName, scope: LimitScope, key: str) -> SlidingLog | None:
        """The pod-wide log of message limit `name` on `key` (an address, account or key), shared by
        every connection's gate; None when the exchange does not count messages that way."""
        if self.plan is None or not self._profile_has(name, scope):
            return None
        sliding = self._shared_msgs.get((scope, key))
        if sliding is None:
            sliding = SlidingLog(*self._shared_rule(name, scope, key))
            self._shared_msgs[(scope, key)] = sliding
        return sliding

    def _shared_rule(self, name: LimitName, scope: LimitScope, key: str) -> tuple[int, float]:
        assert self.plan is not None
        s = self._slice(name, scope, key)
        if s is None or s.windowSeconds is None:
            return 0, 0.0
        rule = rate_rule(s, timing.message_margin_s(self.plan.windowMarginSeconds, s.windowSeconds))
        return rule.capacity, rule.hold_s

    def size_limit(self, name: LimitName) -> int | None:
        """A per-message size limit (args per subscribe, payload bytes), or None."""
        if self.plan is None:
            return None
        s = self._slice(name, LimitScope.MESSAGE, CONNECTION_SCOPE_KEY)
        if s is not None:
            return int(s.value)
        limit = self.plan.profile.limit(name)
        return int(limit.value) if limit else None

    def streams_per_connection(self) -> int | None:
        """The most streams one connection may carry, or None."""
        if self.plan is None:
            return None
        s = self._slice(
            LimitName.STREAMS_PER_CONNECTION, LimitScope.CONNECTION, CONNECTION_SCOPE_KEY
        )
        if s is not None:
            return int(s.value)
        limit = self.plan.profile.limit(LimitName.STREAMS_PER_CONNECTION)
        return int(limit.value) if limit else None


__all__ = [
    "INF",
    "AttemptWait",
    "ConcurrentSlots",
    "ConnectionSlot",
    "Limiter",
    "MessageGate",
    "MessageKind",
    "QuarantineEntry",
    "SlidingLog",
    "WaitKind",
    "rate_rule",
]
