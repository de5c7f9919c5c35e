"""The images' recipe, checked without a Docker engine.

The Dockerfiles pass hadolint, pin their base by tag and digest, run as a numeric non-root
user and install only locked, hash-checked dependencies. The environment they build is then
built here the same way — the wheel from a copy of what the Dockerfile copies, the locks
installed with `--require-hashes --only-binary=:all: --no-deps`, from the wheels
`hack/image-wheelhouse.sh` cached (no network in the test) — into a clean virtualenv made
read-only, and both entry points run from it (`--help`, then a standalone gateway that becomes
ready on loopback and stops cleanly on SIGTERM).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {name: REPO / name / "Dockerfile" for name in ("operator", "gateway")}
BASE = re.compile(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}$", re.M)
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)")
WHEELHOUSE_HINT = "run `bash hack/image-wheelhouse.sh` (downloads the locked wheels once)"


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, check=False, **kwargs
    )  # type: ignore[call-overload]


def tool(name: str) -> Path:
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} missing from the dev environment: `make venv`"
    return path


def lock_pins(path: Path) -> dict[str, tuple[str, int]]:
    """Canonical name -> (version, number of hashes) of a `--generate-hashes` lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_passes_hadolint(name: str) -> None:
    result = run(tool("hadolint"), "--no-color", DOCKERFILES[name])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfiles_pin_the_base_run_non_root_and_differ_only_in_their_command() -> None:
    texts = {name: path.read_text() for name, path in DOCKERFILES.items()}
    for name, text in texts.items():
        assert BASE.search(text), f"{name}: base not pinned by version tag and digest"
        froms = re.findall(r"^FROM (\S+)", text, re.M)
        assert froms and all(f == "${PYTHON_IMAGE}" for f in froms), froms
        final = text.rsplit("\nFROM ", 1)[1]
        users = re.findall(r"^USER (\S+)", final, re.M)
        assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
        assert "COPY --from=build /opt/connquota /opt/connquota" in final
        assert not re.search(r"apt-get|pip install|gcc|build-essential", final), final
        assert f'CMD ["{name}"]' in text
        assert "--require-hashes" in text and "--only-binary=:all:" in text

    def strip(text: str) -> str:
        return "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith("#") and not line.startswith("CMD ")
        )

    assert strip(texts["operator"]) == strip(texts["gateway"])
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"], ".dockerignore must start from nothing"


def test_locks_pin_every_dependency_of_pyproject_with_hashes() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = lock_pins(REPO / "requirements.lock")
    build = lock_pins(REPO / "requirements-build.lock")
    assert runtime and build
    for pins in (runtime, build):
        assert all(hashes for _, hashes in pins.values()), "a pin without hashes"
    for spec in project["project"]["dependencies"]:
        req = Requirement(spec)
        pinned = runtime.get(canonicalize_name(req.name))
        assert pinned, f"{req.name} not in requirements.lock: regenerate it (docs/install.md)"
        assert req.specifier.contains(pinned[0]), f"{req.name}=={pinned[0]} violates {spec}"
    for spec in project["build-system"]["requires"]:
        req = Requirement(spec)
        pinned = build.get(canonicalize_name(req.name))
        assert pinned and req.specifier.contains(pinned[0]), f"build backend {spec}: {pinned}"
    docs = (REPO / "docs" / "install.md").read_text()
    for lock in ("requirements.lock", "requirements-build.lock"):
        command = (REPO / lock).read_text().splitlines()[1].lstrip("# ").strip()
        assert command in docs, f"docs/install.md does not show how {lock} is generated"


@pytest.fixture
def wheelhouse() -> Path:
    out = run("bash", REPO / "hack" / "image-wheelhouse.sh", "--print-dir")
    path = Path(out.stdout.strip())
    if not (path / ".complete").is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"no wheelhouse for the current locks at {path}: {WHEELHOUSE_HINT}")
        pytest.skip(f"no wheelhouse for the current locks at {path}: {WHEELHOUSE_HINT}")
    return path


