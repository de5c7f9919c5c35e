"""The plan of one quota: its pods, their connections, slices, spare room and recovery bounds.

`plan_quota` is a pure function of its inputs (the quota, its effective profile, the pool, the
quota's shares, the desired streams, the previous plan and the generation number): the same
input gives a byte-identical plan. How streams are packed is in `packing`; this module turns a
packing into `PodPlan`s:

- ip-scoped slices: the quota's usable units on an address (floor(headroom x share)) split
  among the pods using that address: each pod first gets what it needs (its connections for
  concurrentConnections, one attempt for connectionAttempts, its heartbeats for
  messagesPerIp), the rest in proportion to its connections there. Account-scoped likewise.
  A pod that does not use an address gets no slice of it (nothing allowed).
- connection- and message-scoped slices: floor(headroom x value); message slices keep a
  heartbeat reserve (`reserve`).
- spare room (make-before-break): on each address a pod uses, the connections its concurrent
  slice allows beyond those it holds, and one attempt when there is such room.
- recovery bound per address: ceil(connections / usable attempts per window) x the time an
  attempt holds its place in a gateway's log (`connquota.api.timing.attempt_hold_s`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from operator import attrgetter

from connquota.api import timing
from connquota.api.limits import CREDENTIAL_SCOPES, ExchangeProfile, LimitName, LimitScope
from connquota.api.plan import (
    ConnectionPlan,
    PlanCredential,
    PodPlan,
    QuotaPlan,
    QuotaRef,
    RecoveryBound,
    Route,
    Slice,
    SpareRoom,
    UnservedStream,
)
from connquota.api.pool import EgressAddress, ExchangeEgressPoolSpec
from connquota.api.quota import ExchangeConnectionQuotaSpec
from connquota.planner.arithmetic import INFINITE, exact, split_units
from connquota.planner.budgets import PooledLimit, check_pool
from connquota.planner.capacity import (
    ConnectionCaps,
    Room,
    args_characters_cap,
    connection_caps,
    heartbeat_reserve,
    placement_group,
    rooms,
)
from connquota.planner.inputs import DesiredStream
from connquota.planner.packing import Conn, Packing, PackingInput, credential_identities, pack
from connquota.planner.shares import QuotaShares

_name_of = attrgetter("name")

"""Where a pod finds credential files: <dir>/<credential name>/<key>."""


@dataclass(frozen=True)
class PlanRequest:
    """Everything `plan_quota` needs for one quota."""

    quota: QuotaRef
    spec: ExchangeConnectionQuotaSpec
    profile: ExchangeProfile
    pool: ExchangeEgressPoolSpec
    shares: QuotaShares
    streams: Sequence[DesiredStream]
    generation: int
    previous: QuotaPlan | None = None
    draining: frozenset[int] = frozenset()
    """Pod ordinals being drained: the plan keeps no connection on them and opens none there,
    when the other pods have room for their streams (else as if none were draining)."""


def _need(name: LimitName, pooled: PooledLimit, profile: ExchangeProfile, conns: int) -> int:
    if name == LimitName.CONCURRENT_CONNECTIONS:
        return conns
    if name == LimitName.CONNECTION_ATTEMPTS:
        return 1
    if name == LimitName.MESSAGES_PER_IP:
        return heartbeat_reserve(profile, pooled.window_s) * conns
    return 0


def _shared_slices(
    req: PlanRequest,
    headroom: Fraction,
    scope: LimitScope,
    users: dict[str, list[tuple[int, int]]],
) -> dict[int, list[Slice]]:
    """Per pod ordinal: its slices of every shared limit on the keys it uses."""
    out: dict[int, list[Slice]] = {}
    limits = sorted(
        ((name, pooled) for (name, s), pooled in req.shares.limits.items() if s == scope),
        key=lambda x: x[0].value,
    )
    for key in sorted(users):
        pods = users[key]  # (ordinal, connections) sorted by ordinal
        weights = [c for _, c in pods]
        for name, pooled in limits:
            share = req.shares.get(scope, key, name) or 0
            units = math.floor(headroom * share)
            mins = [_need(name, pooled, req.profile, c) for c in weights]
            parts = split_units(units, mins, weights)
            burst_share = req.shares.bursts.get((scope, key, name))
            bursts = (
                split_units(math.floor(headroom * burst_share), [0] * len(pods), weights)
                if burst_share is not None
                else None
            )
            for i, (ordinal, _) in enumerate(pods):
                out.setdefault(ordinal, []).append(
                    Slice.model_construct(
                        limit=name,
                        scope=scope,
                        key=key,
                        value=parts[i],
                        shape=pooled.shape,
                        windowSeconds=pooled.window_s,
                        burst=bursts[i] if bursts is not None else None,
                        reserve=0,
                    )
                )
    return out


@dataclass(frozen=True)
class Frame:
    """What a plan is made within, derived from the request alone (no streams, no previous
    plan): the per-connection caps and the quota's room on every address and account."""

    headroom: Fraction
    caps: ConnectionCaps
    address_rooms: list[Room]
    account_rooms: dict[str, Room]
    """Per credential identity (`account/<accountId>`, `apiKey/<keyId>`)."""
    credential_identities: dict[str, tuple[str, ...]]
    max_replicas: int


