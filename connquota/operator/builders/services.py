"""The gateways' Services: a headless one for peers and one for consumers."""

from __future__ import annotations

from typing import Any

from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names
from connquota.operator.builders.common import object_meta, quota_ids, with_hash

GATEWAY_PORT = 8080
"""The gateway's HTTP port: consumers (/v1/ws), /healthz, /readyz, /metrics, /status."""
GATEWAY_PORT_NAME = "http"
GATEWAY_TLS_PORT = 8443
"""The consumer endpoints over TLS (only with `spec.gateway.consumerTLSSecretRef`)."""
GATEWAY_TLS_PORT_NAME = "wss"


def _ports(quota: ExchangeConnectionQuota) -> list[dict[str, Any]]:
    ports = [(GATEWAY_PORT_NAME, GATEWAY_PORT)]
    if quota.spec.gateway.consumerTLSSecretRef is not None:
        ports.append((GATEWAY_TLS_PORT_NAME, GATEWAY_TLS_PORT))
    return [
        {"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in ports
    ]


def build_headless_service(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """The StatefulSet's governing Service; lists not-ready pods too, so peers can relay."""
    _, quota_name, _ = quota_ids(quota)
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            quota, names.headless_service_name(quota_name), labels={names.LABEL_COMPONENT: "peers"}
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector_labels(quota_name),
            "ports": _ports(quota),
        },
    }
    return with_hash(body)


def build_client_service(quota: ExchangeConnectionQuota) -> dict[str, Any]:
    """The Service consumers connect to (ready gateway pods only)."""
    _, quota_name, _ = quota_ids(quota)
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(
            quota, names.client_service_name(quota_name), labels={names.LABEL_COMPONENT: "client"}
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(quota_name),
            "ports": _ports(quota),
        },
    }
    return with_hash(body)
