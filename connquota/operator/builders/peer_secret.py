"""The gateways' peer token: a Secret the operator creates once per quota (never rewritten, so
running pods keep a token their peers accept), mounted in that quota's gateway pods only."""

from __future__ import annotations

import secrets
from typing import Any

from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names
from connquota.operator.builders.common import object_meta, quota_ids

TOKEN_KEY = "token"
TOKEN_BYTES = 32


def build_peer_secret(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """A new peer-token Secret for `quota` (a fresh random token: create it, never apply it)."""
    _, quota_name, _ = quota_ids(quota)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(quota, names.peer_secret_name(quota_name)),
        "type": "Opaque",
        "stringData": {TOKEN_KEY: secrets.token_hex(TOKEN_BYTES)},
    }
