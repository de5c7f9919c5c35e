"""The operator with real gateways on a pool of two proxy-mode addresses, through real proxies:
tinyproxy (HTTP CONNECT, Basic auth) and microsocks (SOCKS5, username/password), installed by
hack/install-proxies.sh.

Each proxy listens on its own loopback address and sends from another, which is its
address's `publicAddress`: the exchange sees one source IP per proxy. The proxy credentials
are Secrets in the quota's namespace (the pool's `proxySecretRef`), mounted by the operator
into the gateway pods; a quota in a namespace without them is Stalled, naming the Secret.

On that fleet the exchange drops every connection at once, then tinyproxy is killed (the
operator plans without its address while the gateways report it down: its streams unserved,
as the other address has no room) and restarted (the gateways' probe sees it answer, the
address is planned again): each time every planned connection comes back through its own
proxy (the exchange sees each connection's streams from its address's egress IP), with no
violation and the proxy IPs' attempt limit used to >= 90% in that phase alone (4 attempts
per 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from cluster.operator.fleet import (
    GROUP,
    TIME_SCALE,
    VERSION,
    MockThread,
    condition,
    consume,
    get_quota,
    pod_ips,
    quota_body,
    shrunk_limits,
    streams_by_pod,
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
def mock_exchange() -> Iterator[MockThread]:
    """The fleet's mock exchange with the attempt limit at 4 per IP per 5 s: the 4 connections
    of a proxy IP reopening (after a mass disconnect, a proxy restart) use all of it, and a
    fifth attempt in the window would be a violation. The window is long enough that the
    connections of a restarted proxy, each leaving its own jittered backoff, fall in one."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(4, None),
            connectionAttempts=(4, 5 * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )
    try:
        yield mock
    finally:
        mock.stop()


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


def _reports(api_client: Any, namespace: str, pods: int) -> dict[int, GatewayReport]:
    """ordinal -> the report on the gateway pod's Lease."""
    leases = client.CoordinationV1Api(api_client)
    out = {}
    for ordinal in range(pods):
        lease = leases.read_namespaced_lease(f"md-gw-{ordinal}", namespace)
        annotation = lease.metadata.annotations[REPORT_ANNOTATION]
        out[ordinal] = GatewayReport.model_validate_json(annotation)
    return out


def _egress_checks(api_client: Any, namespace: str, pods: int) -> set[tuple[str, str]]:
    reports = _reports(api_client, namespace, pods).values()
    return {(c.address, c.state) for r in reports for c in r.egressChecks}


def _proxy_faults(api_client: Any, namespace: str, pods: int) -> dict[int, dict[str, str | None]]:
    """ordinal -> address -> the proxy fault the pod reports on its Lease (None: none)."""
    return {
        ordinal: {c.address: c.proxyFault for c in report.egressChecks}
        for ordinal, report in _reports(api_client, namespace, pods).items()
    }


EgressedConnection = tuple[str, tuple[str, ...]]
"""(source IP at the exchange, sorted streams) of one upstream connection."""


def _planned(core: client.CoreV1Api, namespace: str) -> Counter[EgressedConnection]:
    """Every connection the published plans hold, with its address's proxy egress IP."""
    egress_of = {ADDRESS[kind]: EGRESS[kind] for kind in ADDRESS}
    out: Counter[EgressedConnection] = Counter()
    for cm in core.list_namespaced_config_map(
        namespace, label_selector="connquota.io/quota=md,app.kubernetes.io/component=plan"
    ).items:
        for conn in json.loads(cm.data["plan.json"]).get("connections", []):
            out[(egress_of[conn["address"]], tuple(sorted(conn["streams"])))] += 1
    return out


def _at_exchange(mock: MockThread) -> Counter[EgressedConnection]:
    """Every WebSocket open at the exchange: its source IP and the streams subscribed on it."""
    return mock.sync(
        lambda: Counter((c.ip, tuple(sorted(c.streams))) for c in mock.mock.websockets())
    )


def _open_ids_by_ip(mock: MockThread) -> dict[str, set[str]]:
    """Source IP -> ids of the WebSockets open from it (a reopened connection gets a new id)."""

    def read() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for c in mock.mock.websockets():
            out.setdefault(c.ip, set()).add(c.conn_id)
        return out

    return mock.sync(read)


def _forget_peaks(mock: MockThread) -> None:
    """Start a phase of the referee's peak records: only the peaks go (its attempt windows,
    which judge every attempt, and its violations stay), so the next peak is this phase's."""
    mock.sync(mock.mock.ledger.peaks.clear)


def _attempt_peaks(mock: MockThread) -> dict[str, float]:
    """Egress IP -> peak use of the exchange's per-IP attempt limit (1.0 = at the limit)."""
    return {
        ip: mock.sync(
            lambda ip=ip: mock.mock.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, ip)
        )
        for ip in EGRESS.values()
    }


