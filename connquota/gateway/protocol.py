"""Which wire format a profile speaks, and the URL a connection opens.

The formats themselves (subscribe frames, parsing, login signatures) live in
`connquota.exchanges.dialects`, shared with the mock exchange; this module only picks the
module for a profile and builds the connection URL from the profile's endpoint.
"""

from __future__ import annotations

from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

from connquota.api.limits import Dialect, EndpointDomain, ExchangeProfile
from connquota.exchanges import dialects


class UnsupportedDialectError(ValueError):
    """The gateway has no client for this profile's dialect yet."""


def wire_format(dialect: Dialect) -> ModuleType:
    """The dialect module (binance, okx, bybit, kraken) implementing `WireFormat`."""
    try:
        return dialects.wire_format(dialect)
    except KeyError as exc:
        raise UnsupportedDialectError(
            f"the gateway does not speak the {dialect.value} dialect yet"
        ) from exc


def connect_urls(profile: ExchangeProfile, private: bool = False) -> list[str]:
    """Every URL one upstream connection of `profile` may open, in order of preference: the
    primary endpoint's, then each alternate endpoint's within the primary's limit domain
    (public connections only; a `separate` alternate has budgets of its own, not this plan's,
    and is never failed over to)."""
    url = connect_url(profile, private)
    if private or not profile.alternateEndpoints:
        return [url]
    others = [
        connect_url(profile.model_copy(update={"endpoint": alt.url, "privateEndpoint": None}))
        for alt in profile.alternateEndpoints
        if alt.limitDomain != EndpointDomain.SEPARATE
    ]
    return [url, *(u for u in dict.fromkeys(others) if u != url)]


def connect_url(profile: ExchangeProfile, private: bool = False) -> str:
    """The WebSocket URL one upstream connection of `profile` opens.

    Binance: `<endpoint>/stream` (combined payloads, tagged with their stream) or the WebSocket
    API for private data; OKX and Bybit: the endpoint as given (public), or its `private`
    sibling for connections that log in; Kraken and Coinbase: the endpoint as given (public data
    only). A profile's `privateEndpoint`, when set, is the URL of
    every private connection.
    """
    if private and profile.privateEndpoint:
        return profile.privateEndpoint
    base = profile.endpoint.rstrip("/")
    if profile.dialect == Dialect.BINANCE:
        parts = urlsplit(base)
        path = parts.path
        if not path or path == "/":
            path = "/ws-api/v3" if private else "/stream"
        return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    if private and profile.dialect == Dialect.OKX:
        return base.rsplit("/", 1)[0] + "/private"
    if private and profile.dialect == Dialect.BYBIT:
        parts = urlsplit(base)
        return urlunsplit((parts.scheme, parts.netloc, "/v5/private", "", ""))
    return base


def http_base(profile: ExchangeProfile) -> str:
    """`http(s)://host:port` of the endpoint (for the egress check)."""
    parts = urlsplit(profile.endpoint)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, "", "", ""))
