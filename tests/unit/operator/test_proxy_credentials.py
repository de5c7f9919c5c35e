"""Proxy credentials on the operator side: each proxy address's Secret, from the quota's own
namespace, mounted as files where the gateway reads them; a missing one stalls the quota with
a status that names it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from operator_factories import POOL, make_quota

from connquota.api.plan import PROXY_CREDENTIALS_MOUNT_DIR
from connquota.api.pool import ExchangeEgressPool
from connquota.operator import builders
from connquota.operator.builders.workload import SECRET_FILE_MODE, proxy_volume_name
from connquota.operator.planning import QuotaProblem
from connquota.operator.quota_inputs import QuotaInputs, missing_secrets_message, proxy_secrets
from connquota.operator.settings import OperatorConfig
from connquota.operator.status import QuotaObservation, quota_status

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def proxy_pool() -> ExchangeEgressPool:
    """A pool of two authenticated proxies (one with its own key names), one proxy without
    credentials and one bind address."""
    return ExchangeEgressPool.model_validate(
        {
            "metadata": {"name": "proxied", "uid": "pool-uid"},
            "spec": {
                "addresses": [
                    {
                        "name": "px-socks",
                        "publicAddress": "198.51.100.11",
                        "mode": "proxy",
                        "proxyUrl": "socks5://10.20.0.6:1080",
                        "proxySecretRef": {
                            "name": "egress-proxy-b",
                            "usernameKey": "user",
                            "passwordKey": "pass",
                        },
                    },
                    {
                        "name": "px-http",
                        "publicAddress": "198.51.100.10",
                        "mode": "proxy",
                        "proxyUrl": "http://10.20.0.5:3128",
                        "proxySecretRef": {"name": "egress-proxy-a"},
                    },
                    {
                        "name": "px-open",
                        "publicAddress": "198.51.100.12",
                        "mode": "proxy",
                        "proxyUrl": "http://10.20.0.7:3128",
                    },
                    POOL["spec"]["addresses"][0],  # type: ignore[index]
                ]
            },
        }
    )


def _pod(sts: dict[str, Any]) -> dict[str, Any]:
    return sts["spec"]["template"]["spec"]


def test_each_proxy_address_with_a_secret_gets_its_keys_mounted_read_only_where_the_gateway_reads(
    quota,
) -> None:
    pool = proxy_pool()
    # The plan uses only the bind address: every proxy Secret is mounted all the same (a later
    # plan may move connections to a proxy without the pod being replaced).
    sts = builders.build_statefulset(quota, 2, pool.spec.addresses[3:], pool.spec.addresses)
    pod = _pod(sts)
    volumes = {v["name"]: v for v in pod["volumes"] if v["name"].startswith("proxy-")}
    assert volumes == {
        "proxy-px-http": {
            "name": "proxy-px-http",
            "secret": {
                "secretName": "egress-proxy-a",
                "items": [
                    {"key": "username", "path": "username"},
                    {"key": "password", "path": "password"},
                ],
                "defaultMode": SECRET_FILE_MODE,
            },
        },
        "proxy-px-socks": {
            "name": "proxy-px-socks",
            "secret": {
                "secretName": "egress-proxy-b",
                "items": [{"key": "user", "path": "user"}, {"key": "pass", "path": "pass"}],
                "defaultMode": SECRET_FILE_MODE,
            },
        },
    }
    (container,) = pod["containers"]
    mounts = [m for m in container["volumeMounts"] if m["name"].startswith("proxy-")]
    assert mounts == [
        {
            "name": "proxy-px-http",
            "mountPath": f"{PROXY_CREDENTIALS_MOUNT_DIR}/px-http",
            "readOnly": True,
        },
        {
            "name": "proxy-px-socks",
            "mountPath": f"{PROXY_CREDENTIALS_MOUNT_DIR}/px-socks",
            "readOnly": True,
        },
    ]
    # Nothing of the proxy credentials is an environment variable.
    assert not any("proxy" in str(e).lower() for e in container["env"])


def test_a_pool_without_proxy_secrets_mounts_nothing_more(quota, pool) -> None:
    without = builders.build_statefulset(quota, 1, pool.spec.addresses[:1])
    with_pool = builders.build_statefulset(quota, 1, pool.spec.addresses[:1], pool.spec.addresses)
    assert without == with_pool


def test_a_long_address_name_still_makes_a_valid_volume_name() -> None:
    name = "a" * 63
    volume = proxy_volume_name(name)
    assert len(volume) <= 63 and volume.startswith("proxy-a")
    assert volume != proxy_volume_name("a" * 62 + "b")
    assert proxy_volume_name("px-1") == "proxy-px-1"


def test_keys_are_the_secret_names_the_pool_needs_by_address() -> None:
    assert proxy_secrets(proxy_pool()) == {
        "egress-proxy-b": ["px-socks"],
        "egress-proxy-a": ["px-http"],
    }


class SecretsApi:
    """The two reads `_prepare` makes: Secret existence (metadata) and ConfigMaps."""

    def __init__(self, secrets: set[tuple[str, str]]) -> None:
        self.secrets = secrets
        self.asked: list[tuple[str, str | None, str]] = []

    async def exists(self, kind: str, namespace: str | None, name: str) -> bool:
        self.asked.append((kind, namespace, name))
        return (str(namespace), name) in self.secrets

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None


async def test_a_namespace_without_the_proxy_secret_stalls_the_quota_naming_secret_and_namespace():
    quota = make_quota()
    api = SecretsApi(
        {("trading", "binance-main"), ("trading", "binance-sub"), ("trading", "egress-proxy-b")}
    )
    inputs = QuotaInputs(api, OperatorConfig(), sources=None)  # type: ignore[arg-type]
    with pytest.raises(QuotaProblem) as raised:
        await inputs._prepare(quota, proxy_pool())
    problem = raised.value.problem
    assert problem.reason == "SecretMissing"
    assert "egress-proxy-a" in problem.message
    assert "egress-proxy-b" not in problem.message
    assert "namespace trading" in problem.message
    assert "px-http" in problem.message and "pool proxied" in problem.message
    # Existence only, in the quota's own namespace: never the operator's, never the data.
    assert {ns for _, ns, _ in api.asked} == {"trading"}
    assert {kind for kind, _, _ in api.asked} == {"Secret"}

    status = quota_status(None, QuotaObservation(generation=1, problem=problem), T0)
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "SecretMissing"
    assert "egress-proxy-a" in stalled["message"] and "trading" in stalled["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"

    # Once the Secret exists in the namespace, the quota plans.
    api.secrets.add(("trading", "egress-proxy-a"))
    await inputs._prepare(quota, proxy_pool())


def test_the_message_for_a_secret_many_addresses_share_stays_short() -> None:
    pool = ExchangeEgressPool.model_validate(
        {
            "metadata": {"name": "big"},
            "spec": {
                "addresses": [
                    {
                        "name": f"px-{i}",
                        "publicAddress": f"198.51.100.{i + 1}",
                        "mode": "proxy",
                        "proxyUrl": f"http://10.20.0.{i + 1}:3128",
                        "proxySecretRef": {"name": "shared"},
                    }
                    for i in range(40)
                ]
            },
        }
    )
    message = missing_secrets_message("ns", ["shared"], pool, proxy_secrets(pool))
    assert "px-0, px-1, px-2, px-3, px-4 and 35 more" in message
    assert "namespace ns" in message and len(message) < 400
