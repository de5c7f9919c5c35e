"""A credential names its API key apart from its account (issue 16): Deribit counts sessions
per key (16) and credits per sub-account, so two keys of one sub-account have two session
budgets and one credit budget."""

from __future__ import annotations

import math

from planner_factories import N, S, limit, plan_one, pool, profile, quota

from connquota.api.limits import LimitScope
from connquota.api.plan import identities_of
from connquota.api.quota import Credential, SecretKeyRef
from connquota.exchanges import get_profile
from connquota.operator import usage
from connquota.planner.inputs import DesiredStream
from connquota.planner.shares import divide_budgets
from connquota.testing.checker import check_plan_consistency

PER_KEY = 5
CREDITS = 20


def cred(name: str, account: str = "sub-1", key: str | None = None) -> Credential:
    return Credential(
        name=name, secretRef=SecretKeyRef(name=f"{name}-secret"), accountId=account, keyId=key
    )


def per_key_profile():
    return profile(
        extra=[
            limit(N.CONCURRENT_CONNECTIONS, S.API_KEY, PER_KEY),
            limit(N.MESSAGES_PER_ACCOUNT, S.ACCOUNT, CREDITS, 1.0),
        ]
    )


def private(credential: str, n: int, priority: int = 0):
    return [DesiredStream(f"{credential}-{i:03d}", priority, credential) for i in range(n)]


