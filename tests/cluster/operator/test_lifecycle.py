"""A quota's life on the real API server: objects, plans, status, bad edits, deletion.

The gateway pods are run by the pod harness; these tests assert what a user sees through the
API: owned objects and their content, the published plans, the status conditions, the
finalizer's wait and the garbage collection after it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import HARNESS_LABEL, wait_for
from cluster.operator.conftest import (
    WRITE_VERBS,
    OperatorProcess,
    audit_mark,
    custom_object,
    describe,
    operator_requests,
)
from connquota.api.plan import PodPlan
from connquota.operator import names
from connquota.testing.resources import loopback_pool as _pool

pytestmark = pytest.mark.cluster

GROUP, VERSION = "connquota.io", "v1alpha1"
WINDOW_S = 3.0
DEAD_CONNECTION_S = 2.0


def _quota(namespace: str, pool: str, streams: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": "md", "namespace": namespace},
        "spec": {
            "exchange": "custom",
            "custom": {
                "endpoint": "ws://127.0.0.1:9",
                "dialect": "binance",
                "domain": f"{pool}.test",
                "deadConnectionTimeoutSeconds": DEAD_CONNECTION_S,
                "limits": [
                    {
                        "name": "connectionAttempts",
                        "value": 10,
                        "windowSeconds": WINDOW_S,
                        "scope": "ip",
                        "shape": "slidingWindow",
                    },
                    {
                        "name": "concurrentConnections",
                        "value": 10,
                        "scope": "ip",
                        "shape": "concurrent",
                    },
                    {
                        "name": "streamsPerConnection",
                        "value": 4,
                        "scope": "connection",
                        "shape": "concurrent",
                    },
                    {
                        "name": "messagesPerConnection",
                        "value": 10,
                        "windowSeconds": 1,
                        "burst": 10,
                        "scope": "connection",
                        "shape": "tokenBucket",
                    },
                    {
                        "name": "maxConnectionAge",
                        "value": 3600,
                        "scope": "connection",
                        "shape": "duration",
                    },
                ],
            },
            "egressPoolRef": {"name": pool},
            "credentials": [{"name": "main", "secretRef": {"name": "keys"}, "accountId": "acct-1"}],
            "streams": [{"name": s} for s in streams],
            "gateway": {
                "maxReplicas": 3,
                "minReplicas": 1,
                "podOverrides": {"labels": {HARNESS_LABEL: "true"}},
            },
        },
    }


def _get_quota(api_client: Any, namespace: str) -> dict[str, Any] | None:
    try:
        return custom_object(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _plan(core: client.CoreV1Api, namespace: str, ordinal: int) -> PodPlan:
    cm = core.read_namespaced_config_map(f"md-plan-{ordinal}", namespace)
    return PodPlan.model_validate_json(cm.data["plan.json"])


def _condition(quota: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (quota.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return None


@pytest.fixture
def pool_name() -> Any:
    return f"p-{uuid.uuid4().hex[:8]}"


def test_quota_lifecycle_objects_plans_status_bad_edit_and_finalized_deletion(
    api_client: Any,
    control_plane: Any,
    kstatus: Any,
    argocd_health: Any,
    namespace: str,
    pool_name: str,
    operator_process: OperatorProcess,
) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    objects = custom_object(api_client)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "keys"}, "stringData": {"apiKey": "k", "apiSecret": "s"}},
    )
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", _pool(pool_name))
    streams = [f"s{i}@trade" for i in range(6)]
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", _quota(namespace, pool_name, streams)
    )
    try:
        quota = wait_for(lambda: _get_quota(api_client, namespace), 10, "the quota")
        uid = quota["metadata"]["uid"]

        # Plans are published: every declared stream is in exactly one connection.
        plan0 = wait_for(
            lambda: _plan(core, namespace, 0),
            60,
            f"plan ConfigMap md-plan-0\n{operator_process.log()}",
        )
        sts = wait_for(lambda: apps.read_namespaced_stateful_set("md-gw", namespace), 30, "sts")
        plans = [_plan(core, namespace, o) for o in range(sts.spec.replicas)]
        planned = [s for p in plans for c in p.connections for s in c.streams]
        assert sorted(planned) == sorted(streams)
        assert plan0.generation >= 1
        assert all(len(c.streams) <= 4 for p in plans for c in p.connections)

        # Every owned object exists, is controlled by the quota, and has the decided shape.
        assert sts.spec.pod_management_policy == "Parallel"
        assert sts.spec.update_strategy.type == "OnDelete"
        for read, name in [
            (core.read_namespaced_service_account, "md-gw"),
            (client.RbacAuthorizationV1Api(api_client).read_namespaced_role, "md-gw"),
            (client.RbacAuthorizationV1Api(api_client).read_namespaced_role_binding, "md-gw"),
            (core.read_namespaced_service, "md-gw"),
            (core.read_namespaced_service, "md-gw-peers"),
            (client.PolicyV1Api(api_client).read_namespaced_pod_disruption_budget, "md-gw"),
            (client.CoordinationV1Api(api_client).read_namespaced_lease, "md-gw-0"),
            (core.read_namespaced_config_map, "md-plan-0"),
        ]:
            obj = read(name, namespace)
            (ref,) = obj.metadata.owner_references
            assert (ref.uid, ref.controller, ref.block_owner_deletion) == (uid, True, True), name
        plan_cm = core.read_namespaced_config_map("md-plan-0", namespace)
        assert "apiSecret" not in json.dumps(plan_cm.data) or '"s"' not in plan_cm.data["plan.json"]

        # Status: observed generation and the standard conditions.
        def status_written() -> dict[str, Any] | None:
            q = _get_quota(api_client, namespace)
            ok = (
                q
                and (q.get("status") or {}).get("observedGeneration") == q["metadata"]["generation"]
            )
            return q if ok and _condition(q, "Ready") else None

        quota = wait_for(status_written, 30, "status with observedGeneration")
        assert _condition(quota, "Stalled") is None, "kstatus: absent while it does not apply"
        assert quota["status"]["streams"]["desired"] == 6
        assert quota["status"]["streams"]["planned"] == 6
        # Per address: this quota's share, the sum of its pod slices and the pool's budget.
        (address,) = quota["status"]["addresses"]
        assert address["key"] == "lo-2"
        by_limit = {u["limit"]: u for u in address["limits"]}
        attempts = by_limit["connectionAttempts"]
        assert 0 < attempts["slices"] <= attempts["share"] <= attempts["budget"]
        assert by_limit["concurrentConnections"]["share"] > 0

        # The pool's status is written too: Ready, its quota count, budgets and holders.
        def pool_written() -> dict[str, Any] | None:
            p = objects.get_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_name)
            st = p.get("status") or {}
            ok = st.get("observedGeneration") == p["metadata"]["generation"] and st.get("budgets")
            return p if ok else None

        pool_obj = wait_for(pool_written, 30, "the pool's status")
        # Flux's kstatus: the pool is Current; the quota, whose gateways reach no exchange
        # here, is still converging (InProgress), not Failed.
        assert kstatus(pool_obj)[0] == "Current"
        assert kstatus(_get_quota(api_client, namespace))[0] == "InProgress"
        # Argo CD, with the shipped Lua on the same live objects: Healthy pool, Progressing quota.
        assert argocd_health(pool_obj)[0] == "Healthy"
        assert argocd_health(_get_quota(api_client, namespace))[0] == "Progressing"
        assert pool_obj["status"]["quotas"] == 1
        assert _condition(pool_obj, "Ready")["status"] == "True"
        holders = {(b["address"], b["limit"]): b["holders"] for b in pool_obj["status"]["budgets"]}
        assert holders[("lo-2", "connectionAttempts")][0]["quota"] == f"{namespace}/md"
        columns = control_plane.kubectl("get", "ecp", pool_name, "--no-headers").stdout.split()
        assert columns[1:3] == ["1", "True"], columns
        assert "finalizers" in quota["metadata"]
        assert "connquota.io/budget" in quota["metadata"]["finalizers"]

        # A bad edit (a missing Secret) stalls the quota and keeps the last good plan.
        rv_before = core.read_namespaced_config_map(
            "md-plan-0", namespace
        ).metadata.resource_version
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "md",
            {
                "spec": {
                    "credentials": [
                        {"name": "main", "secretRef": {"name": "nope"}, "accountId": "acct-1"}
                    ]
                }
            },
        )

        def stalled() -> bool:
            q = _get_quota(api_client, namespace)
            cond = q and _condition(q, "Stalled")
            return bool(cond and cond["status"] == "True" and cond["reason"] == "SecretMissing")

        wait_for(stalled, 30, "Stalled=SecretMissing")
        verdict, message = kstatus(_get_quota(api_client, namespace))
        assert (verdict, "nope" in message) == ("Failed", True), (verdict, message)
        health, message = argocd_health(_get_quota(api_client, namespace))
        assert (health, "nope" in message) == ("Degraded", True), (health, message)
        cm = core.read_namespaced_config_map("md-plan-0", namespace)
        assert cm.metadata.resource_version == rv_before
        assert (
            apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == sts.spec.replicas
        )
    finally:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )

    # Deletion: the finalizer holds the quota until its gateways are gone and a window passed.
    wait_for(
        lambda: apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas == 0,
        30,
        "StatefulSet scaled to zero",
    )
    wait_for(lambda: _get_quota(api_client, namespace) is None, 90, "the quota to be released")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_name)


def test_an_unchanged_quota_causes_zero_writes_across_reconciles(
    api_client: Any,
    control_plane: Any,
    namespace: str,
    pool_name: str,
    operator_process: OperatorProcess,
) -> None:
    """Counted from the API server's audit log by the operator's User-Agent: no create, update,
    patch or delete in the quota's namespace or on the quota over three reconciles of its pool.
    Its pods are left Pending (no harness label), so nothing but the operator could change."""
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "keys"}, "stringData": {"apiKey": "k", "apiSecret": "s"}},
    )
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", _pool(pool_name))
    body = _quota(namespace, pool_name, ["a@trade", "b@trade"])
    del body["spec"]["gateway"]["podOverrides"]
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )
    metric = "connquota_operator_reconciles_total"

    def settled() -> bool:
        q = _get_quota(api_client, namespace)
        return bool(
            q and (q.get("status") or {}).get("observedGeneration") == q["metadata"]["generation"]
        )

    wait_for(settled, 60, "the quota's first status")

    def labelled() -> bool:
        """Every pod the StatefulSet made carries the holds-connections label its published
        plan calls for: the operator's one write for a pod it sees for the first time (the
        controller manager may create the pods after the first status)."""
        sts = client.AppsV1Api(api_client).read_namespaced_stateful_set("md-gw", namespace)
        pods = core.list_namespaced_pod(namespace).items
        if len(pods) != (sts.spec.replicas or 0):
            return False
        for pod in pods:
            ordinal = int(pod.metadata.name.rsplit("-", 1)[1])
            holds = (pod.metadata.labels or {}).get(names.LABEL_HOLDS_CONNECTIONS) == "true"
            try:
                planned = bool(_plan(core, namespace, ordinal).connections)
            except client.ApiException:
                return False  # its plan is not published yet
            if holds != planned:
                return False
        return True

    wait_for(labelled, 60, "the gateway pods and their holds-connections labels")
    # One more reconcile of the pool after that, so the measurement starts from a state the
    # operator has already seen.
    done = operator_process.metric(metric)
    _touch_pool(objects, pool_name, "settle")
    wait_for(lambda: operator_process.metric(metric) > done, 30, "a reconcile")
    start = audit_mark(control_plane)
    for i in range(3):  # touch the pool: every quota of it is reconciled again
        done = operator_process.metric(metric)
        _touch_pool(objects, pool_name, str(i))
        wait_for(lambda d=done: operator_process.metric(metric) > d, 30, f"reconcile {i + 1}")
    end = audit_mark(control_plane, start)
    writes = [
        e
        for e in operator_requests(control_plane, start, end, verbs=WRITE_VERBS)
        if (e.get("objectRef") or {}).get("namespace") == namespace
    ]
    assert writes == [], f"writes for an unchanged quota:\n{describe(writes)}"
    objects.delete_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
    )
    wait_for(lambda: _get_quota(api_client, namespace) is None, 90, "the quota to be released")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_name)


def _touch_pool(objects: Any, pool: str, value: str) -> None:
    """Change an annotation of the pool: the operator reconciles every quota of it."""
    objects.patch_cluster_custom_object(
        GROUP,
        VERSION,
        "exchangeegresspools",
        pool,
        {"metadata": {"annotations": {"test/touch": value}}},
    )


def test_a_write_the_api_server_refuses_shows_on_the_quota_with_its_reason_and_an_event(
    api_client: Any,
    namespace: str,
    pool_name: str,
    operator_process: OperatorProcess,
) -> None:
    """A ResourceQuota leaves no room for the plan ConfigMaps: the quota says so (Stalled with
    reason QuotaExceeded, Ready False, the API server's message) and a Warning Event is posted;
    lifting the limit lets the operator converge without any other change."""
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "keys"}, "stringData": {"apiKey": "k", "apiSecret": "s"}},
    )
    # The namespace's ConfigMaps (kube-root-ca.crt among them) already fill the quota.
    used = len(core.list_namespaced_config_map(namespace).items)
    core.create_namespaced_resource_quota(
        namespace,
        {"metadata": {"name": "cm"}, "spec": {"hard": {"count/configmaps": str(used)}}},
    )
    wait_for(
        lambda: (
            (core.read_namespaced_resource_quota("cm", namespace).status or {})
            and (core.read_namespaced_resource_quota("cm", namespace).status.hard)
        ),
        60,
        "the quota controller to compute the ResourceQuota's usage",
    )
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", _pool(pool_name))
    body = _quota(namespace, pool_name, ["a@trade", "b@trade"])
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", body
    )
    try:

        def refused() -> dict[str, Any] | None:
            q = _get_quota(api_client, namespace)
            cond = q and _condition(q, "Stalled")
            return cond if cond and cond["reason"] == "QuotaExceeded" else None

        try:
            cond = wait_for(refused, 90, "Stalled=QuotaExceeded")
        except AssertionError as exc:
            status = (_get_quota(api_client, namespace) or {}).get("status")
            raise AssertionError(f"{exc}\nstatus: {status}\n{operator_process.log(40)}") from None
        assert cond["status"] == "True" and "exceeded quota" in cond["message"]
        quota = _get_quota(api_client, namespace)
        assert _condition(quota, "Ready")["status"] == "False"
        assert _condition(quota, "Reconciling") is None

        def event() -> bool:
            events = core.list_namespaced_event(namespace).items
            return any(e.reason == "QuotaExceeded" and e.type == "Warning" for e in events)

        wait_for(event, 30, "a Warning Event with reason QuotaExceeded")

        # Lift the limit: the next retry writes the plans and the quota is no longer Stalled.
        core.delete_namespaced_resource_quota("cm", namespace)

        def recovered() -> bool:
            q = _get_quota(api_client, namespace)
            return bool(
                q and _condition(q, "Stalled") is None and q["status"].get("planGeneration")
            )

        wait_for(
            recovered, 90, f"Stalled removed after the limit is lifted\n{operator_process.log(20)}"
        )
    finally:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
