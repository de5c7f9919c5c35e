"""The CRDs: rendered from the models, committed in crds/, structural and bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from connquota.api.crd import (
    CRDS,
    crd_file_name,
    openapi_schema,
    render_all_yaml,
    render_crd,
    to_yaml,
)

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c.name)
def test_committed_crds_match_what_the_models_render(crd: Any) -> None:
    committed = (CRD_DIR / crd_file_name(crd)).read_text()
    assert committed == to_yaml(render_crd(crd)), (
        f"crds/{crd_file_name(crd)} is stale: run `connquota crd --out crds` and commit it"
    )


def test_crds_folder_holds_nothing_but_the_rendered_crds() -> None:
    assert sorted(p.name for p in CRD_DIR.glob("*.yaml")) == sorted(crd_file_name(c) for c in CRDS)


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Every structural or bound problem in a schema node and its children."""
    problems = []
    for key in ("$ref", "anyOf", "oneOf", "allOf", "not", "$defs", "nullable"):
        if key in node:
            problems.append(f"{path}: has {key}")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return problems
    kind = node.get("type")
    if kind is None:
        problems.append(f"{path}: no type")
    elif kind == "array":
        if "maxItems" not in node:
            problems.append(f"{path}: array without maxItems")
        problems += _walk(node["items"], path + "[]")
    elif kind == "string":
        if not ({"maxLength", "enum", "format"} & node.keys()):
            problems.append(f"{path}: string without maxLength, enum or format")
    elif kind == "object":
        props = node.get("properties")
        extra = node.get("additionalProperties")
        if props is not None and extra is not None:
            problems.append(f"{path}: both properties and additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in node:
                problems.append(f"{path}: map without maxProperties")
            problems += _walk(extra, path + "{}")
        for name, child in (props or {}).items():
            problems += _walk(child, f"{path}.{name}")
        if props is None and extra is None and path != ".metadata":
            problems.append(f"{path}: object with neither properties nor preserve-unknown-fields")
    return problems


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c.name)
def test_rendered_schema_is_structural_and_every_list_and_string_is_bounded(crd: Any) -> None:
    schema = openapi_schema(crd.model)
    problems = []
    for name, child in schema["properties"].items():
        if name in ("apiVersion", "kind"):
            continue
        problems += _walk(child, "." + name)
    assert problems == []


@pytest.mark.parametrize("crd", CRDS, ids=lambda c: c.name)
def test_crd_has_status_subresource_short_name_category_and_ready_column(crd: Any) -> None:
    doc = render_crd(crd)
    names = doc["spec"]["names"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert names["shortNames"] == crd.short_names and names["categories"] == ["connquota"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_quota_crd_is_namespaced_and_shows_streams_connections_and_pods() -> None:
    doc = render_crd(CRDS[0])
    assert doc["spec"]["scope"] == "Namespaced" and doc["spec"]["names"]["shortNames"] == ["ecq"]
    columns = {
        c["name"]: c["jsonPath"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns["Streams"] == ".status.streams.live"
    assert columns["Desired"] == ".status.streams.desired"
    assert columns["Connections"] == ".status.connections.live"
    assert columns["Pods"] == ".status.replicas"


def test_pool_crd_is_cluster_scoped() -> None:
    doc = render_crd(CRDS[1])
    assert doc["spec"]["scope"] == "Cluster" and doc["spec"]["names"]["shortNames"] == ["ecp"]


def test_cross_field_rules_render_as_cel_with_messages_naming_the_field() -> None:
    schema = openapi_schema(CRDS[0].model)
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert any("custom" in r["message"] and "has(self.custom)" in r["rule"] for r in spec_rules)
    gateway = schema["properties"]["spec"]["properties"]["gateway"]
    assert gateway["x-kubernetes-validations"][0]["rule"] == "self.minReplicas <= self.maxReplicas"
    credentials = schema["properties"]["spec"]["properties"]["credentials"]
    assert credentials["x-kubernetes-list-type"] == "map"
    assert credentials["x-kubernetes-list-map-keys"] == ["name"]
    headroom = schema["properties"]["spec"]["properties"]["headroom"]
    assert headroom["minimum"] == 0 and headroom["exclusiveMinimum"] is True
    assert headroom["maximum"] == 1


def test_pool_address_rules_use_kubernetes_ip_and_cidr_functions() -> None:
    schema = openapi_schema(CRDS[1].model)
    address = schema["properties"]["spec"]["properties"]["addresses"]["items"]
    rules = " ".join(r["rule"] for r in address["x-kubernetes-validations"])
    assert "isIP(self.publicAddress)" in rules and "isCIDR(self.publicAddress)" in rules


def test_crd_command_prints_both_crds_and_writes_them(tmp_path: Path, capsys: Any) -> None:
    from connquota.cli import main

    assert main(["crd"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in docs] == [c.name for c in CRDS]
    assert render_all_yaml().count("kind: CustomResourceDefinition") == 2
    assert main(["crd", "--out", str(tmp_path)]) == 0
    for crd in CRDS:
        assert (tmp_path / crd_file_name(crd)).read_text() == to_yaml(render_crd(crd))


def test_api_docs_embed_the_current_field_reference() -> None:
    from connquota.api.reference import render_reference

    docs = (REPO / "docs" / "api.md").read_text()
    assert render_reference() in docs, (
        "docs/api.md is stale: replace its generated part with `python -m connquota.api.reference`"
    )
