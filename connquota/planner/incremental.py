"""Incremental replans: the same plan as `plan_quota`, in time proportional to what changed.

`plan_quota` reads every stream on every call (10^5 streams: about 0.1 s). An operator that
replans a quota when one stream is added can instead keep the `PlanIndex` returned with each
plan and pass it to the next call:

    result = plan_quota_indexed(request, index)   # index: None the first time
    ... publish result.plan ...; keep result.index for the next call

The index is a plain value (no I/O, no clock, nothing global, never modified): the plan it
was made with, the streams it served, the streams per credential, and the caps, rooms and
pod layout the plan was assembled from. A replan takes the fast path when

- `request.previous` has the same connections as the index's plan (the operator published the
  plan it got; a plan cut back by a transition does not match and takes the full path),
- every stream of that plan was served, and the new streams differ from its streams only by
  streams added and removed (a changed priority or credential, or a reorder, is not), and
- `pack` would keep every connection (minus those the removals empty), fill and open new
  ones, without closing or compacting any (everything still fits).

Pool, shares, headroom or pod-capacity changes may still take the fast path when all of the
above holds (their caps and rooms are recomputed). Otherwise, or without an index, the call
takes the full path (`plan_quota`). Both give the same plan, byte for byte (a property test
compares them); `IndexedPlan.incremental` says which one ran.

The index keeps references to the request's pool, spec parts, profile and shares and compares
them by value on the next call: like every planner input they must not be modified in place
after the call (build new ones, as a watch event gives).
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from connquota.api.plan import QuotaPlan
from connquota.planner.inputs import DesiredStream
from connquota.planner.packing import Packing, repack
from connquota.planner.plan import (
    Assembled,
    Frame,
    PlanRequest,
    assemble,
    longest_name,
    pack_request,
    packing_input,
    plan_frame,
)
from connquota.planner.stream_changes import stream_changes


@dataclass(frozen=True)
class PlanIndex:
    """What a replan of one quota reuses from its previous plan (see the module docstring).

    Made only by `plan_quota_indexed`, together with the plan it describes; keep it in memory
    next to that plan (it is not persisted: after a restart the first replan takes the full
    path and returns a new index)."""

    streams: tuple[DesiredStream, ...]
    """The streams the plan was made for, as given."""
    counts: Mapping[str | None, int] | None
    """Streams per credential (None: public); None when the plan did not serve every stream
    exactly once (then the next replan takes the full path)."""
    names: NameSet | None
    """The names of `streams` (None with `counts`)."""
    assembled: Assembled
    """The plan and its pod layout."""
    frame: Frame
    frame_key: tuple[object, ...]
    """The request's parts the frame was computed from."""
    assembly_key: tuple[object, ...]
    """The request's parts the pods' slices, spare room and recovery bounds were computed from."""

    @property
    def plan(self) -> QuotaPlan:
        """The plan this index describes."""
        return self.assembled.plan


@dataclass(frozen=True)
class IndexedPlan:
    """A quota's plan, the index for the next replan, and which path made it."""

    plan: QuotaPlan
    index: PlanIndex
    incremental: bool
    """True when the plan was made from the index (fast path), False for the full path."""


def _frame_key(req: PlanRequest) -> tuple[object, ...]:
    spec = req.spec
    return (
        spec.headroom,
        spec.credentials,
        spec.gateway.maxReplicas,
        req.profile,
        req.pool,
        req.shares,
        longest_name(req),
    )


def _assembly_key(req: PlanRequest) -> tuple[object, ...]:
    spec = req.spec
    return (req.quota, spec.headroom, spec.credentials, req.profile, req.pool, req.shares)


def _same_connections(a: QuotaPlan, b: QuotaPlan) -> bool:
    """Whether two plans have the same pods, credentials' account and key ids and connections."""
    if a is b:
        return True
    if len(a.pods) != len(b.pods):
        return False
    for pa, pb in zip(a.pods, b.pods, strict=True):
        if pa.ordinal != pb.ordinal:
            return False
        if [(c.name, c.accountId, c.keyId) for c in pa.credentials] != [
            (c.name, c.accountId, c.keyId) for c in pb.credentials
        ]:
            return False
        if pa.connections is pb.connections:
            continue
        if len(pa.connections) != len(pb.connections):
            return False
        for ca, cb in zip(pa.connections, pb.connections, strict=True):
            if ca is not cb and (ca.id, ca.address, ca.credential, ca.streams) != (
                cb.id,
                cb.address,
                cb.credential,
                cb.streams,
            ):
                return False
    return True


