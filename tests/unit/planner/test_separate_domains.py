"""Endpoints a profile lists as a separate limit domain (issue 15, secondary endpoints): a
quota whose endpoint is one gets that domain's budgets, only when the endpoint is declared
`separate`; shared and unknown ones (and endpoints the profile does not list) stay within the
profile's domain, and a separate one is never failed over to."""

from __future__ import annotations

import pytest
from planner_factories import N, pool, profile, quota

from connquota.api.limits import AlternateEndpoint, EndpointDomain
from connquota.api.quota import CustomProfile, ExchangeConnectionQuotaSpec
from connquota.exchanges import PROFILES, effective_profile
from connquota.gateway.protocol import connect_urls
from connquota.planner.shares import divide_budgets

PRIMARY = "ws://127.0.0.1:9000"
SECOND = "ws://127.0.0.1:9001"


def spec(limit_domain: EndpointDomain, endpoint: str | None, domain: str | None = "venue-b"):
    """A custom quota on `venue` whose profile lists SECOND as `limit_domain`."""
    base = profile(domain="venue", concurrent_ip=4)
    custom = CustomProfile(
        endpoint=PRIMARY,
        dialect=base.dialect,
        domain="venue",
        limits=base.limits,
        alternateEndpoints=[AlternateEndpoint(url=SECOND, limitDomain=limit_domain, domain=domain)],
    )
    return ExchangeConnectionQuotaSpec.model_validate(
        {
            "exchange": "custom",
            "custom": custom.to_wire(),
            "egressPoolRef": {"name": "pool"},
            **({"endpoint": endpoint} if endpoint else {}),
        }
    )


@pytest.mark.parametrize(
    ("limit_domain", "endpoint", "domain", "expected"),
    [
        (EndpointDomain.SEPARATE, SECOND, "venue-b", "venue-b"),
        (EndpointDomain.SEPARATE, SECOND + "/stream", "venue-b", "venue-b"),  # a path on it
        (EndpointDomain.SEPARATE, SECOND, None, "127.0.0.1"),  # undeclared: its host
        (EndpointDomain.SEPARATE, None, "venue-b", "venue"),  # the primary itself
        (EndpointDomain.SHARED, SECOND, "venue-b", "venue"),
        (EndpointDomain.UNKNOWN, SECOND, "venue-b", "venue"),  # unknown is planned as shared
        (EndpointDomain.SEPARATE, "ws://127.0.0.1:9002", "venue-b", "venue"),  # not listed
    ],
)
def test_only_an_endpoint_published_as_separate_gets_a_domain_of_its_own(
    limit_domain, endpoint, domain, expected
):
    assert effective_profile(spec(limit_domain, endpoint, domain)).domain == expected


def test_two_quotas_on_one_address_get_separate_budgets_only_for_a_separate_endpoint():
    """The primary's and the separate endpoint's quota each get all 4 connections of the
    address; were the endpoint shared they would split the 4."""
    for limit_domain, each in ((EndpointDomain.SEPARATE, (4, 4)), (EndpointDomain.SHARED, (2, 2))):
        quotas = [
            quota("a", prof=effective_profile(spec(limit_domain, None))),
            quota("b", prof=effective_profile(spec(limit_domain, SECOND))),
        ]
        shares = divide_budgets(pool(1), quotas)
        got = tuple(
            shares.quotas[f"team/{q}"].ip[("a0", N.CONCURRENT_CONNECTIONS)] for q in ("a", "b")
        )
        assert got == each, (limit_domain, got)


def test_a_separate_endpoint_is_never_failed_over_to():
    for limit_domain, urls in (
        (EndpointDomain.SEPARATE, [PRIMARY + "/stream"]),
        (EndpointDomain.SHARED, [PRIMARY + "/stream", SECOND + "/stream"]),
        (EndpointDomain.UNKNOWN, [PRIMARY + "/stream", SECOND + "/stream"]),
    ):
        assert connect_urls(effective_profile(spec(limit_domain, None))) == urls
    # the separate endpoint's quota has no alternates at all: its budgets are its domain's
    assert connect_urls(effective_profile(spec(EndpointDomain.SEPARATE, SECOND))) == [
        SECOND + "/stream"
    ]


def test_no_built_in_profile_lists_a_separate_endpoint():
    """None is published as separate (docs/profiles.md, Limit domains): if one ever is, it must
    name its domain or accept its host as one."""
    separate = [
        (p.name, alt.url)
        for p in PROFILES.values()
        for alt in p.alternateEndpoints
        if alt.limitDomain == EndpointDomain.SEPARATE
    ]
    assert separate == []
