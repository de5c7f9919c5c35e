"""node_loss: when a gateway pod on a lost node may be force-deleted, and which bind addresses
a lost node takes out of the plans (pure decisions)."""

from __future__ import annotations

from typing import Any

from connquota.api.pool import EgressAddress, EgressMode
from connquota.operator.node_loss import (
    NODE_OUTAGE_HOLD_S,
    LeaseSighting,
    NodeLoss,
    NodeOutages,
    force_delete_due,
    lost_addresses,
    node_loss,
    sighted,
)

LOSS = NodeLoss("n1", "Unknown", "node.kubernetes.io/unreachable")


def _node(ready: str, taints: list[str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1"},
        "spec": {"taints": [{"key": t, "effect": "NoSchedule"} for t in taints]},
        "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": "t0"}]},
    }


def test_a_node_is_lost_only_when_not_ready_and_tainted_by_the_node_lifecycle_controller() -> None:
    assert node_loss(_node("Unknown", ["node.kubernetes.io/unreachable"])) == NodeLoss(
        "n1", "Unknown", "node.kubernetes.io/unreachable", "t0"
    )
    assert node_loss(_node("False", ["node.kubernetes.io/not-ready"])) is not None
    assert node_loss(_node("Unknown", [])) is None  # not tainted (yet)
    assert node_loss(_node("True", ["node.kubernetes.io/unreachable"])) is None  # back
    assert node_loss(_node("False", ["node.kubernetes.io/unschedulable"])) is None
    assert node_loss({"metadata": {"name": "n1"}}) is None


def test_a_sighting_keeps_its_first_time_while_the_lease_version_is_unchanged() -> None:
    first = sighted(None, "10", 100.0)
    assert sighted(first, "10", 130.0) == LeaseSighting("10", 100.0)
    assert sighted(first, "11", 130.0) == LeaseSighting("11", 130.0)


def _due(**kw: Any) -> tuple[bool, str]:
    args: dict[str, Any] = {
        "terminating": True,
        "node": LOSS,
        "sighting": LeaseSighting("10", 100.0),
        "lease_s": 15.0,
        "dead_s": 3.0,
        "margin_s": 1.0,
        "now_s": 119.0,
    }
    return force_delete_due(**{**args, **kw})


def test_force_delete_only_after_lease_plus_dead_connection_timeout_plus_margin() -> None:
    due, why = _due()
    assert due and "19.0 s" in why
    due, why = _due(now_s=118.9)
    assert not due and "18.9 s of the 19.0 s needed" in why


def test_never_force_deleted_when_the_node_is_not_lost_the_pod_not_terminating_or_unseen() -> None:
    assert _due(node=None, now_s=1e6)[0] is False
    due, why = _due(terminating=False, now_s=1e6)
    assert not due and "evict it first" in why
    assert _due(sighting=None, now_s=1e6)[0] is False


def _addresses() -> list[EgressAddress]:
    return [
        EgressAddress(
            name=f"lo-{i}",
            publicAddress=f"127.0.0.{i}",
            mode=EgressMode.BIND,
            bindAddress=f"127.0.0.{i}",
            node=node,
        )
        for i, node in ((2, "n1"), (3, "n2"))
    ]


def test_a_lost_node_s_bind_addresses_are_planned_without_until_a_hold_after_it_is_back() -> None:
    assert lost_addresses(_addresses(), {"n1": LOSS}) == {"lo-2": "its node n1 is lost"}
    outages = NodeOutages()
    assert outages.observe("p", _addresses(), {"n1": LOSS}, 1000.0) == {
        "lo-2": "its node n1 is lost"
    }
    assert outages.observe("other", _addresses(), {}, 1000.0) == {}
    # Back: held for NODE_OUTAGE_HOLD_S after it was last seen lost.
    assert outages.observe("p", _addresses(), {}, 1000.0 + NODE_OUTAGE_HOLD_S - 1) != {}
    assert outages.next_change_s("p", 1000.0 + NODE_OUTAGE_HOLD_S - 1) == 1.5
    assert outages.observe("p", _addresses(), {}, 1000.0 + NODE_OUTAGE_HOLD_S) == {}
    assert outages.next_change_s("p", 1000.0 + NODE_OUTAGE_HOLD_S) is None
