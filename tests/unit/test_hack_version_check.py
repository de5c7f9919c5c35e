"""hack/lib/version-check.sh: the control-plane build's version smoke checks.

Issue 10, defect 6: the build piped `etcd --version` into `grep -q` under `set -o pipefail`;
grep exits at the first match, the binary's next write gets SIGPIPE (exit 141), and a correct
build failed after ten minutes of compiling. The fake binary below writes its version line and
then far more than a pipe buffer holds, which makes that failure certain instead of 1 in 13.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIB = REPO / "hack" / "lib" / "version-check.sh"
BUILD = REPO / "hack" / "build-control-plane.sh"

# A version line, then ~600 kB of further output (a pipe buffer holds 64 kB).
FAKE_ETCD = """#!/usr/bin/env bash
echo "etcd Version: 3.6.5"
for i in $(seq 1 20000); do echo "Git SHA: filler line $i of the build information"; done
"""


@pytest.fixture
def fake_etcd(tmp_path: Path) -> Path:
    path = tmp_path / "etcd"
    path.write_text(FAKE_ETCD)
    path.chmod(0o755)
    return path


def bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\nsource {LIB}\n{script}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_fake_binary_reproduces_the_sigpipe_of_the_old_check(fake_etcd: Path) -> None:
    # The old form of the check: this is what failed the build.
    result = bash(f'{fake_etcd} --version | grep -q "etcd Version: 3.6.5"')
    assert result.returncode == 141


def test_expect_version_accepts_a_chatty_binary_under_pipefail(fake_etcd: Path) -> None:
    result = bash(f'expect_version etcd contains "etcd Version: 3.6.5" {fake_etcd} --version')
    assert result.returncode == 0, result.stderr


def test_expect_version_line_mode_matches_whole_lines_only(fake_etcd: Path) -> None:
    whole = bash(f'expect_version etcd line "etcd Version: 3.6.5" {fake_etcd} --version')
    part = bash(f'expect_version etcd line "etcd Version: 3.6" {fake_etcd} --version')
    assert whole.returncode == 0, whole.stderr
    assert part.returncode == 1
    assert "expected line 'etcd Version: 3.6'" in part.stderr


def test_expect_version_reports_a_mismatch_with_what_the_binary_said(fake_etcd: Path) -> None:
    result = bash(f'expect_version etcd contains "etcd Version: 3.7.0" {fake_etcd} --version')
    assert result.returncode == 1
    assert "etcd: " in result.stderr
    assert "reports 'etcd Version: 3.6.5" in result.stderr


def test_expect_version_fails_when_the_binary_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text("#!/usr/bin/env bash\necho 'etcd Version: 3.6.5'\nexit 3\n")
    broken.chmod(0o755)
    result = bash(f'expect_version etcd contains "etcd Version: 3.6.5" {broken} --version')
    assert result.returncode == 1
    assert "exited 3" in result.stderr


def test_no_hack_script_pipes_into_an_early_exiting_reader() -> None:
    """`| grep -q`, `| head` and friends under pipefail are the defect-6 pattern."""
    offenders = []
    for script in sorted((REPO / "hack").rglob("*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            if any(p in code for p in ("| grep -q", "|grep -q", "| head", "|head", "| grep -m")):
                offenders.append(f"{script.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []
    assert 'source "$repo/hack/lib/version-check.sh"' in BUILD.read_text()
