"""`ExchangeConnectionQuota`: an application team's streams on one exchange, within a pool."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from connquota.api.base import ApiModel
from connquota.api.common import Condition, DnsLabel, Fraction, LocalObjectRef, ObjectMeta
from connquota.api.limits import (
    AlternateEndpoint,
    Dialect,
    Heartbeat,
    Limit,
    LimitName,
    LimitScope,
)
from connquota.api.rules import Rule, atomic_unique, list_map, list_set

# Supported maximums. Kubernetes stores objects up to about 1.5 MiB; explicit stream names are
# capped so a quota at every maximum still fits (see tests/unit/test_api_limits.py). Larger sets
# come from `streamSets` (symbols x channels) and `streamsFrom` (ConfigMaps, up to 1 MiB each).
MAX_EXPLICIT_STREAMS = 5_000
MAX_STREAM_NAME_LENGTH = 128
MAX_STREAM_SETS = 64
MAX_SYMBOLS_PER_SET = 2_000
MAX_CHANNELS_PER_SET = 32
MAX_SYMBOLS_IN_SETS = 1_000
"""Symbols across all streamSets together (so a quota at every maximum fits in etcd)."""
MAX_CHANNELS_IN_SETS = 256
"""Channels across all streamSets together."""
MAX_ANNOTATION_VALUE_LENGTH = 1_024
MAX_STREAMS_FROM = 16
MAX_STREAMS_PER_QUOTA = 100_000
MAX_CREDENTIALS = 64
MAX_LIMIT_OVERRIDES = 32
MAX_SHARE_REQUESTS = 256
MAX_REPLICAS = 1_000
MAX_PRIORITY = 1_000_000

BUILTIN_PROFILES = (
    "binance-spot",
    "binance-usdm",
    "okx",
    "bybit",
    "coinbase",
    "kraken",
    "deribit",
)
"""Profiles connquota ships (connquota/exchanges); `custom` declares its own."""

CUSTOM_PROFILE = "custom"

StreamName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_STREAM_NAME_LENGTH, pattern=r"^[!-~]+$"),
]
"""A stream name in the exchange's own spelling (printable ASCII, no spaces)."""

Priority = Annotated[int, Field(ge=0, le=MAX_PRIORITY)]


REQUIRED_LIMITS: tuple[tuple[LimitName, LimitScope], ...] = (
    (LimitName.CONNECTION_ATTEMPTS, LimitScope.IP),
    (LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP),
    (LimitName.STREAMS_PER_CONNECTION, LimitScope.CONNECTION),
    (LimitName.MESSAGES_PER_CONNECTION, LimitScope.CONNECTION),
    (LimitName.MAX_CONNECTION_AGE, LimitScope.CONNECTION),
)
"""Limits every profile (built-in or custom) declares: unknown is never unlimited."""


def _has_limits(limits: list[Limit], required: tuple[tuple[LimitName, LimitScope], ...]) -> bool:
    present = {limit.key() for limit in limits}
    return all(key in present for key in required)


class CustomProfile(ApiModel):
    """An exchange connquota has no built-in profile for: every limit must be given."""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel=" && ".join(
                f"self.limits.exists(l, l.name == '{name}' && l.scope == '{scope}')"
                for name, scope in REQUIRED_LIMITS
            ),
            message="limits must declare at least "
            + ", ".join(f"{name} ({scope})" for name, scope in REQUIRED_LIMITS)
            + "; give unknown limits a conservative value",
            check=lambda custom: _has_limits(custom.limits, REQUIRED_LIMITS),
            field_path=".limits",
            reason="FieldValueRequired",
        ),
    )

    endpoint: Annotated[str, Field(min_length=6, max_length=2048, pattern=r"^wss?://")] = Field(
        description="WebSocket base URL (ws:// or wss://)."
    )
    dialect: Dialect = Field(description="Wire protocol the endpoint speaks.")
    domain: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ] = Field(description="Limit domain: quotas with the same domain on a pool share budgets.")
    limits: Annotated[list[Limit], Field(min_length=1, max_length=MAX_LIMIT_OVERRIDES)] = Field(
        description="Every limit of the exchange (name and scope unique). Unknown limits need a "
        "conservative value.",
        json_schema_extra=list_map("name", "scope"),
    )
    heartbeat: Heartbeat | None = Field(
        default=None, description="Keep-alive rules; default: the dialect's."
    )
    alternateEndpoints: Annotated[list[AlternateEndpoint], Field(max_length=8)] | None = Field(
        default=None,
        description="Other endpoints of the same data, as a built-in profile lists them: "
        "shared or unknown ones are failed over to within this domain's budgets; a separate "
        "one (published as its own limit domain) gives a quota whose endpoint is that one its "
        "own budgets (its `domain`).",
    )
    deadConnectionTimeoutSeconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="Seconds the exchange keeps counting a connection that ended uncleanly.",
    )


