"""Headroom on every part of a limit, and bounds a pod can really keep (issue 16)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from planner_factories import N, S, plan_one, pool, profile, quota, streams

from connquota.api.limits import Limit, LimitShape
from connquota.api.quota import ExchangeConnectionQuota
from connquota.exchanges import effective_profile
from connquota.planner.inputs import QuotaInput
from connquota.testing import checker

ROOT = Path(__file__).resolve().parents[3]


def token_bucket(value: float, burst: int) -> Limit:
    return Limit(
        name=N.CONTROL_MESSAGES_PER_CONNECTION,
        scope=S.CONNECTION,
        value=value,
        windowSeconds=1.0,
        burst=burst,
        shape=LimitShape.TOKEN_BUCKET,
    )


def bucket_slice(plan, name=N.MESSAGES_PER_CONNECTION):
    return next(s for s in plan.pods[0].slices if s.limit == name and s.scope == S.CONNECTION)


def test_a_per_connection_token_bucket_gets_its_burst_scaled_by_headroom_too():
    bucket = token_bucket(7, 7)
    q = quota(prof=profile(extra=[bucket]), headroom=0.9)
    s = bucket_slice(plan_one(q, pool(1), streams(10)), N.CONTROL_MESSAGES_PER_CONNECTION)
    assert (s.value, s.burst) == (6, 6)


def test_the_custom_example_bucket_of_10_per_second_burst_10_at_headroom_0_8_is_8_and_8():
    doc = next(
        d
        for d in yaml.safe_load_all((ROOT / "examples" / "17-quota-custom.yaml").read_text())
        if d and d.get("kind") == "ExchangeConnectionQuota"
    )
    q = ExchangeConnectionQuota.model_validate(doc)
    assert q.spec.headroom == 0.8
    qin = QuotaInput("ns", "custom", q.spec, effective_profile(q.spec))
    s = bucket_slice(plan_one(qin, pool(1), streams(10)))
    assert (s.value, s.burst) == (8, 8)


def test_a_tiny_burst_keeps_one_token_while_the_rate_allows_anything():
    bucket = token_bucket(5, 1)
    q = quota(prof=profile(extra=[bucket]), headroom=0.5)
    s = bucket_slice(plan_one(q, pool(1), streams(10)), N.CONTROL_MESSAGES_PER_CONNECTION)
    assert (s.value, s.burst) == (2, 1)


def test_recovery_bound_on_an_address_is_its_slowest_pods_at_the_pods_own_attempt_slice():
    # 4 usable attempts per window on one address; pod 0 holds 10 connections, pod 1 two:
    # pod 0 gets 3 attempts (one each first, the rest by connections), pod 1 gets 1.
    prof = profile(attempts=5, attempts_window_s=10, streams_per_connection=10)
    q = quota(prof=prof, connections_per_pod=10, max_replicas=4)
    plan = plan_one(q, pool(1), streams(12 * 8))
    per_pod = {
        p.ordinal: (len(p.connections), p.slice(N.CONNECTION_ATTEMPTS, S.IP, "a0").value)
        for p in plan.pods
        if p.connections
    }
    assert per_pod == {0: (10, 3), 1: (2, 1)}
    hold = checker.attempt_hold_s(10, prof.connectTimeoutSeconds)
    bound = plan.recoveryBounds[0]
    assert bound.connections == 12
    assert bound.seconds == math.ceil(10 / 3) * hold  # pod 0: 4 batches
    assert bound.seconds > math.ceil(12 / 4) * hold  # the whole address's rate would say 3