def _every_planned_connection_through_its_proxy(
    core: client.CoreV1Api, namespace: str, mock: MockThread, replaced: set[str]
) -> bool:
    """Every planned connection is open at the exchange from its address's egress IP with its
    streams, every stream of the quota is in the plans, and no connection of `replaced` (the
    ids open before a drop) is among them."""
    planned = _planned(core, namespace)
    streams = sorted(s for (_, ss), n in planned.items() for s in ss for _ in range(n))
    open_ids = set().union(*_open_ids_by_ip(mock).values())
    return streams == sorted(STREAMS) and _at_exchange(mock) == planned and not open_ids & replaced


def _plan_addresses(core: client.CoreV1Api, namespace: str) -> dict[int, set[str]]:
    """ordinal -> the addresses its published plan's connections leave from."""
    out: dict[int, set[str]] = {}
    for cm in core.list_namespaced_config_map(
        namespace, label_selector="connquota.io/quota=md,app.kubernetes.io/component=plan"
    ).items:
        plan = json.loads(cm.data["plan.json"])
        out[plan["ordinal"]] = {c["address"] for c in plan.get("connections", [])}
    return out


def _gateway_proxies(api_client: Any, namespace: str) -> dict[int, Any]:
    """Each gateway's own view of its proxies and connections (/status), for failure messages."""
    out: dict[int, Any] = {}
    for ordinal, ip in pod_ips(api_client, namespace, "md").items():
        try:
            with urllib.request.urlopen(f"http://{ip}:8080/status", timeout=5) as resp:
                status = json.loads(resp.read())
        except OSError as exc:
            out[ordinal] = repr(exc)
            continue
        out[ordinal] = {k: status.get(k) for k in ("proxies", "lease", "message", "connections")}
    return out


def _consumers_get_every_stream(api_client: Any, namespace: str, core: Any) -> None:
    """A consumer on each gateway pod gets every stream the pod's plan holds, consecutively."""
    ips = pod_ips(api_client, namespace, "md")
    for ordinal, streams in streams_by_pod(core, namespace, "md").items():
        for stream, seqs in consume(ips[ordinal], streams).items():
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (stream, seqs)