class ShareRequest(ApiModel):
    """A request for a fraction of the pool's budgets on one address (or all: `*`)."""

    address: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$")
    ] = Field(description="Pool address name, or * for every address of the pool.")
    fraction: Fraction = Field(
        description="Fraction (0..1] of each budget on the address this quota asks for. The "
        "pool's namespace caps and other quotas' requests may reduce it; status says why."
    )


class SecretKeyRef(ApiModel):
    """Where a credential's parts live in a Secret of the quota's namespace."""

    name: DnsLabel = Field(description="Secret name (same namespace as the quota).")
    apiKeyKey: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="apiKey", description="Key of the API key in the Secret."
    )
    apiSecretKey: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="apiSecret", description="Key of the API secret (signing key) in the Secret."
    )
    passphraseKey: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None, description="Key of the passphrase, for exchanges that need one (OKX)."
    )


class Credential(ApiModel):
    """An API key the gateways may use, and the account the exchange counts it by."""

    name: DnsLabel = Field(description="Name streams and plans use for this credential.")
    secretRef: SecretKeyRef = Field(
        description="The Secret holding the key; mounted as files into this quota's gateway "
        "pods only, never into environment variables, plans, status or logs."
    )
    accountId: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")] = Field(
        description="The account or sub-account the exchange counts per-account limits by "
        "(credits, private channels). Two credentials with the same accountId share one budget."
    )
    keyId: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")] | None = Field(
        default=None,
        description="The API key's own id (for example its client id), for limits an "
        "exchange counts per key rather than per account (Deribit: 16 sessions per key, "
        "credits per sub-account). Absent: the accountId, which is stricter (every key of "
        "the account shares one per-key budget). Two credentials with the same keyId share "
        "one per-key budget.",
    )
    deribitAuth: Literal["clientCredentials", "clientSignature"] | None = Field(
        default=None,
        description="Deribit's public/auth grant: clientCredentials sends the secret, "
        "clientSignature an HMAC-SHA256 signature of a timestamp and nonce made with it (the "
        "secret never leaves the pod). Absent: clientCredentials. Other exchanges ignore it.",
    )

    def identity(self, scope: LimitScope) -> str:
        """What the exchange counts this credential by in `scope` (account or apiKey)."""
        if scope == LimitScope.API_KEY:
            return self.keyId or self.accountId
        return self.accountId


class StreamSpec(ApiModel):
    """One stream by name."""

    name: StreamName = Field(description="Stream name in the exchange's spelling.")
    priority: Priority = Field(
        default=0, description="Higher is served first when capacity runs out."
    )
    credential: DnsLabel | None = Field(
        default=None, description="Private stream: the credential it must be opened with."
    )


class StreamSet(ApiModel):
    """Streams as the cross product of symbols and channels (e.g. btcusdt x depth@100ms)."""

    symbols: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[!-~]+$")]],
        Field(min_length=1, max_length=MAX_SYMBOLS_PER_SET),
    ] = Field(
        description="Symbols, in the exchange's spelling (unique).", json_schema_extra=list_set()
    )
    channels: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")]],
        Field(min_length=1, max_length=MAX_CHANNELS_PER_SET),
    ] = Field(
        description="Channels (unique); the dialect composes symbol and channel into a stream name.",
        json_schema_extra=list_set(),
    )
    priority: Priority = Field(default=0, description="Priority of every stream of the set.")
    credential: DnsLabel | None = Field(
        default=None, description="Private streams: the credential they must be opened with."
    )


class StreamsFromRef(ApiModel):
    """Stream names listed in a ConfigMap key, one per line (for sets too large to inline)."""

    configMapRef: LocalObjectRef = Field(description="ConfigMap in the quota's namespace.")
    key: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="streams", description="Key whose value lists stream names, one per line."
    )
    priority: Priority = Field(default=0, description="Priority of every stream listed.")
    credential: DnsLabel | None = Field(
        default=None, description="Private streams: the credential they must be opened with."
    )
    optional: bool = Field(
        default=False,
        description="When true, a missing ConfigMap adds no streams instead of stalling the quota.",
    )


