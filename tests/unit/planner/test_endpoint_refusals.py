"""A stream the quota's endpoint does not serve is refused at planning (issue 12): OKX candles
declared on `/ws/v5/public` (or tickers on `/ws/v5/business`) are never placed on a connection
and the plan lists them unserved with a reason naming the endpoint that serves them; the rest
of the quota is planned as without them, by the operator and by `connquota plan` alike."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.commands import plan as plan_command
from connquota.exchanges import get_profile
from connquota.exchanges.dialects import okx
from connquota.operator import planning
from connquota.planner import plan_pool
from connquota.planner.endpoints import split_by_endpoint
from connquota.planner.inputs import DesiredStream
from connquota.planner.pool_plan import plan_json

ROOT = Path(__file__).resolve().parents[3]
POOL = ROOT / "examples" / "01-pool-bind.yaml"
PUBLIC = ["tickers:BTC-USDT", "trades:ETH-USDT", "books:BTC-USDT"]
BUSINESS = ["candle1m:BTC-USDT", "candle1H:ETH-USDT", "trades-all:BTC-USDT"]


def okx_quota(streams: list[str], endpoint: str | None = None) -> dict:
    spec: dict = {
        "exchange": "okx",
        "headroom": 0.7,
        "egressPoolRef": {"name": "loopback"},
        "streams": [{"name": s} for s in streams],
    }
    if endpoint is not None:
        spec["endpoint"] = endpoint
    return {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": "okx", "namespace": "connquota-demo", "uid": "uid-okx"},
        "spec": spec,
    }


def operator_target(body: dict, indexes: planning.PlanIndexes, previous=None) -> QuotaPlan:
    """The target plan the operator makes for the quota, through its door to the planner."""
    quota_obj = ExchangeConnectionQuota.model_validate(body)
    pool_spec = ExchangeEgressPool.model_validate(yaml.safe_load(POOL.read_text())).spec
    qin = planning.quota_input(quota_obj)
    streams = planning.desired_streams(quota_obj, {}, qin)
    shares = planning.divide(pool_spec, [qin]).quotas[qin.key]
    return planning.plan_target(qin, streams, pool_spec, shares, previous, indexes)


def placed(plan: QuotaPlan) -> list[str]:
    return sorted(s for pod in plan.pods for c in pod.connections for s in c.streams)


def unserved(plan: QuotaPlan) -> dict[str, str]:
    return {u.stream: u.reason for u in plan.unserved}


def test_okx_knows_which_endpoint_serves_each_channel_it_knows() -> None:
    for channel in ("candle1m", "candle1H", "mark-price-candle3M", "index-candle1m", "trades-all"):
        assert okx.home_endpoint(channel) == "business", channel
        reason = okx.endpoint_refusal("/ws/v5/public", channel)
        assert reason is not None and "/ws/v5/business" in reason, channel
        assert okx.endpoint_refusal("/ws/v5/business", channel) is None
    assert "60018" in (okx.endpoint_refusal("/ws/v5/public", "candle1m") or "")
    assert "64001" in (okx.endpoint_refusal("/ws/v5/public", "trades-all") or "")
    for channel in ("tickers", "trades", "books", "books5"):
        assert okx.endpoint_refusal("/ws/v5/public", channel) is None
        reason = okx.endpoint_refusal("/ws/v5/business", channel)
        assert reason is not None and "/ws/v5/public" in reason and "64002" in reason
    # private channels want a logged-in connection; unknown channels and paths are the
    # exchange's to judge
    assert "credential" in (okx.endpoint_refusal("/ws/v5/public", "orders") or "")
    assert okx.endpoint_refusal("/ws/v5/business", "sprd-public-trades") is None
    assert okx.endpoint_refusal("/ws/v5/other", "candle1m") is None


def test_candles_on_okxs_public_endpoint_are_unserved_with_the_business_path_as_the_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = okx_quota(PUBLIC + BUSINESS)
    plan = operator_target(body, planning.PlanIndexes())
    assert placed(plan) == sorted(PUBLIC)
    reasons = unserved(plan)
    assert sorted(reasons) == sorted(BUSINESS)
    for stream, reason in reasons.items():
        channel = stream.partition(":")[0]
        assert reason.startswith(f"OKX serves {channel} on /ws/v5/business only"), reason
        assert "quota whose endpoint is /ws/v5/business" in reason
    # the rest of the quota is planned exactly as a quota without the refused streams
    alone = operator_target(okx_quota(PUBLIC), planning.PlanIndexes())
    assert plan.pods == alone.pods and alone.unserved == []
    # `connquota plan` prints the same plan
    (tmp_path / "quota.yaml").write_text(yaml.safe_dump(body))
    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "quota.yaml"), "--pool", str(POOL), "-o", "json"])
    capsys.readouterr()
    assert plan_command.run(args) == 0, capsys.readouterr().err
    assert QuotaPlan.model_validate_json(capsys.readouterr().out) == plan


def test_public_channels_on_okxs_business_endpoint_are_unserved_and_candles_served() -> None:
    body = okx_quota([*BUSINESS, "tickers:BTC-USDT"], "wss://ws.okx.com:8443/ws/v5/business")
    plan = operator_target(body, planning.PlanIndexes())
    assert placed(plan) == sorted(BUSINESS)
    (reason,) = unserved(plan).values()
    assert "OKX serves tickers on /ws/v5/public only" in reason and "64002" in reason


def test_incremental_replans_refuse_the_same_streams_as_full_plans() -> None:
    indexes = planning.PlanIndexes()
    first = operator_target(okx_quota(PUBLIC + BUSINESS[:1]), indexes)
    edited = okx_quota([*PUBLIC, *BUSINESS, "tickers:SOL-USDT"])
    fast = indexes.incremental
    second = operator_target(edited, indexes, first)
    assert indexes.incremental == fast + 1  # stream edits take the kept index
    full = operator_target(edited, planning.PlanIndexes(), first)
    assert plan_json(second) == plan_json(full)
    assert sorted(unserved(second)) == sorted(BUSINESS)
    assert placed(second) == sorted([*PUBLIC, "tickers:SOL-USDT"])


def test_pool_plans_refuse_them_too_and_other_dialects_are_not_judged() -> None:
    qin = planning.quota_input(ExchangeConnectionQuota.model_validate(okx_quota(PUBLIC + BUSINESS)))
    pool_spec = ExchangeEgressPool.model_validate(yaml.safe_load(POOL.read_text())).spec
    desired = [DesiredStream(s) for s in PUBLIC + BUSINESS]
    result = plan_pool(pool_spec, [qin], {qin.key: desired}, {qin.key: 1})
    assert sorted(unserved(result.plans[qin.key])) == sorted(BUSINESS)
    binance = get_profile("binance-spot")
    names = [DesiredStream("btcusdt@trade"), DesiredStream("candle1m:BTC-USDT")]
    split = split_by_endpoint(binance, names)
    assert split.served == names and split.refused == []
    # a private stream goes to the private endpoint: not judged against the public one
    okx_profile = get_profile("okx")
    private = [DesiredStream("orders:instType=ANY", 0, "k1")]
    assert split_by_endpoint(okx_profile, private).served == private


def test_binance_usdm_routes_refuse_each_others_streams() -> None:
    """USD-M's /market route acknowledges depth subscriptions and never delivers them (and
    /public the reverse): such streams are refused at planning, naming the route that serves
    them; spot's paths have no routes and refuse nothing."""
    usdm = get_profile("binance-usdm")
    assert usdm.endpoint.endswith("/market/stream")
    streams = [DesiredStream(name=n) for n in ("btcusdt@aggTrade", "btcusdt@depth@100ms")]
    split = split_by_endpoint(usdm, streams)
    assert [s.name for s in split.served] == ["btcusdt@aggTrade"]
    ((refused),) = split.refused
    assert refused.stream == "btcusdt@depth@100ms"
    assert "/public" in refused.reason
    public = usdm.with_endpoint("wss://fstream.binance.com/public/stream")
    split = split_by_endpoint(public, streams)
    assert [s.name for s in split.served] == ["btcusdt@depth@100ms"]
    assert [s.stream for s in split.refused] == ["btcusdt@aggTrade"]
    spot = get_profile("binance-spot")
    assert split_by_endpoint(spot, streams).refused == []