def plan_frame(req: PlanRequest) -> Frame:
    """The caps and rooms `plan_quota` packs within (raises PoolError for a broken pool)."""
    check_pool(req.pool)
    spec = req.spec
    headroom = exact(spec.headroom)
    caps = connection_caps(req.profile, headroom)
    by_characters = args_characters_cap(req.profile, headroom, longest_name(req))
    if by_characters is not None and by_characters[0] < caps.streams:
        caps = ConnectionCaps(by_characters[0], by_characters[1], caps.slices)
    addresses = req.pool.addresses
    address_rooms = rooms(
        req.shares,
        req.profile,
        headroom,
        LimitScope.IP,
        [a.name for a in addresses],
        [placement_group(a) for a in addresses],
    )
    credential_idents = {c.name: credential_identities(c) for c in spec.credentials}
    account_rooms: dict[str, Room] = {}
    for scope in CREDENTIAL_SCOPES:
        ids = sorted({c.identity(scope) for c in spec.credentials})
        for r in rooms(req.shares, req.profile, headroom, scope, ids):
            account_rooms[f"{scope.value}/{r.key}"] = r
    return Frame(
        headroom=headroom,
        caps=caps,
        address_rooms=address_rooms,
        account_rooms=account_rooms,
        credential_identities=credential_idents,
        max_replicas=max(spec.gateway.maxReplicas, 0),
    )


def longest_name(req: PlanRequest) -> int:
    """The longest stream name's length, when the profile caps characters per connection
    (0 otherwise: nothing reads it)."""
    if req.profile.limit(LimitName.ARGS_CHARACTERS_PER_CONNECTION, LimitScope.CONNECTION) is None:
        return 0
    return max(map(len, map(_name_of, req.streams)), default=0)


def packing_input(req: PlanRequest, frame: Frame) -> PackingInput:
    """The packing problem of `req` within `frame`."""
    return PackingInput(
        streams=req.streams,
        cap=frame.caps.streams,
        cap_reason=frame.caps.reason,
        addresses=frame.address_rooms,
        accounts=frame.account_rooms,
        credential_identities=frame.credential_identities,
        connections_per_pod=req.spec.gateway.connectionsPerPod,
        max_replicas=frame.max_replicas,
        generation=req.generation,
        previous=req.previous,
        draining=req.draining,
    )


def pack_request(req: PlanRequest, frame: Frame) -> Packing:
    """The packing of `req` within `frame`. With draining ordinals, their streams move to the
    other pods when those have room for them; when that would leave more streams unserved than
    packing without the drain, the drain is ignored (the pods are then replaced
    break-before-make)."""
    inp = packing_input(req, frame)
    packing = pack(inp)
    if inp.draining and packing.unserved:
        plain = pack(dataclasses.replace(inp, draining=frozenset()))
        if len(plain.unserved) < len(packing.unserved):
            return plain
    return packing


def plan_quota(req: PlanRequest) -> QuotaPlan:
    """The quota's plan at `req.generation`, sticking to `req.previous` where it can."""
    frame = plan_frame(req)
    return assemble(req, frame, pack_request(req, frame)).plan


PodLayout = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...], tuple[str, ...]]
"""One pod's connections per address and per credential identity, and its credentials (each
sorted)."""


@dataclass(frozen=True)
class Assembled:
    """A plan and the layout of its pods: replicas and every pod's `PodLayout`, which is all
    a pod's addresses, credentials, slices and spare room depend on, given the request's pool,
    shares, profile, headroom and credentials."""

    plan: QuotaPlan
    layout: tuple[int, tuple[PodLayout, ...]]


