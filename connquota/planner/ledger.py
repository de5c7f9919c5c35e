"""The ledger: what every pod of a quota may still be enforcing, as the operator persists it.

The operator is stateless across restarts except for what it stores in the API, so this is
the state it must persist per quota (in an annotation or status field) to publish safely:

- `published`: the shared (ip/account) slices of every published generation a pod may still
  enforce (all generations at or after the oldest acknowledged one);
- `acks`: per pod ordinal, the newest generation it acknowledged and when the operator saw
  it (operator monotonic seconds);
- `releases`: rate slices a pod gave up by acknowledging a smaller one, each counting until
  `until` (acknowledgement time + the slice's memory + margin: `connquota.api.timing`'s
  `rate_memory_s`, which for connection attempts adds the connect timeout and the SYN grace to
  the window, and `WINDOW_MARGIN_S`).

Monotonic times do not survive an operator restart: on start, the operator rewrites every
`at` and `until` in the future or present to its own monotonic now (for `until`: now + the
slice's memory + margin). That only lengthens waits, never shortens them (`rebase_clock`).
A pod that is gone (scaled down, quota deleted) is recorded as acknowledging the newest
generation at the time the operator saw it gone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from connquota.api import timing
from connquota.api.base import ApiModel
from connquota.api.limits import SHARED_SCOPES, LimitScope, LimitShape
from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPoolSpec

HoldKey = tuple[str, str, str, str]
"""(domain, scope, public address or account id, limit name): one pooled budget."""


class LedgerSlice(ApiModel):
    """One pod's shared slice in one published generation."""

    ordinal: Annotated[int, Field(ge=0)]
    domain: str
    scope: LimitScope
    key: str = Field(description="Public address (ip) or account id (account).")
    limit: str
    value: Annotated[int, Field(ge=0)]
    windowSeconds: float | None = Field(
        default=None, description="Rate window; None for concurrent limits (no memory)."
    )
    memorySeconds: float | None = Field(
        default=None,
        description="How long the slice's use still counts at the exchange after its last use "
        "(`timing.rate_memory_s`: the window, plus connect timeout and SYN grace for attempts); "
        "None: the window (ledgers written before this field).",
    )

    def memory_s(self) -> float:
        """Seconds a use of this slice keeps counting (before the margin); 0 when concurrent."""
        if self.memorySeconds is not None:
            return self.memorySeconds
        return self.windowSeconds or 0.0

    def hold_key(self) -> HoldKey:
        """The pooled budget this slice draws from."""
        return (self.domain, self.scope.value, self.key, self.limit)


class LedgerGeneration(ApiModel):
    """The shared slices of one published generation."""

    generation: Annotated[int, Field(ge=0)]
    ordinals: list[int] = Field(default_factory=list, description="Pods the generation lists.")
    slices: list[LedgerSlice] = Field(default_factory=list)


class LedgerAck(ApiModel):
    """The newest generation a pod acknowledged and when the operator saw it."""

    ordinal: Annotated[int, Field(ge=0)]
    generation: Annotated[int, Field(ge=0)]
    at: float = Field(description="Operator monotonic seconds.")


class LedgerRelease(ApiModel):
    """A rate slice a pod gave up; it still counts until `until` (monotonic seconds)."""

    slice: LedgerSlice
    until: float


class QuotaLedger(ApiModel):
    """Everything the operator must persist about one quota to publish its next generation."""

    quota: str = Field(description="namespace/name.")
    since: float | None = Field(
        default=None,
        description="Wall-clock time (epoch seconds) from which this ledger has recorded every "
        "slice of the quota; 0: since the quota began (created before any of its pods). None: "
        "unknown (a ledger written before this field).",
    )
    published: list[LedgerGeneration] = Field(default_factory=list)
    acks: list[LedgerAck] = Field(default_factory=list)
    releases: list[LedgerRelease] = Field(default_factory=list)

    def acked(self, ordinal: int) -> LedgerAck | None:
        """The pod's newest acknowledgement, or None."""
        return next((a for a in self.acks if a.ordinal == ordinal), None)

    @property
    def last_generation(self) -> int:
        """The newest published generation (0 when none)."""
        return max((g.generation for g in self.published), default=0)


def ledger_slices(plan: QuotaPlan, pool: ExchangeEgressPoolSpec) -> LedgerGeneration:
    """The shared slices of a plan, keyed by what the exchange counts (public address)."""
    public = {a.name: a.publicAddress for a in pool.addresses}
    out = []
    for pod in plan.pods:
        for s in pod.slices:
            if s.scope not in SHARED_SCOPES:
                continue
            key = public.get(s.key, s.key) if s.scope == LimitScope.IP else s.key
            window = None if s.shape == LimitShape.CONCURRENT else s.windowSeconds
            memory = (
                None
                if window is None
                else timing.rate_memory_s(s.limit, window, pod.profile.connectTimeoutSeconds)
            )
            out.append(
                LedgerSlice(
                    ordinal=pod.ordinal,
                    domain=pod.profile.domain,
                    scope=s.scope,
                    key=key,
                    limit=s.limit.value,
                    value=s.value,
                    windowSeconds=window,
                    memorySeconds=memory,
                )
            )
    return LedgerGeneration(
        generation=plan.generation, ordinals=sorted(p.ordinal for p in plan.pods), slices=out
    )


