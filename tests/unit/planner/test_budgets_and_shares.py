"""Budgets per (domain, address) and (domain, account), and how quotas share them."""

from __future__ import annotations

import pytest
from planner_factories import N, S, credential, limit, pool, profile, quota

from connquota.api.limits import LimitName
from connquota.api.pool import ExchangeEgressPoolSpec
from connquota.planner.budgets import BudgetKey, pool_budgets
from connquota.planner.errors import PoolError, ShareRequestError
from connquota.planner.shares import divide_budgets

DOMAIN = "stream.example.com"


def ip_key(i: int, name: LimitName = N.CONNECTION_ATTEMPTS) -> BudgetKey:
    return BudgetKey(DOMAIN, S.IP, f"198.51.100.{i + 1}", name)


def test_budget_is_the_limit_minus_what_the_pool_keeps_back_per_public_address():
    budgets = pool_budgets(pool(2, reserved=0.25), [quota()])
    assert budgets[ip_key(0)].value == 225  # floor(300 x 0.75)
    assert budgets[ip_key(1)].value == 225
    assert budgets[ip_key(0, N.CONCURRENT_CONNECTIONS)].value == 225


def test_headroom_applies_to_a_quotas_own_share_not_to_the_pooled_budget():
    budgets = pool_budgets(pool(1), [quota(headroom=0.5), quota("b", headroom=1.0)])
    assert budgets[ip_key(0)].value == 300


def test_decimal_fractions_are_exact_so_29_percent_of_100_is_29():
    budgets = pool_budgets(pool(1, reserved=0.71), [quota(prof=profile(attempts=100))])
    assert budgets[ip_key(0)].value == 29


def test_strictest_limit_override_wins_when_quotas_of_one_domain_disagree():
    strict = profile(attempts=10, attempts_window_s=600)
    budgets = pool_budgets(pool(1), [quota("a"), quota("b", prof=strict)])
    b = budgets[ip_key(0)]
    assert (b.value, b.limit.window_s) == (10, 600)


def test_quotas_of_different_domains_on_one_address_have_separate_budgets():
    other = profile(domain="fstream.example.com", attempts=50)
    shares = divide_budgets(pool(1), [quota("a"), quota("b", prof=other)])
    assert shares.quotas["team/a"].ip[("a0", N.CONNECTION_ATTEMPTS)] == 300
    assert shares.quotas["team/b"].ip[("a0", N.CONNECTION_ATTEMPTS)] == 50


def test_account_budgets_are_keyed_by_account_id_not_by_credential_name():
    prof = profile(concurrent_account=16)
    a = quota("a", prof=prof, credentials=[credential("k1", "acct-1")])
    b = quota("b", prof=prof, credentials=[credential("other-name", "acct-1")])
    shares = divide_budgets(pool(1), [a, b])
    assert (
        shares.budgets[BudgetKey(DOMAIN, S.ACCOUNT, "acct-1", N.CONCURRENT_CONNECTIONS)].value == 16
    )
    assert shares.quotas["team/a"].account[("acct-1", N.CONCURRENT_CONNECTIONS)] == 8
    assert shares.quotas["team/b"].account[("acct-1", N.CONCURRENT_CONNECTIONS)] == 8


def test_even_split_gives_leftover_units_to_the_first_quotas_in_name_order():
    shares = divide_budgets(pool(1), [quota("c"), quota("a"), quota("b")])
    got = [shares.quotas[f"team/{n}"].ip[("a0", N.CONNECTION_ATTEMPTS)] for n in "abc"]
    assert got == [100, 100, 100]
    small = profile(attempts=5)
    shares = divide_budgets(pool(1), [quota(n, prof=small) for n in "cab"])
    got = [shares.quotas[f"team/{n}"].ip[("a0", N.CONNECTION_ATTEMPTS)] for n in "abc"]
    assert got == [2, 2, 1]


def test_explicit_request_is_honoured_and_the_rest_is_split_evenly():
    a = quota("a", shares=[{"address": "*", "fraction": 0.5}])
    shares = divide_budgets(pool(1), [a, quota("b"), quota("c")])
    got = [shares.quotas[f"team/{n}"].ip[("a0", N.CONNECTION_ATTEMPTS)] for n in "abc"]
    assert got == [150, 75, 75]


def test_requests_over_100_percent_are_scaled_down_with_a_reason():
    a = quota("a", shares=[{"address": "*", "fraction": 0.8}])
    b = quota("b", shares=[{"address": "a0", "fraction": 0.8}])
    shares = divide_budgets(pool(1), [a, b])
    assert shares.quotas["team/a"].ip[("a0", N.CONNECTION_ATTEMPTS)] == 150
    assert any("requests total 160%" in r for r in shares.quotas["team/b"].reasons)
    assert sum(q.ip[("a0", N.CONNECTION_ATTEMPTS)] for q in shares.quotas.values()) <= 300


def test_namespace_cap_limits_the_namespaces_total_share_with_a_reason():
    p = pool(1, allowed=[{"namespace": "team", "maxShare": 0.25}, {"namespace": "*"}])
    shares = divide_budgets(p, [quota("a"), quota("b"), quota("c", namespace="other")])
    team = [shares.quotas[f"team/{n}"].ip[("a0", N.CONNECTION_ATTEMPTS)] for n in "ab"]
    assert sum(team) <= 75
    assert any("at most 25%" in r for r in shares.quotas["team/b"].reasons)
    assert shares.quotas["other/c"].ip[("a0", N.CONNECTION_ATTEMPTS)] == 100


def test_namespace_the_pool_does_not_admit_gets_nothing_and_is_told_why():
    p = pool(1, allowed=[{"namespace": "trading"}])
    shares = divide_budgets(p, [quota("a", namespace="research"), quota("b", namespace="trading")])
    research = shares.quotas["research/a"]
    assert not research.admitted
    assert research.ip[("a0", N.CONNECTION_ATTEMPTS)] == 0
    assert any("does not admit namespace research" in r for r in research.reasons)
    assert shares.quotas["trading/b"].ip[("a0", N.CONNECTION_ATTEMPTS)] == 300


def test_share_request_for_an_unknown_address_is_a_clear_error():
    with pytest.raises(ShareRequestError, match="which pool has not"):
        divide_budgets(pool(1), [quota(shares=[{"address": "nope", "fraction": 0.5}])])


def test_pool_listing_a_public_address_twice_is_a_clear_error():
    p = pool(2)
    twin = p.addresses[1].model_copy(update={"publicAddress": p.addresses[0].publicAddress})
    # The API rejects this too; the planner must not rely on it (e.g. objects from an old CRD).
    dup = ExchangeEgressPoolSpec.model_construct(
        addresses=[p.addresses[0], twin], reserved=[], allowedNamespaces=p.allowedNamespaces
    )
    with pytest.raises(PoolError, match="twice"):
        pool_budgets(dup, [quota()])


def test_token_bucket_burst_is_shared_like_the_value():
    bucket = limit(N.MESSAGES_PER_ACCOUNT, S.ACCOUNT, 20, 1.0)
    bucket = bucket.model_copy(update={"shape": "tokenBucket", "burst": 100})
    prof = profile(extra=[bucket])
    a = quota("a", prof=prof, credentials=[credential("k", "acct")])
    b = quota("b", prof=prof, credentials=[credential("k", "acct")])
    shares = divide_budgets(pool(1), [a, b])
    assert shares.quotas["team/a"].bursts[(S.ACCOUNT, "acct", N.MESSAGES_PER_ACCOUNT)] == 50
