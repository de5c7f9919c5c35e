"""Shapes shared by every wire format: the events a client reads and the requests a server reads.

A dialect module (binance, okx, bybit, ...) turns these typed values into the exchange's exact
text frames and back. Both sides use the same module: the gateway builds requests and parses
server messages; the mock exchange parses client requests and builds server messages. Nothing
here does I/O.

Streams are always plain strings in connquota (``btcusdt@trade``, ``tickers:BTC-USDT``,
``publicTrade.BTCUSDT``): each dialect documents how its stream string maps to the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

RequestId = int | str | None
"""A request id as the client chose it (echoed back by the exchange)."""


class WireFormatError(ValueError):
    """A stream name, URL or message that does not follow the dialect's documented format."""


@dataclass(frozen=True)
class ApiCredentials:
    """A test or real API key: what login/auth messages are signed with. Never log it."""

    api_key: str
    secret: str = field(repr=False)
    passphrase: str | None = field(default=None, repr=False)
    signed_auth: bool = False
    """Deribit: log in with ``client_signature`` (an HMAC of the secret) rather than sending
    the secret itself (``client_credentials``); the other dialects always sign."""


@dataclass(frozen=True)
class StreamName:
    """A stream split into its symbol (may be empty for market-wide streams) and channel."""

    symbol: str
    channel: str


@dataclass(frozen=True)
class Endpoint:
    """What a connection URL selects: its kind, the streams it opens with, payload wrapping."""

    kind: str
    """Dialect-specific: ``raw``/``combined``/``api`` (binance), ``public``/``private``/
    ``business`` (okx), ``spot``/``linear``/.../``private`` (bybit)."""
    private: bool = False
    """Whether the endpoint carries private (logged-in) data."""
    initial_streams: tuple[str, ...] = ()
    """Streams named in the URL itself (binance ``/ws/<stream>`` and ``/stream?streams=``)."""
    combined: bool = False
    """Binance: whether data arrives wrapped as ``{"stream":..,"data":..}``."""
    max_active_s: float | None = None
    """Bybit ``max_active_time``: idle seconds before the server cuts a private connection."""


# --- events a client reads (parse_server_message) -------------------------------------------


@dataclass(frozen=True)
class Ack:
    """The exchange accepted a subscribe/unsubscribe (or other) request."""

    request_id: RequestId
    op: str
    streams: tuple[str, ...] = ()
    result: Any = None


@dataclass(frozen=True)
class Error:
    """The exchange refused a request or reports a problem; ``code`` as the exchange spells it."""

    request_id: RequestId
    code: str
    msg: str
    raw: Any = None


@dataclass(frozen=True)
class Data:
    """One market-data (or user-data) message: ``seq`` is gapless per stream on the mock."""

    stream: str
    seq: int | None
    event_time_ms: int | None
    payload: Any
    raw: str | None = None
    """The payload's JSON exactly as the exchange sent it (None when it is not one contiguous
    part of the frame): forwarded as is, never re-encoded."""


@dataclass(frozen=True)
class Pong:
    """The exchange answered a client's application-level ping."""

    request_id: RequestId = None
    payload: str = ""


@dataclass(frozen=True)
class Ping:
    """The exchange pings at application level (the client must answer)."""

    payload: str = ""


@dataclass(frozen=True)
class Notice:
    """An informational or warning event: ``serverShutdown``, a service upgrade, a count."""

    kind: str
    code: str = ""
    msg: str = ""
    event_time_ms: int | None = None
    raw: Any = None


@dataclass(frozen=True)
class LoginResult:
    """The answer to a login/auth request."""

    ok: bool
    request_id: RequestId = None
    code: str = ""
    msg: str = ""


@dataclass(frozen=True)
class Unknown:
    """A message the dialect does not recognise (kept whole)."""

    text: str


ServerEvent = Ack | Error | Data | Pong | Ping | Notice | LoginResult | Unknown


# --- requests a server reads (parse_client_message) -----------------------------------------


