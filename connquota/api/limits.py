"""Exchange limits and profiles: the vocabulary every component uses to talk about limits.

A limit is a number with a scope (what the exchange counts by), a shape (how it counts over
time) and a confidence (how sure we are of the number). Profiles are collections of limits plus
what a client needs to reach the exchange (endpoint, dialect, heartbeats, timeouts).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, model_validator

from connquota.api.base import ApiModel
from connquota.api.rules import Rule


class LimitName(StrEnum):
    """The kinds of limit connquota plans for. Each kind has one meaning in every profile."""

    CONNECTION_ATTEMPTS = "connectionAttempts"
    """New connection attempts per window, counted from the first SYN whatever follows."""
    CONCURRENT_CONNECTIONS = "concurrentConnections"
    """Connections open at the same time (including ones the exchange still thinks are open)."""
    STREAMS_PER_CONNECTION = "streamsPerConnection"
    """Streams (subscriptions, topics, channels) on one connection."""
    MESSAGES_PER_CONNECTION = "messagesPerConnection"
    """Messages the client sends on one connection per window (pings/pongs where they count)."""
    CONTROL_MESSAGES_PER_CONNECTION = "controlMessagesPerConnection"
    """Subscribe, unsubscribe and login requests on one connection per window."""
    MESSAGES_PER_ACCOUNT = "messagesPerAccount"
    """Requests per window counted per account (credit systems such as Deribit's)."""
    MESSAGES_PER_IP = "messagesPerIp"
    """Messages per window counted per source IP across all its connections."""
    ARGS_PER_SUBSCRIBE = "argsPerSubscribe"
    """Streams named in one subscribe request."""
    SUBSCRIBE_PAYLOAD_BYTES = "subscribePayloadBytes"
    """Bytes of one subscribe request's stream list."""
    ARGS_CHARACTERS_PER_CONNECTION = "argsCharactersPerConnection"
    """Characters of all stream names subscribed on one connection (Bybit: 21,000); each name
    counts its length plus 3 (quotes and separator, as in a JSON args array)."""
    MAX_CONNECTION_AGE = "maxConnectionAge"
    """Seconds after which the exchange closes a connection; rotate before it."""


class LimitScope(StrEnum):
    """What the exchange counts a limit by."""

    IP = "ip"
    """The public source address (after NAT) or IPv6 prefix the exchange sees."""
    ACCOUNT = "account"
    """The account or sub-account the exchange counts by (a credential's `accountId`)."""
    API_KEY = "apiKey"
    """One API key (a credential's `keyId`, its `accountId` when it names none): for limits
    an exchange counts per key and not per account (Deribit's 16 sessions per key)."""
    CONNECTION = "connection"
    """One WebSocket connection."""
    MESSAGE = "message"
    """One request message."""


CREDENTIAL_SCOPES = (LimitScope.ACCOUNT, LimitScope.API_KEY)
"""The scopes a credential is counted in (by its accountId, by its keyId)."""
SHARED_SCOPES = (LimitScope.IP, *CREDENTIAL_SCOPES)
"""The scopes whose limits every pod and quota on one key share (pooled budgets)."""


class LimitShape(StrEnum):
    """How a limit counts over time."""

    SLIDING_WINDOW = "slidingWindow"
    """At most `value` events in any interval of `windowSeconds`."""
    TOKEN_BUCKET = "tokenBucket"
    """Refill `value` per `windowSeconds`, holding at most `burst` tokens."""
    MIN_SPACING = "minSpacing"
    """At least `windowSeconds` / `value` seconds between two events."""
    CONCURRENT = "concurrent"
    """At most `value` at the same time."""
    DURATION = "duration"
    """`value` seconds, e.g. a maximum connection age."""
    SIZE = "size"
    """At most `value` items or bytes in one message."""


class Confidence(StrEnum):
    """How sure connquota is of a limit's value."""

    PUBLISHED = "published"
    """Stated in the exchange's official documentation."""
    SECONDARY = "secondary"
    """From SDK code, issue threads or older official pages."""
    ASSUMED = "assumed"
    """No figure found: a conservative value connquota assumes. Never 'unlimited'."""


RATE_SHAPES = frozenset(
    {LimitShape.SLIDING_WINDOW, LimitShape.TOKEN_BUCKET, LimitShape.MIN_SPACING}
)

MAX_LIMIT_VALUE = 10_000_000
MAX_WINDOW_SECONDS = 7 * 24 * 3600


class Limit(ApiModel):
    """One exchange limit: a value with its scope, shape and confidence."""

    name: LimitName = Field(description="Which limit this is (see the LimitName kinds).")
    value: Annotated[float, Field(gt=0, le=MAX_LIMIT_VALUE)] = Field(
        description="The limit's value: a count (events per window, or at the same time), "
        "a size, or seconds for `duration` limits. Must be positive: an exchange with no "
        "published figure still gets a conservative assumed value."
    )
    scope: LimitScope = Field(
        description="What the exchange counts by: ip (public address), account (a credential's "
        "accountId), apiKey (its keyId), connection, message."
    )
    shape: LimitShape = Field(description="How the limit counts over time.")
    windowSeconds: Annotated[float, Field(gt=0, le=MAX_WINDOW_SECONDS)] | None = Field(
        default=None,
        description="Window length in seconds for slidingWindow, tokenBucket and minSpacing.",
    )
    burst: Annotated[int, Field(ge=1, le=MAX_LIMIT_VALUE)] | None = Field(
        default=None, description="Bucket capacity for tokenBucket limits."
    )
    confidence: Confidence = Field(
        default=Confidence.PUBLISHED,
        description="How sure the value is: published, secondary, assumed.",
    )
    source: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="Where the value comes from (a documentation URL)."
    )
    note: Annotated[str, Field(max_length=512)] | None = Field(
        default=None, description="Anything a reader should know: conflicting sources, caveats."
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="!(self.shape in ['slidingWindow', 'tokenBucket', 'minSpacing']) "
            "|| has(self.windowSeconds)",
            message="windowSeconds is required when shape is slidingWindow, tokenBucket or "
            "minSpacing",
            check=lambda limit: limit.shape not in RATE_SHAPES or limit.windowSeconds is not None,
            field_path=".windowSeconds",
            reason="FieldValueRequired",
        ),
        Rule(
            cel="self.shape != 'tokenBucket' || has(self.burst)",
            message="burst is required when shape is tokenBucket",
            check=lambda limit: limit.shape != LimitShape.TOKEN_BUCKET or limit.burst is not None,
            field_path=".burst",
            reason="FieldValueRequired",
        ),
    )

    @property
    def is_rate(self) -> bool:
        """True when the limit counts events over a window of time."""
        return self.shape in RATE_SHAPES

    def key(self) -> tuple[LimitName, LimitScope]:
        """The identity of a limit inside a profile: its kind and scope."""
        return (self.name, self.scope)


