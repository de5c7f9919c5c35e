"""What every built object shares: owner references, labels, and the content hash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names


class QuotaIdentityError(ValueError):
    """The quota lacks what owned objects need (a name, namespace and uid)."""


def quota_ids(quota: ExchangeConnectionQuota) -> tuple[str, str, str]:
    """(namespace, name, uid) of `quota`; raises QuotaIdentityError when one is missing."""
    meta = quota.metadata
    if not meta.name or not meta.namespace or not meta.uid:
        raise QuotaIdentityError("quota metadata needs name, namespace and uid")
    return meta.namespace, meta.name, meta.uid


def owner_reference(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """The controller owner reference every owned object carries (garbage collection)."""
    _, name, uid = quota_ids(quota)
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.QUOTA_KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(
    quota: ExchangeConnectionQuota,
    name: str,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """metadata for an object owned by `quota` in its namespace."""
    namespace, quota_name, _ = quota_ids(quota)
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**names.common_labels(quota_name), **(labels or {})},
        "ownerReferences": [owner_reference(quota)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def content_hash(body: dict[str, Any]) -> str:
    """A short stable hash of an object body, ignoring the hash annotation itself."""
    meta = dict(body.get("metadata", {}))
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(names.ANNOTATION_HASH, None)
    meta["annotations"] = annotations
    canonical = json.dumps({**body, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def with_hash(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with its content hash in the `connquota.io/applied-hash` annotation."""
    digest = content_hash(body)
    meta = dict(body["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), names.ANNOTATION_HASH: digest}
    return {**body, "metadata": meta}