@dataclass(frozen=True)
class SubscribeRequest:
    """Subscribe (or, with ``unsubscribe``, unsubscribe) ``streams``."""

    request_id: RequestId
    streams: tuple[str, ...]
    unsubscribe: bool = False


@dataclass(frozen=True)
class LoginRequest:
    """A login/auth request; ``fields`` holds what the dialect signs (timestamp, sign, ...)."""

    request_id: RequestId
    api_key: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class PingRequest:
    """An application-level ping from the client."""

    request_id: RequestId = None


@dataclass(frozen=True)
class OtherRequest:
    """A valid request the mock answers without changing subscriptions (LIST_SUBSCRIPTIONS...)."""

    request_id: RequestId
    method: str
    params: Any = None


@dataclass(frozen=True)
class InvalidRequest:
    """A malformed request: ``reply`` is the exact error frame the exchange sends back."""

    request_id: RequestId
    code: str
    msg: str
    reply: str


ClientRequest = SubscribeRequest | LoginRequest | PingRequest | OtherRequest | InvalidRequest


class WireFormat(Protocol):
    """What every dialect module offers both sides (see binance.py, okx.py, bybit.py)."""

    name: str

    def stream_name(self, symbol: str, channel: str) -> str:
        """Compose the exchange's stream name for ``symbol`` x ``channel``."""
        ...

    def parse_stream(self, stream: str) -> StreamName:
        """Split a stream name into symbol and channel; WireFormatError when malformed."""
        ...

    def build_subscribe(self, streams: list[str], request_id: RequestId) -> str:
        """The subscribe request frame."""
        ...

    def build_unsubscribe(self, streams: list[str], request_id: RequestId) -> str:
        """The unsubscribe request frame."""
        ...

    def build_ping(self, request_id: RequestId = None) -> str | None:
        """The client's application ping frame, or None where pings are protocol frames."""
        ...

    def build_login(self, credentials: ApiCredentials, now_ms: int, request_id: RequestId) -> str:
        """The signed login/auth frame."""
        ...

    def parse_server_message(self, text: str, default_stream: str | None = None) -> ServerEvent:
        """Classify one text frame from the exchange."""
        ...

    def parse_client_message(self, text: str) -> ClientRequest:
        """Classify one text frame from a client (the mock exchange's side)."""
        ...


def endpoint_at(paths: Mapping[str, str], exchange: str, path: str) -> Endpoint:
    """The endpoint `path` selects in a dialect served at fixed `paths` (path -> kind; every
    kind but ``public`` carries private data); WireFormatError for a path it does not serve."""
    kind = paths.get(path.rstrip("/"))
    if kind is None:
        raise WireFormatError(f"{exchange} serves no WebSocket at {path!r}")
    return Endpoint(kind=kind, private=kind != "public")


def hmac_sha256(secret: str, message: str) -> bytes:
    """HMAC-SHA256 of ``message`` keyed by ``secret`` (both UTF-8)."""
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).digest()


def dumps(obj: Any) -> str:
    """Compact JSON, as exchanges send it."""
    return json.dumps(obj, separators=(",", ":"))


def loads_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text``, or None when it is not a JSON object.

    orjson parses the exchanges' messages (several times faster: one parse per upstream
    message is the gateway's largest per-message cost); what it refuses (integers beyond 64
    bits, NaN, very deep nesting, bad JSON) goes to the standard parser, which decides."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None


def valid_request_id(value: Any, max_len: int) -> bool:
    """Whether ``value`` is an int, None, or an alphanumeric string of at most ``max_len``."""
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, str):
        return 0 < len(value) <= max_len and value.replace("-", "").replace("_", "").isalnum()
    return False


@dataclass(frozen=True)
class MarketPrices:
    """Prices the mock reads from its book for a trade or ticker push: the best bid and ask
    (``[price, size, ...]``) and the last trade's price."""

    bid: list[str]
    ask: list[str]
    last: str
