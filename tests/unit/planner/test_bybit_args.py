"""Bybit caps the args of one public connection at 21,000 characters: the plan keeps every
connection under it (with headroom), whatever the topic names' lengths (issue 16: long topic
names gave 25,001 characters on one connection)."""

from __future__ import annotations

import json

from planner_factories import plan_one, pool, quota

from connquota.api.limits import LimitName, LimitScope
from connquota.exchanges import get_profile
from connquota.planner.inputs import DesiredStream

BYBIT = get_profile("bybit")


def args_characters(streams: list[str]) -> int:
    return len(json.dumps(streams, separators=(",", ":")))


def test_the_bybit_profile_declares_the_args_character_limit():
    limit = BYBIT.limit(LimitName.ARGS_CHARACTERS_PER_CONNECTION, LimitScope.CONNECTION)
    assert limit is not None and limit.value == 21000


def test_long_topic_names_never_put_more_than_21000_characters_on_one_connection():
    q = quota(prof=BYBIT, headroom=1.0, connections_per_pod=100)
    names = [f"orderbook.500.{'X' * 40}{i:05d}USDT" for i in range(2000)]  # 63 characters
    plan = plan_one(q, pool(1), [DesiredStream(n) for n in names])
    assert plan.unserved == []
    conns = [c for p in plan.pods for c in p.connections]
    assert max(args_characters(c.streams) for c in conns) <= 21000
    assert sum(len(c.streams) for c in conns) == 2000


def test_headroom_applies_to_the_character_budget_and_short_names_keep_the_stream_cap():
    q = quota(prof=BYBIT, headroom=0.8, connections_per_pod=100)
    long_names = [DesiredStream(f"publicTrade.{'Y' * 48}{i:05d}") for i in range(1000)]
    plan = plan_one(q, pool(1), long_names)
    assert max(args_characters(c.streams) for p in plan.pods for c in p.connections) <= 16800
    short = plan_one(q, pool(1), [DesiredStream(f"tickers.S{i:04d}") for i in range(1000)])
    # 500 streams x 0.8 = 400 per connection: short names are capped by the stream count.
    assert max(len(c.streams) for p in short.pods for c in p.connections) == 400