class Dialect(StrEnum):
    """Wire protocols connquota speaks (subscribe, acknowledgement, heartbeat, auth formats)."""

    BINANCE = "binance"
    OKX = "okx"
    BYBIT = "bybit"
    COINBASE = "coinbase"
    KRAKEN = "kraken"
    DERIBIT = "deribit"


class HeartbeatDirection(StrEnum):
    """Who sends the heartbeat that keeps a connection alive."""

    SERVER_PING = "serverPing"
    """The exchange pings (protocol or JSON); the client must answer."""
    CLIENT_PING = "clientPing"
    """The client must ping; the exchange answers."""
    SERVER_HEARTBEAT = "serverHeartbeat"
    """The exchange sends heartbeat messages; the client needs not answer."""


class Heartbeat(ApiModel):
    """How a connection is kept alive on an exchange."""

    direction: HeartbeatDirection = Field(description="Who sends the keep-alive.")
    intervalSeconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        description="Seconds between pings (server's or the client's own)."
    )
    timeoutSeconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        description="Seconds without a heartbeat (or pong) after which the peer drops the connection."
    )
    countsAsMessage: bool = Field(
        default=True,
        description="Whether the client's pings and pongs count against per-connection message limits.",
    )


class EndpointDomain(StrEnum):
    """Whether an alternate endpoint counts against the primary endpoint's limits."""

    SHARED = "shared"
    """Published as sharing the primary's limits (or the same host on another port)."""
    SEPARATE = "separate"
    """Published as a separate limit domain."""
    UNKNOWN = "unknown"
    """Nothing published: planned as shared (every attempt there counts against the same
    budgets)."""


class AlternateEndpoint(ApiModel):
    """Another published WebSocket endpoint serving the same public data as `endpoint`."""

    url: Annotated[str, Field(min_length=6, max_length=2048, pattern=r"^wss?://")] = Field(
        description="WebSocket base URL, read like `endpoint` (the dialect adds its path)."
    )
    limitDomain: EndpointDomain = Field(
        default=EndpointDomain.UNKNOWN,
        description="shared, separate or unknown; unknown is planned as shared.",
    )
    domain: (
        Annotated[
            str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        ]
        | None
    ) = Field(
        default=None,
        description="The limit domain of a `separate` endpoint: a quota whose endpoint is this "
        "one is planned with this domain's budgets (default: the endpoint's host). Ignored "
        "unless limitDomain is separate.",
    )
    source: Annotated[str, Field(max_length=2048)] = Field(
        default="", description="Where the exchange documents the endpoint."
    )
    note: Annotated[str, Field(max_length=1024)] = Field(default="", description="Remarks.")


