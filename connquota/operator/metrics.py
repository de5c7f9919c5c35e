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
PODS_FORCE_DELETED = Counter(
    "connquota_operator_pods_force_deleted_total",
    "Gateway pods force-deleted (reason node-lost: Terminating on a lost node, Lease lapsed).",
    ["reason"],
)
QUOTAS = Gauge("connquota_operator_quotas", "Quotas the operator knows of.")
LAST_PROGRESS = Gauge(
    "connquota_operator_last_progress_timestamp_seconds",
    "Wall-clock time of the last successful reconcile or watch event.",
)
ADAPTIVE_THROTTLES = Counter(
    "connquota_operator_throttles_total",
    "429/418 answers the gateways reported, by the adaptive budgets' verdict (unexplained: a "
    "budget was cut; coalesced: the previous cut had not taken effect; stale; unknown-limit).",
    ["verdict"],
)
ADAPTIVE_CHANGES = Counter(
    "connquota_operator_budget_changes_total",
    "Adaptive budget cuts (down) and raises (up).",
    ["direction"],
)
