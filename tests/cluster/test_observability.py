"""connquota's alert rules, judged by Prometheus' own promtool.

`promtool check rules` parses every expression and template of the shipped rule file;
`promtool test rules` evaluates each alert against series that must fire it and series that
must not (tests/data/prometheus/rules.test.yaml). promtool is built from the pinned Go module
(hack/build-promtool.sh), so it sits with the other Go-built tools in the cluster tier.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "charts/connquota/files/prometheus/rules.yaml"
RULE_TESTS = REPO / "tests/data/prometheus/rules.test.yaml"
ALERTS = {
    "ConnquotaAddressBudgetHigh",
    "ConnquotaAccountBudgetHigh",
    "ConnquotaRateLimited",
    "ConnquotaBudgetReduced",
    "ConnquotaCapacityExceeded",
    "ConnquotaQuotaNotReady",
    "ConnquotaGatewayLeaseNotRenewed",
    "ConnquotaOperatorNotProgressing",
}


def run(promtool: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_checks_the_rules(promtool: Path) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert names == ALERTS


def test_every_alert_fires_and_stays_quiet_as_its_series_say(promtool: Path) -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == ALERTS
    result = run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_a_wrong_expectation_fails_promtool(promtool: Path, tmp_path: Path) -> None:
    """The rule tests can fail: expecting silence where an alert fires is reported."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    doc["rule_files"] = [str(RULES)]
    doc["tests"] = doc["tests"][:1]
    doc["tests"][0]["alert_rule_test"][1]["exp_alerts"] = []
    wrong = tmp_path / "wrong.test.yaml"
    wrong.write_text(yaml.safe_dump(doc))
    result = run(promtool, "test", "rules", str(wrong))
    assert result.returncode != 0
    assert "ConnquotaAddressBudgetHigh" in result.stdout + result.stderr
