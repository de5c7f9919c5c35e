"""The gateways' identity: a ServiceAccount, a Role limited to their own objects, a RoleBinding.

Gateways get no right to patch Pods or to create anything: they read their own plan
ConfigMaps and get/update their own Leases (which the operator pre-creates, because RBAC
cannot restrict `create` by resource name), named one by one with `resourceNames`.
"""

from __future__ import annotations

from typing import Any

from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names
from connquota.operator.builders.common import object_meta, quota_ids, with_hash


def build_service_account(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """The ServiceAccount every gateway pod of `quota` runs as."""
    _, quota_name, _ = quota_ids(quota)
    body = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(quota, names.service_account_name(quota_name)),
        "automountServiceAccountToken": True,
    }
    return with_hash(body)


def build_role(quota: ExchangeConnectionQuota, ordinals: int) -> dict[str, Any]:
    """A Role naming exactly the plan ConfigMaps and Leases of ordinals 0..`ordinals`-1.

    `list`/`watch` with resourceNames work when the client selects one object by
    `metadata.name` field selector, which is how a gateway watches its own plan.
    Pods of the namespace are listable and watchable (peers find each other by Pod IP,
    connquota/gateway/peer_source.py); no `get`, and Pods carry no secrets.
    """
    _, quota_name, _ = quota_ids(quota)
    count = max(1, ordinals)
    configmaps = [names.plan_configmap_name(quota_name, i) for i in range(count)]
    leases = [names.lease_name(quota_name, i) for i in range(count)]
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_meta(quota, names.service_account_name(quota_name)),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": configmaps,
                "verbs": ["get", "list", "watch"],
            },
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": leases,
                "verbs": ["get", "list", "watch", "update", "patch"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        ],
    }
    return with_hash(body)


def build_role_binding(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """Binds the gateways' Role to their ServiceAccount."""
    namespace, quota_name, _ = quota_ids(quota)
    name = names.service_account_name(quota_name)
    body = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_meta(quota, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    return with_hash(body)
