"""Names, labels and annotations of every object the operator owns, in one place.

A quota `q` in namespace `ns` owns, in `ns`:

- StatefulSet `q-gw` (its pods are `q-gw-0`, `q-gw-1`, ...), ServiceAccount, Role,
  RoleBinding, PodDisruptionBudget and client Service all named `q-gw`;
- headless Service `q-gw-peers` (publishNotReadyAddresses: peers find each other by Pod IP);
- one plan ConfigMap per ordinal, `q-plan-<ordinal>`, key `plan.json`;
- one Lease per ordinal, `q-gw-<ordinal>` (the pod's name): the gateway's fence and report.
"""

from __future__ import annotations

from connquota.api.labels import GATEWAY_APP as GATEWAY_APP
from connquota.api.labels import LABEL_NAME as LABEL_NAME
from connquota.api.labels import LABEL_QUOTA as LABEL_QUOTA
from connquota.api.labels import gateway_pod_labels

GROUP = "connquota.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
QUOTA_KIND = "ExchangeConnectionQuota"
QUOTA_PLURAL = "exchangeconnectionquotas"
POOL_KIND = "ExchangeEgressPool"
POOL_PLURAL = "exchangeegresspools"

FIELD_MANAGER = "connquota-operator"
"""The one field manager of every operator write (server-side apply and patches)."""
USER_AGENT = "connquota-operator"
"""The User-Agent of the operator's API client (the API server's metrics count by it)."""

FINALIZER = "connquota.io/budget"
"""Held on a quota until its gateways are gone and one rate window has passed."""

PLAN_KEY = "plan.json"
"""The key of the PodPlan JSON in a plan ConfigMap."""
LEDGER_KEY = "ledger.json"
"""The key of the QuotaLedger JSON in the ledger ConfigMap."""

# Labels
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ORDINAL = "connquota.io/ordinal"
LABEL_EGRESS = "connquota.io/egress"
"""podLabel egress: the value the CNI egress policy maps to a public address."""
LABEL_POOL = "connquota.io/pool"
LABEL_HOLDS_CONNECTIONS = "connquota.io/holds-connections"
"""On a gateway pod (set by the operator, never on the template): "true" while its published
plan gives it connections (or until it acknowledged letting them go). The quota's
PodDisruptionBudget selects only these pods, with `maxUnavailable: 0`, so a node drain waits
until the operator has moved a pod's connections (docs/operator.md, "Evictions and node
drains")."""
MANAGED_BY = "connquota-operator"

# Annotations
ANNOTATION_HASH = "connquota.io/applied-hash"
"""Hash of the body the operator last wrote: equal hash, no write."""
ANNOTATION_PLAN_GENERATION = "connquota.io/plan-generation"
ANNOTATION_TEMPLATE_HASH = "connquota.io/template-hash"
"""On the gateway pod template (so on every pod): a digest of the template without its
placement-only parts; a pod whose value differs from the desired one is rolled out."""
ANNOTATION_STATUS_HASH = "connquota.io/status-hash"
ANNOTATION_PREFIX = GROUP
"""kopf's progress and diff-base annotations live under this prefix."""

MAX_QUOTA_NAME_LENGTH = 40
"""Longest quota name the operator accepts: `<name>-gw-<ordinal>` must stay a DNS label
(63 characters) with a 4-digit ordinal, and the StatefulSet adds its own 11-character
controller-revision-hash label value suffix."""


def statefulset_name(quota: str) -> str:
    """The gateway StatefulSet of `quota` (its pods are `<this>-<ordinal>`)."""
    return f"{quota}-gw"


def pod_name(quota: str, ordinal: int) -> str:
    """The gateway pod of `quota` at `ordinal`."""
    return f"{statefulset_name(quota)}-{ordinal}"


def lease_name(quota: str, ordinal: int) -> str:
    """The Lease of one ordinal: fence and report (named like the pod)."""
    return pod_name(quota, ordinal)


def plan_configmap_name(quota: str, ordinal: int) -> str:
    """The plan ConfigMap of one ordinal."""
    return f"{quota}-plan-{ordinal}"


def ledger_configmap_name(quota: str) -> str:
    """The ConfigMap holding the quota's transition ledger (operator-only)."""
    return f"{quota}-ledger"


def service_account_name(quota: str) -> str:
    """ServiceAccount, Role and RoleBinding of the gateways of `quota`."""
    return statefulset_name(quota)


def headless_service_name(quota: str) -> str:
    """The headless Service peers use (publishNotReadyAddresses)."""
    return f"{statefulset_name(quota)}-peers"


def peer_secret_name(quota: str) -> str:
    """The Secret (key `token`) the gateways of `quota` authenticate to each other with."""
    return f"{statefulset_name(quota)}-peer"


def client_service_name(quota: str) -> str:
    """The Service consumers connect to."""
    return statefulset_name(quota)


def selector_labels(quota: str) -> dict[str, str]:
    """Labels that select exactly the gateway pods of `quota` in its namespace."""
    return gateway_pod_labels(quota)


def common_labels(quota: str) -> dict[str, str]:
    """Labels on every object owned for `quota`."""
    return {
        LABEL_NAME: GATEWAY_APP,
        LABEL_INSTANCE: quota,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_QUOTA: quota,
    }