def record_publication(
    ledger: QuotaLedger, plan: QuotaPlan, pool: ExchangeEgressPoolSpec
) -> QuotaLedger:
    """The ledger after publishing `plan` (its generation must be newer than any before)."""
    if plan.generation <= ledger.last_generation:
        raise ValueError(f"generation {plan.generation} is not newer than {ledger.last_generation}")
    return ledger.model_copy(update={"published": [*ledger.published, ledger_slices(plan, pool)]})


def record_ack(
    ledger: QuotaLedger,
    ordinal: int,
    generation: int,
    at: float,
    margin_s: float = timing.WINDOW_MARGIN_S,
) -> QuotaLedger:
    """The ledger after pod `ordinal` reported enforcing `generation` (seen at `at`).

    Stale or repeated acknowledgements (not newer than the last one) change nothing. Rate
    slices of older generations become releases that count until at + memory + margin.
    """
    previous = ledger.acked(ordinal)
    if previous is not None and generation <= previous.generation:
        return ledger
    releases = list(ledger.releases)
    since = previous.generation if previous is not None else -1
    for g in ledger.published:
        if since <= g.generation < generation:
            for s in g.slices:
                if s.ordinal == ordinal and s.windowSeconds is not None and s.value > 0:
                    until = at + s.memory_s() + margin_s
                    releases.append(LedgerRelease(slice=s, until=until))
    acks = [a for a in ledger.acks if a.ordinal != ordinal]
    acks.append(LedgerAck(ordinal=ordinal, generation=generation, at=at))
    acks.sort(key=lambda a: a.ordinal)
    out = ledger.model_copy(update={"acks": acks, "releases": releases})
    return _prune_generations(out)


def _prune_generations(ledger: QuotaLedger) -> QuotaLedger:
    """Drop generations no pod may enforce any more (keep the newest always)."""
    if not ledger.published:
        return ledger
    newest = ledger.last_generation
    keep = []
    for g in ledger.published:
        if g.generation == newest:
            keep.append(g)
            continue
        needed = False
        for ordinal in g.ordinals:
            ack = ledger.acked(ordinal)
            if ack is None or ack.generation <= g.generation:
                needed = True
                break
        if needed:
            keep.append(g)
    return ledger.model_copy(update={"published": keep})


def expire(ledger: QuotaLedger, now: float) -> QuotaLedger:
    """The ledger without releases that no longer count at `now`."""
    return ledger.model_copy(update={"releases": [r for r in ledger.releases if r.until > now]})


def holds(ledger: QuotaLedger, now: float) -> dict[HoldKey, dict[int, int]]:
    """Per budget, per pod ordinal: the largest slice the pod may be enforcing at `now`."""
    out: dict[HoldKey, dict[int, int]] = {}

    def add(s: LedgerSlice) -> None:
        pods = out.setdefault(s.hold_key(), {})
        if s.value > pods.get(s.ordinal, -1):
            pods[s.ordinal] = s.value

    for g in ledger.published:
        for s in g.slices:
            ack = ledger.acked(s.ordinal)
            if ack is None or g.generation >= ack.generation:
                add(s)
    for r in ledger.releases:
        if r.until > now:
            add(r.slice)
    return out


def rate_holders(ledger: QuotaLedger, now: float) -> set[int]:
    """The pod ordinals that may be enforcing a rate slice at `now`, or whose use of one may
    still count at the exchange (a release not yet over)."""
    out = set()
    for g in ledger.published:
        for s in g.slices:
            ack = ledger.acked(s.ordinal)
            enforceable = ack is None or g.generation >= ack.generation
            if s.windowSeconds is not None and s.value > 0 and enforceable:
                out.add(s.ordinal)
    for r in ledger.releases:
        if r.until > now and r.slice.value > 0:
            out.add(r.slice.ordinal)
    return out


def certifies(ledger: QuotaLedger, wall_now: float, memory_s: float) -> bool:
    """Whether the ledger may vouch that an ordinal outside `rate_holders` left nothing that
    still counts: it has recorded the quota since the quota began, or for longer than
    `memory_s` (the longest rate memory plus margin), so nothing it did not see can count."""
    if ledger.since is None:
        return False
    return ledger.since == 0 or wall_now - ledger.since >= memory_s


def forgettable(ledger: QuotaLedger, now: float) -> bool:
    """True when nothing of the quota counts any more (a deleted quota's finalizer may go):
    every pod acknowledged a generation in which it holds nothing and no release counts."""
    current = holds(ledger, now)
    return all(v == 0 for pods in current.values() for v in pods.values())


def rebase_clock(
    ledger: QuotaLedger, now: float, margin_s: float = timing.WINDOW_MARGIN_S
) -> QuotaLedger:
    """After an operator restart (monotonic clock reset): every ack time becomes `now` and
    every release counts its full memory + margin from `now`. Only lengthens waits."""
    acks = [a.model_copy(update={"at": now}) for a in ledger.acks]
    releases = [
        r.model_copy(update={"until": now + r.slice.memory_s() + margin_s}) for r in ledger.releases
    ]
    return ledger.model_copy(update={"acks": acks, "releases": releases})


def pool_holds(
    ledgers: Iterable[QuotaLedger], now: float, exclude: str | None = None
) -> dict[HoldKey, int]:
    """Per budget: the sum of what every pod of every quota (but `exclude`) may enforce."""
    out: dict[HoldKey, int] = {}
    for ledger in ledgers:
        if ledger.quota == exclude:
            continue
        for key, pods in holds(ledger, now).items():
            out[key] = out.get(key, 0) + sum(pods.values())
    return out
