"""Per-connection message slices: every frame a connection sends upstream (subscribe, login,
ping, pong) passes its gate, which keeps the heartbeat reserve for pings and pongs."""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import TYPE_CHECKING

from connquota.api import timing
from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import CONNECTION_SCOPE_KEY, Identities
from connquota.gateway.rate_logs import MAX_WAIT_STEP_S, RateRule, SlidingLog, rate_rule

if TYPE_CHECKING:
    from connquota.gateway.limiter import Limiter


class MessageKind(StrEnum):
    """What a message sent upstream is, for the slices it counts against."""

    CONTROL = "control"
    """Subscribe, unsubscribe, login: may not use the heartbeat reserve."""
    HEARTBEAT = "heartbeat"
    """Ping or pong: may use the heartbeat reserve."""


class MessageGate:
    """Per-connection message slices (with the heartbeat reserve) plus the shared ones."""

    def __init__(
        self, limiter: Limiter, conn_id: str, address: str, identities: Identities = ()
    ) -> None:
        self.limiter = limiter
        self.conn_id = conn_id
        self.address = address
        self.identities = identities
        """What the exchange counts the connection's credential by: (account, id), (apiKey, id)."""
        self.sent: Counter[str] = Counter()
        self._own: dict[LimitName, tuple[SlidingLog, int]] = {}
        self._plan_generation: int | None = None

    def _own_logs(self) -> dict[LimitName, tuple[SlidingLog, int]]:
        plan = self.limiter.plan
        if plan is None:
            return {}
        if self._plan_generation != plan.generation:
            fresh: dict[LimitName, tuple[SlidingLog, int]] = {}
            for name in (
                LimitName.MESSAGES_PER_CONNECTION,
                LimitName.CONTROL_MESSAGES_PER_CONNECTION,
            ):
                if plan.profile.limit(name, LimitScope.CONNECTION) is None:
                    continue
                s = plan.slice(name, LimitScope.CONNECTION, CONNECTION_SCOPE_KEY)
                old = self._own.get(name)
                if s is None or s.windowSeconds is None:
                    rule = RateRule(0, 0.0, 0.0)
                else:
                    margin = timing.message_margin_s(plan.windowMarginSeconds, s.windowSeconds)
                    rule = rate_rule(s, margin)
                reserve = rule.reserve
                if name == LimitName.MESSAGES_PER_CONNECTION:
                    # The planner's reserve, and never less than the one rule says (an older
                    # plan may carry none).
                    need = timing.heartbeat_reserve(
                        plan.profile.heartbeat,
                        s.windowSeconds if s is not None else None,
                        rule.capacity,
                    )
                    reserve = max(reserve, need) if rule.capacity >= 2 else reserve
                sliding = old[0] if old else SlidingLog(rule.capacity, rule.hold_s)
                sliding.capacity, sliding.hold_s = rule.capacity, rule.hold_s
                fresh[name] = (sliding, reserve)
            self._own = fresh
            self._plan_generation = plan.generation
        return self._own

    def _logs(self, kind: MessageKind) -> list[tuple[SlidingLog, int]]:
        """(log, capacity this kind may fill) for every slice a message of `kind` counts in."""
        plan = self.limiter.plan
        if plan is None:
            return [(SlidingLog(0, 0.0), 0)]
        out: list[tuple[SlidingLog, int]] = []
        counts_hb = plan.profile.heartbeat.countsAsMessage
        own = self._own_logs()
        per_conn = own.get(LimitName.MESSAGES_PER_CONNECTION)
        if per_conn is not None:
            sliding, reserve = per_conn
            if kind == MessageKind.CONTROL:
                out.append((sliding, sliding.capacity - reserve))
            elif counts_hb:
                out.append((sliding, sliding.capacity))
        control = own.get(LimitName.CONTROL_MESSAGES_PER_CONNECTION)
        if control is not None and kind == MessageKind.CONTROL:
            out.append((control[0], control[0].capacity))
        if kind == MessageKind.CONTROL or counts_hb:
            per_ip = self.limiter.shared_message_log(
                LimitName.MESSAGES_PER_IP, LimitScope.IP, self.address
            )
            if per_ip is not None:
                out.append((per_ip, per_ip.capacity))
        for scope, key in self.identities if kind == MessageKind.CONTROL else ():
            per_acct = self.limiter.shared_message_log(LimitName.MESSAGES_PER_ACCOUNT, scope, key)
            if per_acct is not None:
                out.append((per_acct, per_acct.capacity))
        return out

    def wait_s(self, kind: MessageKind) -> float:
        """Seconds until one message of `kind` may be sent."""
        now = self.limiter.clock.monotonic()
        return max([0.0] + [sliding.wait_s(now, cap) for sliding, cap in self._logs(kind)])

    async def acquire(self, kind: MessageKind) -> None:
        """Wait until one message of `kind` fits every slice, then count it (cancellable)."""
        while True:
            wait = self.wait_s(kind)
            if wait <= 0:
                now = self.limiter.clock.monotonic()
                for sliding, _cap in self._logs(kind):
                    sliding.record(now)
                self.sent[kind] += 1
                self.limiter.stats.messages[str(kind)] += 1
                return
            self.limiter.stats.waits[f"message slice ({kind})"] += 1
            await self.limiter.wait_for_change(min(wait, MAX_WAIT_STEP_S))
