"""Shapes shared by both custom resources: names, fractions, object metadata, conditions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field

from connquota.api.base import ApiModel

DnsLabel = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]
"""An RFC 1123 label: lower-case letters, digits and '-', at most 63 characters."""

NamespaceName = DnsLabel

DomainName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
"""A limit domain: a DNS-like name such as stream.binance.com."""

Fraction = Annotated[float, Field(gt=0, le=1)]
"""A fraction in (0, 1]."""

UnitFraction = Annotated[float, Field(ge=0, le=1)]
"""A fraction in [0, 1]."""


class ObjectMeta(ApiModel):
    """The part of Kubernetes object metadata connquota reads (everything else is kept)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class ConditionStatus(StrEnum):
    """A condition's status, as Kubernetes spells it."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """The condition types connquota sets on its resources."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    DEGRADED = "Degraded"
    CAPACITY_EXCEEDED = "CapacityExceeded"
    RATE_LIMITED = "RateLimited"
    EGRESS_UNVERIFIED = "EgressUnverified"
    BUDGET_REDUCED = "BudgetReduced"
    CREDENTIAL_REFUSED = "CredentialRefused"
    ROLLED_OUT = "RolledOut"


class Condition(ApiModel):
    """A condition in the standard Kubernetes shape (metav1.Condition)."""

    type: Annotated[str, Field(min_length=1, max_length=316)] = Field(
        description="Condition type: Ready, Reconciling, Stalled, Degraded, CapacityExceeded, "
        "RateLimited."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ] = Field(description="CamelCase machine-readable reason for the last transition.")
    message: Annotated[str, Field(max_length=32768)] = Field(
        default="", description="Human-readable details."
    )
    lastTransitionTime: datetime = Field(
        description="When the status last changed (not when the condition was last written)."
    )
    observedGeneration: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The spec generation the condition was computed from."
    )


class LocalObjectRef(ApiModel):
    """A reference to an object by name (in the same namespace, or cluster-scoped)."""

    name: Annotated[str, Field(min_length=1, max_length=253)] = Field(description="Object name.")
