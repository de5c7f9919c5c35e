"""Plan ConfigMaps (one per gateway pod, no secrets) and the per-ordinal Leases."""

from __future__ import annotations

import json
from typing import Any

from connquota.api.lease_record import FRESH_ANNOTATION, FreshCertificate
from connquota.api.plan import PlanCredential, PodPlan
from connquota.api.quota import ExchangeConnectionQuota, ExchangeConnectionQuotaSpec
from connquota.operator import names
from connquota.operator.builders.common import object_meta, quota_ids, with_hash


def plan_credentials(spec: ExchangeConnectionQuotaSpec, pod_plan: PodPlan) -> list[PlanCredential]:
    """The credentials a pod's connections use, with the mount paths the StatefulSet gives them.

    Only references: the Secret name, its key names and where its files are. Never a value.
    """
    used = sorted({c.credential for c in pod_plan.connections if c.credential})
    out: list[PlanCredential] = []
    for name in used:
        cred = spec.credential(name)
        if cred is None:
            continue
        out.append(PlanCredential.of(cred))
    return out


def plan_json(pod_plan: PodPlan) -> str:
    """The canonical JSON of a pod plan (stable key order, so equal plans are equal bytes)."""
    return json.dumps(pod_plan.to_wire(), sort_keys=True, separators=(",", ":"))


def build_plan_configmap(quota: ExchangeConnectionQuota, pod_plan: PodPlan) -> dict[str, Any]:
    """The plan ConfigMap `<quota>-plan-<ordinal>` holding `pod_plan` under `plan.json`.

    The credentials in the published plan are rebuilt from the quota spec so that mount paths
    match the StatefulSet's volumes; nothing secret is in it.
    """
    _, quota_name, _ = quota_ids(quota)
    published = pod_plan.model_copy(update={"credentials": plan_credentials(quota.spec, pod_plan)})
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(
            quota,
            names.plan_configmap_name(quota_name, pod_plan.ordinal),
            labels={
                names.LABEL_COMPONENT: "plan",
                names.LABEL_ORDINAL: str(pod_plan.ordinal),
            },
            annotations={names.ANNOTATION_PLAN_GENERATION: str(pod_plan.generation)},
        ),
        "data": {names.PLAN_KEY: plan_json(published)},
    }
    return with_hash(body)


def build_lease(
    quota: ExchangeConnectionQuota, ordinal: int, certificate: FreshCertificate | None = None
) -> dict[str, Any]:
    """The ordinal's Lease, created empty by the operator (gateways may only get/update it).

    RBAC cannot restrict `create` by resource name, so the operator creates every Lease a
    gateway may need and the gateway's Role grants get/update on exactly those names. The
    operator never overwrites a Lease: the gateway owns its spec and its annotations. A Lease
    created for an ordinal whose earlier pods left nothing that still counts carries the
    operator's `certificate` (`connquota.io/fresh`): its first holder starts at once.
    """
    _, quota_name, _ = quota_ids(quota)
    meta = object_meta(
        quota,
        names.lease_name(quota_name, ordinal),
        labels={names.LABEL_COMPONENT: "lease", names.LABEL_ORDINAL: str(ordinal)},
    )
    if certificate is not None:
        meta.setdefault("annotations", {})[FRESH_ANNOTATION] = certificate.model_dump_json()
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": {}}


def build_ledger_configmap(quota: ExchangeConnectionQuota, ledger_text: str) -> dict[str, Any]:
    """The ConfigMap `<quota>-ledger` holding the quota's transition ledger (`ledger.json`).

    Only the operator reads it: what every pod of the quota may still enforce, so transitions
    stay safe across operator restarts (see `connquota.operator.ledgers`).
    """
    _, quota_name, _ = quota_ids(quota)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(
            quota,
            names.ledger_configmap_name(quota_name),
            labels={names.LABEL_COMPONENT: "ledger"},
        ),
        "data": {names.LEDGER_KEY: ledger_text},
    }
    return with_hash(body)
