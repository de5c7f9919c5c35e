"""The gateway's report, carried on its per-ordinal Lease (or in its lock file standalone)."""

from __future__ import annotations

from enum import StrEnum
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


class ThrottleEvent(ApiModel):
    """One 429/418 the exchange answered this pod (the operator's adaptive budgets read them)."""

    scope: LimitScope
    key: str = Field(description="Address name or account id.")
    statusCode: int = Field(description="HTTP status (429, 418).")
    at: float = Field(description="Wall-clock time (epoch seconds) of the answer.")
    onSession: bool = Field(default=False, description="Inside a session (else on the handshake).")
    cause: str | None = Field(
        default=None, description="The limit the exchange named, when it named one."
    )
    liveOnKey: Annotated[int, Field(ge=0)] = Field(
        default=0, description="The pod's open connections on the key then."
    )
    attemptsOnKey: Annotated[int, Field(ge=0)] = Field(
        default=0, description="The pod's attempts still counted on the key then."
    )
    planGeneration: Annotated[int, Field(ge=0)] = 0


class EgressCheckState(StrEnum):
    """The outcome of a gateway's egress check of one address."""

    VERIFIED = "verified"
    """The IP-echo service saw the address's publicAddress: attempts may go out."""
    MISMATCH = "mismatch"
    """The echo service saw another address: no attempt is made through this address."""
    FAILED = "failed"
    """The echo service could not be reached or answered nonsense: no attempt; retried later."""
    UNVERIFIED = "unverified"
    """The pool's method is none (or unset): attempts go out unverified; `reason` says why."""
    PENDING = "pending"
    """Not checked yet."""


class EgressCheckResult(ApiModel):
    """One address's egress check, as the gateway last ran it."""

    address: str = Field(description="Address name in the pool.")
    publicAddress: str = Field(description="The address the pool declares.")
    state: EgressCheckState
    seenAddress: str = Field(default="", description="What the IP-echo service answered.")
    reason: str = Field(default="", description="Why it failed, or why it is unverified.")
    checkedAt: float | None = Field(
        default=None, description="Wall-clock time (epoch seconds) of the last check."
    )
    proxyFault: str | None = Field(
        default=None,
        description="proxy mode: the unresolved fault of the address's proxy (unreachable, "
        "auth-refused, credentials-unreadable, upstream-refused, upstream-timeout, protocol, "
        "tunnel-closed); absent while the proxy works (and in bind and podLabel mode).",
    )
    proxyFaultReason: str | None = Field(
        default=None, description="proxy mode: what the proxy fault was (never a credential)."
    )


class GatewayReport(ApiModel):
    """What a gateway pod tells the operator: written only on change, at most every few seconds."""

    formatVersion: int = FORMAT_VERSION
    planFormats: list[int] = Field(
        default_factory=lambda: [1],
        description="The plan formatVersions this gateway reads: the operator publishes no other "
        "until the pod is replaced (reports without the field: format 1 only).",
    )
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
    egressChecks: list[EgressCheckResult] = Field(
        default_factory=list, description="Per address the pod uses: its last egress check."
    )
    liveConnections: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Open upstream connections per key: 'ip/<address name>' and "
        "'account/<account id>'.",
    )
    authRefused: dict[str, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict,
        description="Credentials the exchange refuses now (credential name -> the exchange's "
        "error code and message, never a key): their connections wait for the Secret to change.",
    )
    throttles: Annotated[list[ThrottleEvent], Field(max_length=16)] | None = Field(
        default=None,
        description="The pod's newest 429/418 answers (absent when none: an operator older "
        "than this field reads reports without it; upgrade the operator first).",
    )
    message: str = ""
