"""The Node watch (docs/operator.md, "Evictions and node drains"): the index keeps the cordoned
Nodes, and a cordon (or uncordon) reconciles the pools of the quotas with gateway pods on that
Node, once per change, never on a Node heartbeat."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import kopf

from connquota.operator import handlers


@dataclass
class _State:
    pool: str


@dataclass
class _Reconciler:
    quotas: dict[str, _State]
    requested: list[str] = field(default_factory=list)

    def request(self, pool: str) -> None:
        self.requested.append(pool)


def _node(name: str, cordoned: bool) -> dict[str, Any]:
    spec = {"unschedulable": True} if cordoned else {}
    return {"metadata": {"name": name}, "spec": spec}


def _pod(name: str, node: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"nodeName": node}}


PODS = {
    "ns/a": [_pod("a-gw-0", "n1"), _pod("a-gw-1", "n2")],
    "ns/b": [_pod("b-gw-0", "n2")],
    "ns/c": [_pod("c-gw-0", "n3")],
}


def test_the_index_keeps_only_cordoned_nodes() -> None:
    assert handlers.cordoned_nodes(name="n1", body=_node("n1", True)) == {"n1": True}
    # {}, not None: kopf keeps an object's earlier values when its indexer returns None.
    assert handlers.cordoned_nodes(name="n1", body=_node("n1", False)) == {}


def test_the_index_keeps_only_lost_nodes() -> None:
    lost = {
        "metadata": {"name": "n1"},
        "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]},
        "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
    }
    assert handlers.lost_nodes(name="n1", body=lost) == {
        "n1": {
            "node": "n1",
            "ready": "Unknown",
            "taint": "node.kubernetes.io/unreachable",
            "since": "",
        }
    }
    assert handlers.lost_nodes(name="n1", body=_node("n1", False)) == {}


async def test_a_cordon_reconciles_the_pools_of_the_quotas_with_pods_on_the_node_once() -> None:
    reconciler = _Reconciler({"ns/a": _State("p1"), "ns/b": _State("p2"), "ns/c": _State("p3")})
    memo = kopf.Memo(reconciler=reconciler)

    async def event(node: str, cordoned: bool, type_: str | None = "MODIFIED") -> list[str]:
        reconciler.requested.clear()
        await handlers.node_event(
            body=_node(node, cordoned), name=node, type=type_, memo=memo, gateway_pods=PODS
        )
        return sorted(reconciler.requested)

    # First seen uncordoned (the operator's start): nothing to do.
    assert await event("n2", False, None) == []
    # Cordoned: quotas a and b have pods on n2.
    assert await event("n2", True) == ["p1", "p2"]
    # Heartbeats of a cordoned node change nothing.
    assert await event("n2", True) == []
    # Uncordoned: reconciled again (their pods are no longer outdated).
    assert await event("n2", False) == ["p1", "p2"]
    # A node first seen cordoned (an operator started during a drain) counts as a change.
    assert await event("n3", True, None) == ["p3"]
    # Deleted while cordoned: reconciled (the pods went with it).
    assert await event("n3", True, "DELETED") == ["p3"]
    # A cordoned node without gateway pods: nothing.
    assert await event("n9", True) == []
