"""`connquota plan`, run as a user runs it: a real process on the shipped examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
QUOTAS = sorted((ROOT / "examples").glob("1*-quota-*.yaml"))
POOLS = sorted((ROOT / "examples").glob("0*-pool-*.yaml"))


def connquota(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "connquota.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _pool_files() -> dict[str, Path]:
    return {yaml.safe_load(p.read_text())["metadata"]["name"]: p for p in POOLS}


def test_every_example_quota_plans_on_its_pool_with_a_readable_table():
    assert QUOTAS and POOLS
    pools = _pool_files()
    for quota in QUOTAS:
        doc = next(
            d
            for d in yaml.safe_load_all(quota.read_text())
            if d and d.get("kind") == "ExchangeConnectionQuota"
        )
        pool = pools[doc["spec"]["egressPoolRef"]["name"]]
        out = connquota("plan", str(quota), "--pool", str(pool))
        assert out.returncode == 0, out.stderr
        assert "POD" in out.stdout and "RECOVERY" in out.stdout
        assert " 0 unserved" in out.stdout, out.stdout


def test_without_a_pool_the_output_says_a_default_pool_was_used():
    out = connquota("plan", str(QUOTAS[0]))
    assert out.returncode == 0, out.stderr
    assert "default pool" in out.stdout


def test_replanning_against_its_own_json_output_reports_no_churn(tmp_path):
    first = connquota("plan", str(QUOTAS[0]), "-o", "json")
    assert first.returncode == 0, first.stderr
    (tmp_path / "plan.json").write_text(first.stdout)
    assert json.loads(first.stdout)["generation"] == 1
    again = connquota("plan", str(QUOTAS[0]), "--previous", str(tmp_path / "plan.json"))
    assert "0 opened, 0 closed" in again.stdout


@pytest.mark.parametrize(
    "content, message",
    [
        ("kind: ConfigMap\n", "holds no ExchangeConnectionQuota"),
        ("kind: ExchangeConnectionQuota\nspec: {exchange: nope}\n", "error:"),
    ],
)
def test_bad_input_is_a_one_line_error_without_a_traceback(tmp_path, content, message):
    path = tmp_path / "quota.yaml"
    path.write_text(content)
    out = connquota("plan", str(path))
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_an_invalid_quota_is_one_line_naming_file_field_and_rule(tmp_path):
    doc = yaml.safe_load(QUOTAS[0].read_text().split("\n---")[0])
    doc["spec"]["headroom"] = 1.5
    path = tmp_path / "quota.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = connquota("plan", str(path))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(path) in lines[0] and "spec.headroom" in lines[0] and "1" in lines[0]
    assert "input_value" not in out.stderr and "https://" not in out.stderr


def test_an_invalid_pool_names_the_pool_file_and_field(tmp_path):
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        "kind: ExchangeEgressPool\nmetadata: {name: p}\nspec:\n  addresses:\n"
        "    - {name: a, publicAddress: not-an-ip, mode: proxy, proxyUrl: 'http://127.0.0.1:1'}\n"
    )
    out = connquota("plan", str(QUOTAS[0]), "--pool", str(pool))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(pool) in lines[0] and "spec.addresses[0]" in lines[0], lines


@pytest.mark.parametrize("garbage", ["not json at all", '{"generation": "x"}', "[]"])
def test_a_garbage_previous_plan_names_the_flag_and_the_file(tmp_path, garbage):
    path = tmp_path / "previous.json"
    path.write_text(garbage)
    out = connquota("plan", str(QUOTAS[0]), "--previous", str(path))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"--previous {path}" in lines[0]
    assert "Traceback" not in out.stderr and "input_value" not in out.stderr


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "quota.yaml"
    path.write_text("kind: ExchangeConnectionQuota\nspec: [unclosed\n")
    out = connquota("plan", str(path))
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: {path}: not valid YAML (line ")


def test_a_missing_previous_plan_names_the_flag_and_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    out = connquota("plan", str(QUOTAS[0]), "--previous", str(missing))
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: --previous {missing}: No such file or directory"
