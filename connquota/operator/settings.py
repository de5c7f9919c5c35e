"""The operator's settings: one typed object, each field documented, applied to kopf on start.

Why these values (see docs/operator.md for the long form):

- Watches: the API server ends a watch after `watchServerTimeoutSeconds` and the client
  gives up after `watchClientTimeoutSeconds` of silence, so a watch that silently stopped
  (kopf users' most common complaint: a dropped TCP connection behind a load balancer) is
  re-established within minutes instead of never. kopf's own inactivity timeout keeps its
  default (none): with the server ending every watch after 300 s and the client abandoning one
  silent for 330 s, a third timer would only restart healthy watches on quiet objects.
- Every API request has a timeout; errors back off up to 30 s.
- kopf's finalizer is `connquota.io/budget`: it holds a quota until its budget share can be
  released safely (gateways gone, one rate window passed).
- kopf keeps its state small and under `connquota.io`: handler progress in annotations (only
  the delete handler ever has progress), and instead of a copy of the whole spec (a quota may
  be ~1.5 MiB; annotations are capped at 256 KiB in total) the diff base is a digest of the
  spec, labels and annotations. The operator reconciles the whole quota on any change, so it
  never needs field-level diffs.
- One active operator: standalone (no peering objects to install) and the Deployment runs one
  replica with the `Recreate` strategy, so two operators never overlap. `peering` mode is
  available for clusters that install kopf's peering CRDs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from connquota.api import timing
from connquota.operator import names

if TYPE_CHECKING:
    import kopf


class OperatorConfig(BaseModel):
    """Everything an administrator may tune about the operator process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces (glob patterns allowed) to watch for quotas; empty: cluster-wide.",
    )
    peering: Literal["standalone", "peering"] = Field(
        default="standalone",
        description="standalone: one replica with the Recreate strategy guarantees one active "
        "operator; peering: kopf's peering objects elect one (needs its CRDs).",
    )
    peeringName: str = Field(default="connquota", description="kopf peering object name.")
    watchServerTimeoutSeconds: float = Field(
        default=300, gt=0, description="The API server closes each watch after this long."
    )
    watchClientTimeoutSeconds: float = Field(
        default=330, gt=0, description="The client abandons a watch silent for this long."
    )
    watchConnectTimeoutSeconds: float = Field(
        default=10, gt=0, description="Connect timeout of watch requests."
    )
    requestTimeoutSeconds: float = Field(
        default=30, gt=0, description="Timeout of every non-watch API request."
    )
    connectTimeoutSeconds: float = Field(
        default=10, gt=0, description="Connect timeout of every API request."
    )
    errorBackoffsSeconds: list[float] = Field(
        default_factory=lambda: [1.0, 2.0, 5.0, 10.0, 30.0],
        description="Delays between retries of failed API requests and failed reconciles.",
    )
    resyncIntervalSeconds: float = Field(
        default=60, gt=0, description="Every pool is reconciled at least this often (drift)."
    )
    reconcileDebounceSeconds: float = Field(
        default=0.2, ge=0, description="Events within this delay are handled by one reconcile."
    )
    windowMarginSeconds: float = Field(
        default=timing.WINDOW_MARGIN_S,
        ge=0,
        description="Added to every rate window before a slice moves (the gateways use the "
        "same margin: connquota.api.timing.WINDOW_MARGIN_S).",
    )
    adaptiveBudgets: bool = Field(
        default=True,
        description="Lower a budget the exchange throttles although the fleet kept inside it "
        "(an unexplained 429/418), and raise it back slowly after a clean period.",
    )
    adaptiveDecreaseFactor: float = Field(
        default=0.75,
        gt=0,
        lt=1,
        description="Each unexplained throttle cuts the effective budget E to "
        "max(1, min(floor(factor x E), E - 1)).",
    )
    adaptiveIncreaseFraction: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="Each raise adds max(1, ceil(fraction x configured budget)) to E.",
    )
    adaptiveCleanSeconds: float = Field(
        default=600,
        gt=0,
        description="A raise comes this long after the last cut took effect and after the last "
        "unexplained throttle (one step per period).",
    )
    livenessHost: str = Field(default="0.0.0.0", description="Liveness endpoint address.")
    livenessPort: int = Field(default=8081, ge=0, le=65535, description="0: no endpoint.")
    livenessMaxAgeSeconds: float = Field(
        default=300,
        gt=0,
        description="Liveness fails when no reconcile succeeded and no watch event arrived "
        "for this long (progress, not just a running process).",
    )
    metricsHost: str = Field(default="0.0.0.0", description="Prometheus endpoint address.")
    metricsPort: int = Field(default=9090, ge=0, le=65535, description="0: no endpoint.")

    @property
    def clusterwide(self) -> bool:
        """True when no namespace list restricts what the operator watches."""
        return not self.namespaces

    def liveness_endpoint(self) -> str | None:
        """The URL kopf serves liveness on, or None."""
        if not self.livenessPort:
            return None
        return f"http://{self.livenessHost}:{self.livenessPort}/healthz"

    def apply(self, settings: kopf.OperatorSettings) -> None:
        """Write these choices into kopf's settings (called from the startup handler)."""
        import kopf  # here, not at import: `connquota operator --kubeconfig` must set

        # KUBECONFIG before anything imports the kubernetes client (it reads it once)
        from connquota.operator.kopf_storage import DigestDiffBaseStorage

        settings.watching.server_timeout = self.watchServerTimeoutSeconds
        settings.watching.client_timeout = self.watchClientTimeoutSeconds
        settings.watching.connect_timeout = self.watchConnectTimeoutSeconds
        settings.networking.request_timeout = self.requestTimeoutSeconds
        settings.networking.connect_timeout = self.connectTimeoutSeconds
        settings.networking.error_backoffs = tuple(self.errorBackoffsSeconds)
        settings.persistence.finalizer = names.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=names.ANNOTATION_PREFIX, v1=False
        )
        settings.persistence.diffbase_storage = DigestDiffBaseStorage(
            prefix=names.ANNOTATION_PREFIX, key="last-handled-digest", v1=False
        )
        settings.posting.reporting_component = names.FIELD_MANAGER
        settings.posting.event_name_prefix = "connquota-"
        settings.posting.level = 30  # only warnings and errors of kopf itself become Events
        settings.peering.standalone = self.peering == "standalone"
        if self.peering == "peering":
            settings.peering.name = self.peeringName
            settings.peering.mandatory = True
        settings.peering.clusterwide = self.clusterwide
        settings.queueing.error_delays = tuple(self.errorBackoffsSeconds)
        settings.execution.default_backoff = self.errorBackoffsSeconds[-1]


