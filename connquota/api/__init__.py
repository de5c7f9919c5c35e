"""The contract every connquota component imports: custom resources, plans, reports, limits."""

from connquota.api.common import Condition, ConditionStatus, ConditionType, ObjectMeta
from connquota.api.limits import (
    Confidence,
    Dialect,
    ExchangeProfile,
    Heartbeat,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
    LimitShape,
)
from connquota.api.plan import (
    FORMAT_VERSION,
    ConnectionPlan,
    PlanCredential,
    PodPlan,
    QuotaPlan,
    QuotaRef,
    RecoveryBound,
    Route,
    Slice,
    SpareRoom,
    UnservedStream,
)
from connquota.api.pool import (
    EgressAddress,
    EgressMode,
    ExchangeEgressPool,
    ExchangeEgressPoolSpec,
    ExchangeEgressPoolStatus,
)
from connquota.api.quota import (
    ExchangeConnectionQuota,
    ExchangeConnectionQuotaSpec,
    ExchangeConnectionQuotaStatus,
)
from connquota.api.report import AttemptWindow, GatewayReport, Quarantine

GROUP = "connquota.io"
VERSION = "v1alpha1"

__all__ = [
    "FORMAT_VERSION",
    "GROUP",
    "VERSION",
    "AttemptWindow",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "Confidence",
    "ConnectionPlan",
    "Dialect",
    "EgressAddress",
    "EgressMode",
    "ExchangeConnectionQuota",
    "ExchangeConnectionQuotaSpec",
    "ExchangeConnectionQuotaStatus",
    "ExchangeEgressPool",
    "ExchangeEgressPoolSpec",
    "ExchangeEgressPoolStatus",
    "ExchangeProfile",
    "GatewayReport",
    "Heartbeat",
    "HeartbeatDirection",
    "Limit",
    "LimitName",
    "LimitScope",
    "LimitShape",
    "ObjectMeta",
    "PlanCredential",
    "PodPlan",
    "Quarantine",
    "QuotaPlan",
    "QuotaRef",
    "RecoveryBound",
    "Route",
    "Slice",
    "SpareRoom",
    "UnservedStream",
]