class ExchangeProfile(ApiModel):
    """Everything connquota knows about one exchange product: where, how, and within what limits."""

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ] = Field(description="Profile name, e.g. binance-spot.")
    displayName: Annotated[str, Field(max_length=128)] = Field(
        default="", description="Human name."
    )
    domain: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        description="Limit domain: profiles with the same domain share every budget (e.g. one host)."
    )
    endpoint: Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^wss?://")] = Field(
        description="WebSocket base URL (ws:// or wss://)."
    )
    privateEndpoint: (
        Annotated[str, Field(min_length=1, max_length=2048, pattern=r"^wss?://")] | None
    ) = Field(
        default=None,
        description="WebSocket URL of private (logged-in) connections when they go elsewhere "
        "than `endpoint` (Binance spot: the WebSocket API, wss://ws-api.binance.com:443/ws-api/v3)."
        " An endpoint override keeps its path and replaces its scheme, host and port (see "
        "`with_endpoint`). None: derived from `endpoint` by the dialect.",
    )
    dialect: Dialect = Field(description="Wire protocol spoken at the endpoint.")
    alternateEndpoints: Annotated[list[AlternateEndpoint], Field(max_length=8)] = Field(
        default_factory=list,
        description="Other endpoints of the same public data, in order of preference: the "
        "gateway fails over to the next one when `endpoint` is unreachable or answers 5xx "
        "(never on 429/418), and comes back when it recovers. Shared and unknown ones are "
        "planned within the primary's limit domain; a `separate` one is never failed over to "
        "(its budgets are not the primary's): a quota whose endpoint is that one is planned "
        "with its own domain's budgets. Public connections only; private ones use "
        "`privateEndpoint`.",
    )
    limits: Annotated[list[Limit], Field(min_length=1, max_length=32)] = Field(
        description="Every limit of the profile, each with scope, shape and confidence."
    )
    heartbeat: Heartbeat = Field(description="How connections are kept alive.")
    connectTimeoutSeconds: Annotated[float, Field(gt=0, le=120)] = Field(
        default=10.0, description="Seconds an attempt may take from SYN to an open WebSocket."
    )
    deadConnectionTimeoutSeconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=60.0,
        description="Seconds the exchange keeps counting a connection that ended uncleanly.",
    )
    notes: Annotated[str, Field(max_length=4096)] = Field(
        default="", description="Protocol notes for operators."
    )

    @model_validator(mode="after")
    def _unique_limits(self) -> ExchangeProfile:
        seen: set[tuple[LimitName, LimitScope]] = set()
        for limit in self.limits:
            if limit.key() in seen:
                raise ValueError(f"profile {self.name}: limit {limit.name}/{limit.scope} twice")
            seen.add(limit.key())
        return self

    def limit(self, name: LimitName, scope: LimitScope | None = None) -> Limit | None:
        """The profile's limit of this kind (and scope, when given), or None."""
        for limit in self.limits:
            if limit.name == name and (scope is None or limit.scope == scope):
                return limit
        return None

    def with_endpoint(
        self, endpoint: str, alternates: list[AlternateEndpoint] | None = None
    ) -> ExchangeProfile:
        """A copy pointing at `endpoint`; `privateEndpoint` (when set) keeps its path and query
        but takes the scheme, host and port of `endpoint` (the demo, tests, a regional host).
        The exchange's alternate endpoints are dropped (they are the exchange's, not the
        override's) unless `alternates` are given."""
        update: dict[str, object] = {"endpoint": endpoint, "alternateEndpoints": alternates or []}
        if self.privateEndpoint:
            new, old = urlsplit(endpoint), urlsplit(self.privateEndpoint)
            update["privateEndpoint"] = urlunsplit(
                (new.scheme, new.netloc, old.path, old.query, old.fragment)
            )
        return self.model_copy(update=update)

    def with_overrides(self, overrides: list[Limit]) -> ExchangeProfile:
        """A copy with `overrides` replacing limits of the same kind and scope (or added)."""
        by_key = {limit.key(): limit for limit in self.limits}
        for override in overrides:
            by_key[override.key()] = override
        return self.model_copy(update={"limits": list(by_key.values())})
