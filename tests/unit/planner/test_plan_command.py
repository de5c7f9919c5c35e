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
