"""Exchange profiles (limits, domain, endpoint) and dialects (wire formats).

`PROFILES` holds every built-in profile by name; `get_profile` looks one up and
`effective_profile` resolves what a quota's spec really means: the built-in or custom profile,
with the quota's endpoint override and limit overrides applied.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from connquota.api.limits import Dialect, EndpointDomain, ExchangeProfile, Heartbeat
from connquota.api.quota import CUSTOM_PROFILE, ExchangeConnectionQuotaSpec
from connquota.exchanges.profiles import (
    binance_spot,
    binance_usdm,
    bybit,
    coinbase,
    deribit,
    kraken,
    okx,
)

PROFILES: dict[str, ExchangeProfile] = {
    module.PROFILE.name: module.PROFILE
    for module in (binance_spot, binance_usdm, okx, bybit, coinbase, kraken, deribit)
}
"""Every built-in profile by name (binance-spot, binance-usdm, okx, ...)."""


class ProfileError(ValueError):
    """A quota names a profile that cannot be resolved."""


class UnknownProfileError(ProfileError):
    """No built-in profile has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        known = ", ".join(sorted(PROFILES))
        super().__init__(
            f"unknown exchange profile {name!r}; known profiles: {known} "
            f"(or {CUSTOM_PROFILE!r} with spec.custom)"
        )


def get_profile(name: str) -> ExchangeProfile:
    """The built-in profile called `name`; raises UnknownProfileError listing the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(name) from None


def default_heartbeat(dialect: Dialect) -> Heartbeat:
    """The keep-alive rules of the first built-in profile speaking `dialect`."""
    for profile in PROFILES.values():
        if profile.dialect == dialect:
            return profile.heartbeat
    raise ProfileError(f"no built-in profile speaks dialect {dialect!s}")  # pragma: no cover


def effective_profile(spec: ExchangeConnectionQuotaSpec) -> ExchangeProfile:
    """The profile a quota's gateways obey: built-in or custom, endpoint and limits overridden."""
    if spec.exchange == CUSTOM_PROFILE:
        custom = spec.custom
        if custom is None:
            raise ProfileError("exchange 'custom' needs spec.custom (endpoint, dialect, limits)")
        profile = ExchangeProfile(
            name=CUSTOM_PROFILE,
            displayName=f"custom ({custom.domain})",
            domain=custom.domain,
            endpoint=custom.endpoint,
            dialect=custom.dialect,
            limits=custom.limits,
            heartbeat=custom.heartbeat or default_heartbeat(custom.dialect),
            alternateEndpoints=custom.alternateEndpoints or [],
            deadConnectionTimeoutSeconds=custom.deadConnectionTimeoutSeconds,
            notes="Declared by the quota (spec.custom).",
        )
    else:
        profile = get_profile(spec.exchange)
    if spec.endpoint:
        domain = separate_domain(profile, spec.endpoint)
        profile = profile.with_endpoint(spec.endpoint)
        if domain is not None:
            profile = profile.model_copy(update={"domain": domain})
    if spec.limits:
        profile = profile.with_overrides(spec.limits)
    return profile


def separate_domain(profile: ExchangeProfile, endpoint: str) -> str | None:
    """The limit domain of `endpoint` when `profile` lists it (same scheme, host and port) as
    an alternate endpoint published as a separate limit domain (its `domain`, or its host);
    None otherwise: the endpoint is planned within the profile's own domain (shared, unknown,
    or not listed: an override to a test or regional host keeps the profile's budgets)."""
    wanted = urlsplit(endpoint)
    for alt in profile.alternateEndpoints:
        url = urlsplit(alt.url)
        same = (url.scheme, url.hostname, url.port) == (wanted.scheme, wanted.hostname, wanted.port)
        if same and alt.limitDomain == EndpointDomain.SEPARATE:
            return alt.domain or url.hostname or None
    return None


__all__ = [
    "PROFILES",
    "ProfileError",
    "UnknownProfileError",
    "default_heartbeat",
    "effective_profile",
    "get_profile",
    "separate_domain",
]
