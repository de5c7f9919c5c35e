"""Draining a pod make-before-break: its connections copied into other pods' spare room first.

A pod about to be replaced (a rollout, a cordoned node) or scaled away (`drain_leaving`) holds connections whose streams would
be down until its successor reopens them (break-before-make). When the settled plan leaves
room, `drain_steps` gives the two plans that move them first, without changing any slice:

- `make`: the settled plan plus, on other pods, one copy of each of the draining pod's
  connections (same address, credential and streams, a new id), each placed in the spare room
  the plan already reserves for make-before-break: the pod's concurrent slice on that address
  (and on the credential's account and API key) beyond the connections it holds, an attempt
  slice there, and its `connectionsPerPod`. The draining pod keeps everything.
- `drained`: `make` without the draining pod's connections. The pod keeps its slices, so its
  successor (same ordinal) starts with the same ones, and nothing moves between pods' slices.

Published in order — `make`, acknowledged by every pod and its copies live; then `drained`,
acknowledged by the draining pod (it closed its connections); the pod replaced; then `make`
again (the successor reopens the originals beside the copies); then the settled plan (the
copies close) — every stream is subscribed at least once at every moment, and twice only
between a `make` and the next step (I2's bounded overlap). No slice of any pod changes in any
step, so what every pod may use stays what the settled plan gave it (I1); every copy opens
within its pod's own attempt and concurrent slices (the gateway's limiter enforces them).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from connquota.api.limits import CREDENTIAL_SCOPES, LimitName, LimitScope
from connquota.api.plan import ConnectionPlan, PodPlan, QuotaPlan

_Key = tuple[LimitScope, str]


@dataclass(frozen=True)
class DrainSteps:
    """The plans that drain `ordinal` of `base` make-before-break."""

    ordinal: int
    base: QuotaPlan
    """The settled plan the drain starts from and returns to."""
    make: QuotaPlan
    """`base` plus a copy of each of the pod's connections on other pods."""
    drained: QuotaPlan
    """`make` without the pod's own connections (its slices kept)."""
    copies: Mapping[str, tuple[int, str]]
    """The pod's connection id -> (ordinal, id) of its copy."""
    leaving: frozenset[int] = frozenset()
    """Every ordinal drained: {ordinal} for one pod's drain, the ordinals a scale-down removes
    for `drain_leaving`."""


@dataclass(frozen=True)
class NoRoom:
    """Why the pod cannot be drained make-before-break (it is replaced break-before-make)."""

    ordinal: int
    reason: str


def _value(pod: PodPlan, limit: LimitName, scope: LimitScope, key: str) -> int | None:
    s = pod.slice(limit, scope, key)
    return None if s is None else s.value


def _keys(pod: PodPlan, conn: ConnectionPlan) -> list[_Key] | None:
    """What a connection of `pod` counts against: its address and, for a private one, the
    credential's account and API key (None: the pod does not hold that credential)."""
    keys: list[_Key] = [(LimitScope.IP, conn.address)]
    if conn.credential is None:
        return keys
    cred = next((c for c in pod.credentials if c.name == conn.credential), None)
    if cred is None:
        return None
    return keys + [(scope, cred.identity(scope)) for scope in CREDENTIAL_SCOPES]


class _Room:
    """One receiving pod's spare room, used up as copies are placed."""

    def __init__(self, pod: PodPlan, connections_per_pod: int) -> None:
        self.pod = pod
        self.free = connections_per_pod - len(pod.connections)
        self.held: Counter[_Key] = Counter()
        for c in pod.connections:
            for k in _keys(pod, c) or []:
                self.held[k] += 1
        self.copies: list[ConnectionPlan] = []

    def takes(self, conn: ConnectionPlan) -> bool:
        pod = self.pod
        if self.free <= 0 or not any(a.name == conn.address for a in pod.addresses):
            return False
        keys = _keys(pod, conn)
        if keys is None:
            return False
        for scope, key in keys:
            concurrent = _value(pod, LimitName.CONCURRENT_CONNECTIONS, scope, key)
            attempts = _value(pod, LimitName.CONNECTION_ATTEMPTS, scope, key)
            if concurrent is None and attempts is None and scope != LimitScope.IP:
                continue  # the exchange counts nothing here
            if scope == LimitScope.IP and not any(
                s.scope == LimitScope.IP and s.key == key for s in pod.slices
            ):
                return False  # no slice on the address: the pod may not use it
            if concurrent is not None and self.held[(scope, key)] >= concurrent:
                return False
            if attempts is not None and attempts < 1:
                return False
        for k in keys:
            self.held[k] += 1
        self.free -= 1
        return True


