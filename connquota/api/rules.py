"""Cross-field rules, declared once and enforced twice: by the models and by the API server.

A model lists its rules in `RULES`. Each `Rule` carries a CEL expression (rendered into the CRD
as `x-kubernetes-validations`, so `kubectl apply` rejects a bad object) and the same predicate
in Python (run by the model's validator, so the CLI, the operator and the tests reject it too),
with one message naming the field. Uniqueness of list entries is declared on the field with
`list_map(...)` / `list_set()`: the API server enforces it natively (x-kubernetes-list-type) and
`ApiModel` checks it in Python from the same declaration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LIST_TYPE = "x-kubernetes-list-type"
LIST_MAP_KEYS = "x-kubernetes-list-map-keys"
VALIDATIONS = "x-kubernetes-validations"
UNIQUE_KEYS = "x-connquota-unique-keys"
"""Model-only uniqueness of an atomic list (the renderer drops it from the CRD)."""


@dataclass(frozen=True)
class Rule:
    """One cross-field rule: a CEL expression and the same predicate in Python."""

    cel: str
    """CEL over `self` (the object of the model that declares the rule)."""
    message: str
    """What is wrong, naming the field; shown by both the API server and the models."""
    check: Callable[[Any], bool]
    """The Python predicate: True when the object obeys the rule."""
    field_path: str | None = None
    """Field the API server reports the error on (relative to `self`, e.g. `.maxReplicas`)."""
    reason: str | None = None
    """FieldValueInvalid (default), FieldValueRequired, FieldValueForbidden, FieldValueDuplicate."""

    def to_validation(self) -> dict[str, str]:
        """The rule as one `x-kubernetes-validations` entry."""
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def list_map(*keys: str) -> dict[str, Any]:
    """Field schema extra: a list of objects unique by `keys` (merged by key on apply)."""
    return {LIST_TYPE: "map", LIST_MAP_KEYS: list(keys)}


def atomic_unique(*keys: str) -> dict[str, Any]:
    """Field schema extra: an atomic list whose entries the models require unique by `keys`.

    For long lists (5,000 explicit streams): as a list map, server-side field management would
    record every entry's key in managedFields, doubling the object; and a CEL uniqueness check
    over 5,000 entries is far beyond the API server's cost budget. The operator reports
    duplicates the API server lets through.
    """
    return {LIST_TYPE: "atomic", UNIQUE_KEYS: list(keys)}


def list_set() -> dict[str, Any]:
    """Field schema extra: a list of unique scalars."""
    return {LIST_TYPE: "set"}


def is_ip(text: str | None) -> bool:
    """True for an IPv4 or IPv6 address as Kubernetes CEL's isIP() accepts it.

    No zone (`%eth0`), no IPv4-mapped IPv6 form, no leading zeros in IPv4.
    """
    if not text or "%" in text:
        return False
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None)


def is_ipv6_prefix(text: str | None) -> bool:
    """True for an IPv6 prefix in CIDR form with no host bits set (e.g. 2001:db8:1::/48)."""
    if not text or "/" not in text or "%" in text:
        return False
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return False
    return network.version == 6


def has_duplicates(values: list[Any]) -> Any | None:
    """The first value that appears twice in `values`, or None."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None
