"""hack/pytest-tier.sh and .ci/run: a failing or empty tier fails CI (docs/testing.md)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def fake(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)
    return path


def tier(tmp_path: Path, pytest_exit: int, empty: str) -> subprocess.CompletedProcess[str]:
    pytest_bin = fake(tmp_path, "pytest", f'echo "pytest $*"; exit {pytest_exit}')
    return subprocess.run(
        ["bash", str(REPO / "hack" / "pytest-tier.sh"), "sometier", empty, "-m", "x", "tests"],
        env={**os.environ, "PYTEST": str(pytest_bin)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("empty", ["empty-ok", "empty-fails"])
@pytest.mark.parametrize("code", [0, 1, 2, 3, 4])
def test_the_tier_passes_pytests_own_exit_code_on(tmp_path: Path, code: int, empty: str) -> None:
    result = tier(tmp_path, code, empty)
    assert result.returncode == code
    assert "pytest -m x tests" in result.stdout


def test_an_empty_selection_fails_a_tier_that_must_not_be_empty(tmp_path: Path) -> None:
    result = tier(tmp_path, 5, "empty-fails")
    assert result.returncode == 5
    assert "sometier: FAILED: no test selected" in result.stderr


def test_an_empty_selection_passes_a_tier_that_may_be_empty_and_says_so(tmp_path: Path) -> None:
    result = tier(tmp_path, 5, "empty-ok")
    assert result.returncode == 0
    assert "sometier: no test selected (allowed for this tier)" in result.stderr


@pytest.mark.parametrize(
    ("test_rc", "soak_rc", "chaos_rc", "expected"),
    [(0, 0, 0, 0), (2, 0, 0, 2), (0, 5, 0, 5), (1, 2, 0, 1), (0, 0, 3, 3), (0, 4, 3, 4)],
)
def test_ci_runs_test_soak_and_chaos_and_fails_with_the_first_failure(
    tmp_path: Path, test_rc: int, soak_rc: int, chaos_rc: int, expected: int
) -> None:
    log = tmp_path / "make.log"
    fake(
        tmp_path,
        "make",
        f'echo "$1 CI=$CI" >> {log}; case "$1" in test) exit {test_rc};; '
        f"soak) exit {soak_rc};; chaos) exit {chaos_rc};; esac",
    )
    result = subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CI": "true"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == expected, result.stdout + result.stderr
    assert log.read_text().splitlines() == ["test CI=true", "soak CI=true", "chaos CI=true"]
