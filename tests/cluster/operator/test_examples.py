"""Every example quota (examples/10-17) applied with kubectl on the real API server, as a user
would apply it, reaches Ready with real gateway processes (the pod harness) against the mock
exchange speaking its dialect, and its streams reach a consumer (issue 15, "Done when").

Only what ties an example to this machine is changed: the namespace, the pool's name and node
(examples/01-pool-bind.yaml's loopback addresses on the harness node), the endpoint (the mock's
address with the exchange's own path: `spec.endpoint`, or `spec.custom.endpoint` for the custom
venue) and the harness label on the gateway pods. Limits, streams, stream sets, ConfigMaps,
Secrets and priorities are the examples' own, and the mock runs the exchange's published limits
unscaled, as referee.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from cluster.conftest import HARNESS_LABEL, REPO, wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    consume,
    get_quota,
    pod_ips,
    streams_by_pod,
    wait_ready,
)
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.settings import MockSettings, TestAccount
from connquota.mockexchange.threaded import ThreadedMockExchange
from connquota.testing.controlplane import ControlPlane
from connquota.testing.podharness import PodHarness
from connquota.testing.podharness.common import DEFAULT_NODE_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

EXAMPLES = REPO / "examples"
PROFILE_OF = {
    "10-quota-binance-spot.yaml": "binance-spot",
    "11-quota-binance-usdm-streamsets.yaml": "binance-usdm",
    "12-quota-okx.yaml": "okx",
    "13-quota-bybit-streamsfrom.yaml": "bybit",
    "14-quota-coinbase.yaml": "coinbase",
    "15-quota-kraken.yaml": "kraken",
    "16-quota-deribit-private.yaml": "deribit",
    "17-quota-custom.yaml": "binance-spot",  # the custom venue speaks the binance dialect
}
PRIVATE_PREFIXES = ("user.",)
"""Deribit's private channels: served once logged in, but no event flows without trading."""


def test_every_example_quota_is_listed() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("1*-quota-*.yaml"))
    assert names == sorted(PROFILE_OF)


def pool_from_example(name: str, namespace: str) -> dict[str, Any]:
    """examples/01-pool-bind.yaml under another name, its addresses on the harness node, the
    test's namespace allowed as the examples' own (`connquota-demo`, no share cap) is."""
    pool = yaml.safe_load((EXAMPLES / "01-pool-bind.yaml").read_text())
    pool["metadata"]["name"] = name
    for address in pool["spec"]["addresses"]:
        address["node"] = DEFAULT_NODE_NAME
    for allowed in pool["spec"]["allowedNamespaces"]:
        if allowed["namespace"] == "connquota-demo":
            allowed["namespace"] = namespace
    return pool


def example_accounts(docs: list[dict[str, Any]]) -> list[TestAccount]:
    """The exchange accounts behind the example's credentials (its Secrets' demo keys), so
    that the mock exchange knows them as the real one knows a user's keys."""
    secrets = {
        d["metadata"]["name"]: d.get("stringData", {}) for d in docs if d["kind"] == "Secret"
    }
    out = []
    for doc in docs:
        if doc["kind"] != "ExchangeConnectionQuota":
            continue
        for cred in doc["spec"].get("credentials", []):
            ref = cred["secretRef"]
            data = secrets[ref["name"]]
            out.append(
                TestAccount(
                    data[ref.get("apiKeyKey", "apiKey")],
                    data[ref.get("apiSecretKey", "apiSecret")],
                    account_id=cred.get("accountId", ""),
                )
            )
    return out


def localised(docs: list[dict[str, Any]], namespace: str, pool: str, mock_url: str, path: str):
    """The example's objects in `namespace`, the quota on `pool` and the mock exchange."""
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        if doc["kind"] == "ExchangeConnectionQuota":
            spec = doc["spec"]
            spec["egressPoolRef"]["name"] = pool
            if spec["exchange"] == "custom":
                spec["custom"]["endpoint"] = mock_url + path
            elif "endpoint" in spec:  # the example chose a route (USD-M /public): keep it
                spec["endpoint"] = mock_url + urlsplit(spec["endpoint"]).path
            else:
                spec["endpoint"] = mock_url + path
            gateway = spec.setdefault("gateway", {})
            gateway.setdefault("podOverrides", {}).setdefault("labels", {})[HARNESS_LABEL] = "true"
        out.append(doc)
    return out


@pytest.mark.parametrize("example", sorted(PROFILE_OF))
def test_the_example_quota_reaches_ready_and_serves_its_streams(
    example: str,
    control_plane: ControlPlane,
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    profile = get_profile(PROFILE_OF[example])
    docs = list(yaml.safe_load_all((EXAMPLES / example).read_text()))
    settings = MockSettings(rate_per_stream_hz=5.0)
    settings.accounts = (*settings.accounts, *example_accounts(docs))
    mock = ThreadedMockExchange(MockExchange(profile, "127.0.0.1", 0, settings=settings))
    objects = custom_object(api_client)
    pool = f"examples-{uuid.uuid4().hex[:8]}"
    path = urlsplit(profile.endpoint).path
    local = localised(docs, namespace, pool, mock.mock.url, "" if path == "/" else path)
    names = [d["metadata"]["name"] for d in local if d["kind"] == "ExchangeConnectionQuota"]
    manifest = tmp_path / example
    manifest.write_text(yaml.safe_dump_all(local, sort_keys=False))
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_from_example(pool, namespace)
    )

    def log() -> str:
        out = [operator_process.log()]
        for name in names:
            for ordinal in range(3):
                pod = f"{name}-gw-{ordinal}"
                out += [f"--- {pod}", *pod_harness.logs(namespace, pod).splitlines()[-30:]]
        return "\n".join(out)

    try:
        control_plane.kubectl("apply", "-f", str(manifest))
        core = client.CoreV1Api(api_client)
        for name in names:
            wait_ready(api_client, namespace, name, 150, log)
            quota = get_quota(api_client, namespace, name)
            assert quota is not None
            assert quota["status"].get("unserved") in (None, []), quota["status"]["unserved"]
            planned = sorted(s for v in streams_by_pod(core, namespace, name).values() for s in v)
            assert planned, f"{name}: no stream in the published plan"
            public = [s for s in planned if not s.startswith(PRIVATE_PREFIXES)]
            ips = pod_ips(api_client, namespace, name)
            # Every public stream of the quota through one pod (the others' relayed).
            seen = consume(ips[min(ips)], public, frames=2, timeout_s=30)
            assert set(seen) == set(public)
        assert mock.violations() == []
    finally:
        for name in names:
            objects.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, "exchangeconnectionquotas", name
            )
        # The finalizer stays until nothing of a quota counts at the exchange any more
        # (minutes at unscaled limits, docs/operator.md); its gateways go at once.
        for name in names:
            wait_for(
                lambda n=name: not pod_ips(api_client, namespace, n),
                90,
                f"the deleted quota {name}'s gateways gone\n{log()}",
            )
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        mock.stop()