def _writable(root: Path, on: bool) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(
            mode | stat.S_IWUSR if on else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
        )


@pytest.fixture
def image_root(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for venv in tmp_path.glob("opt/*"):
        _writable(venv, True)


def test_wheel_and_locks_install_into_a_clean_read_only_virtualenv_and_both_entry_points_run(
    wheelhouse: Path, image_root: Path
) -> None:
    src, opt = image_root / "src", image_root / "opt"
    # What the Dockerfile copies, and nothing else.
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.lock", "requirements-build.lock"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "connquota", src / "connquota", ignore=shutil.ignore_patterns("__pycache__")
    )
    offline = ["--no-index", "--find-links", str(wheelhouse), "--disable-pip-version-check"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(image_root), "PIP_NO_CACHE_DIR": "1"}
    for venv, lock in (("build", "requirements-build.lock"), ("connquota", "requirements.lock")):
        made = run(sys.executable, "-m", "venv", opt / venv, env=env)
        assert made.returncode == 0, made.stderr
        installed = run(
            opt / venv / "bin" / "pip", "install", *offline, "--require-hashes",
            "--only-binary=:all:", "--no-deps", "-r", src / lock, env=env,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stdout + installed.stderr
    built = run(
        opt / "build" / "bin" / "pip", "wheel", *offline, "--no-deps", "--no-build-isolation",
        "--wheel-dir", image_root / "wheels", src, cwd=src, env=env,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((image_root / "wheels").glob("connquota-*.whl"))
    assert len(wheels) == 1, wheels
    app = opt / "connquota" / "bin"
    installed = run(app / "pip", "install", *offline, "--no-deps", wheels[0], env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    consistent = run(app / "pip", "check", env=env)
    assert consistent.returncode == 0, consistent.stdout  # the lock is complete and consistent

    # The image's runtime: a read-only tree, no bytecode writes, no source checkout around.
    _writable(opt / "connquota", False)
    shutil.rmtree(src)
    runtime_env = {
        "PATH": f"{app}:/usr/bin:/bin",
        "HOME": str(image_root),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    where = run(app / "python", "-c", "import connquota; print(connquota.__file__)",
                env=runtime_env, cwd="/")  # fmt: skip
    assert where.stdout.startswith(str(opt / "connquota")), where.stdout + where.stderr
    for command in ("operator", "gateway"):
        result = run(app / "connquota", command, "--help", env=runtime_env, cwd="/")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"usage: connquota {command}"), result.stdout

    # A short real start: a standalone gateway with an empty plan serves /readyz from the
    # read-only install (no connection planned: no attempt to anything but loopback).
    from connquota.api.plan import PodPlan, QuotaRef
    from connquota.exchanges import get_profile
    from connquota.testing.controlplane import free_port

    profile = get_profile("binance-spot").model_copy(update={"endpoint": "ws://127.0.0.1:9/ws"})
    plan = PodPlan(
        generation=1, quota=QuotaRef(namespace="img", name="q"), ordinal=0, profile=profile
    )
    plan_file = image_root / "plan.json"
    plan_file.write_text(plan.model_dump_json())
    state = image_root / "state"
    state.mkdir()
    port = free_port()
    gateway = subprocess.Popen(
        [app / "connquota", "gateway", "--plan", plan_file, "--pod", "0", "--state-dir", state,
         "--host", "127.0.0.1", "--port", str(port)],
        env=runtime_env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        status = 0
        while status != 200:
            assert gateway.poll() is None, gateway.stdout.read().decode() if gateway.stdout else ""
            assert time.monotonic() < deadline, "the gateway did not become ready within 30 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    status = resp.status
            except (OSError, urllib.error.HTTPError):
                time.sleep(0.2)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            code = gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            code = gateway.wait(timeout=10)
    assert code == 0, f"the gateway exited {code} on SIGTERM"
