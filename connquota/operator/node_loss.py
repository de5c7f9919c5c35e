"""Gateway pods and bind addresses on lost nodes (pure decisions; docs/operator.md, "A node
lost").

A node is lost when its `Ready` condition is Unknown or False **and** the node lifecycle
controller tainted it `node.kubernetes.io/unreachable` or `not-ready`. Its kubelet does no
more work: a gateway pod there that gets deleted stays Terminating forever, and the
StatefulSet makes no successor while the old Pod object exists. The operator therefore
force-deletes such a pod (grace 0, UID precondition), but only once all of these hold
(`force_delete_due`):

1. the pod's node is lost;
2. the pod is Terminating (the operator evicts it first; a pod on a lost node is not Ready,
   so the PodDisruptionBudget's `unhealthyPodEvictionPolicy: AlwaysAllow` lets it go);
3. the ordinal's gateway Lease has shown the same resourceVersion, on the operator's
   monotonic clock, for at least D + the profile's dead-connection timeout + the window
   margin (D = the Lease's `leaseDurationSeconds`). Never the Lease's `renewTime` (written
   by another machine's clock).

Why that keeps I1: the old gateway, even if it still runs (a partition), stopped new attempts
at its first failed renewal and closed its connections at its last renewal + D, on its own
clock; the operator first saw that renewal after it was written, so at the force delete at
least D + dead-connection timeout has passed since it: the connections are closed, and if the
closes never reached the exchange, the exchange stopped counting them after its
dead-connection timeout. The successor has the same ordinal (the same slices, which the ledger
already counts) and waits out the Lease itself before its first attempt.

The lost node's `bind` addresses cannot carry connections: `NodeOutages` lists them for the
pool's pass, which plans without them like addresses whose proxy is down, until
`NODE_OUTAGE_HOLD_S` after the node is back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connquota.api.pool import EgressAddress, EgressMode

LOST_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
"""The taints the node lifecycle controller puts on a node whose kubelet stopped reporting."""

NODE_OUTAGE_HOLD_S = 10.0
"""How long a node's bind addresses stay out of the plans after it was last seen lost."""

DEFAULT_LEASE_S = 15.0
"""A gateway Lease's duration when its spec names none (the gateway's default)."""


@dataclass(frozen=True)
class NodeLoss:
    """A lost node: its Ready status, the taint that marks it, and since when (its Ready
    condition's lastTransitionTime, for people: never used to measure a wait)."""

    node: str
    ready: str
    taint: str
    since: str = ""

    def describe(self) -> str:
        return f"node {self.node} is lost (Ready {self.ready}, tainted {self.taint})"


def node_loss(node: Mapping[str, Any]) -> NodeLoss | None:
    """The loss of a Node object, or None when it is not lost."""
    meta = node.get("metadata") or {}
    status = node.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return None
    taints = [t.get("key") for t in (node.get("spec") or {}).get("taints") or []]
    taint = next((t for t in LOST_TAINTS if t in taints), None)
    if taint is None:
        return None
    return NodeLoss(
        node=str(meta.get("name") or ""),
        ready=str(ready.get("status") or "Unknown"),
        taint=taint,
        since=str(ready.get("lastTransitionTime") or ""),
    )


@dataclass(frozen=True)
class LeaseSighting:
    """A gateway Lease's resourceVersion and when (operator monotonic) it was first seen."""

    version: str
    first_seen_s: float


def sighted(previous: LeaseSighting | None, version: str, now_s: float) -> LeaseSighting:
    """The sighting after seeing `version` at `now_s`: kept while the version is unchanged."""
    if previous is not None and previous.version == version:
        return previous
    return LeaseSighting(version, now_s)


def lapse_needed_s(lease_s: float, dead_s: float, margin_s: float) -> float:
    """How long a lost pod's Lease must stay unchanged before its pod is force-deleted."""
    return lease_s + dead_s + margin_s


def force_delete_due(
    *,
    terminating: bool,
    node: NodeLoss | None,
    sighting: LeaseSighting | None,
    lease_s: float,
    dead_s: float,
    margin_s: float,
    now_s: float,
) -> tuple[bool, str]:
    """Whether to force-delete a gateway pod now, and why (or why not yet)."""
    if node is None:
        return False, "its node is not lost"
    if not terminating:
        return False, f"{node.describe()}; the pod is not Terminating yet (evict it first)"
    if sighting is None:
        return False, f"{node.describe()}; its Lease was not seen yet"
    needed = lapse_needed_s(lease_s, dead_s, margin_s)
    unchanged = now_s - sighting.first_seen_s
    if unchanged < needed:
        return False, (
            f"{node.describe()}; its Lease unchanged for {unchanged:.1f} s of the "
            f"{needed:.1f} s needed (Lease {lease_s:g} s + dead-connection timeout "
            f"{dead_s:g} s + margin {margin_s:g} s)"
        )
    return True, (
        f"{node.describe()}; its Lease unchanged for {unchanged:.1f} s "
        f">= {needed:.1f} s (Lease {lease_s:g} s + dead-connection timeout {dead_s:g} s + "
        f"margin {margin_s:g} s): its gateway closed its connections at its Lease's end"
    )


def wait_s(sighting: LeaseSighting, needed_s: float, now_s: float) -> float:
    """Seconds until the Lease has been unchanged for `needed_s`."""
    return max(0.0, sighting.first_seen_s + needed_s - now_s)


def lost_addresses(
    addresses: Iterable[EgressAddress], lost: Mapping[str, NodeLoss]
) -> dict[str, str]:
    """The pool's bind addresses held by a lost node: address name -> why."""
    return {
        a.name: f"its node {a.node} is lost"
        for a in addresses
        if a.mode == EgressMode.BIND and a.node and a.node in lost
    }


@dataclass
class NodeOutages:
    """(pool, address) -> until when (wall clock) and why, bridging `NODE_OUTAGE_HOLD_S`
    after the node came back."""

    seen: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)

    def observe(
        self,
        pool: str,
        addresses: Iterable[EgressAddress],
        lost: Mapping[str, NodeLoss],
        wall: float,
    ) -> dict[str, str]:
        """Record the pool's addresses on lost nodes now; the ones to plan without now."""
        for name, why in lost_addresses(addresses, lost).items():
            self.seen[(pool, name)] = (wall + NODE_OUTAGE_HOLD_S, why)
        for key in [k for k, (until, _) in self.seen.items() if until <= wall]:
            del self.seen[key]
        return {a: why for (p, a), (_, why) in sorted(self.seen.items()) if p == pool}

    def next_change_s(self, pool: str, wall: float) -> float | None:
        """Seconds until the first of the pool's node outages may lapse (None: none)."""
        untils = [until for (p, _), (until, _) in self.seen.items() if p == pool]
        return max(0.0, min(untils) - wall) + 0.5 if untils else None