ENV_PREFIX = "CONNQUOTA_OPERATOR_"
"""Every setting may also come from the environment: CONNQUOTA_OPERATOR_<NAME_IN_SNAKE_CASE>."""


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def flag_of(field: str) -> str:
    """The command-line flag of a setting: `resyncIntervalSeconds` -> `--resync-interval-seconds`
    (`namespaces` is `--namespace`, repeatable)."""
    return "--namespace" if field == "namespaces" else "--" + _snake(field).replace("_", "-")


def env_of(field: str) -> str:
    """The environment variable of a setting: `resyncIntervalSeconds` ->
    `CONNQUOTA_OPERATOR_RESYNC_INTERVAL_SECONDS`."""
    return ENV_PREFIX + _snake(field).upper()


LIST_FIELDS = frozenset({"namespaces", "errorBackoffsSeconds"})
"""Settings that are lists: comma-separated in the environment, repeatable or
comma-separated as flags."""


def config_from(flags: Mapping[str, Any], environ: Mapping[str, str]) -> OperatorConfig:
    """The operator's settings: a flag (not None) wins over the environment, which wins over the
    default; values are validated by the model (a bad one names the setting)."""
    values: dict[str, Any] = {}
    for name in OperatorConfig.model_fields:
        flag = flags.get(name)
        raw: Any = flag if flag not in (None, [], "") else environ.get(env_of(name))
        if raw is None or raw == "":
            continue
        if name in LIST_FIELDS and isinstance(raw, str):
            raw = [part.strip() for part in raw.split(",") if part.strip()]
        elif name in LIST_FIELDS:
            raw = [p.strip() for item in raw for p in str(item).split(",") if p.strip()]
        values[name] = raw
    return OperatorConfig.model_validate(values)
