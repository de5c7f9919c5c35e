"""The gateway's report, carried on its per-ordinal Lease (or in its lock file standalone)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from connquota.api.base import ApiModel
from connquota.api.limits import LimitScope
from connquota.api.plan import FORMAT_VERSION, QuotaRef

REPORT_ANNOTATION = "connquota.io/report"
"""The Lease annotation that holds the JSON report."""


class AttemptWindow(ApiModel):
    """Connection attempts a pod made in the current window on one key."""

    scope: LimitScope
    key: str = Field(description="Address name or account id.")
    windowSeconds: float
    count: Annotated[int, Field(ge=0)]
    lastAttemptAt: float | None = Field(
        default=None, description="Wall-clock time (epoch seconds) of the newest attempt."
    )


class Quarantine(ApiModel):
    """An address or account a pod stopped using after a 429/418."""

    scope: LimitScope
    key: str
    statusCode: int = Field(description="HTTP status (429, 418) or the exchange's error code.")
    reason: str = ""
    until: float = Field(description="Wall-clock time (epoch seconds) the quarantine ends.")


class GatewayReport(ApiModel):
    """What a gateway pod tells the operator: written only on change, at most every few seconds."""

    formatVersion: int = FORMAT_VERSION
    quota: QuotaRef
    pod: str
    ordinal: Annotated[int, Field(ge=0)]
    bootId: str = Field(
        description="The node's kernel boot id (/proc/sys/kernel/random/boot_id); it stamps the "
        "attempt log, which is trusted only under the same boot id."
    )
    planGeneration: Annotated[int, Field(ge=0)] = Field(
        description="The plan generation the pod enforces (its acknowledgement)."
    )
    ready: bool = False
    connections: Annotated[int, Field(ge=0)] = 0
    streams: Annotated[int, Field(ge=0)] = 0
    attempts: list[AttemptWindow] = Field(default_factory=list)
    quarantines: list[Quarantine] = Field(default_factory=list)
    egressChecked: dict[str, str] = Field(
        default_factory=dict, description="Address name -> address the exchange saw."
    )
    message: str = ""