def drain_steps(base: QuotaPlan, ordinal: int, connections_per_pod: int) -> DrainSteps | NoRoom:
    """The plans that drain pod `ordinal` of the settled plan `base` make-before-break, or
    why the other pods' spare room cannot take its connections.

    Copies go, one connection at a time in the pod's order, to the pod with the fewest
    connections (then the lowest ordinal) whose spare room takes it (see the module)."""
    pods = {p.ordinal: p for p in base.pods}
    leaving = pods.get(ordinal)
    if leaving is None or not leaving.connections:
        return NoRoom(ordinal, f"pod {ordinal} holds no connection: nothing to move")
    return _steps(base, frozenset({ordinal}), connections_per_pod)


def drain_leaving(
    base: QuotaPlan, leaving: frozenset[int], connections_per_pod: int
) -> DrainSteps | NoRoom:
    """The plans that drain every pod of `leaving` (the ordinals a scale-down removes) of the
    settled plan `base` make-before-break into the staying pods' spare room, or why it cannot
    take them all. Same placement and steps as `drain_steps`; copies never go to a leaving pod.
    `DrainSteps.ordinal` is the highest leaving ordinal."""
    pods = {p.ordinal: p for p in base.pods}
    holding = sorted((o for o in leaving if o in pods and pods[o].connections), reverse=True)
    if not holding:
        top = max(leaving, default=-1)
        return NoRoom(top, "the leaving pods hold no connection: nothing to move")
    return _steps(base, frozenset(holding), connections_per_pod)


def _steps(
    base: QuotaPlan, leaving: frozenset[int], connections_per_pod: int
) -> DrainSteps | NoRoom:
    pods = {p.ordinal: p for p in base.pods}
    ordinal = max(leaving)
    rooms = {
        o: _Room(p, connections_per_pod)
        for o, p in sorted(pods.items())
        if o not in leaving and p.connections
    }
    copies: dict[str, tuple[int, str]] = {}
    moving = [(o, c) for o in sorted(leaving, reverse=True) for c in pods[o].connections]
    for n, (source, conn) in enumerate(moving):
        order = sorted(
            rooms.values(), key=lambda r: (len(r.pod.connections) + len(r.copies), r.pod.ordinal)
        )
        room = next((r for r in order if r.takes(conn)), None)
        if room is None:
            where = f"address {conn.address}" + (
                f", credential {conn.credential}" if conn.credential else ""
            )
            return NoRoom(
                source,
                f"no other pod has spare room for connection {conn.id} ({where}): "
                "concurrent and attempt slices or connectionsPerPod used up",
            )
        copy_id = f"g{base.generation}-d{source}-{n}"
        room.copies.append(
            ConnectionPlan(
                id=copy_id, address=conn.address, credential=conn.credential, streams=conn.streams
            )
        )
        copies[conn.id] = (room.pod.ordinal, copy_id)
    make_pods = []
    drained_pods = []
    for o, pod in sorted(pods.items()):
        room = rooms.get(o)
        if room is not None and room.copies:
            pod = pod.model_copy(update={"connections": [*pod.connections, *room.copies]})
        make_pods.append(pod)
        drained_pods.append(pod.model_copy(update={"connections": []}) if o in leaving else pod)
    make = base.model_copy(update={"pods": make_pods})
    drained = base.model_copy(update={"pods": drained_pods})
    return DrainSteps(ordinal, base, make, drained, copies, leaving)


def same_connections(a: QuotaPlan | Mapping[int, PodPlan], b: QuotaPlan) -> bool:
    """Whether every pod of `a` holds exactly the connections (ids, in order, and content) of
    the same pod in `b` (generations and everything else ignored): `a` is the step `b`."""
    left = a if isinstance(a, Mapping) else {p.ordinal: p for p in a.pods}
    right = {p.ordinal: p for p in b.pods}
    for o in set(left) | set(right):
        x = left.get(o)
        y = right.get(o)
        if (x.connections if x else []) != (y.connections if y else []):
            return False
    return True


def same_plan(a: QuotaPlan, b: QuotaPlan) -> bool:
    """Whether `a` and `b` give every pod the same connections and slices (generations and
    pods with neither ignored): `a` replans nothing of `b`."""

    def body(plan: QuotaPlan) -> dict[int, tuple[str, str]]:
        return {
            p.ordinal: (
                "|".join(c.model_dump_json() for c in p.connections),
                "|".join(s.model_dump_json() for s in p.slices),
            )
            for p in plan.pods
            if p.connections or p.slices
        }

    return body(a) == body(b)
