"""The generated CRDs on the real API server: installed, documented, and strict.

Examples are applied with server-side apply, as a GitOps
tool would; every object in tests/data/invalid/ must be rejected by the API server itself
(schema and CEL rules) with a message naming the field in its ``# expect:`` line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from connquota.testing.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
INVALID = sorted((REPO / "tests" / "data" / "invalid").glob("*.yaml"))
FIELD_MANAGER = "connquota-tests"

assert CRD_FILES, "crds/ is empty: run `make crds`"


def crd_docs() -> list[dict[str, Any]]:
    """The CRD documents in crds/."""
    return [doc for path in CRD_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def squash(text: str) -> str:
    """Collapse whitespace, so wrapped and unwrapped text compare equal."""
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> list[dict[str, Any]]:
    """The CRDs applied (server-side) and Established.

    They stay installed: other modules of the session (the operator's) use them too.
    """
    control_plane.kubectl(
        "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", str(REPO / "crds")
    )
    docs = crd_docs()
    names = [f"crd/{doc['metadata']['name']}" for doc in docs]
    control_plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *names, timeout_s=90
    )
    return docs


@pytest.fixture(scope="module")
def examples_applied(control_plane: ControlPlane, crds: Any) -> list[Path]:
    """Every example applied in file order (the namespace comes first)."""
    for path in EXAMPLES:
        control_plane.kubectl(
            "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", str(path)
        )
    return EXAMPLES


def test_crds_install_and_become_established(
    control_plane: ControlPlane, crds: list[dict[str, Any]]
) -> None:
    for doc in crds:
        name = doc["metadata"]["name"]
        conditions = control_plane.kubectl(
            "get",
            f"crd/{name}",
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status} {end}",
        ).stdout.split()
        assert "Established=True" in conditions
        assert "NamesAccepted=True" in conditions


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted_by_server_side_apply(
    control_plane: ControlPlane, examples_applied: list[Path], path: Path
) -> None:
    # Already applied once by the fixture; a second apply is a no-op conflict-free re-apply,
    # and a server dry run validates it again.
    result = control_plane.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        "--dry-run=server",
        "-f",
        str(path),
    )
    assert result.returncode == 0
    assert "created" in result.stdout or "serverside-applied" in result.stdout


def test_kubectl_explain_shows_the_descriptions_of_ecq_spec(
    control_plane: ControlPlane, crds: list[dict[str, Any]]
) -> None:
    (quota,) = [d for d in crds if d["spec"]["names"]["kind"] == "ExchangeConnectionQuota"]
    schema = quota["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    out = control_plane.kubectl("explain", "ecq.spec").stdout
    text = squash(out)
    assert squash(spec["description"])[:60] in text
    for name, prop in spec["properties"].items():
        assert re.search(rf"^\s+{re.escape(name)}\s", out, re.MULTILINE), f"{name} not listed"
        assert prop.get("description"), f"spec.{name} has no description"
        assert squash(prop["description"])[:40] in text, f"description of {name} not shown"


def test_kubectl_get_ecq_shows_the_printer_columns(
    control_plane: ControlPlane, crds: list[dict[str, Any]], examples_applied: list[Path]
) -> None:
    (quota,) = [d for d in crds if d["spec"]["names"]["kind"] == "ExchangeConnectionQuota"]
    columns = [
        c["name"].upper()
        for c in quota["spec"]["versions"][0]["additionalPrinterColumns"]
        if not c.get("priority")
    ]
    out = control_plane.kubectl("get", "ecq", "--all-namespaces").stdout.splitlines()
    header = out[0].split()
    assert header[:2] == ["NAMESPACE", "NAME"]
    assert header[2:] == columns
    names = {line.split()[1] for line in out[1:]}
    applied = {
        doc["metadata"]["name"]
        for path in EXAMPLES
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "ExchangeConnectionQuota"
    }
    assert applied and applied <= names
    exchange = control_plane.kubectl(
        "get", "ecq", "-A", "-o", "jsonpath={.items[0].spec.exchange}"
    ).stdout
    assert exchange and exchange in out[1]


def expected_fragment(path: Path) -> str:
    """The ``# expect: <fragment>`` line of an invalid-object file."""
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1).strip()


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_object_is_rejected_by_the_api_server_naming_the_field(
    control_plane: ControlPlane, examples_applied: list[Path], path: Path
) -> None:
    result = control_plane.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={FIELD_MANAGER}",
        "-f",
        str(path),
        check=False,
    )
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert expected_fragment(path) in result.stderr, result.stderr