def assemble(
    req: PlanRequest,
    frame: Frame,
    packing: Packing,
    reuse: Assembled | None = None,
) -> Assembled:
    """Turn a packing into the quota's plan. `reuse`: a plan assembled from a request equal to
    `req` in all but streams, previous plan and generation; when the layout is the same, its
    pods' addresses, credentials, slices and spare room (and its recovery bounds) are reused,
    since they would be computed equal."""
    spec = req.spec
    gw = spec.gateway
    credential_idents = frame.credential_identities
    by_pod: dict[int, list[Conn]] = {}
    for c in packing.conns:
        by_pod.setdefault(c.ordinal, []).append(c)
    used = max(by_pod, default=-1) + 1
    max_replicas = frame.max_replicas
    replicas = min(max(gw.minReplicas, used), max(max_replicas, used))

    per_pod: list[PodLayout] = []
    for ordinal in range(replicas):
        per_address: dict[str, int] = {}
        per_account: dict[str, int] = {}
        creds: set[str] = set()
        for c in by_pod.get(ordinal, ()):
            per_address[c.address] = per_address.get(c.address, 0) + 1
            if c.credential is not None:
                creds.add(c.credential)
                for ident in credential_idents[c.credential]:
                    per_account[ident] = per_account.get(ident, 0) + 1
        per_pod.append(
            (
                tuple(sorted(per_address.items())),
                tuple(sorted(per_account.items())),
                tuple(sorted(creds)),
            )
        )
    layout = (replicas, tuple(per_pod))

    if reuse is not None and reuse.layout == layout:
        previous = reuse.plan
        pods = [
            _pod(
                req,
                ordinal,
                by_pod.get(ordinal, []),
                old.addresses,
                old.credentials,
                old.slices,
                old.spare,
            )
            for ordinal, old in enumerate(previous.pods)
        ]
        bounds = previous.recoveryBounds
    else:
        pods, bounds = _assemble_pods(req, frame, by_pod, per_pod)
    unserved = [
        UnservedStream.model_construct(stream=s.name, priority=s.priority, reason=reason)
        for s, reason in packing.unserved
    ]
    plan = QuotaPlan.model_construct(
        formatVersion=1,
        generation=req.generation,
        quota=req.quota,
        replicas=replicas,
        pods=pods,
        unserved=unserved,
        recoveryBounds=bounds,
    )
    return Assembled(plan, layout)


def _assemble_pods(
    req: PlanRequest, frame: Frame, by_pod: dict[int, list[Conn]], per_pod: list[PodLayout]
) -> tuple[list[PodPlan], list[RecoveryBound]]:
    headroom = frame.headroom
    ip_users: dict[str, list[tuple[int, int]]] = {}
    ident_users: dict[LimitScope, dict[str, list[tuple[int, int]]]] = {
        scope: {} for scope in CREDENTIAL_SCOPES
    }
    for ordinal, (per_address, per_account, _) in enumerate(per_pod):
        for a, n in per_address:
            ip_users.setdefault(a, []).append((ordinal, n))
        for ident, n in per_account:
            scope, _, key = ident.partition("/")
            ident_users[LimitScope(scope)].setdefault(key, []).append((ordinal, n))
    ip_slices = _shared_slices(req, headroom, LimitScope.IP, ip_users)
    ident_slices = [
        _shared_slices(req, headroom, scope, users) for scope, users in ident_users.items()
    ]

    addresses = req.pool.addresses
    position: dict[str, int] = {}
    for i, address in enumerate(addresses):
        position.setdefault(address.name, i)
    address_by_name = {a.name: a for a in addresses}
    credential_by_name = {c.name: c for c in req.spec.credentials}
    pods: list[PodPlan] = []
    for ordinal, (per_address, _, creds) in enumerate(per_pod):
        names = sorted((n for n, _ in per_address), key=lambda n: position.get(n, len(addresses)))
        slices = ip_slices.get(ordinal, []).copy()
        for by_ordinal in ident_slices:
            slices += by_ordinal.get(ordinal, [])
        slices += frame.caps.slices
        spare = _spare(slices, names, dict(per_address))
        pods.append(
            _pod(
                req,
                ordinal,
                by_pod.get(ordinal, []),
                [address_by_name[n] for n in names],
                [PlanCredential.of(credential_by_name[n]) for n in creds],
                slices,
                spare,
            )
        )
    return pods, _recovery_bounds(req, ip_users, ip_slices)


