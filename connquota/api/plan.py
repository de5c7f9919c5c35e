"""The plan: what each gateway pod holds, and its slice of every limit.

The operator writes one `PodPlan` per gateway pod into a ConfigMap (no secrets); the gateway
enforces the newest one it understands. `QuotaPlan` is the planner's whole answer for a quota.
Generations only grow. Field names are the wire names.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from connquota.api.base import ApiModel
from connquota.api.limits import (
    CREDENTIAL_SCOPES,
    ExchangeProfile,
    LimitName,
    LimitScope,
    LimitShape,
)
from connquota.api.pool import EgressAddress
from connquota.api.quota import Credential
from connquota.api.timing import WINDOW_MARGIN_S

FORMAT_VERSION = 1

CREDENTIALS_MOUNT_DIR = "/var/run/connquota/credentials"
"""Where every credential's Secret is mounted in a gateway container, one directory each."""

PROXY_CREDENTIALS_MOUNT_DIR = "/var/run/connquota/proxy"
"""Where the `proxySecretRef` Secret of each proxy-mode address is mounted in a gateway
container: one directory per address name, its keys as files."""


Identities = tuple[tuple[LimitScope, str], ...]
"""What the exchange counts one credential by: ((account, accountId), (apiKey, keyId))."""


def credential_mount_path(credential: str) -> str:
    """Where the Secret of `credential` appears as files in a gateway container."""
    return f"{CREDENTIALS_MOUNT_DIR}/{credential}"


"""The plan format this code writes and understands. A gateway keeps its last good plan when it
gets any other version."""

DEFAULT_WINDOW_MARGIN_S = WINDOW_MARGIN_S
"""Seconds a gateway adds to every rate window (clock skew, in-flight SYNs), unless a plan says
otherwise."""

CONNECTION_SCOPE_KEY = "*"
"""The `key` of a connection-scoped slice: it applies to each connection of the pod."""


class QuotaRef(ApiModel):
    """Which quota a plan or report belongs to."""

    namespace: Annotated[str, Field(min_length=1, max_length=63)]
    name: Annotated[str, Field(min_length=1, max_length=253)]

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class PlanCredential(ApiModel):
    """A credential a pod uses: where its files are mounted, never the secret itself."""

    name: str = Field(description="Credential name from the quota spec.")
    accountId: str = Field(description="The account the exchange counts it by.")
    keyId: str | None = Field(
        default=None,
        description="The key id the exchange counts per-key limits by (absent: the accountId).",
    )

    @classmethod
    def of(cls, c: Credential) -> PlanCredential:
        """What a pod is told of credential `c`: its ids and where its files are, no secret."""
        ref = c.secretRef
        return cls.model_construct(
            name=c.name,
            accountId=c.accountId,
            keyId=c.keyId,
            secretName=ref.name,
            mountPath=credential_mount_path(c.name),
            apiKeyKey=ref.apiKeyKey,
            apiSecretKey=ref.apiSecretKey,
            passphraseKey=ref.passphraseKey,
            deribitAuth=c.deribitAuth,
        )

    def identity(self, scope: LimitScope) -> str:
        """What the exchange counts this credential by in `scope` (account or apiKey)."""
        if scope == LimitScope.API_KEY:
            return self.keyId or self.accountId
        return self.accountId

    secretName: str = Field(description="The Secret mounted for it.")
    mountPath: str = Field(description="Directory where the Secret's keys appear as files.")
    apiKeyKey: str = "apiKey"
    apiSecretKey: str = "apiSecret"
    passphraseKey: str | None = None
    deribitAuth: str | None = Field(
        default=None, description="Deribit's public/auth grant (absent: clientCredentials)."
    )


def identities_of(credential: PlanCredential | None) -> Identities:
    """What the exchange counts `credential` by (empty for public connections)."""
    if credential is None:
        return ()
    return tuple((scope, credential.identity(scope)) for scope in CREDENTIAL_SCOPES)


class ConnectionPlan(ApiModel):
    """One upstream connection: where it leaves from, whose key it uses, what it carries."""

    id: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        description="Stable id; the same id across generations means 'keep this connection'."
    )
    address: str = Field(description="Pool address name the connection leaves from.")
    credential: str | None = Field(default=None, description="Credential name, if private.")
    streams: list[str] = Field(default_factory=list, description="Streams it subscribes.")


class Slice(ApiModel):
    """A pod's part of one limit on one key. The sum over all pods is within the budget."""

    limit: LimitName
    scope: LimitScope
    key: str = Field(
        description="Public address name (ip), account id (account), or '*' (each connection)."
    )
    value: Annotated[int, Field(ge=0)] = Field(
        description="Events per window (rate shapes), things at once (concurrent), or size."
    )
    shape: LimitShape
    windowSeconds: float | None = Field(
        default=None, description="The exchange's window; the gateway adds its margin."
    )
    burst: int | None = None
    reserve: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Part of `value` kept for heartbeats (message slices)."
    )


class SpareRoom(ApiModel):
    """Room a pod may use for make-before-break moves and rotations on an address."""

    address: str
    connections: Annotated[int, Field(ge=0)] = 0
    attempts: Annotated[int, Field(ge=0)] = 0


class Route(ApiModel):
    """Which pod ordinal holds a stream's upstream subscription."""

    stream: str
    ordinal: Annotated[int, Field(ge=0)]


class PodPlan(ApiModel):
    """Everything one gateway pod needs: published as its plan ConfigMap."""

    formatVersion: int = FORMAT_VERSION
    generation: Annotated[int, Field(ge=0)] = Field(description="Only ever grows.")
    quota: QuotaRef
    ordinal: Annotated[int, Field(ge=0)]
    profile: ExchangeProfile = Field(
        description="The effective profile: overrides and endpoint override applied."
    )
    windowMarginSeconds: Annotated[float, Field(ge=0)] = Field(
        default=DEFAULT_WINDOW_MARGIN_S,
        description="Added to every rate window (clock skew, in-flight SYNs).",
    )
    addresses: list[EgressAddress] = Field(
        default_factory=list, description="The pool addresses this pod may use, with egress mode."
    )
    credentials: list[PlanCredential] = Field(default_factory=list)
    connections: list[ConnectionPlan] = Field(default_factory=list)
    slices: list[Slice] = Field(default_factory=list)
    spare: list[SpareRoom] = Field(default_factory=list)
    routes: list[Route] = Field(
        default_factory=list, description="Streams held by other pods, for relaying."
    )

    def slice(self, limit: LimitName, scope: LimitScope, key: str) -> Slice | None:
        """This pod's slice of `limit` on `key`, or None (None means: nothing allowed)."""
        for s in self.slices:
            if s.limit == limit and s.scope == scope and s.key == key:
                return s
        return None


class UnservedStream(ApiModel):
    """A declared stream no connection carries, and why."""

    stream: str
    priority: int = 0
    reason: str = Field(description="The limit or rule that ran out.")


class RecoveryBound(ApiModel):
    """Seconds to reopen every connection on an address at the pod slices' attempt rate: each
    pod reopens its own connections at its own attempt slice, so the slowest pod's time."""

    address: str
    connections: int
    seconds: float


class QuotaPlan(ApiModel):
    """The planner's whole answer for one quota at one generation."""

    formatVersion: int = FORMAT_VERSION
    generation: Annotated[int, Field(ge=0)]
    quota: QuotaRef
    replicas: Annotated[int, Field(ge=0)]
    pods: list[PodPlan] = Field(default_factory=list)
    unserved: list[UnservedStream] = Field(default_factory=list)
    recoveryBounds: list[RecoveryBound] = Field(default_factory=list)
