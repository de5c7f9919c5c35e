"""Thin kopf handlers: they feed indexes and ask the reconciler to run; they return nothing.

Registered on import (kopf's default registry). The reconciler lives in kopf's `memo`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import kopf

from connquota.operator import accessors, metrics, names, node_loss, status_metrics
from connquota.operator.identity import with_user_agent
from connquota.operator.kube import KubeApi, make_api_client
from connquota.operator.reconcile import Reconciler, Sources, quota_key
from connquota.operator.settings import OperatorConfig

log = logging.getLogger(__name__)

QUOTAS = (names.GROUP, names.VERSION, names.QUOTA_PLURAL)
POOLS = (names.GROUP, names.VERSION, names.POOL_PLURAL)
GATEWAY_LABELS = {names.LABEL_NAME: names.GATEWAY_APP}


def _pool_of(body: Any) -> str:
    return accessors.quota_pool(body)


def _quota_of(body: Any) -> str | None:
    meta = body.get("metadata") or {}
    quota = (meta.get("labels") or {}).get(names.LABEL_QUOTA)
    return f"{meta.get('namespace')}/{quota}" if quota else None


# --- indexes (kopf fills them before any resource handler runs) ------------------------------


@kopf.index(*QUOTAS)
def quotas_by_pool(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Quota bodies by the pool they use."""
    return {_pool_of(body): dict(body)}