def _pod(
    req: PlanRequest,
    ordinal: int,
    conns: list[Conn],
    addresses: list[EgressAddress],
    credentials: list[PlanCredential],
    slices: list[Slice],
    spare: list[SpareRoom],
) -> PodPlan:
    return PodPlan.model_construct(
        formatVersion=1,
        generation=req.generation,
        quota=req.quota,
        ordinal=ordinal,
        profile=req.profile,
        windowMarginSeconds=timing.WINDOW_MARGIN_S,
        addresses=_with_egress_checks(req.pool, addresses),
        credentials=credentials,
        connections=[
            c.source
            if c.source is not None
            else ConnectionPlan.model_construct(
                id=c.id, address=c.address, credential=c.credential, streams=c.streams
            )
            for c in conns
        ],
        slices=slices,
        spare=spare,
        routes=[],
    )


def _with_egress_checks(
    pool: ExchangeEgressPoolSpec, addresses: list[EgressAddress]
) -> list[EgressAddress]:
    """The pod's addresses as the pool declares them now, each with its effective egress check.

    The gateway verifies each address with the check it carries (the pool's default filled in),
    so a pod never needs the pool object, and a changed check reaches it as a changed address.
    """
    current = {a.name: a for a in pool.addresses}
    out: list[EgressAddress] = []
    for a in addresses:
        address = current.get(a.name, a)
        check = pool.egress_check(address)
        out.append(
            address
            if address.egressCheck == check
            else address.model_copy(update={"egressCheck": check})
        )
    return out


def address_rooms_index(name: str, addresses: list[EgressAddress]) -> int:
    """The position of address `name` in the pool (pool order is the planner's order)."""
    for i, a in enumerate(addresses):
        if a.name == name:
            return i
    return len(addresses)


def _spare(slices: list[Slice], addresses: list[str], held: dict[str, int]) -> list[SpareRoom]:
    ip: dict[tuple[str, LimitName], int] = {}
    for s in slices:
        if s.scope == LimitScope.IP:
            ip.setdefault((s.key, s.limit), s.value)  # the first one, as a pod's `slice()` finds
    out = []
    for a in addresses:
        concurrent = ip.get((a, LimitName.CONCURRENT_CONNECTIONS))
        attempts = ip.get((a, LimitName.CONNECTION_ATTEMPTS))
        room = 1 if concurrent is None else max(0, concurrent - held.get(a, 0))
        tries = 0 if room == 0 else (1 if attempts is None else min(1, attempts))
        out.append(SpareRoom.model_construct(address=a, connections=room, attempts=tries))
    return out


def _recovery_bounds(
    req: PlanRequest,
    ip_users: dict[str, list[tuple[int, int]]],
    ip_slices: dict[int, list[Slice]],
) -> list[RecoveryBound]:
    """Per address: how long reopening every connection there takes. Each pod reopens its own
    connections at its own attempt slice (it cannot use another pod's), so the address's bound
    is its slowest pod's: max over pods of ceil(its connections / its attempts) batches, each
    held for the attempt hold (`timing.attempt_hold_s`), not just one window."""
    pooled = req.shares.limits.get((LimitName.CONNECTION_ATTEMPTS, LimitScope.IP))
    out = []
    for a in req.pool.addresses:
        users = ip_users.get(a.name)
        if not users:
            continue
        n = sum(c for _, c in users)
        seconds = 0.0
        if pooled is not None and pooled.window_s is not None:
            hold_s = timing.attempt_hold_s(pooled.window_s, req.profile.connectTimeoutSeconds)
            for ordinal, conns in users:
                rate = next(
                    (
                        s.value
                        for s in ip_slices.get(ordinal, [])
                        if s.key == a.name and s.limit == LimitName.CONNECTION_ATTEMPTS
                    ),
                    0,
                )
                pod_s = timing.recovery_s(conns, rate, hold_s) if rate else float(INFINITE)
                seconds = max(seconds, pod_s)
        out.append(RecoveryBound.model_construct(address=a.name, connections=n, seconds=seconds))
    return out


def route_table(plan: QuotaPlan) -> dict[str, int]:
    """stream -> ordinal of the pod holding its upstream subscription."""
    return {s: pod.ordinal for pod in plan.pods for c in pod.connections for s in c.streams}


def with_routes(plan: QuotaPlan) -> QuotaPlan:
    """The plan with every pod's routes filled in (streams held by other pods).

    Kept apart from `plan_quota` because the table is pods x streams entries: the operator
    fills it per pod while writing that pod's ConfigMap.
    """
    table = route_table(plan)
    pods = []
    for pod in plan.pods:
        routes = [
            Route.model_construct(stream=s, ordinal=o)
            for s, o in sorted(table.items())
            if o != pod.ordinal
        ]
        pods.append(pod.model_copy(update={"routes": routes}))
    return plan.model_copy(update={"pods": pods})