def conns_per_credential(plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for pod in plan.pods:
        for c in pod.connections:
            out[c.credential] = out.get(c.credential, 0) + 1
    return out


def slice_sum(plan, scope: LimitScope, key: str, name) -> float:
    return sum(s.value for p in plan.pods for s in p.slices if (s.scope, s.key, s.limit) == (
        scope, key, name))  # fmt: skip


def test_two_keys_of_one_sub_account_have_a_session_budget_each_and_one_credit_budget():
    p = pool(2)
    creds = [cred("k1", key="client-1"), cred("k2", key="client-2")]
    q = quota(prof=per_key_profile(), credentials=creds, headroom=0.8)
    budgets = divide_budgets(p, [q]).budgets
    by_scope = {(b.scope, b.key, b.limit) for b in budgets}
    assert (S.API_KEY, "client-1", N.CONCURRENT_CONNECTIONS) in by_scope
    assert (S.API_KEY, "client-2", N.CONCURRENT_CONNECTIONS) in by_scope
    assert [k for k in by_scope if k[0] == S.ACCOUNT] == [
        (S.ACCOUNT, "sub-1", N.MESSAGES_PER_ACCOUNT)
    ]

    # Each key wants 8 connections (100 streams each); each may hold floor(0.8 x 5) = 4.
    desired = private("k1", 800) + private("k2", 800)
    plan = plan_one(q, p, desired)
    usable = math.floor(0.8 * PER_KEY)
    assert conns_per_credential(plan) == {"k1": usable, "k2": usable}
    for key in ("client-1", "client-2"):
        assert slice_sum(plan, S.API_KEY, key, N.CONCURRENT_CONNECTIONS) <= usable
    # One credit budget for the sub-account, split over every pod that uses either key.
    assert slice_sum(plan, S.ACCOUNT, "sub-1", N.MESSAGES_PER_ACCOUNT) <= math.floor(0.8 * CREDITS)
    assert plan.unserved and all("API key" in u.reason for u in plan.unserved)
    assert check_plan_consistency(plan) == []


def test_without_key_ids_every_key_of_the_account_shares_one_session_budget():
    p = pool(2)
    q = quota(prof=per_key_profile(), credentials=[cred("k1"), cred("k2")], headroom=0.8)
    plan = plan_one(q, p, private("k1", 800) + private("k2", 800))
    assert sum(conns_per_credential(plan).values()) == math.floor(0.8 * PER_KEY)
    assert any("API key sub-1" in u.reason for u in plan.unserved)
    assert check_plan_consistency(plan) == []


def test_two_credentials_naming_one_key_id_share_its_budget():
    p = pool(1)
    creds = [cred("k1", key="client-1"), cred("k2", account="sub-2", key="client-1")]
    q = quota(prof=per_key_profile(), credentials=creds, headroom=0.8)
    plan = plan_one(q, p, private("k1", 800) + private("k2", 800))
    assert sum(conns_per_credential(plan).values()) == math.floor(0.8 * PER_KEY)


def test_quotas_sharing_a_pool_divide_a_key_budget_only_between_the_quotas_using_that_key():
    p = pool(1)
    prof = per_key_profile()
    a = quota("a", prof=prof, credentials=[cred("k1", key="client-1")])
    b = quota("b", prof=prof, credentials=[cred("k1", key="client-1")])
    c = quota("c", prof=prof, credentials=[cred("k1", key="client-9")])
    shares = divide_budgets(p, [a, b, c]).quotas
    assert shares[a.key].api_key[("client-1", N.CONCURRENT_CONNECTIONS)] == 3
    assert shares[b.key].api_key[("client-1", N.CONCURRENT_CONNECTIONS)] == 2
    assert shares[c.key].api_key[("client-9", N.CONCURRENT_CONNECTIONS)] == PER_KEY
    # The one sub-account's credits are divided among all three quotas.
    assert sum(s.account[("sub-1", N.MESSAGES_PER_ACCOUNT)] for s in shares.values()) == CREDITS


def test_the_deribit_profile_counts_sessions_per_key_and_credits_per_sub_account():
    deribit = get_profile("deribit")
    creds = [cred("k1", key="client-1"), cred("k2", key="client-2")]
    q = quota(prof=deribit, credentials=creds)
    budgets = divide_budgets(pool(1), [q]).budgets
    sessions = {b.key: v.value for b, v in budgets.items() if b.limit == N.CONCURRENT_CONNECTIONS
                and b.scope == S.API_KEY}  # fmt: skip
    assert sessions == {"client-1": 16, "client-2": 16}
    credits = [b for b in budgets if b.scope == S.ACCOUNT]
    assert [(b.key, b.limit) for b in credits] == [("sub-1", N.MESSAGES_PER_ACCOUNT)]


def test_plan_credentials_carry_the_key_id_to_the_gateway():
    p = pool(1)
    q = quota(prof=per_key_profile(), credentials=[cred("k1", key="client-1"), cred("k2")])
    plan = plan_one(q, p, private("k1", 10) + private("k2", 10))
    got = {c.name: identities_of(c) for pod in plan.pods for c in pod.credentials}
    assert got == {
        "k1": ((S.ACCOUNT, "sub-1"), (S.API_KEY, "client-1")),
        "k2": ((S.ACCOUNT, "sub-1"), (S.API_KEY, "sub-1")),
    }


def test_the_quota_status_lists_each_key_apart_from_the_account_it_belongs_to() -> None:
    prof = profile(
        extra=[
            limit(N.CONCURRENT_CONNECTIONS, S.API_KEY, 5),
            limit(N.MESSAGES_PER_ACCOUNT, S.ACCOUNT, 20, 1.0),
        ]
    )
    creds = [
        Credential(name=n, secretRef=SecretKeyRef(name=n), accountId="sub-1", keyId=f"client-{n}")
        for n in ("1", "2")
    ]
    q = quota(prof=prof, credentials=creds, headroom=0.8)
    p = pool(1)
    shares = divide_budgets(p, [q])
    plan = plan_one(q, p, [DesiredStream(f"s{c}", 0, c) for c in ("1", "2")])
    got = usage.quota_scope_use(shares, q.key, p, plan, {}, [])
    keys = {e["key"]: e["limits"] for e in got[LimitScope.API_KEY]}
    assert set(keys) == {"client-1", "client-2"}
    for limits in keys.values():
        assert limits == [
            {"limit": "concurrentConnections", "share": 5, "used": 0, "budget": 5, "slices": 4}
        ]
    (account,) = got[LimitScope.ACCOUNT]
    assert account["key"] == "sub-1"
    assert [lim["limit"] for lim in account["limits"]] == ["messagesPerAccount"]
    assert account["limits"][0]["slices"] <= 16
    assert [a["key"] for a in got[LimitScope.IP]] == ["a0"]
