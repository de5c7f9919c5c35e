"""Gateway pods on lost nodes: evict, then force-delete once `node_loss.force_delete_due` says
it is safe (a part of `Reconciler`; the decisions are pure, in `connquota.operator.node_loss`).
"""

from __future__ import annotations

import logging
from typing import Any

from connquota.api.plan import DEFAULT_WINDOW_MARGIN_S
from connquota.operator import accessors, metrics, node_loss
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import QuotaState

log = logging.getLogger(__name__)

EVICT_RETRY_S = 2.0
"""How soon to look again at a lost pod whose eviction was refused or is not yet seen."""


class LostPods(ReconcilerBase):
    """Replaces the gateway pods of lost nodes (see `connquota.operator.node_loss`)."""

    def _sight_leases(self, key: str) -> dict[int, dict[str, Any]]:
        """Record every gateway Lease's version (operator monotonic); ordinal -> Lease."""
        now = self.monotonic()
        leases: dict[int, dict[str, Any]] = {}
        for lease in self.sources.leases_of_quota(key):
            ordinal = accessors.lease_ordinal(lease)
            if ordinal is None:
                continue
            leases[ordinal] = lease
            version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            self.lease_sightings[(key, ordinal)] = node_loss.sighted(
                self.lease_sightings.get((key, ordinal)), version, now
            )
        for gone in [k for k in self.lease_sightings if k[0] == key and k[1] not in leases]:
            del self.lease_sightings[gone]
        return leases

    async def _lost_pods(self, body: dict[str, Any], state: QuotaState) -> float | None:
        """Evict the quota's gateway pods on lost nodes, force-delete the Terminating ones whose
        Lease lapsed long enough; seconds until the next look (None: no lost pod)."""
        key = state.key
        leases = self._sight_leases(key)
        lost = self.sources.lost_nodes()
        if not lost:
            return None
        ns = key.split("/", 1)[0]
        retry: float | None = None
        now = self.monotonic()
        for pod in self.sources.pods_of_quota(key):
            loss = lost.get(accessors.pod_node(pod))
            ordinal = accessors.pod_ordinal(pod)
            if loss is None or ordinal is None:
                continue
            name, uid = pod["metadata"]["name"], accessors.uid(pod)
            await self._event(body, state, "NodeLost", f"{name}: {loss.describe()}", warning=True)
            if not accessors.deleting(pod):
                await self._release_for_eviction(state, uid)
                outcome = await self.api.evict(ns, name, uid)
                log.info(
                    "quota %s: %s on lost node %s: evict: %s",
                    key,
                    name,
                    loss.node,
                    outcome,
                    extra={"quota": key, "pod": name, "node": loss.node},
                )
                retry = min(retry or EVICT_RETRY_S, EVICT_RETRY_S)
                continue
            lease = leases.get(ordinal) or {}
            lease_s = float(
                (lease.get("spec") or {}).get("leaseDurationSeconds") or node_loss.DEFAULT_LEASE_S
            )
            dead_s = state.ledgers.dead_connection_s
            plan = state.plans.published.get(ordinal)
            margin_s = plan.windowMarginSeconds if plan is not None else DEFAULT_WINDOW_MARGIN_S
            sighting = self.lease_sightings.get((key, ordinal))
            if dead_s <= 0:  # the profile not read yet (a fresh operator): look again soon
                retry = min(retry or EVICT_RETRY_S, EVICT_RETRY_S)
                continue
            due, why = node_loss.force_delete_due(
                terminating=True,
                node=loss,
                sighting=sighting,
                lease_s=lease_s,
                dead_s=dead_s,
                margin_s=margin_s,
                now_s=now,
            )
            if not due:
                needed = node_loss.lapse_needed_s(lease_s, dead_s, margin_s)
                wait = node_loss.wait_s(sighting, needed, now) + 0.2 if sighting else EVICT_RETRY_S
                retry = min(retry or wait, wait)
                log.info(
                    "quota %s: %s not force-deleted yet: %s",
                    key,
                    name,
                    why,
                    extra={"quota": key, "pod": name},
                )
                continue
            deleted = await self.api.force_delete_pod(ns, name, uid)
            log.warning(
                "quota %s: %s force-deleted: %s",
                key,
                name,
                why,
                extra={"quota": key, "pod": name, "node": loss.node},
            )
            if deleted:
                metrics.PODS_FORCE_DELETED.labels(reason="node-lost").inc()
                await self._event(body, state, "ForceDeleted", f"{name}: {why}", warning=True)
        return retry
