"""Pure `build_*` functions: from a quota (and its plan) to Kubernetes object dicts.

No I/O here: handlers decide *when* to apply what these build. Every object carries a
controller owner reference to its quota and a content hash annotation (`connquota.io/applied-hash`)
so an unchanged object is never written again.
"""

from connquota.operator.builders.common import content_hash, owner_reference, with_hash
from connquota.operator.builders.peer_secret import build_peer_secret
from connquota.operator.builders.plans import (
    build_lease,
    build_ledger_configmap,
    build_plan_configmap,
    plan_credentials,
    plan_json,
)
from connquota.operator.builders.rbac import build_role, build_role_binding, build_service_account
from connquota.operator.builders.services import build_client_service, build_headless_service
from connquota.operator.builders.workload import (
    build_pod_disruption_budget,
    build_statefulset,
    pod_egress_label,
    template_hash,
)

__all__ = [
    "build_client_service",
    "build_headless_service",
    "build_lease",
    "build_ledger_configmap",
    "build_peer_secret",
    "build_plan_configmap",
    "build_pod_disruption_budget",
    "build_role",
    "build_role_binding",
    "build_service_account",
    "build_statefulset",
    "content_hash",
    "owner_reference",
    "plan_credentials",
    "plan_json",
    "pod_egress_label",
    "template_hash",
    "with_hash",
]