@kopf.index(*POOLS)
def pools_by_name(body: kopf.Body, name: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Pool bodies by name."""
    return {name: dict(body)}


@kopf.index("coordination.k8s.io", "v1", "leases", labels=GATEWAY_LABELS)
def gateway_leases(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Gateway Leases (their reports) by quota."""
    key = _quota_of(body)
    return {key: dict(body)} if key else None


@kopf.index("", "v1", "pods", labels=GATEWAY_LABELS)
def gateway_pods(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Gateway pods by quota."""
    key = _quota_of(body)
    return {key: dict(body)} if key else None


@kopf.index("apps", "v1", "statefulsets", labels=GATEWAY_LABELS)
def gateway_statefulsets(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Gateway StatefulSets by quota."""
    key = _quota_of(body)
    return {key: dict(body)} if key else None


@kopf.index("", "v1", "nodes")
def cordoned_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, bool]:
    """The cordoned Nodes (`spec.unschedulable`), by name: their gateway pods are treated as
    outdated, moved off make-before-break when room allows, and evicted (docs/operator.md,
    "Evictions and node drains"). Only cordoned nodes are kept in memory."""
    # {} (not None) for a node not cordoned: kopf keeps an object's previous values when its
    # indexer returns None, so an uncordoned node would stay cordoned.
    return {name: True} if accessors.node_unschedulable(body) else {}


@kopf.index("", "v1", "nodes")
def lost_nodes(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
    """The lost Nodes (Ready Unknown/False and tainted unreachable or not-ready by the node
    lifecycle controller), by name: their bind addresses are planned without and their gateway
    pods replaced (docs/operator.md, "A node lost"). Only lost nodes are kept in memory."""
    loss = node_loss.node_loss(body)
    # {} (not None) for a node not lost: kopf keeps an object's previous values when its
    # indexer returns None, so a node that came back would stay lost.
    return {name: dataclasses.asdict(loss)} if loss is not None else {}


def _lost(index: kopf.Index[str, dict[str, str]]) -> dict[str, node_loss.NodeLoss]:
    return {name: node_loss.NodeLoss(**value) for name in index for value in list(index[name])[:1]}


def _values(index: kopf.Index[str, dict[str, Any]], key: str) -> list[dict[str, Any]]:
    try:
        return list(index[key])
    except KeyError:
        return []


# --- lifecycle -------------------------------------------------------------------------------


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own login (in-cluster, else the kubeconfig), sent with the operator's User-Agent."""
    info = kopf.login_via_client(**kwargs)
    return None if info is None else with_user_agent(info)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Apply the settings, build the API client and the reconciler, start metrics."""
    config: OperatorConfig = memo.get("config") or OperatorConfig()
    config.apply(settings)
    api = KubeApi(
        await asyncio.to_thread(make_api_client, memo.get("kubeconfig")),
        request_timeout_s=config.requestTimeoutSeconds,
    )
    quotas, pools = kwargs["quotas_by_pool"], kwargs["pools_by_name"]
    leases, pods, sets = (
        kwargs["gateway_leases"],
        kwargs["gateway_pods"],
        kwargs["gateway_statefulsets"],
    )
    cordoned: kopf.Index[str, bool] = kwargs["cordoned_nodes"]
    lost: kopf.Index[str, dict[str, str]] = kwargs["lost_nodes"]
    sources = Sources(
        pools=lambda name: next(iter(_values(pools, name)), None),
        quotas_of_pool=lambda pool: _values(quotas, pool),
        leases_of_quota=lambda key: _values(leases, key),
        pods_of_quota=lambda key: _values(pods, key),
        statefulset_of_quota=lambda key: next(iter(_values(sets, key)), None),
        node_cordoned=lambda node: bool(node) and node in cordoned,
        lost_nodes=lambda: _lost(lost),
    )
    memo["reconciler"] = Reconciler(api, config, sources)
    if config.metricsPort and not memo.get("metrics_started"):
        from prometheus_client import start_http_server

        start_http_server(config.metricsPort, addr=config.metricsHost)
        memo["metrics_started"] = True


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the reconciler's workers."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        await reconciler.stop()


@kopf.on.probe(id="progress")
def progress(memo: kopf.Memo, **_: Any) -> float:
    """Liveness on progress: fails when nothing happened for `livenessMaxAgeSeconds`."""
    reconciler: Reconciler = memo["reconciler"]
    age_s = reconciler.monotonic() - reconciler.last_progress
    if age_s > reconciler.config.livenessMaxAgeSeconds:
        raise kopf.PermanentError(f"no reconcile or watch event for {age_s:.0f}s")
    return round(age_s, 1)


# --- quotas and pools ------------------------------------------------------------------------


@kopf.on.resume(*QUOTAS)
@kopf.on.create(*QUOTAS)
@kopf.on.update(*QUOTAS)
async def quota_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Any real change of a quota (or the operator starting): reconcile its pool (and its old one)."""
    reconciler: Reconciler = memo["reconciler"]
    pool = _pool_of(body)
    state = reconciler.quotas.get(quota_key(body))
    if state is not None and state.pool and state.pool != pool:
        reconciler.request(state.pool)
    reconciler.request(pool)
    metrics.QUOTAS.set(len(reconciler.quotas))


@kopf.on.delete(*QUOTAS)
async def quota_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Hold the `connquota.io/budget` finalizer until the quota's share can be released."""
    reconciler: Reconciler = memo["reconciler"]
    wait_s = await reconciler.finalize(dict(body))
    if wait_s is not None:
        raise kopf.TemporaryError(
            "waiting for the gateways to stop and one rate window to pass", delay=wait_s
        )
    reconciler.request(_pool_of(body))


@kopf.on.resume(*POOLS)
@kopf.on.create(*POOLS)
@kopf.on.update(*POOLS)
async def pool_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    """A pool changed: reconcile every quota using it."""
    memo["reconciler"].request(name)


@kopf.on.delete(*POOLS, optional=True)
async def pool_deleted(name: str, memo: kopf.Memo, **_: Any) -> None:
    """A pool is gone: its status metrics end; its quotas are reconciled (PoolNotFound)."""
    status_metrics.forget_pool(name)
    memo["reconciler"].request(name)


# --- gateway objects -------------------------------------------------------------------------


def _gateway_event(body: kopf.Body, memo: kopf.Memo) -> None:
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None:
        return
    reconciler.note_progress()
    key = _quota_of(body)
    state = reconciler.quotas.get(key) if key else None
    if state is not None and state.pool:
        reconciler.request(state.pool)


@kopf.on.event("coordination.k8s.io", "v1", "leases", labels=GATEWAY_LABELS)
async def lease_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A gateway report changed: acknowledgements may unblock the next step."""
    _gateway_event(body, memo)


@kopf.on.event("", "v1", "pods", labels=GATEWAY_LABELS)
async def pod_event(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A gateway pod changed (started, ready, gone)."""
    _gateway_event(body, memo)


@kopf.on.event("", "v1", "configmaps", labels=GATEWAY_LABELS)
async def configmap_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A quota's plan or ledger ConfigMap deleted (by hand, by a cleanup script): what the
    operator remembers of it is dropped, so the next reconcile writes it again (the ledger
    from the operator's memory, which is what every pod may still enforce)."""
    if type != "DELETED":
        return
    reconciler: Reconciler | None = memo.get("reconciler")
    key = _quota_of(body)
    if reconciler is None or key is None:
        return
    labels = accessors.labels(body)
    state = reconciler.quotas.get(key)
    if state is None:
        return
    meta = body.get("metadata") or {}
    reconciler.api.forget("ConfigMap", meta.get("namespace", ""), meta.get("name", ""))
    component = labels.get(names.LABEL_COMPONENT)
    ordinal = labels.get(names.LABEL_ORDINAL, "")
    if component == "plan" and ordinal.isdigit():
        state.plans.plan_rv.pop(int(ordinal), None)
        if int(ordinal) in state.plans.published:
            state.plans.deleted.add(int(ordinal))
    elif component == "ledger":
        state.ledgers.ledger_rv = None
        state.ledgers.ledger_dirty = True
    else:
        return
    log.warning(
        "quota %s: its %s ConfigMap %s was deleted: writing it again",
        key,
        component,
        meta.get("name"),
        extra={"quota": key},
    )
    if state.pool:
        reconciler.request(state.pool)


@kopf.on.event("apps", "v1", "statefulsets", labels=GATEWAY_LABELS)
async def statefulset_event(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """A gateway StatefulSet changed (ready replicas, or drift); deleted, it is written again
    (the operator forgets what it last applied)."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if type == "DELETED" and reconciler is not None:
        meta = body.get("metadata") or {}
        reconciler.api.forget("StatefulSet", meta.get("namespace", ""), meta.get("name", ""))
    _gateway_event(body, memo)


# --- nodes -----------------------------------------------------------------------------------


@kopf.on.event("", "v1", "nodes")
async def node_event(
    body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A Node cordoned or uncordoned (`spec.unschedulable` changed since the operator last saw
    it, or first seen cordoned), lost or back (`node_loss.node_loss`): reconcile the pools of
    the quotas with gateway pods on it, so a `kubectl drain` is answered at once (their pods
    are moved off it) and a lost node's pods and addresses are dealt with. Other Node events
    (status heartbeats) are ignored."""
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None:
        return
    seen: dict[str, tuple[bool, bool]] = memo.setdefault("node_cordoned", {})
    deleted = type == "DELETED"
    cordoned = not deleted and accessors.node_unschedulable(body)
    lost = not deleted and node_loss.node_loss(body) is not None
    before = seen.get(name, (False, False))
    if deleted:
        seen.pop(name, None)
    else:
        seen[name] = (cordoned, lost)
    if (cordoned, lost) == before:
        return
    if lost != before[1]:
        log.warning("node %s %s", name, "lost" if lost else "back", extra={"node": name})
        for pool in sorted({s.pool for s in reconciler.quotas.values() if s.pool}):
            reconciler.request(pool)  # its bind addresses may be any pool's
        return
    pods: kopf.Index[str, dict[str, Any]] = kwargs["gateway_pods"]
    quotas = sorted(
        {key for key in pods for pod in _values(pods, key) if accessors.pod_node(pod) == name}
    )
    log.info(
        "node %s %s: reconciling the quotas with gateway pods on it: %s",
        name,
        "cordoned" if cordoned else "uncordoned",
        ", ".join(quotas) or "none",
        extra={"node": name},
    )
    for key in quotas:
        state = reconciler.quotas.get(key)
        if state is not None and state.pool:
            reconciler.request(state.pool)