@dataclass(frozen=True)
class NameSet:
    """The names of an index's streams: a set shared between indexes (never modified) plus
    the names added and removed since, so a replan copies only what changed. Rebuilt when
    the changes grow past an eighth of the shared set."""

    base: AbstractSet[str]
    added: frozenset[str] = frozenset()
    """Names not in `base`."""
    removed: frozenset[str] = frozenset()
    """Names of `base` no longer present."""

    def __contains__(self, name: object) -> bool:
        return name in self.added or (name in self.base and name not in self.removed)

    def changed(self, added: AbstractSet[str], removed: AbstractSet[str]) -> NameSet:
        """This set plus `added` (names not in it) minus `removed` (names in it)."""
        new_added = (self.added - removed) | (added - self.base)
        new_removed = (self.removed - added) | (removed & self.base)
        if len(new_added) + len(new_removed) > max(4096, len(self.base) // 8):
            return NameSet(frozenset((self.base - new_removed) | new_added))
        return NameSet(self.base, frozenset(new_added), frozenset(new_removed))


def _removed_by_connection(
    previous: QuotaPlan, names: NameSet, added: list[DesiredStream], removed: list[DesiredStream]
) -> dict[str, set[str]] | None:
    """Connection id -> names it loses; None when an added name is already planned (a moved,
    changed or duplicated stream), a name is added twice, or a removed name is not found."""
    added_names = {s.name for s in added}
    if len(added_names) != len(added):
        return None
    removed_names = {s.name for s in removed}
    if not added_names.isdisjoint(removed_names):
        return None  # a stream changed its priority or credential, or moved
    if any(name in names for name in added_names):
        return None  # added next to the same name kept elsewhere in the list
    if not removed_names:
        return {}
    # Each name is on one connection, of its own credential unless it lost it since: look
    # there first, and stop once all are found.
    credentials = {s.credential for s in removed}
    conns = [c for pod in previous.pods for c in pod.connections]
    conns.sort(key=lambda c: c.credential not in credentials)  # stable: plan order within
    out: dict[str, set[str]] = {}
    found = 0
    for c in conns:
        if removed_names.isdisjoint(c.streams):
            continue
        hits = removed_names.intersection(c.streams)
        if c.id in out:
            return None
        out[c.id] = hits
        found += len(hits)
        if found == len(removed_names):
            return out
    return None


def _counts_after(
    counts: Mapping[str | None, int], added: list[DesiredStream], removed: list[DesiredStream]
) -> dict[str | None, int]:
    out = dict(counts)
    for s in added:
        out[s.credential] = out.get(s.credential, 0) + 1
    for s in removed:
        out[s.credential] -= 1
    return {cred: n for cred, n in out.items() if n > 0}


def _served(
    req: PlanRequest, packing: Packing, plan: QuotaPlan
) -> tuple[dict[str | None, int] | None, NameSet | None]:
    """The streams per credential and their names, when the plan serves every stream once."""
    if packing.counts is None or packing.names is None or packing.unserved:
        return None, None
    placed = sum(len(c.streams) for pod in plan.pods for c in pod.connections)
    if placed != len(req.streams):
        return None, None
    return dict(packing.counts), NameSet(packing.names)


def _fast(
    req: PlanRequest, index: PlanIndex, streams: tuple[DesiredStream, ...]
) -> IndexedPlan | None:
    previous = req.previous
    if previous is None or index.counts is None or index.names is None:
        return None
    if not _same_connections(previous, index.plan):
        return None
    changes = stream_changes(index.streams, streams)
    if changes is None:
        return None
    removed = _removed_by_connection(previous, index.names, changes.added, changes.removed)
    if removed is None:
        return None
    counts = _counts_after(index.counts, changes.added, changes.removed)
    frame_key = _frame_key(req)
    frame = index.frame if frame_key == index.frame_key else plan_frame(req)
    packing = repack(packing_input(req, frame), counts, changes.added, removed)
    if packing is None:
        return None
    assembly_key = _assembly_key(req)
    reuse = index.assembled if assembly_key == index.assembly_key else None
    assembled = assemble(req, frame, packing, reuse)
    names = index.names.changed({s.name for s in changes.added}, {s.name for s in changes.removed})
    new_index = PlanIndex(streams, counts, names, assembled, frame, frame_key, assembly_key)
    return IndexedPlan(assembled.plan, new_index, incremental=True)


def plan_quota_indexed(req: PlanRequest, index: PlanIndex | None = None) -> IndexedPlan:
    """`plan_quota(req)` (the same plan, byte for byte) and the index for the next replan.

    With the index returned by the call that made `req.previous`, a replan where only streams
    were added or removed costs time in proportion to the connections and the changed streams
    (plus a C-speed comparison of the stream lists) instead of all the streams."""
    streams = tuple(req.streams)
    if index is not None and not req.draining:
        fast = _fast(req, index, streams)
        if fast is not None:
            return fast
    frame = plan_frame(req)
    packing = pack_request(req, frame)
    assembled = assemble(req, frame, packing)
    counts, names = _served(req, packing, assembled.plan)
    new_index = PlanIndex(
        streams, counts, names, assembled, frame, _frame_key(req), _assembly_key(req)
    )
    return IndexedPlan(assembled.plan, new_index, incremental=False)
