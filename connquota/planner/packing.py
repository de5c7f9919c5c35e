"""Sticky packing: streams -> connections -> (address, credential) -> pods.

Order of work (each step deterministic; no set or dict is iterated in hash order):

1. Selection: which streams are served. When everything fits (counted as a fresh packing
   would need it) all are; otherwise streams are taken by priority (highest first, ties by
   name) while the connection count their group needs stays within every cap.
2. Keep: every connection of the previous plan that is still valid (address and account still
   usable, same account and key ids, pod ordinal below maxReplicas, placement rule kept) stays
   with its id, pod and address, minus streams no longer served, within every cap (caps are applied in
   pod-ordinal order, so when a cap shrinks the highest ordinals lose connections first).
3. Fill: unplaced streams (new, or from closed connections) fill holes of kept connections of
   their group before any new connection opens.
4. Open: the rest opens new connections, each on the address with the fewest connections that
   an existing pod with room can use (then any address on the lowest free ordinal).
5. Compact: when a group still has unplaced streams it should serve (holes left after
   removals), its least-filled connections are closed one at a time and their streams
   refilled, until everything selected fits or nothing more helps.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter

from connquota.api.limits import CREDENTIAL_SCOPES, LimitScope
from connquota.api.plan import ConnectionPlan, PlanCredential, QuotaPlan
from connquota.api.quota import Credential
from connquota.planner.arithmetic import INFINITE
from connquota.planner.capacity import Room
from connquota.planner.inputs import DesiredStream


@dataclass(slots=True)
class Conn:
    """A connection being planned."""

    id: str
    address: str
    credential: str | None
    ordinal: int
    streams: list[str]
    kept: bool = False
    source: ConnectionPlan | None = None
    """The previous plan's connection, when this one is it unchanged (same streams list)."""


@dataclass(slots=True)
class Pod:
    """A pod being planned: its placement group and what it holds."""

    ordinal: int
    group: str | None = None
    conns: int = 0
    addresses: Counter[str] = field(default_factory=Counter)
    accounts: Counter[str] = field(default_factory=Counter)
    """Connections per credential identity (`account/<id>`, `apiKey/<id>`)."""


@dataclass
class Packing:
    """The result: connections by pod, the unserved streams and why."""

    conns: list[Conn]
    pods: dict[int, Pod]
    unserved: list[tuple[DesiredStream, str]]
    counts: Mapping[str | None, int] | None = None
    """Streams per credential (None: public), when every stream was served."""
    names: AbstractSet[str] | None = None
    """The names of all streams, when every stream was served by `pack` (never modified)."""


@dataclass
class PackingInput:
    """Everything packing needs, already reduced to numbers."""

    streams: Sequence[DesiredStream]
    cap: int
    cap_reason: str
    addresses: list[Room]
    accounts: dict[str, Room]
    """The quota's room per credential identity: `account/<accountId>`, `apiKey/<keyId>`."""
    credential_identities: dict[str, tuple[str, ...]]
    """Credential name -> the identities the exchange counts it by (see `accounts`)."""
    connections_per_pod: int
    max_replicas: int
    generation: int
    previous: QuotaPlan | None = None
    draining: frozenset[int] = frozenset()
    """Ordinals being drained (a rollout or a cordoned node replaces them): none of their
    connections is kept and no connection is opened on them (see `plan.pack_request` for the
    fallback when the other pods have no room)."""


_name_of = attrgetter("name")
_credential_of = attrgetter("credential")


_priority_of = attrgetter("priority")


def _order(s: DesiredStream) -> tuple[int, str]:
    return (-s.priority, s.name)


def credential_identities(credential: Credential | PlanCredential) -> tuple[str, ...]:
    """The identities the exchange counts `credential` by: `account/<accountId>` and
    `apiKey/<keyId>` (the key id defaults to the account id)."""
    return tuple(f"{scope.value}/{credential.identity(scope)}" for scope in CREDENTIAL_SCOPES)


def _label(identity: str) -> str:
    """`account/a1` -> `account a1`, `apiKey/k1` -> `API key k1` (for reasons)."""
    scope, _, key = identity.partition("/")
    return f"{'API key' if scope == LimitScope.API_KEY.value else scope} {key}"


