"""Parts of the fleet tests: the mock exchange in a background thread, quotas that point at it,
and consumers of a gateway pod's /v1/ws.

The mock exchange divides every duration of its profile by `TIME_SCALE`; the quota declares
the same limits with wall-clock durations (a `custom` exchange built from the mock's scaled
profile), so the operator, the gateways and the referee agree on every limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes import client

from cluster.conftest import HARNESS_LABEL
from connquota.api.limits import Limit, LimitName, LimitScope
from connquota.api.pool import EgressCheck, EgressCheckMethod
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.settings import MockSettings
from connquota.mockexchange.threaded import ThreadedMockExchange
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.resources import custom_exchange, loopback_pool

GROUP, VERSION = "connquota.io", "v1alpha1"
TIME_SCALE = 20.0
T = TypeVar("T")


class MockThread(ThreadedMockExchange[MockExchange]):
    """A MockExchange served by its own event loop in a daemon thread, speaking the dialect of
    `profile` (a built-in profile's name)."""

    def __init__(
        self,
        limits: list[Limit],
        profile: str = "binance-spot",
        settings: MockSettings | None = None,
    ) -> None:
        """`settings`: the mock's knobs (its test accounts, the private feed's rate); the time
        scale and the public data rate are the fleet tests' in any case."""
        super().__init__(
            MockExchange(
                get_profile(profile),
                "127.0.0.1",
                0,
                time_scale=TIME_SCALE,
                rate_per_stream_hz=5.0,
                limits=limits,
                settings=settings,
            )
        )

    def peak_fraction(self, name: LimitName, scope: LimitScope) -> float:
        """The highest use of a limit as a fraction of its value."""
        return self.sync(lambda: self.mock.peak_fraction(name, scope))

    def open_connections(self) -> set[str]:
        """Ids of the WebSocket connections open now (a reopened connection gets a new id)."""
        return self.sync(lambda: {c.conn_id for c in self.mock.websockets()})

    def open_streams(self) -> dict[str, frozenset[str]]:
        """Open WebSocket connections (by id) and the streams subscribed on each."""
        return self.sync(lambda: {c.conn_id: frozenset(c.streams) for c in self.mock.websockets()})

    def accepted_by_ip(self) -> dict[str, int]:
        """Every TCP connection the exchange ever accepted (closed ones too), by source IP."""

        def read() -> dict[str, int]:
            return {
                sample.labels["ip"]: int(sample.value)
                for family in self.mock.metrics.registry.collect()
                if family.name == "mockexchange_tcp_accepted"
                for sample in family.samples
                if sample.name == "mockexchange_tcp_accepted_total"
            }

        return self.sync(read)

    def open_by_ip(self) -> dict[str, int]:
        """Open WebSocket connections by source IP."""

        def read() -> dict[str, int]:
            out: dict[str, int] = {}
            for c in self.mock.websockets():
                out[c.ip] = out.get(c.ip, 0) + 1
            return out

        return self.sync(read)

    def disconnect_all(self) -> int:
        """A mass disconnect: the exchange drops every connection at once."""
        return self.call(self.mock.disconnect(abrupt=False, code=1001))

    def counter_total(self, name: str) -> int:
        """A counter of the mock's metrics (`mockexchange_<name>`), summed over its labels."""

        def read() -> int:
            return sum(
                int(sample.value)
                for family in self.mock.metrics.registry.collect()
                if family.name == f"mockexchange_{name}"
                for sample in family.samples
                if sample.name == f"mockexchange_{name}_total"
            )

        return self.sync(read)

    def attempts(self) -> int:
        """Connection attempts the exchange counted, from every IP."""
        return self.counter_total("connection_attempts")

    def user_data_accounts(self) -> set[str]:
        """Accounts whose private feed (Binance user data) an open session subscribes."""
        return self.sync(
            lambda: {
                account
                for c in self.mock.websockets()
                for account in getattr(c.session, "user_subs", {})
            }
        )

    def revoke_key(self, api_key: str) -> int:
        """The exchange revokes `api_key`: its sessions are told; returns how many."""
        return self.sync(lambda: self.mock.revoke_key(api_key))

    def set_limits(self, **values: tuple[float, float | None]) -> None:
        """The exchange enforces other values from now on: name=(value, window in profile
        seconds), as `shrunk_limits` (its real limit below or back at the published one)."""
        limits = profile_limits(self.mock.profile.name, **values)
        self.sync(lambda: self.mock.set_limits(limits))

    def refuse_next_handshakes(
        self, count: int, status: int, retry_after_s: float, ip: str | None = None
    ) -> None:
        """Answer the next `count` handshakes (from `ip` only, if given) with `status` and
        Retry-After (wall seconds)."""
        self.sync(lambda: self.mock.refuse_next_handshakes(count, status, retry_after_s, ip))

    def ban(self, ip: str, seconds: float) -> None:
        """Ban `ip` for `seconds` of wall time: its handshakes get 418 with Retry-After."""
        self.sync(lambda: self.mock.ledger.ban(ip, time.monotonic(), seconds, "chaos"))

    def refusals(self) -> dict[str, int]:
        """Handshakes the exchange refused, by HTTP status."""

        def read() -> dict[str, int]:
            return {
                sample.labels["status"]: int(sample.value)
                for family in self.mock.metrics.registry.collect()
                if family.name == "mockexchange_handshake_refusals"
                for sample in family.samples
                if sample.name == "mockexchange_handshake_refusals_total"
            }

        return self.sync(read)

    def assert_no_violation(self) -> None:
        """The referee recorded no violation of any limit."""
        found = self.violations()
        assert found == [], json.dumps(found, indent=1)[:3000]

    def quota_exchange(self, domain: str, path: str = "") -> dict[str, Any]:
        """`spec.custom` of a quota pointing at this mock (at `path` on it: OKX's
        `/ws/v5/public`, Bybit's `/v5/public/spot`), durations in wall-clock seconds."""
        profile = scaled_profile(self.mock.profile, TIME_SCALE, self.mock.url + path)
        return custom_exchange(profile, domain)


def shrunk_limits(**values: tuple[float, float | None]) -> list[Limit]:
    """Overrides of binance-spot limits: name=(value, window in profile seconds)."""
    return profile_limits("binance-spot", **values)


def profile_limits(profile: str, **values: tuple[float, float | None]) -> list[Limit]:
    """Overrides of a built-in profile's limits: name=(value, window in profile seconds); the
    per-IP limit of a name the profile also has per account (OKX's concurrentConnections)."""
    base = get_profile(profile)
    out = []
    for name, (value, window) in values.items():
        limit = base.limit(LimitName(name), LimitScope.IP) or base.limit(LimitName(name))
        assert limit is not None, name
        update: dict[str, Any] = {"value": value}
        if window is not None:
            update["windowSeconds"] = window
        out.append(limit.model_copy(update=update))
    return out


@pytest.fixture
def mock_exchange() -> Iterator[MockThread]:
    """concurrentConnections 4 per IP (the limit the fleet scenarios drive to 100%), six
    attempts per 2 s, two streams per connection."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(4, None),
            connectionAttempts=(6, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        )
    )
    try:
        yield mock
    finally:
        mock.stop()


@pytest.fixture
def ip_echo() -> Iterator[ThreadedIpEcho]:
    """The IP-echo service pools verify their addresses through (the exchange serves none)."""
    echo = ThreadedIpEcho("127.0.0.1", 0)
    try:
        yield echo
    finally:
        echo.stop()


def pool_body(name: str, addresses: int = 1, echo_url: str | None = None) -> dict[str, Any]:
    """A pool of loopback `bind` addresses 127.0.0.2.. on the harness's node, verified through
    the IP-echo service at `echo_url` (unverified, with a reason, without one)."""
    check = (
        EgressCheck(method=EgressCheckMethod.URL, url=echo_url)
        if echo_url
        else EgressCheck(method=EgressCheckMethod.NONE, reason="loopback test addresses")
    )
    return loopback_pool(name, addresses, egress_check=check)


def quota_body(
    namespace: str,
    name: str,
    pool: str,
    exchange: dict[str, Any],
    streams: list[str],
    *,
    max_replicas: int = 3,
    connections_per_pod: int = 2,
    gateway: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A quota on the mock exchange whose gateway pods the harness runs (`gateway`: more
    `spec.gateway` fields, e.g. `consumerTLSSecretRef`)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "exchange": "custom",
            "custom": exchange,
            "headroom": 1.0,
            "egressPoolRef": {"name": pool},
            "streams": [{"name": s} for s in streams],
            "gateway": {
                "maxReplicas": max_replicas,
                "minReplicas": 1,
                "connectionsPerPod": connections_per_pod,
                "podOverrides": {"labels": {HARNESS_LABEL: "true"}},
                **(gateway or {}),
            },
        },
    }


def get_quota(api_client: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The quota, or None."""
    try:
        return client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", name
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(quota: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """One status condition of a quota."""
    for cond in ((quota or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return None


def is_ready(api_client: Any, namespace: str, name: str) -> bool:
    """Ready=True for the quota's current generation."""
    q = get_quota(api_client, namespace, name)
    cond = condition(q, "Ready")
    return bool(
        q
        and cond
        and cond["status"] == "True"
        and q["status"].get("observedGeneration") == q["metadata"]["generation"]
    )


def pod_ips(api_client: Any, namespace: str, quota: str) -> dict[int, str]:
    """ordinal -> Pod IP of the quota's running gateway pods."""
    out = {}
    for pod in (
        client.CoreV1Api(api_client)
        .list_namespaced_pod(namespace, label_selector=f"connquota.io/quota={quota}")
        .items
    ):
        if pod.status.pod_ip and pod.metadata.deletion_timestamp is None:
            out[int(pod.metadata.name.rsplit("-", 1)[-1])] = pod.status.pod_ip
    return out


def consume(ip: str, streams: list[str], frames: int = 2, timeout_s: float = 20) -> dict[str, list]:
    """Subscribe `streams` on a gateway pod's /v1/ws; return the sequence numbers received
    once every stream delivered `frames` frames."""
    from websockets.sync.client import connect

    seen: dict[str, list[int]] = {s: [] for s in streams}
    deadline = time.monotonic() + timeout_s
    with connect(f"ws://{ip}:8080/v1/ws", open_timeout=5) as ws:
        ws.send(json.dumps({"op": "subscribe", "streams": streams, "id": 1}))
        while any(len(v) < frames for v in seen.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"frames from {ip} within {timeout_s}s: {seen}")
            doc = json.loads(ws.recv(timeout=left))
            if "error" in doc:
                pytest.fail(f"gateway {ip} refused {streams}: {doc}")
            if doc.get("stream") in seen:
                seen[doc["stream"]].append(doc["seq"])
    return seen


def streams_by_pod(core: client.CoreV1Api, namespace: str, quota: str) -> dict[int, list[str]]:
    """ordinal -> streams its published plan gives it."""
    out: dict[int, list[str]] = {}
    for cm in core.list_namespaced_config_map(
        namespace, label_selector=f"connquota.io/quota={quota},app.kubernetes.io/component=plan"
    ).items:
        plan = json.loads(cm.data["plan.json"])
        streams = [s for c in plan.get("connections", []) for s in c.get("streams", [])]
        if streams:
            out[plan["ordinal"]] = streams
    return out


def wait_ready(
    api_client: Any, namespace: str, name: str, timeout_s: float, log: Callable[[], str]
) -> None:
    """Wait until the quota is Ready; on timeout show its status and the operator's log."""
    deadline = time.monotonic() + timeout_s
    while not is_ready(api_client, namespace, name):
        if time.monotonic() > deadline:
            status = (get_quota(api_client, namespace, name) or {}).get("status")
            pytest.fail(
                f"{namespace}/{name} not Ready within {timeout_s}s; status "
                f"{json.dumps(status)[:3000]}\n{log()}"
            )
        time.sleep(0.3)
