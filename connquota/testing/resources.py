"""Custom resources the tests and benchmarks apply, built from the API models.

Built through the pydantic models (``connquota.api``) and rendered with ``to_wire()``, so a
misspelled field fails here instead of being pruned silently by the API server.
"""

from __future__ import annotations

from typing import Any

from connquota.api.common import ObjectMeta
from connquota.api.limits import ExchangeProfile
from connquota.api.pool import (
    EgressAddress,
    EgressCheck,
    EgressMode,
    ExchangeEgressPool,
    ExchangeEgressPoolSpec,
)
from connquota.api.quota import CustomProfile
from connquota.testing.podharness import DEFAULT_NODE_NAME


def loopback_pool(
    name: str,
    addresses: int = 1,
    *,
    first: int = 2,
    node: str = DEFAULT_NODE_NAME,
    egress_check: EgressCheck | None = None,
) -> dict[str, Any]:
    """An ExchangeEgressPool of loopback ``bind`` addresses 127.0.0.<first>.. on ``node``
    (the pod harness's node by default), named ``lo-<last octet>``.

    ``egress_check`` is the pool-wide ``spec.egressCheck`` (e.g. an IP-echo URL on loopback,
    or ``method: none`` with a reason); None leaves it unset.
    """
    spec = ExchangeEgressPoolSpec(
        addresses=[
            EgressAddress(
                name=f"lo-{octet}",
                publicAddress=f"127.0.0.{octet}",
                mode=EgressMode.BIND,
                bindAddress=f"127.0.0.{octet}",
                node=node,
            )
            for octet in range(first, first + addresses)
        ],
        egressCheck=egress_check,
    )
    return ExchangeEgressPool(metadata=ObjectMeta(name=name), spec=spec).to_wire()


def custom_exchange(profile: ExchangeProfile, domain: str) -> dict[str, Any]:
    """A quota's ``spec.custom`` for ``profile``: its endpoint, dialect, every limit, heartbeat
    and dead-connection timeout, under the limit domain ``domain``.

    Give it the profile the exchange enforces (for a time-scaled mock exchange, the scaled
    profile: ``connquota.demo.scaling.scaled_profile``), so the quota declares the same limits
    in wall-clock seconds.
    """
    return CustomProfile(
        endpoint=profile.endpoint,
        dialect=profile.dialect,
        domain=domain,
        limits=list(profile.limits),
        heartbeat=profile.heartbeat,
        deadConnectionTimeoutSeconds=profile.deadConnectionTimeoutSeconds,
    ).to_wire()
