"""The labels that select a quota's gateway pods: set by the operator on the pods it runs,
read by the gateways to find their peers (both sides use these names)."""

from __future__ import annotations

LABEL_NAME = "app.kubernetes.io/name"
LABEL_QUOTA = "connquota.io/quota"
GATEWAY_APP = "connquota-gateway"


def gateway_pod_labels(quota: str) -> dict[str, str]:
    """Labels that select exactly the gateway pods of `quota` in its namespace."""
    return {LABEL_NAME: GATEWAY_APP, LABEL_QUOTA: quota}


def gateway_pod_selector(quota: str) -> str:
    """The same selection as a label selector string (`name=..,quota=..`)."""
    return ",".join(f"{k}={v}" for k, v in gateway_pod_labels(quota).items())