def test_a_proxy_pool_fleet_leaves_through_its_planned_proxies_across_a_mass_disconnect_and_a_proxy_restart(
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

        # Each planned connection left through its own address's proxy, with its streams.
        wait_for(
            lambda: _every_planned_connection_through_its_proxy(
                core, namespace, mock_exchange, set()
            ),
            30,
            f"the plans' connections at the exchange: {_at_exchange(mock_exchange)}",
            interval_s=0.3,
        )

        # A mass disconnect at the exchange: every connection comes back through its planned
        # proxy, the 4 of each proxy IP together, at the attempt limit and never over it.
        _forget_peaks(mock_exchange)
        before = mock_exchange.open_connections()
        dropped_at = time.monotonic()
        assert mock_exchange.disconnect_all() == 8
        wait_for(
            lambda: _every_planned_connection_through_its_proxy(
                core, namespace, mock_exchange, before
            ),
            60,
            f"reconnection through both proxies: {_at_exchange(mock_exchange)}\n{log()}",
            interval_s=0.3,
        )
        disconnect_s = time.monotonic() - dropped_at
        assert set(mock_exchange.accepted_by_ip()) == egress_ips, mock_exchange.accepted_by_ip()
        disconnect_peaks = _attempt_peaks(mock_exchange)
        assert all(p >= 0.9 for p in disconnect_peaks.values()), disconnect_peaks
        mock_exchange.assert_no_violation()
        wait_ready(api_client, namespace, "md", 60, log)
        _consumers_get_every_stream(api_client, namespace, core)

        # tinyproxy killed mid-run: its tunnels drop, the pods that use its address report the
        # proxy unreachable on their Leases, and the quota names the address; the SOCKS5
        # address's connections are untouched. Restarted (same address and port), every
        # connection of its address reopens through it, within the attempt limit.
        http = proxies["http"]

        def pool_object() -> dict[str, Any]:
            return objects.get_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)

        users = {o for o, c in _plan_addresses(core, namespace).items() if ADDRESS["http"] in c}
        assert users, _plan_addresses(core, namespace)
        _forget_peaks(mock_exchange)
        by_ip = _open_ids_by_ip(mock_exchange)
        socks_ids, http_ids = by_ip[EGRESS["socks5"]], by_ip[EGRESS["http"]]
        killed_at = time.monotonic()
        asyncio.run(http.kill())
        # Each connection retries after its own jittered backoff, up to the 30 s cap (its
        # failure count is not reset yet: it has not been live for `stable_after_s` since the
        # mass disconnect), so the fault may take that long to be seen.
        wait_for(
            lambda: all(
                faults[o].get(ADDRESS["http"]) == "unreachable"
                for faults in [_proxy_faults(api_client, namespace, replicas)]
                for o in users
            ),
            60,
            f"pods {sorted(users)} reporting {ADDRESS['http']}'s proxy unreachable: "
            f"{_proxy_faults(api_client, namespace, replicas)}; gateways: "
            f"{_gateway_proxies(api_client, namespace)}",
            interval_s=0.3,
        )

        # The operator shows it as an egress problem of that address alone: the quota
        # Degraded (EgressCheckFailed), the pool's EgressVerified False (a report written
        # when the tunnels dropped says tunnel-closed first).
        def egress_problem() -> tuple[dict[str, Any], dict[str, Any]] | None:
            degraded = condition(get_quota(api_client, namespace, "md"), "Degraded")
            verified = condition(pool_object(), "EgressVerified")
            down = f"{ADDRESS['http']} (proxy unreachable"
            if (
                degraded
                and degraded["status"] == "True"
                and down in degraded["message"]
                and verified
                and verified["status"] == "False"
                and down in verified["message"]
            ):
                return degraded, verified
            return None

        degraded, verified = wait_for(
            egress_problem, 30, f"Degraded and EgressVerified=False\n{log()}", interval_s=0.3
        )
        reported_s = time.monotonic() - killed_at
        assert degraded["reason"] == "EgressCheckFailed", degraded
        for cond in (degraded, verified):
            assert ADDRESS["socks5"] not in cond["message"], cond
        assert _open_ids_by_ip(mock_exchange) == {EGRESS["socks5"]: socks_ids}

        # While the proxy is down the operator plans without its address: the SOCKS5 address
        # has no room (its 4 connections are its whole concurrent limit), so nothing moves
        # there and the address's 8 streams are reported unserved, naming the proxy.
        def planned_without_the_address() -> dict[str, Any] | None:
            if any(ADDRESS["http"] in a for a in _plan_addresses(core, namespace).values()):
                return None
            quota_now = get_quota(api_client, namespace, "md")
            capacity = condition(quota_now, "CapacityExceeded")
            if capacity is None or capacity["status"] != "True":
                return None
            return quota_now

        unserved = wait_for(
            planned_without_the_address,
            30,
            f"plans without {ADDRESS['http']} and its streams unserved\n{log()}",
            interval_s=0.3,
        )
        assert unserved["status"]["streams"]["unserved"] == len(STREAMS) // 2, unserved["status"]
        assert _open_ids_by_ip(mock_exchange) == {EGRESS["socks5"]: socks_ids}
        mock_exchange.assert_no_violation()
        asyncio.run(http.start())
        restarted_at = time.monotonic()
        wait_for(
            lambda: _every_planned_connection_through_its_proxy(
                core, namespace, mock_exchange, http_ids
            ),
            60,
            f"reconnection through the restarted proxy: {_at_exchange(mock_exchange)}\n{log()}",
            interval_s=0.3,
        )
        restart_s = time.monotonic() - restarted_at
        assert _open_ids_by_ip(mock_exchange)[EGRESS["socks5"]] == socks_ids
        wait_for(
            lambda: all(
                fault is None
                for faults in _proxy_faults(api_client, namespace, replicas).values()
                for fault in faults.values()
            ),
            30,
            f"no proxy fault on the Leases: {_proxy_faults(api_client, namespace, replicas)}",
            interval_s=0.3,
        )
        wait_for(
            lambda: (
                condition(get_quota(api_client, namespace, "md"), "Degraded") is None
                and (condition(pool_object(), "EgressVerified") or {}).get("status") == "True"
            ),
            30,
            f"no Degraded, EgressVerified=True again\n{log()}",
            interval_s=0.3,
        )
        wait_ready(api_client, namespace, "md", 60, log)
        restart_peaks = _attempt_peaks(mock_exchange)
        assert restart_peaks[EGRESS["http"]] >= 0.9, restart_peaks
        mock_exchange.assert_no_violation()
        _consumers_get_every_stream(api_client, namespace, core)
        assert _egress_checks(api_client, namespace, replicas) == {
            (ADDRESS[k], EgressCheckState.VERIFIED) for k in proxies
        }
        print(
            f"mass disconnect: every connection back in {disconnect_s:.1f} s, attempt-limit "
            f"peaks {disconnect_peaks}; proxy killed: fault on the Leases and the quota in "
            f"{reported_s:.1f} s (pods {sorted(users)}), restarted: back in {restart_s:.1f} s, "
            f"attempt-limit peaks {restart_peaks}"
        )

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
