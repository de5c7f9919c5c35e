"""Supported maximums: a quota at every maximum still fits in one Kubernetes object.

etcd refuses requests over 1.5 MiB by default, so the API server cannot store a bigger object.
This test builds the largest spec the schema admits (every list at its maximum length, every
string at its maximum length) and checks its JSON stays under that, leaving room for metadata
and status. docs/api.md quotes the sizes.
"""

from __future__ import annotations

import json
from typing import Any

from connquota.api import ExchangeConnectionQuota
from connquota.api.limits import MAX_LIMIT_VALUE, MAX_WINDOW_SECONDS, LimitName
from connquota.api.quota import (
    MAX_ANNOTATION_VALUE_LENGTH,
    MAX_CHANNELS_IN_SETS,
    MAX_CREDENTIALS,
    MAX_EXPLICIT_STREAMS,
    MAX_LIMIT_OVERRIDES,
    MAX_PRIORITY,
    MAX_REPLICAS,
    MAX_SHARE_REQUESTS,
    MAX_STREAM_NAME_LENGTH,
    MAX_STREAM_SETS,
    MAX_STREAMS_FROM,
    MAX_STREAMS_PER_QUOTA,
    MAX_SYMBOLS_IN_SETS,
    REQUIRED_LIMITS,
    declared_stream_count,
)

OBJECT_LIMIT_BYTES = 1_572_864  # 1.5 MiB: etcd's default --max-request-bytes
STATUS_AND_METADATA_ROOM_BYTES = 16_384


def _label(index: int, length: int = 63) -> str:
    return f"{index:05d}".ljust(length, "a")[:length]


def _text(length: int) -> str:
    return "x" * length


def _limits() -> list[dict[str, Any]]:
    scopes = ["ip", "account", "connection", "message"]
    keys = list(REQUIRED_LIMITS) + [
        (name, scope)
        for name in LimitName
        for scope in scopes
        if (name, scope) not in REQUIRED_LIMITS
    ]
    return [
        {
            "name": str(keys[i][0]),
            "scope": str(keys[i][1]),
            "value": MAX_LIMIT_VALUE,
            "shape": "tokenBucket",
            "windowSeconds": MAX_WINDOW_SECONDS,
            "burst": MAX_LIMIT_VALUE,
            "confidence": "assumed",
            "source": "https://" + _text(248),
            "note": _text(512),
        }
        for i in range(MAX_LIMIT_OVERRIDES)
    ]


def quota_at_every_maximum() -> dict[str, Any]:
    """The largest ExchangeConnectionQuota the schema admits, as a wire dict."""
    credential = _label(0)
    sets = MAX_STREAM_SETS
    symbols_per_set = MAX_SYMBOLS_IN_SETS // sets
    channels_per_set = MAX_CHANNELS_IN_SETS // sets
    budget_for_sets = MAX_STREAMS_PER_QUOTA - MAX_EXPLICIT_STREAMS
    assert sets * symbols_per_set * channels_per_set <= budget_for_sets
    return {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": _label(1, 253), "namespace": _label(2)},
        "spec": {
            "exchange": "custom",
            "custom": {
                "endpoint": "wss://" + _text(2042),
                "dialect": "binance",
                "domain": "a" * 253,
                "limits": _limits(),
                "heartbeat": {
                    "direction": "serverPing",
                    "intervalSeconds": 3600,
                    "timeoutSeconds": 3600,
                    "countsAsMessage": True,
                },
                "deadConnectionTimeoutSeconds": 3600,
            },
            "endpoint": "wss://" + _text(2042),
            "limits": _limits(),
            "headroom": 0.987654321,
            "egressPoolRef": {"name": _text(253)},
            "shares": [
                {"address": _label(i), "fraction": 0.123456789} for i in range(MAX_SHARE_REQUESTS)
            ],
            "credentials": [
                {
                    "name": _label(i),
                    "secretRef": {
                        "name": _label(i),
                        "apiKeyKey": _text(253),
                        "apiSecretKey": _text(253),
                        "passphraseKey": _text(253),
                    },
                    "accountId": _text(128),
                }
                for i in range(MAX_CREDENTIALS)
            ],
            "streams": [
                {
                    "name": _label(i, MAX_STREAM_NAME_LENGTH),
                    "priority": MAX_PRIORITY,
                    "credential": credential,
                }
                for i in range(MAX_EXPLICIT_STREAMS)
            ],
            "streamSets": [
                {
                    "symbols": [_label(s * 1000 + i, 48) for i in range(symbols_per_set)],
                    "channels": [_label(s * 1000 + i, 64) for i in range(channels_per_set)],
                    "priority": MAX_PRIORITY,
                    "credential": credential,
                }
                for s in range(sets)
            ],
            "streamsFrom": [
                {
                    "configMapRef": {"name": _text(253)},
                    "key": _text(253),
                    "priority": MAX_PRIORITY,
                    "credential": credential,
                    "optional": True,
                }
                for _ in range(MAX_STREAMS_FROM)
            ],
            "gateway": {
                "image": _text(1024),
                "imagePullPolicy": "IfNotPresent",
                "resources": {
                    "requests": {"cpu": "9" * 32, "memory": "9" * 32},
                    "limits": {"cpu": "9" * 32, "memory": "9" * 32},
                },
                "connectionsPerPod": 10_000,
                "minReplicas": MAX_REPLICAS,
                "maxReplicas": MAX_REPLICAS,
                "consumerAuthSecretRef": {"name": _text(253)},
                "podOverrides": {
                    "labels": {_label(i): _text(63) for i in range(64)},
                    "annotations": {
                        _label(i): _text(MAX_ANNOTATION_VALUE_LENGTH) for i in range(64)
                    },
                    "nodeSelector": {_label(i): _text(63) for i in range(32)},
                    "tolerations": [
                        {"key": _text(63), "operator": "Equal", "value": _text(63)}
                        for _ in range(32)
                    ],
                    "priorityClassName": _text(253),
                },
            },
            "paused": False,
        },
    }


def wire_size_bytes(obj: dict[str, Any]) -> int:
    """Bytes of compact JSON, as the API server stores it."""
    return len(json.dumps(obj, separators=(",", ":")).encode())


def test_quota_at_every_maximum_is_valid() -> None:
    quota = ExchangeConnectionQuota.model_validate(quota_at_every_maximum())
    assert len(quota.spec.streams) == MAX_EXPLICIT_STREAMS
    assert len(quota.spec.credentials) == MAX_CREDENTIALS
    assert declared_stream_count(quota.spec) <= MAX_STREAMS_PER_QUOTA


def test_quota_at_every_maximum_fits_in_one_object_with_room_for_status() -> None:
    quota = ExchangeConnectionQuota.model_validate(quota_at_every_maximum())
    size = wire_size_bytes(quota.to_wire())
    assert size + STATUS_AND_METADATA_ROOM_BYTES < OBJECT_LIMIT_BYTES, size


def test_one_stream_more_than_the_maximum_is_refused() -> None:
    import pytest
    from pydantic import ValidationError

    doc = quota_at_every_maximum()
    doc["spec"]["streams"].append({"name": "one-too-many"})
    with pytest.raises(ValidationError, match="streams"):
        ExchangeConnectionQuota.model_validate(doc)
