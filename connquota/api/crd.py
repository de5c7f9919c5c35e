"""Render the CustomResourceDefinitions from the pydantic models (never edit crds/ by hand).

The models' JSON schema is turned into a structural OpenAPI v3 schema as the API server wants
it: `$ref`s inlined, `Optional` unions collapsed to the inner type, JSON-Schema-2020 bounds
rewritten in OpenAPI 3.0 form, `title`s and `additionalProperties: false` dropped, and the
models' cross-field rules carried as CEL `x-kubernetes-validations`. Every string and list
keeps a bound so the API server's CEL cost estimate stays bounded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from connquota.api import GROUP, VERSION
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.rules import UNIQUE_KEYS

CATEGORIES = ["connquota"]
PRESERVE = "x-kubernetes-preserve-unknown-fields"

_DROP_KEYS = frozenset({"title", "$defs", "examples", UNIQUE_KEYS})


@dataclass(frozen=True)
class CrdSpec:
    """What a CRD needs beyond the model's schema: names, scope, columns."""

    model: type[BaseModel]
    plural: str
    singular: str
    short_names: list[str]
    scope: str
    printer_columns: list[dict[str, Any]] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """The resource kind, the model's class name."""
        return self.model.__name__

    @property
    def name(self) -> str:
        """The CRD's object name, `<plural>.<group>`."""
        return f"{self.plural}.{GROUP}"


_READY = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    "description": "Status of the Ready condition.",
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

QUOTA_CRD = CrdSpec(
    model=ExchangeConnectionQuota,
    plural="exchangeconnectionquotas",
    singular="exchangeconnectionquota",
    short_names=["ecq"],
    scope="Namespaced",
    printer_columns=[
        {
            "name": "Exchange",
            "type": "string",
            "jsonPath": ".spec.exchange",
            "description": "Exchange profile.",
        },
        {
            "name": "Streams",
            "type": "integer",
            "jsonPath": ".status.streams.live",
            "description": "Streams subscribed upstream now.",
        },
        {
            "name": "Desired",
            "type": "integer",
            "jsonPath": ".status.streams.desired",
            "description": "Streams the quota declares.",
        },
        {
            "name": "Connections",
            "type": "integer",
            "jsonPath": ".status.connections.live",
            "description": "Upstream connections open now.",
        },
        {
            "name": "Pods",
            "type": "integer",
            "jsonPath": ".status.replicas",
            "description": "Gateway pods planned.",
        },
        {
            "name": "Updated",
            "type": "integer",
            "jsonPath": ".status.rollout.updated",
            "description": "Gateway pods running the current pod template (rollouts).",
            "priority": 1,
        },
        _READY,
        _AGE,
    ],
)

POOL_CRD = CrdSpec(
    model=ExchangeEgressPool,
    plural="exchangeegresspools",
    singular="exchangeegresspool",
    short_names=["ecp"],
    scope="Cluster",
    printer_columns=[
        {
            "name": "Quotas",
            "type": "integer",
            "jsonPath": ".status.quotas",
            "description": "Quotas using the pool.",
        },
        _READY,
        _AGE,
    ],
)

CRDS: tuple[CrdSpec, ...] = (QUOTA_CRD, POOL_CRD)
"""Every CRD connquota ships, in the order `connquota crd` prints them."""


class SchemaError(ValueError):
    """The models produce a schema the renderer cannot make structural."""


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with every `$ref` replaced by a copy of its definition (siblings win)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = copy.deepcopy(defs[name])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _strip_anchors(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix("$")


def _collapse_any_of(node: dict[str, Any]) -> dict[str, Any]:
    """Replace `anyOf` by one schema: drop the `null` branch; merge string alternatives."""
    branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
    if len(branches) == 1:
        merged = {**branches[0], **node}
    elif all(b.get("type") == "string" for b in branches):
        merged = {"type": "string", **node}
        patterns = [b.get("pattern") for b in branches]
        if all(patterns):
            merged["pattern"] = "^(" + "|".join(f"(?:{_strip_anchors(p)})" for p in patterns)
            merged["pattern"] += ")$"
        merged["maxLength"] = max(b.get("maxLength", 0) for b in branches) or None
        if merged["maxLength"] is None:
            raise SchemaError(f"string alternatives without maxLength: {branches}")
        if all("minLength" in b for b in branches):
            merged["minLength"] = min(b["minLength"] for b in branches)
    else:
        raise SchemaError(f"cannot make a structural schema of anyOf {branches}")
    if merged.get("default", 0) is None:
        del merged["default"]
    return merged


def _structural(node: Any) -> Any:
    """Rewrite a resolved JSON schema node (and its children) into structural OpenAPI v3."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}
    if "anyOf" in node:
        node = _collapse_any_of(node)
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        node = {**inner, **node}
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[inclusive] = node[bound]
            node[bound] = True
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("type") == "object":
        extra = node.get("additionalProperties")
        if extra is False or ("properties" in node and extra is not None):
            node.pop("additionalProperties", None)
        elif extra is True or (extra == {} and "properties" not in node):
            node.pop("additionalProperties")
            node[PRESERVE] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value)
        else:
            out[key] = value
    return out


def _order(node: Any) -> Any:
    """Put `description` and `type` first so the YAML reads top-down; recurse."""
    if isinstance(node, list):
        return [_order(item) for item in node]
    if not isinstance(node, dict):
        return node
    first = [k for k in ("description", "type", "format") if k in node]
    rest = [k for k in node if k not in first]
    return {k: _order(node[k]) for k in first + rest}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a custom resource model."""
    raw = model.model_json_schema(mode="validation")
    defs = raw.get("$defs", {})
    resolved = _resolve({k: v for k, v in raw.items() if k != "$defs"}, defs)
    schema = _structural(resolved)
    props = schema["properties"]
    props["apiVersion"] = {
        "description": "APIVersion of the object: connquota.io/v1alpha1.",
        "type": "string",
    }
    props["kind"] = {"description": f"Kind of the object: {model.__name__}.", "type": "string"}
    props["metadata"] = {"type": "object"}
    schema["required"] = ["spec"]
    ordered: dict[str, Any] = _order(schema)
    return ordered


def render_crd(crd: CrdSpec) -> dict[str, Any]:
    """One apiextensions.k8s.io/v1 CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd.name,
            "annotations": {"connquota.io/generated-by": "connquota crd (from connquota.api)"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": crd.kind,
                "listKind": f"{crd.kind}List",
                "plural": crd.plural,
                "singular": crd.singular,
                "shortNames": list(crd.short_names),
                "categories": list(CATEGORIES),
            },
            "scope": crd.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(crd.printer_columns),
                    "schema": {"openAPIV3Schema": openapi_schema(crd.model)},
                }
            ],
        },
    }


def crd_file_name(crd: CrdSpec) -> str:
    """The file a CRD is written to under crds/: `<plural>.<group>.yaml`."""
    return f"{crd.name}.yaml"


def to_yaml(document: dict[str, Any]) -> str:
    """A CRD (or any document) as stable, unwrapped YAML."""
    import yaml

    return yaml.safe_dump(document, sort_keys=False, width=1_000_000, allow_unicode=True)


def render_all_yaml() -> str:
    """Every CRD as one multi-document YAML stream."""
    return "---\n".join(to_yaml(render_crd(crd)) for crd in CRDS)


__all__ = [
    "CRDS",
    "POOL_CRD",
    "QUOTA_CRD",
    "CrdSpec",
    "SchemaError",
    "crd_file_name",
    "openapi_schema",
    "render_all_yaml",
    "render_crd",
    "to_yaml",
]
