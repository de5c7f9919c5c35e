"""The operator plans what `connquota plan` prints: the same streams, names and bytes, through
the operator's single door to the planner (`connquota.operator.planning`), incremental replans
included."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml
from planner_factories import credential, pool, profile, quota

from connquota.api.plan import QuotaPlan
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.commands import plan as plan_command
from connquota.operator import planning
from connquota.planner.inputs import DesiredStream
from connquota.planner.plan import PlanRequest, plan_quota
from connquota.planner.pool_plan import plan_json
from connquota.planner.shares import divide_budgets

ROOT = Path(__file__).resolve().parents[3]
QUOTAS = sorted((ROOT / "examples").glob("1*-quota-*.yaml"))
POOL = ROOT / "examples" / "01-pool-bind.yaml"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def cli_plan(quota_file: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """What `connquota plan QUOTA --pool POOL -o json` prints."""
    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    args = parser.parse_args([str(quota_file), "--pool", str(POOL), "-o", "json", *extra])
    capsys.readouterr()
    assert plan_command.run(args) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def operator_plan(
    quota_file: Path, indexes: planning.PlanIndexes, published: QuotaPlan | None = None
) -> str:
    """The target the operator plans for the same quota, as `-o json` prints a plan."""
    docs = _documents(quota_file)
    body = next(d for d in docs if d["kind"] == "ExchangeConnectionQuota")
    body["metadata"]["uid"] = "uid-" + quota_file.stem
    quota_obj = ExchangeConnectionQuota.model_validate(body)
    configmaps = {
        d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"
    }
    pool_spec = ExchangeEgressPool.model_validate(_documents(POOL)[0]).spec
    qin = planning.quota_input(quota_obj)
    streams = planning.desired_streams(quota_obj, configmaps, qin)
    shares = planning.divide(pool_spec, [qin]).quotas[qin.key]
    target = planning.plan_target(qin, streams, pool_spec, shares, published, indexes)
    return target.model_dump_json(indent=2, exclude_none=True) + "\n"


@pytest.mark.parametrize("quota_file", QUOTAS, ids=lambda p: p.stem)
def test_operator_and_cli_plan_every_example_quota_byte_for_byte(
    quota_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = cli_plan(quota_file, capsys)
    indexes = planning.PlanIndexes()
    assert operator_plan(quota_file, indexes) == cli
    # A replan from the kept index against the published plan: the CLI's --previous plan.
    previous = QuotaPlan.model_validate_json(cli)
    tmp = quota_file.with_name(f".{quota_file.stem}.previous.json")
    sticky_cli = None
    try:
        tmp.write_text(cli)
        sticky_cli = cli_plan(quota_file, capsys, "--previous", str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    assert operator_plan(quota_file, indexes, previous) == sticky_cli


def test_okx_stream_sets_are_spelled_the_okx_way_by_the_operator() -> None:
    quota_file = ROOT / "examples" / "12-quota-okx.yaml"
    plan = QuotaPlan.model_validate_json(operator_plan(quota_file, planning.PlanIndexes()))
    names = {s for p in plan.pods for c in p.connections for s in c.streams}
    assert "tickers:BTC-USDT" in names
    assert not any("@" in n for n in names)


def _request(q, p, desired, previous, generation):
    shares = divide_budgets(p, [q]).quotas[q.key]
    return PlanRequest(q.ref, q.spec, q.profile, p, shares, desired, generation, previous), shares


def test_incremental_targets_equal_full_plans_over_a_sequence_of_edits() -> None:
    """Adds, removals, a priority change, a pool change and a capacity change, one after the
    other, each planned through the operator's door and by a full `plan_quota`."""
    q = quota(prof=profile(streams_per_connection=10), credentials=[credential("k1")])
    q = type(q)(q.namespace, q.name, q.spec, q.profile, uid="uid-1")
    indexes = planning.PlanIndexes()
    desired = [DesiredStream(f"s{i:04d}") for i in range(300)]
    p = pool(2)
    edits = [
        lambda d, p: ([*d, DesiredStream("new-0")], p),
        lambda d, p: ([*d, DesiredStream("new-1"), DesiredStream("new-2", 0, "k1")], p),
        lambda d, p: ([s for s in d if s.name != "s0007"], p),
        lambda d, p: ([s for s in d if s.name not in ("s0100", "s0101")] + [DesiredStream("x")], p),
        lambda d, p: ([DesiredStream(s.name, 5) if s.name == "s0009" else s for s in d], p),
        lambda d, p: (d, pool(3)),
        lambda d, p: ([*d, DesiredStream("after-pool")], p),
    ]
    published: QuotaPlan | None = None
    paths = []
    for step, edit in enumerate([lambda d, p: (d, p), *edits]):
        desired, p = edit(desired, p)
        generation = (published.generation + 1) if published else 1
        req, shares = _request(q, p, desired, published, generation)
        full = plan_json(plan_quota(req))
        fast = indexes.incremental
        target = planning.plan_target(q, desired, p, shares, published, indexes)
        assert plan_json(target) == full, f"step {step}"
        assert len(indexes) == 1
        paths.append("fast" if indexes.incremental > fast else "full")
        published = target
    # Stream adds and removals take the fast path; the first plan, the priority change and the
    # pool change (another input digest) take the full one.
    assert paths == ["full", "fast", "fast", "fast", "fast", "full", "full", "fast"]


def test_another_quota_object_with_the_same_name_never_reuses_the_index() -> None:
    q = quota()
    a = type(q)(q.namespace, q.name, q.spec, q.profile, uid="uid-a")
    b = type(q)(q.namespace, q.name, q.spec, q.profile, uid="uid-b")
    indexes = planning.PlanIndexes()
    desired = [DesiredStream(f"s{i:04d}") for i in range(50)]
    req, _ = _request(a, pool(1), desired, None, 1)
    indexes.plan(a.uid, req)
    plan, incremental = indexes.plan(b.uid, req)
    assert not incremental
    assert plan_json(plan) == plan_json(plan_quota(req))
    indexes.forget(a.uid)
    indexes.forget(b.uid)
    assert len(indexes) == 0