class ResourceList(ApiModel):
    """CPU and memory quantities (Kubernetes quantity strings)."""

    cpu: Annotated[str, Field(max_length=32, pattern=r"^[0-9.]+m?$")] | None = None
    memory: Annotated[str, Field(max_length=32, pattern=r"^[0-9.]+([KMGT]i?|[kMGTE])?$")] | None = (
        None
    )


class Resources(ApiModel):
    """Gateway container resources."""

    requests: ResourceList | None = Field(default=None, description="Requested resources.")
    limits: ResourceList | None = Field(default=None, description="Resource limits.")


class PodOverrides(ApiModel):
    """Extra pod settings merged into every gateway pod."""

    labels: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] = (
        Field(default_factory=dict, description="Extra pod labels.")
    )
    annotations: Annotated[
        dict[str, Annotated[str, Field(max_length=MAX_ANNOTATION_VALUE_LENGTH)]],
        Field(max_length=64),
    ] = Field(default_factory=dict, description="Extra pod annotations.")
    nodeSelector: Annotated[
        dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=32)
    ] = Field(
        default_factory=dict,
        description="Node selector (bind-mode pods are also pinned to their address's node).",
    )
    tolerations: Annotated[list[dict[str, Any]], Field(max_length=32)] = Field(
        default_factory=list, description="Pod tolerations, in the Kubernetes shape."
    )
    priorityClassName: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="Pod priority class."
    )


class GatewaySpec(ApiModel):
    """How the gateway pods of this quota run."""

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            check=lambda gateway: gateway.minReplicas <= gateway.maxReplicas,
            field_path=".minReplicas",
        ),
    )

    image: Annotated[str, Field(min_length=1, max_length=1024)] = Field(
        default="connquota/gateway:0.1.0", description="Gateway container image."
    )
    imagePullPolicy: Annotated[
        str, Field(max_length=12, pattern=r"^(Always|IfNotPresent|Never)$")
    ] = Field(default="IfNotPresent", description="Always, IfNotPresent or Never.")
    resources: Resources | None = Field(default=None, description="Container resources.")
    connectionsPerPod: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=50, description="Upstream connections one gateway pod holds at most."
    )
    minReplicas: Annotated[int, Field(ge=0, le=MAX_REPLICAS)] = Field(
        default=1, description="Fewest gateway pods, even when fewer would do."
    )
    maxReplicas: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] = Field(
        default=10, description="Most gateway pods; streams beyond their capacity are unserved."
    )
    consumerAuthSecretRef: LocalObjectRef | None = Field(
        default=None,
        description="Secret with key `token`: consumers must send it as a bearer token.",
    )
    lastValueCache: bool = Field(
        default=False,
        description="Keep each stream's newest message in the gateways, so a consumer that "
        "subscribes with `lastValue: true` gets it at once (tickers, mark prices). Costs one "
        "message of memory per stream.",
    )
    consumerTLSSecretRef: LocalObjectRef | None = Field(
        default=None,
        description="A kubernetes.io/tls Secret (keys `tls.crt`, `tls.key`, as cert-manager "
        "writes them): the gateways also serve their consumer endpoints over TLS (wss://, "
        "https://) on port 8443 (`wss` on the client Service); renewals are picked up without "
        "a restart.",
    )
    consumerQueueFrames: Annotated[int, Field(ge=100, le=1_000_000)] = Field(
        default=10_000,
        description="Frames each consumer connection may have queued in a gateway before the "
        "slow-consumer policy applies.",
    )
    slowConsumer: Literal["close", "drop"] = Field(
        default="close",
        description="A consumer whose queue is full: `close` (code 1008, `too slow`) or `drop` "
        "(it loses its oldest frames). Either way it never delays other consumers.",
    )
    consumerSendBufferBytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] | None = Field(
        default=None,
        description="The kernel send buffer of every consumer connection (SO_SNDBUF). Unset: "
        "the kernel's autotuning, which lets a consumer that stopped reading hold megabytes "
        "before its queue (and the slow-consumer policy) sees it; a small value bounds that "
        "memory and finds stalled consumers within seconds.",
    )
    podOverrides: PodOverrides | None = Field(default=None, description="Extra pod settings.")
    maxUnavailable: Annotated[int, Field(ge=1, le=MAX_REPLICAS)] = Field(
        default=1,
        description="Most gateway pods down at once for a rollout of a new pod template (the "
        "operator replaces outdated pods, highest ordinal first, only while at most this many "
        "pods are unavailable) and for evictions (the PodDisruptionBudget's maxUnavailable).",
    )


