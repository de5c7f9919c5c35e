"""The operator with real gateways on a pool of two proxy-mode addresses, through real proxies:
tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5, username/password), installed by
hack/install-proxies.sh.

Each proxy listens on its own loopback address and sends from another, which is its
address's `publicAddress`: the exchange sees one source IP per proxy. The proxy credentials
are Secrets in the quota's namespace (the pool's `proxySecretRef`), mounted by the operator
into the gateway pods; a quota in a namespace without them is Stalled, naming the Secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    VERSION,
    MockThread,
    condition,
    get_quota,
    quota_body,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.api.report import REPORT_ANNOTATION, EgressCheckState, GatewayReport
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness
from connquota.testing.proxies import ProxyProcess

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

STREAMS = [f"p{i}usdt@trade" for i in range(16)]
# 16 streams, 2 per connection: 8 connections, the 4 concurrent connections of each proxy IP.
LISTEN = {"http": "127.0.0.71", "socks5": "127.0.0.72"}
EGRESS = {"http": "127.0.0.81", "socks5": "127.0.0.82"}
USER = {"http": "gw-http", "socks5": "gw-socks"}
# The SOCKS5 proxy's Secret uses its own key names (usernameKey/passwordKey).
KEYS = {"http": ("username", "password"), "socks5": ("user", "pass")}
SECRET = {"http": "egress-proxy-http", "socks5": "egress-proxy-socks"}
ADDRESS = {"http": "px-http", "socks5": "px-socks"}


@pytest.fixture
def proxies(proxy_servers: Path, tmp_path: Path) -> Iterator[dict[str, ProxyProcess]]:
    """tinyproxy and microsocks, each with its own user and password."""
    started: dict[str, ProxyProcess] = {}
    try:
        for kind in ("http", "socks5"):
            proxy = ProxyProcess(
                kind,
                proxy_servers,
                LISTEN[kind],
                EGRESS[kind],
                tmp_path / "proxies",
                USER[kind],
                f"pw-{kind}-{uuid.uuid4().hex[:8]}",
            )
            asyncio.run(proxy.start())
            started[kind] = proxy
        yield started
    finally:
        for proxy in started.values():
            if proxy.proc is not None and proxy.proc.poll() is None:
                proxy.proc.kill()
                proxy.proc.wait(10)


def proxy_pool_body(name: str, proxies: dict[str, ProxyProcess], echo_url: str) -> dict[str, Any]:
    """Two proxy-mode addresses whose publicAddress is each proxy's outgoing address."""
    addresses = []
    for kind, proxy in proxies.items():
        user_key, password_key = KEYS[kind]
        addresses.append(
            {
                "name": ADDRESS[kind],
                "publicAddress": proxy.egress_ip,
                "mode": "proxy",
                "proxyUrl": proxy.url,
                "proxySecretRef": {
                    "name": SECRET[kind],
                    "usernameKey": user_key,
                    "passwordKey": password_key,
                },
            }
        )
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeEgressPool",
        "metadata": {"name": name},
        "spec": {"egressCheck": {"method": "url", "url": echo_url}, "addresses": addresses},
    }


def create_proxy_secrets(
    core: client.CoreV1Api, namespace: str, proxies: dict[str, ProxyProcess]
) -> None:
    for kind, proxy in proxies.items():
        user_key, password_key = KEYS[kind]
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": SECRET[kind]},
                "stringData": {user_key: proxy.username, password_key: proxy.password},
            },
        )


def _egress_checks(api_client: Any, namespace: str, pods: int) -> set[tuple[str, str]]:
    leases = client.CoordinationV1Api(api_client)
    out = set()
    for ordinal in range(pods):
        lease = leases.read_namespaced_lease(f"md-gw-{ordinal}", namespace)
        report = GatewayReport.model_validate_json(lease.metadata.annotations[REPORT_ANNOTATION])
        out |= {(c.address, c.state) for c in report.egressChecks}
    return out


