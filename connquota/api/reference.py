"""The field reference of both CRDs as Markdown, rendered from the same schema as crds/.

`python -m connquota.api.reference` prints it; docs/api.md embeds it between markers and a test
keeps the two in step.
"""

from __future__ import annotations

from typing import Any

from connquota.api.crd import CRDS, openapi_schema

BEGIN = "<!-- BEGIN GENERATED FIELD REFERENCE (python -m connquota.api.reference) -->"
END = "<!-- END GENERATED FIELD REFERENCE -->"


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type", "object")
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return "object (free-form)"
    if kind == "array":
        return f"[]{_type(node['items'])}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return f"{kind} ({node['format']})" if node.get("format") else str(kind)


def _bounds(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    lo, hi = node.get("minimum"), node.get("maximum")
    if lo is not None:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ):
        if key in node:
            parts.append(f"{label} {node[key]}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    if "default" in node:
        parts.append(f"default `{node['default']}`")
    keys = node.get("x-kubernetes-list-map-keys")
    if keys:
        parts.append("unique by " + "/".join(keys))
    elif node.get("x-kubernetes-list-type") == "set":
        parts.append("unique entries")
    return "; ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(node: dict[str, Any], path: str, required: bool, out: list[str]) -> None:
    description = node.get("description", "")
    out.append(
        f"| `{path}` | {_cell(_type(node))} | {'yes' if required else ''} | "
        f"{_cell(description)} | {_cell(_bounds(node))} |"
    )
    for rule in node.get("x-kubernetes-validations", []):
        out.append(f"| | | | rule: {_cell(rule['message'])} | `{_cell(rule['rule'])}` |")
    child = node
    suffix = ""
    while child.get("type") == "array":
        child = child["items"]
        suffix += "[]"
    names = set(child.get("required", []))
    for name, prop in child.get("properties", {}).items():
        _rows(prop, f"{path}{suffix}.{name}", name in names, out)


def render_reference() -> str:
    """Markdown tables of every field of every CRD, with bounds and rules."""
    out = [BEGIN, ""]
    for crd in CRDS:
        schema = openapi_schema(crd.model)
        out += [
            f"### {crd.kind} (`{crd.name}`, {crd.scope.lower()}, short name "
            f"`{crd.short_names[0]}`)",
            "",
            schema.get("description", ""),
            "",
            "| Field | Type | Required | Description | Bounds and rules |",
            "|---|---|---|---|---|",
        ]
        for part in ("spec", "status"):
            _rows(schema["properties"][part], part, part == "spec", out)
        out.append("")
    out.append(END)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")