class ExchangeConnectionQuotaSpec(ApiModel):
    """The desired state of a quota."""

    exchange: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ] = Field(
        description="Built-in profile (binance-spot, binance-usdm, okx, bybit, coinbase, kraken, "
        "deribit) or `custom` (then `custom` gives endpoint, dialect and limits)."
    )
    endpoint: Annotated[str, Field(min_length=6, max_length=2048, pattern=r"^wss?://")] | None = (
        Field(
            default=None,
            description="Override of the profile's endpoint (tests, the demo, "
            "a regional host). Limits still come from the profile.",
        )
    )
    custom: CustomProfile | None = Field(
        default=None, description="The profile of an exchange with no built-in profile."
    )
    limits: Annotated[list[Limit], Field(max_length=MAX_LIMIT_OVERRIDES)] = Field(
        default_factory=list,
        description="Overrides of the profile's limits (same name and scope replaces; name and "
        "scope unique).",
        json_schema_extra=list_map("name", "scope"),
    )
    headroom: Fraction = Field(
        default=0.8, description="Fraction (0, 1] of every limit the fleet may use."
    )
    egressPoolRef: LocalObjectRef = Field(description="The ExchangeEgressPool this quota uses.")
    shares: Annotated[list[ShareRequest], Field(max_length=MAX_SHARE_REQUESTS)] = Field(
        default_factory=list,
        description="Requested fractions of the pool's budgets (addresses unique); unset "
        "addresses get an even split.",
        json_schema_extra=list_map("address"),
    )
    credentials: Annotated[list[Credential], Field(max_length=MAX_CREDENTIALS)] = Field(
        default_factory=list,
        description="API keys (names unique).",
        json_schema_extra=list_map("name"),
    )
    streams: Annotated[list[StreamSpec], Field(max_length=MAX_EXPLICIT_STREAMS)] = Field(
        default_factory=list,
        description=f"Streams by name (unique, at most {MAX_EXPLICIT_STREAMS}).",
        json_schema_extra=atomic_unique("name"),
    )
    streamSets: Annotated[list[StreamSet], Field(max_length=MAX_STREAM_SETS)] = Field(
        default_factory=list, description="Streams as symbols x channels."
    )
    streamsFrom: Annotated[list[StreamsFromRef], Field(max_length=MAX_STREAMS_FROM)] = Field(
        default_factory=list, description="Streams listed in ConfigMaps."
    )
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="Gateway pods.")
    paused: bool = Field(
        default=False, description="Stop changing the fleet; keep what runs running."
    )

    RULES: ClassVar[tuple[Rule, ...]]  # set below: they use helpers defined after the class

    def credential(self, name: str) -> Credential | None:
        """The credential called `name`, or None."""
        return next((c for c in self.credentials if c.name == name), None)


def _credential_names(spec: ExchangeConnectionQuotaSpec) -> set[str]:
    return {c.name for c in spec.credentials}


def _credentials_declared(spec: ExchangeConnectionQuotaSpec, items: list[Any]) -> bool:
    names = _credential_names(spec)
    return all(item.credential is None or item.credential in names for item in items)


def declared_stream_count(spec: ExchangeConnectionQuotaSpec) -> int:
    """Streams the spec names itself: explicit streams plus symbols x channels of every set."""
    return len(spec.streams) + sum(len(s.symbols) * len(s.channels) for s in spec.streamSets)


def _credential_rule(field: str, what: str) -> Rule:
    # sets.contains keeps the API server's cost estimate within budget at 5,000 streams x 64
    # credentials, where streams.all(s, credentials.exists(...)) does not.
    return Rule(
        cel=f"!has(self.{field}) || sets.contains(has(self.credentials) ? "
        f"self.credentials.map(c, c.name) : [], "
        f"self.{field}.filter(s, has(s.credential)).map(s, s.credential))",
        message=f"{field}: every credential {what} names must be declared in credentials",
        check=lambda spec: _credentials_declared(spec, getattr(spec, field)),
        field_path=f".{field}",
    )