def test_a_proxy_pool_quota_leaves_through_both_proxies_and_a_namespace_without_their_secret_stalls(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    mock_exchange: MockThread,
    ip_echo: ThreadedIpEcho,
    proxies: dict[str, ProxyProcess],
) -> None:
    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    objects = custom_object(api_client)
    pool = f"px-{uuid.uuid4().hex[:8]}"
    egress_ips = {p.egress_ip for p in proxies.values()}
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", proxy_pool_body(pool, proxies, ip_echo.url)
    )
    create_proxy_secrets(core, namespace, proxies)
    exchange = mock_exchange.quota_exchange(f"{pool}.test")
    objects.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "exchangeconnectionquotas",
        quota_body(namespace, "md", pool, exchange, STREAMS, connections_per_pod=4),
    )
    other_ns = f"t-{uuid.uuid4().hex[:10]}"
    log = operator_process.log
    try:
        wait_ready(api_client, namespace, "md", 120, log)
        replicas = apps.read_namespaced_stateful_set("md-gw", namespace).spec.replicas
        assert replicas == 2
        # The operator mounted each address's Secret from the quota's namespace, its two keys.
        sts = apps.read_namespaced_stateful_set("md-gw", namespace)
        secret_volumes = {
            v.name: (v.secret.secret_name, [(i.key, i.path) for i in v.secret.items])
            for v in sts.spec.template.spec.volumes
            if v.name.startswith("proxy-")
        }
        assert secret_volumes == {
            "proxy-px-http": (
                "egress-proxy-http",
                [("username", "username"), ("password", "password")],
            ),
            "proxy-px-socks": ("egress-proxy-socks", [("user", "user"), ("pass", "pass")]),
        }
        # Every connection at the exchange came through one of the two proxies, both used to
        # their 4 concurrent connections.
        wait_for(
            lambda: mock_exchange.open_by_ip() == {ip: 4 for ip in egress_ips},
            60,
            f"4 connections from each proxy: {mock_exchange.open_by_ip()}",
            interval_s=0.3,
        )
        assert set(mock_exchange.accepted_by_ip()) == egress_ips, mock_exchange.accepted_by_ip()
        # Each address was verified through its proxy: the echo service saw the proxies'
        # outgoing addresses only, and the pods report `verified` on their Leases.
        assert set(ip_echo.requests()) <= egress_ips
        assert _egress_checks(api_client, namespace, replicas) == {
            (ADDRESS[k], EgressCheckState.VERIFIED) for k in proxies
        }
        mock_exchange.assert_no_violation()
        assert mock_exchange.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) >= 0.9

        # A mass disconnect at the exchange: every connection comes back through its proxy,
        # within every limit.
        assert mock_exchange.disconnect_all() == 8
        wait_for(
            lambda: mock_exchange.open_by_ip() == {ip: 4 for ip in egress_ips},
            90,
            f"reconnection through both proxies: {mock_exchange.open_by_ip()}\n{log()}",
            interval_s=0.3,
        )
        assert set(mock_exchange.accepted_by_ip()) == egress_ips, mock_exchange.accepted_by_ip()
        mock_exchange.assert_no_violation()
        wait_ready(api_client, namespace, "md", 60, log)

        # A quota of the same pool in a namespace without the proxy Secrets: Stalled, the
        # status names the Secrets and the namespace; no pod, and the running quota is untouched.
        core.create_namespace({"metadata": {"name": other_ns}})
        objects.create_namespaced_custom_object(
            GROUP,
            VERSION,
            other_ns,
            "exchangeconnectionquotas",
            quota_body(other_ns, "md", pool, exchange, STREAMS[:2]),
        )

        def stalled() -> dict[str, Any] | None:
            cond = condition(get_quota(api_client, other_ns, "md"), "Stalled")
            return cond if cond and cond["reason"] == "SecretMissing" else None

        cond = wait_for(stalled, 60, f"Stalled=SecretMissing in {other_ns}\n{log()}")
        for kind in proxies:
            assert SECRET[kind] in cond["message"] and ADDRESS[kind] in cond["message"], cond
        assert f"namespace {other_ns}" in cond["message"], cond
        ready = condition(get_quota(api_client, other_ns, "md"), "Ready")
        assert ready is not None and ready["status"] == "False"
        assert not core.list_namespaced_pod(other_ns).items
        assert mock_exchange.open_by_ip() == {ip: 4 for ip in egress_ips}
        mock_exchange.assert_no_violation()
    finally:
        with contextlib.suppress(client.ApiException):
            objects.delete_namespaced_custom_object(
                GROUP, VERSION, other_ns, "exchangeconnectionquotas", "md"
            )
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "md"
        )
    wait_for(lambda: get_quota(api_client, namespace, "md") is None, 90, f"deletion\n{log()}")
    wait_for(lambda: get_quota(api_client, other_ns, "md") is None, 60, f"deletion\n{log()}")
    assert mock_exchange.open_connections() == set()
    mock_exchange.assert_no_violation()
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(other_ns)
