"""The operator's Prometheus metrics (served on `metricsPort`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "connquota_operator_reconciles_total", "Pool reconciles, by result.", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "connquota_operator_reconcile_seconds", "Time one pool reconcile took."
)
API_RETRIES = Counter(
    "connquota_operator_api_retries_total",
    "Kubernetes API requests sent again after a 429, a 5xx or no response.",
)
API_REQUESTS = Counter(
    "connquota_operator_api_requests_total",
    "Kubernetes API requests, by verb and code.",
    ["verb", "code"],
)
API_LATENCY = Histogram("connquota_operator_api_request_seconds", "Kubernetes API latency.")
OBJECT_WRITES = Counter(
    "connquota_operator_object_writes_total",
    "Objects written (created, applied, patched).",
    ["kind"],
)
PLAN_GENERATIONS = Counter(
    "connquota_operator_plan_generations_total", "Plan generations published."
)
CONNECTIONS_MOVED = Counter(
    "connquota_operator_plan_churn_connections_total",
    "Connections a published plan reopens (added or moved), summed over quotas.",
)
TRANSITION_WAITS = Counter(
    "connquota_operator_transition_waits_total",
    "Reconciles that held back a slice change until acknowledgements or a window passed.",
)
QUOTAS = Gauge("connquota_operator_quotas", "Quotas the operator knows of.")
LAST_PROGRESS = Gauge(
    "connquota_operator_last_progress_timestamp_seconds",
    "Wall-clock time of the last successful reconcile or watch event.",
)