ExchangeConnectionQuotaSpec.RULES = (
    Rule(
        cel="self.exchange in " + str([*BUILTIN_PROFILES, CUSTOM_PROFILE]),
        message="exchange must be a built-in profile ("
        + ", ".join(BUILTIN_PROFILES)
        + f") or {CUSTOM_PROFILE}",
        check=lambda spec: spec.exchange in (*BUILTIN_PROFILES, CUSTOM_PROFILE),
        field_path=".exchange",
    ),
    Rule(
        cel=f"(self.exchange == '{CUSTOM_PROFILE}') == has(self.custom)",
        message=f"custom must be set when exchange is '{CUSTOM_PROFILE}', and only then",
        check=lambda spec: (spec.exchange == CUSTOM_PROFILE) == (spec.custom is not None),
        field_path=".custom",
    ),
    _credential_rule("streams", "a stream"),
    _credential_rule("streamSets", "a streamSet"),
    _credential_rule("streamsFrom", "a streamsFrom entry"),
    Rule(
        cel="!has(self.streamSets) || "
        f"self.streamSets.map(s, s.symbols.size()).sum() <= {MAX_SYMBOLS_IN_SETS}",
        message=f"streamSets: at most {MAX_SYMBOLS_IN_SETS} symbols in all sets together; list "
        "larger sets in streamsFrom ConfigMaps",
        check=lambda spec: sum(len(s.symbols) for s in spec.streamSets) <= MAX_SYMBOLS_IN_SETS,
        field_path=".streamSets",
    ),
    Rule(
        cel="!has(self.streamSets) || "
        f"self.streamSets.map(s, s.channels.size()).sum() <= {MAX_CHANNELS_IN_SETS}",
        message=f"streamSets: at most {MAX_CHANNELS_IN_SETS} channels in all sets together",
        check=lambda spec: sum(len(s.channels) for s in spec.streamSets) <= MAX_CHANNELS_IN_SETS,
        field_path=".streamSets",
    ),
    Rule(
        cel="(has(self.streams) ? self.streams.size() : 0) + (has(self.streamSets) ? "
        "self.streamSets.map(s, s.symbols.size() * s.channels.size()).sum() : 0) "
        f"<= {MAX_STREAMS_PER_QUOTA}",
        message=f"streams + streamSets (symbols x channels) must declare at most "
        f"{MAX_STREAMS_PER_QUOTA} streams; list larger sets in streamsFrom ConfigMaps",
        check=lambda spec: declared_stream_count(spec) <= MAX_STREAMS_PER_QUOTA,
        field_path=".streamSets",
    ),
)


class StreamCounts(ApiModel):
    """How many streams are where."""

    desired: Annotated[int, Field(ge=0)] = Field(default=0, description="Declared.")
    planned: Annotated[int, Field(ge=0)] = Field(default=0, description="In the current plan.")
    live: Annotated[int, Field(ge=0)] = Field(default=0, description="Subscribed upstream.")
    unserved: Annotated[int, Field(ge=0)] = Field(default=0, description="Not in any plan.")


class ConnectionCounts(ApiModel):
    """How many upstream connections are planned and live."""

    planned: Annotated[int, Field(ge=0)] = Field(default=0, description="In the current plan.")
    live: Annotated[int, Field(ge=0)] = Field(default=0, description="Open, as gateways report.")


class LimitUse(ApiModel):
    """One limit's share and use on an address or account."""

    limit: Annotated[str, Field(max_length=64)] = Field(description="Limit name.")
    share: Annotated[float, Field(ge=0)] = Field(description="This quota's part of the budget.")
    used: Annotated[float, Field(ge=0)] = Field(default=0, description="Use gateways report.")
    budget: Annotated[float, Field(ge=0)] = Field(description="The whole budget of the pool.")
    effectiveBudget: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="What the shares are divided from while adaptive budgets lowered the "
        "budget after unexplained throttling (absent: the budget).",
    )
    slices: Annotated[float, Field(ge=0)] = Field(
        default=0,
        description="The sum of this quota's pod slices in its newest plan (headroom applied; "
        "at most the share).",
    )


class ScopeUse(ApiModel):
    """Share and use on one public address or one account."""

    key: Annotated[str, Field(max_length=128)] = Field(
        description="Address name, account id or key id."
    )
    limits: Annotated[list[LimitUse], Field(max_length=32)] = Field(default_factory=list)
    reason: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Why the share is smaller than asked, if it is."
    )
    quarantinedUntil: Annotated[str, Field(max_length=64)] | None = Field(
        default=None,
        description="RFC 3339 time until which the exchange's 429/418 keeps this address or "
        "account out of use (absent when not quarantined).",
    )
    egress: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None,
        description="Addresses: the gateways' last egress check (verified, mismatch, failed, "
        "unverified) and why.",
    )


