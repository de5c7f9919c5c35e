"""A quota's planner input: its profile, streams (streamsFrom ConfigMaps) and the Secrets it references (metadata only)."""

from __future__ import annotations

import logging

from connquota.api.pool import EgressMode, ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.operator import names, planning
from connquota.operator.planning import (
    DesiredStream,
    QuotaInput,
)
from connquota.operator.reconcile_base import ReconcilerBase
from connquota.operator.reconcile_state import (
    admits,
)

log = logging.getLogger(__name__)


def proxy_secrets(pool: ExchangeEgressPool) -> dict[str, list[str]]:
    """Secret name -> the pool's proxy addresses whose `proxySecretRef` names it.

    Every quota of the pool needs each of these Secrets in its own namespace: its gateway pods
    mount them (a pod can mount only Secrets of its namespace).
    """
    out: dict[str, list[str]] = {}
    for address in pool.spec.addresses:
        if address.mode == EgressMode.PROXY and address.proxySecretRef is not None:
            out.setdefault(address.proxySecretRef.name, []).append(address.name)
    return out


def missing_secrets_message(
    namespace: str, missing: list[str], pool: ExchangeEgressPool, proxies: dict[str, list[str]]
) -> str:
    """The `SecretMissing` message: each Secret, the namespace, and for a proxy Secret the
    pool addresses that need it and what to do."""
    parts = []
    for name in missing:
        if name in proxies:
            addresses = proxies[name]
            shown = ", ".join(addresses[:5])
            if len(addresses) > 5:
                shown += f" and {len(addresses) - 5} more"
            parts.append(
                f"{name} (proxySecretRef of address(es) {shown} of pool {pool.metadata.name})"
            )
        else:
            parts.append(name)
    message = f"Secret(s) {', '.join(parts)} not found in namespace {namespace}"
    if any(name in proxies for name in missing):
        message += (
            f"; create the proxy credentials Secret in {namespace} (every namespace whose "
            "quotas use the pool needs its own copy: gateway pods mount it from there)"
        )
    return message


class QuotaInputs(ReconcilerBase):
    """A quota's planner input (a part of `Reconciler`)."""

    async def _prepare(
        self, quota: ExchangeConnectionQuota, pool: ExchangeEgressPool
    ) -> tuple[QuotaInput, list[DesiredStream]]:
        meta = quota.metadata
        assert meta.name and meta.namespace
        if len(meta.name) > names.MAX_QUOTA_NAME_LENGTH:
            raise planning.QuotaProblem(
                "NameTooLong",
                f"quota names are limited to {names.MAX_QUOTA_NAME_LENGTH} characters "
                "(pod and Lease names derive from it)",
            )
        if not admits(pool, meta.namespace):
            raise planning.QuotaProblem(
                "NamespaceNotAdmitted",
                f"pool {pool.metadata.name} does not admit namespace {meta.namespace} "
                "(spec.allowedNamespaces)",
            )
        qin = planning.quota_input(quota)
        secrets = {c.secretRef.name for c in quota.spec.credentials}
        auth = quota.spec.gateway.consumerAuthSecretRef
        if auth:
            secrets.add(auth.name)
        proxies = proxy_secrets(pool)
        missing = [
            s
            for s in sorted(secrets | proxies.keys())
            if not await self._secret_exists(meta.namespace, s)
        ]
        if missing:
            raise planning.QuotaProblem(
                "SecretMissing", missing_secrets_message(meta.namespace, missing, pool, proxies)
            )
        configmaps: dict[str, dict[str, str] | None] = {}
        for name, _, _ in planning.stream_sources_needed(quota):
            if name not in configmaps:
                cm = await self.api.get("ConfigMap", meta.namespace, name)
                configmaps[name] = None if cm is None else dict(cm.get("data") or {})
        return qin, planning.desired_streams(quota, configmaps)

    async def _secret_exists(self, namespace: str, name: str) -> bool:
        """Whether a Secret exists (metadata-only read). A Secret seen within the resync
        interval is not read again, so a pool reconcile with nothing changed makes no request
        per quota; a deleted Secret is noticed within that interval. Absence is never cached."""
        key = (namespace, name)
        now = self.monotonic()
        seen = self._secrets_seen.get(key)
        if seen is not None and now - seen < self.config.resyncIntervalSeconds:
            return True
        if await self.api.exists("Secret", namespace, name):
            self._secrets_seen[key] = now
            return True
        self._secrets_seen.pop(key, None)
        return False
