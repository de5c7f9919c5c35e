"""Factories for operator unit tests: a pool, a quota and pod plans built from the real models."""

from __future__ import annotations

from connquota.api.plan import ConnectionPlan, PodPlan, QuotaRef
from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota
from connquota.exchanges.profiles.binance_spot import PROFILE

POOL = {
    "metadata": {"name": "pool-a", "uid": "pool-uid"},
    "spec": {
        "addresses": [
            {
                "name": "a1",
                "publicAddress": "127.0.0.2",
                "mode": "bind",
                "bindAddress": "127.0.0.2",
                "node": "node-1",
            },
            {
                "name": "a2",
                "publicAddress": "127.0.0.3",
                "mode": "bind",
                "bindAddress": "127.0.0.3",
                "node": "node-2",
            },
            {
                "name": "l1",
                "publicAddress": "198.51.100.7",
                "mode": "podLabel",
                "podLabel": "egress-7",
            },
            {
                "name": "l2",
                "publicAddress": "198.51.100.8",
                "mode": "podLabel",
                "podLabel": "egress-8",
            },
        ]
    },
}


def make_quota(**spec_overrides: object) -> ExchangeConnectionQuota:
    """A binance-spot quota `md` in namespace `trading` with two credentials."""
    spec: dict[str, object] = {
        "exchange": "binance-spot",
        "egressPoolRef": {"name": "pool-a"},
        "credentials": [
            {"name": "main", "secretRef": {"name": "binance-main"}, "accountId": "acct-1"},
            {
                "name": "sub",
                "secretRef": {"name": "binance-sub", "passphraseKey": "pass"},
                "accountId": "acct-2",
            },
        ],
        "streams": [{"name": "btcusdt@trade"}, {"name": "ethusdt@trade"}],
        "gateway": {"image": "example/gw:1", "maxReplicas": 4},
    }
    spec.update(spec_overrides)
    return ExchangeConnectionQuota.model_validate(
        {"metadata": {"name": "md", "namespace": "trading", "uid": "quota-uid"}, "spec": spec}
    )


def make_pod_plan(ordinal: int, address: str = "a1", credential: str | None = "main") -> PodPlan:
    """A pod plan with one connection on `address`."""
    pool = ExchangeEgressPool.model_validate(POOL)
    addr = pool.spec.address(address)
    assert addr is not None
    return PodPlan(
        generation=3,
        quota=QuotaRef(namespace="trading", name="md"),
        ordinal=ordinal,
        profile=PROFILE,
        addresses=[addr],
        connections=[
            ConnectionPlan(
                id=f"c{ordinal}", address=address, credential=credential, streams=["btcusdt@trade"]
            )
        ],
    )