class PodGeneration(ApiModel):
    """The plan generation a gateway pod enforces."""

    pod: Annotated[str, Field(max_length=253)] = Field(description="Pod name.")
    generation: Annotated[int, Field(ge=0)] = Field(description="Plan generation it enforces.")
    connections: Annotated[int, Field(ge=0)] = Field(default=0, description="Live connections.")
    streams: Annotated[int, Field(ge=0)] = Field(default=0, description="Live streams.")


class RecoveryBoundStatus(ApiModel):
    """How long reopening every connection on an address takes at its rate budget."""

    address: Annotated[str, Field(max_length=63)] = Field(description="Address name.")
    connections: Annotated[int, Field(ge=0)] = Field(description="Connections on the address.")
    seconds: Annotated[float, Field(ge=0)] = Field(description="Worst-case full reconnect time.")


class UnservedSample(ApiModel):
    """A stream that is not served, and the limit that ran out."""

    stream: StreamName
    reason: Annotated[str, Field(max_length=256)]


class RolloutStatus(ApiModel):
    """Progress of the rollout of the gateway pod template (docs/operator.md, "Rollouts")."""

    template: Annotated[str, Field(max_length=64)] = Field(
        default="", description="The desired pod template (its connquota.io/template-hash)."
    )
    updated: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Pods running the desired template."
    )
    total: Annotated[int, Field(ge=0)] = Field(default=0, description="Pods the fleet has.")
    currentPod: Annotated[str, Field(max_length=253)] | None = Field(
        default=None, description="The pod being replaced, or the next one."
    )
    waitingFor: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="What the rollout waits for before it replaces a pod."
    )
    recoverySeconds: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="Bound on how long the current pod's connections are down (break-before-"
        "make: its successor reopens them within its own attempt slice).",
    )


class ExchangeConnectionQuotaStatus(ApiModel):
    """What the operator observed of a quota."""

    observedGeneration: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The spec generation this status describes."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled, Degraded, CapacityExceeded, RateLimited, "
        "EgressUnverified, CredentialRefused, BudgetReduced, RolledOut (one per type).",
        json_schema_extra=list_map("type"),
    )
    replicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Gateway pods planned.")
    readyReplicas: Annotated[int, Field(ge=0)] = Field(default=0, description="Gateway pods ready.")
    streams: StreamCounts = Field(default_factory=StreamCounts, description="Stream counts.")
    connections: ConnectionCounts = Field(
        default_factory=ConnectionCounts, description="Connection counts."
    )
    planGeneration: Annotated[int, Field(ge=0)] = Field(
        default=0, description="The newest plan generation published."
    )
    pods: Annotated[list[PodGeneration], Field(max_length=MAX_REPLICAS)] = Field(
        default_factory=list, description="The plan generation every pod enforces."
    )
    addresses: Annotated[list[ScopeUse], Field(max_length=256)] = Field(
        default_factory=list, description="Per public address: share and use of every limit."
    )
    accounts: Annotated[list[ScopeUse], Field(max_length=64)] = Field(
        default_factory=list, description="Per account: share and use of every limit."
    )
    apiKeys: Annotated[list[ScopeUse], Field(max_length=64)] = Field(
        default_factory=list,
        description="Per API key (limits the exchange counts per key): share and use.",
    )
    recoveryBounds: Annotated[list[RecoveryBoundStatus], Field(max_length=256)] = Field(
        default_factory=list, description="Per address: full-reconnect time at its budget."
    )
    unserved: Annotated[list[UnservedSample], Field(max_length=100)] = Field(
        default_factory=list, description="Up to 100 unserved streams with reasons."
    )
    assumedLimits: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] = (
        Field(default_factory=list, description="Limits whose value is assumed, not published.")
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="Progress of the rollout of the gateway pod template."
    )


class ExchangeConnectionQuota(ApiModel):
    """Namespaced: an application team's streams on one exchange, served by gateway pods."""

    apiVersion: Annotated[str, Field(pattern=r"^connquota\.io/v1alpha1$")] = "connquota.io/v1alpha1"
    kind: Annotated[str, Field(pattern=r"^ExchangeConnectionQuota$")] = "ExchangeConnectionQuota"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExchangeConnectionQuotaSpec
    status: ExchangeConnectionQuotaStatus | None = None