def _in_order(streams: Iterable[DesiredStream]) -> list[DesiredStream]:
    """`_in_order(streams)`: highest priority first, ties by name (equal keys keep
    their order), as two stable sorts on C-speed keys (no tuple per stream)."""
    out = sorted(streams, key=_name_of)
    out.sort(key=_priority_of, reverse=True)  # stable, also with reverse
    return out


class _Packer:
    def __init__(self, inp: PackingInput) -> None:
        self.inp = inp
        self.cap = inp.cap
        self.rooms = {r.key: r for r in inp.addresses}
        self.usable = [r for r in inp.addresses if r.usable]
        self.conns: list[Conn] = []
        self.pods: dict[int, Pod] = {}
        self.addr_conns: Counter[str] = Counter()
        self.addr_pods: Counter[str] = Counter()
        self.acct_conns: Counter[str] = Counter()
        self.acct_pods: Counter[str] = Counter()
        self.seq = 0
        self.spread = INFINITE
        """At most this many addresses per pod for new connections (see `_set_spread`)."""
        self.unserved: list[tuple[DesiredStream, str]] = []
        self.counts: Mapping[str | None, int] | None = None
        self.names: AbstractSet[str] | None = None

    # -- capacity checks -------------------------------------------------------------------

    def _identities(self, credential: str | None) -> tuple[str, ...] | None:
        """The identities `credential` counts against; () for public, None when unknown."""
        if credential is None:
            return ()
        return self.inp.credential_identities.get(credential)

    def _unusable(self, credential: str | None) -> str | None:
        """Why connections with `credential` cannot be placed at all (None: they can)."""
        idents = self._identities(credential)
        if idents is None:
            return f"credential {credential}: unknown account"
        for ident in idents:
            room = self.inp.accounts.get(ident)
            if room is None:
                return f"credential {credential}: unknown {_label(ident)}"
            if not room.usable:
                return room.reason
        return None

    def _fits(self, address: str, credential: str | None, pod: Pod) -> bool:
        room = self.rooms[address]
        if not room.usable or self.addr_conns[address] >= room.max_connections:
            return False
        if pod.conns >= self.inp.connections_per_pod:
            return False
        if pod.group is not None and pod.group != room.group:
            return False
        if pod.addresses[address] == 0 and self.addr_pods[address] >= room.max_pods:
            return False
        if credential is not None:
            idents = self._identities(credential)
            if idents is None:
                return False
            for ident in idents:
                aroom = self.inp.accounts.get(ident)
                if aroom is None or not aroom.usable:
                    return False
                if self.acct_conns[ident] >= aroom.max_connections:
                    return False
                if pod.accounts[ident] == 0 and self.acct_pods[ident] >= aroom.max_pods:
                    return False
        return True

    def _add(self, conn: Conn) -> None:
        pod = self.pods.setdefault(conn.ordinal, Pod(conn.ordinal))
        pod.group = self.rooms[conn.address].group
        if pod.addresses[conn.address] == 0:
            self.addr_pods[conn.address] += 1
        pod.addresses[conn.address] += 1
        pod.conns += 1
        self.addr_conns[conn.address] += 1
        for ident in self._identities(conn.credential) or ():
            if pod.accounts[ident] == 0:
                self.acct_pods[ident] += 1
            pod.accounts[ident] += 1
            self.acct_conns[ident] += 1
        self.conns.append(conn)

    def _remove(self, conn: Conn) -> None:
        pod = self.pods[conn.ordinal]
        pod.addresses[conn.address] -= 1
        if pod.addresses[conn.address] == 0:
            self.addr_pods[conn.address] -= 1
            del pod.addresses[conn.address]
        pod.conns -= 1
        if pod.conns == 0:
            pod.group = None
        self.addr_conns[conn.address] -= 1
        for ident in self._identities(conn.credential) or ():
            pod.accounts[ident] -= 1
            if pod.accounts[ident] == 0:
                self.acct_pods[ident] -= 1
                del pod.accounts[ident]
            self.acct_conns[ident] -= 1
        self.conns.remove(conn)

    # -- selection -------------------------------------------------------------------------

    def _group_capacity(self) -> int:
        """Connections the quota could hold in a fresh plan (pods spread over groups)."""
        by_group: dict[str, int] = {}
        slots: dict[str, int] = {}
        for r in self.usable:
            by_group[r.group] = min(INFINITE, by_group.get(r.group, 0) + r.max_connections)
            slots[r.group] = min(INFINITE, slots.get(r.group, 0) + r.max_pods)
        per_pod = self.inp.connections_per_pod
        pods_left = self.inp.max_replicas
        pods = dict.fromkeys(by_group, 0)
        # Each pod of a group needs an attempt slot on at least one of the group's addresses.
        want = {
            g: min(math.ceil(c / per_pod) if c < INFINITE else INFINITE, slots[g])
            for g, c in by_group.items()
        }
        progress = True
        while pods_left > 0 and progress:
            progress = False
            for g in sorted(by_group):
                if pods_left > 0 and pods[g] < want[g]:
                    pods[g] += 1
                    pods_left -= 1
                    progress = True
        return sum(min(by_group[g], pods[g] * per_pod) for g in by_group)

    def _all_fit(self, counts: Mapping[str | None, int], total: int) -> bool:
        """Whether every stream fits, counted as a fresh packing would need it: per credential
        group ceil(streams / cap) connections, within the accounts' and the gateway's room."""
        need = 0
        per_account: Counter[str] = Counter()
        fits = True
        for cred, n in counts.items():
            c = math.ceil(n / self.cap)
            need += c
            if cred is not None:
                if self._unusable(cred) is not None:
                    fits = False
                    break
                for ident in self._identities(cred) or ():
                    per_account[ident] += c
                    if per_account[ident] > self.inp.accounts[ident].max_connections:
                        fits = False
        return fits and need <= total

    def select(self) -> tuple[list[DesiredStream], set[str]]:
        """The served streams (in order of priority) and their names."""
        streams = self.inp.streams
        if self.cap <= 0:
            for s in _in_order(streams):
                self.unserved.append((s, f"no stream fits a connection: {self.inp.cap_reason}"))
            return [], set()
        if not self.usable:
            why = "; ".join(r.reason for r in self.inp.addresses if r.reason)
            for s in _in_order(streams):
                self.unserved.append((s, f"no usable egress address ({why})"))
            return [], set()
        total = self._group_capacity()
        counts = Counter(map(_credential_of, streams))
        if self._all_fit(counts, total):
            self.counts = counts
            self.names = set(self._names)
            return list(streams), self.names
        served: list[DesiredStream] = []
        in_group: Counter[str | None] = Counter()
        used = 0
        used_account: Counter[str] = Counter()
        gateway_bound = sum(min(r.max_connections, INFINITE) for r in self.usable) > total
        for s in self._sticky_order(streams):
            cred = s.credential
            idents = self._identities(cred) or ()
            opens = in_group[cred] % self.cap == 0
            reason = None
            if cred is not None:
                reason = self._unusable(cred)
                for ident in idents if reason is None and opens else ():
                    room = self.inp.accounts[ident]
                    if used_account[ident] >= room.max_connections:
                        reason = (
                            f"{_label(ident)}: the quota's concurrentConnections share x "
                            f"headroom ({room.max_connections}) is used up"
                        )
                        break
            if reason is None and opens and used >= total:
                if gateway_bound:
                    reason = (
                        f"gateway capacity used up: {total} connections "
                        f"(maxReplicas {self.inp.max_replicas} x connectionsPerPod "
                        f"{self.inp.connections_per_pod}, by placement rule)"
                    )
                else:
                    reason = (
                        f"the quota's concurrentConnections share x headroom on every usable "
                        f"address is used up ({total} connections)"
                    )
            if reason is not None:
                self.unserved.append((s, reason))
                continue
            if opens:
                used += 1
                for ident in idents:
                    used_account[ident] += 1
            in_group[cred] += 1
            served.append(s)
        return served, {s.name for s in served}

    def _sticky_order(self, streams: Sequence[DesiredStream]) -> list[DesiredStream]:
        """Highest priority first; within a priority, the streams the previous plan serves on
        an address still usable first (less than everything fits: keep what runs, I3), then
        by name."""
        previous = self.inp.previous
        if previous is None:
            return _in_order(streams)
        usable = {r.key for r in self.usable}
        running = {
            name
            for pod in previous.pods
            for c in pod.connections
            if c.address in usable
            for name in c.streams
        }
        out = _in_order(streams)
        out.sort(key=lambda s: (-s.priority, s.name not in running))  # stable: names stay
        return out

    # -- keep ------------------------------------------------------------------------------

    def keep(self, by_name: dict[str, DesiredStream], served: set[str]) -> set[str]:
        """Keep the previous plan's valid connections; returns the streams they carry."""
        previous = self.inp.previous
        placed: set[str] = set()
        if previous is None:
            return placed
        for pod in sorted(previous.pods, key=lambda p: p.ordinal):
            if pod.ordinal >= self.inp.max_replicas or pod.ordinal in self.inp.draining:
                continue
            identities_of = {c.name: credential_identities(c) for c in pod.credentials}
            target = self.pods.get(pod.ordinal) or Pod(pod.ordinal)
            for c in pod.connections:
                room = self.rooms.get(c.address)
                if room is None or not room.usable:
                    continue
                cred = c.credential
                if cred is not None and (
                    self.inp.credential_identities.get(cred) != identities_of.get(cred)
                ):
                    continue
                if not self._fits(c.address, cred, target):
                    continue
                keep = self._keep_fast(c.streams, cred, served, placed)
                if keep is not None:
                    pass
                elif cred is None:
                    keep = [
                        s
                        for s in c.streams
                        if s in served and s not in placed and by_name[s].credential is None
                    ]
                else:
                    keep = [
                        s
                        for s in c.streams
                        if s in served and s not in placed and by_name[s].credential in (None, cred)
                    ]
                if len(keep) > self.cap:
                    keep = keep[: self.cap]
                if not keep:
                    continue
                placed.update(keep)
                self._add(Conn(c.id, c.address, cred, pod.ordinal, keep, kept=True))
                target = self.pods[pod.ordinal]
                seq = _seq_of(c.id, self.inp.generation)
                if seq is not None:
                    self.seq = max(self.seq, seq + 1)
        return placed

    def _keep_fast(
        self, names: list[str], cred: str | None, served: set[str], placed: set[str]
    ) -> list[str] | None:
        """The connection's streams as they are, when set algebra (C speed) shows every one
        is still served, not placed elsewhere and allowed on this credential; else None."""
        if len(names) > self.cap:
            return None
        as_set = set(names)
        if len(as_set) != len(names) or not as_set <= served or not placed.isdisjoint(as_set):
            return None
        private = as_set & self._private
        if private and (cred is None or not private <= self._by_credential.get(cred, set())):
            return None
        return list(names)

    # -- fill and open ---------------------------------------------------------------------

    def fill(self, pending: list[DesiredStream]) -> list[DesiredStream]:
        """Put streams into holes of existing connections of their group; returns the rest."""
        if not pending:
            return pending
        holes: dict[str | None, list[Conn]] = {}
        for c in self.conns:
            if len(c.streams) < self.cap:
                holes.setdefault(c.credential, []).append(c)
        rest = []
        cursor: dict[str | None, int] = {}
        for s in pending:
            group = holes.get(s.credential)
            i = cursor.get(s.credential, 0)
            while group is not None and i < len(group) and len(group[i].streams) >= self.cap:
                i += 1
            cursor[s.credential] = i
            if group is None or i >= len(group):
                rest.append(s)
                continue
            group[i].streams.append(s.name)
        return rest

    def _choose(self, credential: str | None) -> tuple[str, int] | None:
        best = None
        best_key = None
        per_pod = self.inp.connections_per_pod
        # A full pod never fits (`_fits`): leave it out of the scan over every address.
        draining = self.inp.draining
        pods = sorted(
            (p for p in self.pods.values() if 0 < p.conns < per_pod and p.ordinal not in draining),
            key=lambda p: p.ordinal,
        )
        for r in self.usable:
            if self.addr_conns[r.key] >= r.max_connections:
                continue
            pod = None
            for p in pods:
                if p.addresses[r.key] == 0 and len(p.addresses) >= self.spread:
                    continue  # spreading further would take a pod slot another pod needs
                if p.conns and p.group == r.group and self._fits(r.key, credential, p):
                    pod = p
                    break
            key = (pod is None, self.addr_conns[r.key], r.index)
            if best_key is None or key < best_key:
                if pod is None:
                    free = self._free_ordinal(r.key, credential)
                    if free is None:
                        continue
                    best, best_key = (r.key, free), key
                else:
                    best, best_key = (r.key, pod.ordinal), key
        return best

    def _free_ordinal(self, address: str, credential: str | None) -> int | None:
        for ordinal in range(self.inp.max_replicas):
            if ordinal in self.inp.draining:
                continue
            pod = self.pods.get(ordinal)
            if pod is None or pod.conns == 0:
                if self._fits(address, credential, pod or Pod(ordinal)):
                    return ordinal
                return None
        return None

    def open(self, pending: list[DesiredStream]) -> list[DesiredStream]:
        """Open new connections for `pending` (grouped by credential); returns what is left."""
        by_group: dict[str | None, list[DesiredStream]] = {}
        for s in pending:
            by_group.setdefault(s.credential, []).append(s)
        rest: list[DesiredStream] = []
        # Groups in order of their highest priority (pending is in priority order), so what
        # cannot be placed is always of the lowest priority; ties: public first, then by name.
        first = {cred: group[0].priority for cred, group in by_group.items()}
        for cred in sorted(by_group, key=lambda c: (-first[c], c is not None, c or "")):
            group = by_group[cred]
            for start in range(0, len(group), self.cap):
                chunk = group[start : start + self.cap]
                slot = self._choose(cred)
                if slot is None:
                    rest.extend(group[start:])
                    break
                address, ordinal = slot
                conn_id = f"g{self.inp.generation}-{self.seq}"
                self.seq += 1
                self._add(Conn(conn_id, address, cred, ordinal, [s.name for s in chunk]))
        return rest

    def compact(self, rest: list[DesiredStream]) -> list[DesiredStream]:
        """Close least-filled connections of groups with leftovers while that helps."""
        for _ in range(len(self.conns) + 1):
            if not rest:
                break
            groups = {s.credential for s in rest}
            partial = [
                c for c in self.conns if c.credential in groups and len(c.streams) < self.cap
            ]
            if len(partial) < 2:
                break
            victim = min(partial, key=lambda c: (len(c.streams), -c.ordinal, c.id))
            self._remove(victim)
            before = len(rest)
            moved = [self._stream[n] for n in victim.streams]
            rest = self.open(self.fill(_in_order(rest + moved)))
            if len(rest) >= before:
                break
        return rest

    def run(self) -> Packing:
        streams = self.inp.streams
        names = list(map(_name_of, streams))
        self._names = names
        by_name = dict(zip(names, streams, strict=True))
        self._stream = by_name
        self._by_credential: dict[str, set[str]] = {}
        private = list(compress(streams, map(_credential_of, streams)))
        for st in private:
            if st.credential is not None:
                self._by_credential.setdefault(st.credential, set()).add(st.name)
        self._private: set[str] = set(map(_name_of, private))
        served_list, served = self.select()
        self._set_spread(Counter(map(_credential_of, served_list)))
        placed = self.keep(by_name, served)
        if len(placed) == len(served):
            pending: list[DesiredStream] = []
        else:
            pending = _in_order(by_name[n] for n in served - placed)
        rest = self.open(self.fill(pending))
        rest = self.compact(rest)
        for s in rest:
            self.unserved.append((s, self._why_not_placed(s)))
        self.unserved.sort(key=lambda u: _order(u[0]))
        return Packing(self.conns, self.pods, self.unserved, self.counts, self.names)

    # -- the same packing, from the previous plan and the streams added and removed ---------

    def keep_all(self, removed: Mapping[str, set[str]]) -> bool:
        """`keep` for a previous plan all of whose streams stay served but `removed` (connection
        id -> names gone): True when every connection stays (minus those `removed` empties), as
        `keep` would decide; False when `keep` would close one (its streams would move)."""
        previous = self.inp.previous
        assert previous is not None
        if self.inp.draining:
            return False  # `keep` moves the draining pods' connections: the full path
        for pod in sorted(previous.pods, key=lambda p: p.ordinal):
            identities_of = {c.name: credential_identities(c) for c in pod.credentials}
            target = self.pods.get(pod.ordinal) or Pod(pod.ordinal)
            for c in pod.connections:
                gone = removed.get(c.id)
                names = c.streams if gone is None else [s for s in c.streams if s not in gone]
                if not names:
                    continue  # `keep` drops it too: nothing of it is served any more
                if pod.ordinal >= self.inp.max_replicas or len(names) > self.cap:
                    return False
                room = self.rooms.get(c.address)
                if room is None or not room.usable:
                    return False
                cred = c.credential
                if cred is not None and (
                    self.inp.credential_identities.get(cred) != identities_of.get(cred)
                ):
                    return False
                if not self._fits(c.address, cred, target):
                    return False
                source = None
                if gone is None and len(names) >= self.cap:
                    source = c  # full: `fill` cannot touch it, so the list is shared as is
                elif gone is None:
                    names = list(names)  # `fill` may append to it
                self._add(Conn(c.id, c.address, cred, pod.ordinal, names, True, source))
                target = self.pods[pod.ordinal]
                seq = _seq_of(c.id, self.inp.generation)
                if seq is not None:
                    self.seq = max(self.seq, seq + 1)
        return True

    def run_changes(
        self,
        counts: Mapping[str | None, int],
        added: Sequence[DesiredStream],
        removed: Mapping[str, set[str]],
    ) -> Packing | None:
        """`run` when the previous plan served every stream it was made for and the streams
        changed only by `added` and `removed`; None when `run` would do more than keep every
        connection, fill and open (streams not all served, a connection closing, compaction),
        so the caller must take the full path."""
        if self.cap <= 0 or not self.usable or not self._all_fit(counts, self._group_capacity()):
            return None
        self._set_spread(counts)
        if not self.keep_all(removed):
            return None
        rest = self.open(self.fill(_in_order(added)))
        if rest:
            return None
        return Packing(self.conns, self.pods, [], counts)

    def _set_spread(self, counts: Mapping[str | None, int]) -> None:
        """How many addresses one pod may spread its new connections over.

        Every pod on an address takes one of the address's pod slots (each needs an attempt of
        the address's attempt share). Spreading a pod's connections over addresses shortens
        recovery, but when pod slots are scarce it would leave later pods no address: then each
        pod gets at most (pod slots) // (pods the served streams need) addresses (at least 1),
        so every pod the connections need finds a slot."""
        conns = sum(math.ceil(n / self.cap) for n in counts.values() if n > 0)
        pods = min(self.inp.max_replicas, math.ceil(conns / max(1, self.inp.connections_per_pod)))
        slots = sum(min(r.max_pods, INFINITE) for r in self.usable)
        if pods <= 0 or slots >= pods * len(self.usable):
            self.spread = INFINITE
        else:
            self.spread = max(1, slots // pods)

    def _why_not_placed(self, s: DesiredStream) -> str:
        return (
            f"no pod can take another connection for it (connectionsPerPod "
            f"{self.inp.connections_per_pod}, maxReplicas {self.inp.max_replicas}, placement "
            "rule and per-address attempt shares)"
        )


def _seq_of(conn_id: str, generation: int) -> int | None:
    prefix = f"g{generation}-"
    if conn_id.startswith(prefix) and conn_id[len(prefix) :].isdigit():
        return int(conn_id[len(prefix) :])
    return None


def pack(inp: PackingInput) -> Packing:
    """Pack the quota's streams into connections and pods, sticking to the previous plan."""
    return _Packer(inp).run()


def repack(
    inp: PackingInput,
    counts: Mapping[str | None, int],
    added: Sequence[DesiredStream],
    removed: Mapping[str, set[str]],
) -> Packing | None:
    """What `pack(inp)` returns, in time proportional to the connections and the changed
    streams, when `inp.previous` served every stream it was made for, the streams changed only
    by `added` (names new to the plan) and `removed` (connection id -> names it loses), and
    `counts` are the new streams per credential; None when `pack` would do more than keep,
    fill and open (then call `pack`). `inp.streams` is not read."""
    return _Packer(inp).run_changes(counts, added, removed)
