"""Parts of the in-cluster gateway tests: the mock exchange in a thread (recording every TCP
connection it accepted), the objects the operator would create for one gateway pod (built by
the operator's own `build_*` functions), the pod run by the pod harness, and a recorder of
every version of the pod's Lease.

The gateway runs exactly as the operator deploys it (`connquota gateway --in-cluster`, the
StatefulSet's pod template: downward-API identity, the ServiceAccount token, an emptyDir state
dir), with only shorter timings added as arguments (`--lease-duration`, backoff, linger).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, watch

from cluster.conftest import HARNESS_LABEL, wait_for
from connquota.api.limits import Limit, LimitName
from connquota.api.plan import ConnectionPlan, PodPlan, QuotaRef
from connquota.api.quota import ExchangeConnectionQuota
from connquota.api.report import REPORT_ANNOTATION, GatewayReport
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.connection import Conn
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.threaded import ThreadedMockExchange
from connquota.operator import builders, names
from connquota.operator.builders.services import GATEWAY_PORT
from connquota.testing.gateway_plans import bind_address, pod_plan
from connquota.testing.podharness import PodHarness

T = TypeVar("T")
TIME_SCALE = 20.0
LEASE_DURATION_S = 4
"""The gateways' `--lease-duration` in these tests (renewed every 4/3 s)."""
REPORT_INTERVAL_S = 2.0
"""The gateway's default `--report-interval` (the operator passes none)."""
ATTEMPT_WINDOW_S = 2.0
"""The mock's connectionAttempts window in wall-clock seconds."""
GW_IP = "127.0.0.2"
"""The gateway's egress (`bind`) address, as the mock exchange sees it."""


# --- the mock exchange -------------------------------------------------------------------------


@dataclass(frozen=True)
class TcpRecord:
    """One TCP connection the mock exchange accepted (every one is an attempt: the gateway sends
    nothing else to the exchange)."""

    conn_id: str
    ip: str
    accepted_wall: float
    accepted_mono: float
    websocket: bool
    ended_mono: float | None
    streams: frozenset[str]


class RecordingMock(MockExchange):
    """The mock exchange, also remembering every connection after it ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended: dict[str, tuple[Conn, float, bool]] = {}

    def connection_lost(self, conn: Conn) -> None:
        """Record when the connection ended (and whether it had become a WebSocket)."""
        if conn.conn_id not in self.ended:
            self.ended[conn.conn_id] = (conn, time.monotonic(), conn.ws is not None)
        super().connection_lost(conn)

    def records(self, ip: str) -> list[TcpRecord]:
        """Every TCP connection from `ip`, open or ended, oldest first."""
        out = []
        for conn, ended, was_ws in self.ended.values():
            if conn.ip == ip:
                out.append(_record(conn, ended, was_ws))
        for conn in self.conns.values():
            if conn.ip == ip and conn.conn_id not in self.ended:
                out.append(_record(conn, None, conn.ws is not None))
        return sorted(out, key=lambda r: r.accepted_mono)


def _record(conn: Conn, ended: float | None, was_ws: bool) -> TcpRecord:
    return TcpRecord(
        conn.conn_id,
        conn.ip,
        conn.accepted_wall,
        conn.accepted_at,
        was_ws,
        ended,
        frozenset(conn.streams),
    )


class MockThread(ThreadedMockExchange[RecordingMock]):
    """A RecordingMock served by its own event loop in a daemon thread."""

    def __init__(self, limits: list[Limit]) -> None:
        super().__init__(
            RecordingMock(
                get_profile("binance-spot"),
                "127.0.0.1",
                0,
                time_scale=TIME_SCALE,
                rate_per_stream_hz=1.0,
                limits=limits,
            )
        )

    def records(self, ip: str = GW_IP) -> list[TcpRecord]:
        """Every TCP connection the gateway made to the exchange, oldest first."""
        return self.sync(lambda: self.mock.records(ip))

    def open_websockets(self, ip: str = GW_IP) -> dict[str, frozenset[str]]:
        """conn id -> subscribed streams, for the WebSockets open now."""
        return self.sync(
            lambda: {c.conn_id: frozenset(c.streams) for c in self.mock.websockets(ip)}
        )

    def close_websockets(self, count: int, ip: str = GW_IP) -> list[str]:
        """The exchange closes `count` of the gateway's WebSockets (close frame 1001)."""

        async def run() -> list[str]:
            targets = self.mock.websockets(ip)[:count]
            await asyncio.gather(*(self.mock.close_conn(c, 1001, "test") for c in targets))
            return [c.conn_id for c in targets]

        return self.call(run())

    def profile_for_gateway(self) -> Any:
        """The mock's effective profile with durations scaled, pointing at the mock."""
        rest = self.mock.profile.endpoint.split("://", 1)[1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else ""
        return scaled_profile(self.mock.profile, TIME_SCALE, self.mock.url + path)


@pytest.fixture
def mock_exchange() -> Iterator[MockThread]:
    """binance-spot with a short attempt window (20 attempts per 2 s wall clock), so a fresh
    gateway's conservative first hold (connect timeout + window + margin, about 3 s) stays
    short, yet longer than the report interval (every attempt shows in some report)."""
    attempts = get_profile("binance-spot").limit(LimitName.CONNECTION_ATTEMPTS)
    assert attempts is not None
    limits = [
        attempts.model_copy(update={"value": 20, "windowSeconds": ATTEMPT_WINDOW_S * TIME_SCALE})
    ]
    mock = MockThread(limits)
    try:
        yield mock
    finally:
        mock.stop()


# --- the objects the operator creates, and the pod ----------------------------------------------


def unowned(body: dict[str, Any]) -> dict[str, Any]:
    """`body` without owner references: no quota object exists in these tests (the garbage
    collector would delete objects owned by a missing quota)."""
    body = copy.deepcopy(body)
    body["metadata"].pop("ownerReferences", None)
    return body


def micro_now(offset_s: float = 0.0) -> str:
    """A Kubernetes MicroTime for now + `offset_s`."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro(text: str | dt.datetime) -> float:
    """Epoch seconds of a MicroTime (string or the client's datetime)."""
    if isinstance(text, dt.datetime):
        return text.timestamp()
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True)
class LeaseVersion:
    """One version of the Lease as the test's watch saw it."""

    seen_mono: float
    resource_version: str
    holder: str | None
    renew_wall: float | None
    duration_s: int | None
    report: str | None


class LeaseRecorder:
    """Every version of one Lease, from a watch in a thread."""

    def __init__(self, api_client: Any, namespace: str, name: str) -> None:
        self.api = client.CoordinationV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self.versions: list[LeaseVersion] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rv: str | None = None
        while not self._stop.is_set():
            try:
                w = watch.Watch()
                kwargs: dict[str, Any] = {"field_selector": f"metadata.name={self.name}"}
                if rv:
                    kwargs["resource_version"] = rv
                for event in w.stream(
                    self.api.list_namespaced_lease, self.namespace, timeout_seconds=5, **kwargs
                ):
                    lease = event["object"]
                    rv = lease.metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._add(lease)
                    if self._stop.is_set():
                        w.stop()
            except Exception:
                rv = None  # e.g. 410 Gone: list again
                self._stop.wait(0.2)

    def _add(self, lease: Any) -> None:
        spec = lease.spec
        version = LeaseVersion(
            time.monotonic(),
            lease.metadata.resource_version,
            spec.holder_identity,
            parse_micro(spec.renew_time) if spec.renew_time else None,
            spec.lease_duration_seconds,
            (lease.metadata.annotations or {}).get(REPORT_ANNOTATION),
        )
        with self._lock:
            if not any(v.resource_version == version.resource_version for v in self.versions):
                self.versions.append(version)

    def snapshot(self) -> list[LeaseVersion]:
        """The versions seen so far, in order."""
        with self._lock:
            return list(self.versions)

    def stop(self) -> None:
        """Stop watching (the watch ends within its 5 s timeout; the thread is a daemon)."""
        self._stop.set()


class InClusterGateway:
    """One gateway pod (ordinal 0 of quota `q`) with the objects the operator would create."""

    quota_name = "q"

    def __init__(
        self, api_client: Any, harness: PodHarness, namespace: str, mock: MockThread
    ) -> None:
        self.api_client = api_client
        self.harness = harness
        self.namespace = namespace
        self.mock = mock
        self.core = client.CoreV1Api(api_client)
        self.rbac = client.RbacAuthorizationV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.quota = ExchangeConnectionQuota.model_validate(
            {
                "metadata": {
                    "name": self.quota_name,
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                },
                "spec": {
                    "exchange": "binance-spot",
                    "egressPoolRef": {"name": "unused"},
                    "gateway": {
                        "image": "connquota/gateway:test",
                        # No requests: the harness reports every pod as BestEffort.
                        "resources": {},
                        "podOverrides": {"labels": {HARNESS_LABEL: "true"}},
                    },
                },
            }
        )
        self.pod_name = names.pod_name(self.quota_name, 0)
        self.lease_name = names.lease_name(self.quota_name, 0)
        self.configmap_name = names.plan_configmap_name(self.quota_name, 0)
        self.role_binding_name = names.service_account_name(self.quota_name)
        self.pod_ip: str | None = None
        self.root: Path | None = None
        self.recorder: LeaseRecorder | None = None
        self.started_mono = 0.0

    # -- plans
    def plan(
        self, connections: list[ConnectionPlan], generation: int = 1, **kwargs: Any
    ) -> PodPlan:
        """A PodPlan for ordinal 0 on the mock exchange, bound to GW_IP."""
        plan = pod_plan(
            self.mock.profile_for_gateway(),
            connections,
            addresses=[bind_address(0)],
            generation=generation,
            margin_s=0.2,
            **kwargs,
        )
        return plan.model_copy(
            update={"quota": QuotaRef(namespace=self.namespace, name=self.quota_name)}
        )

    def publish_plan(self, plan: PodPlan | str) -> None:
        """Create or replace the plan ConfigMap (a PodPlan as the operator builds it, or raw
        text)."""
        if isinstance(plan, PodPlan):
            body = unowned(builders.build_plan_configmap(self.quota, plan))
        else:
            body = {
                "metadata": {"name": self.configmap_name, "namespace": self.namespace},
                "data": {names.PLAN_KEY: plan},
            }
        try:
            self.core.create_namespaced_config_map(self.namespace, body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.core.patch_namespaced_config_map(
                self.configmap_name, self.namespace, {"data": body["data"]}
            )

    # -- objects
    def create_objects(self, plan: PodPlan, lease_spec: dict[str, Any] | None = None) -> None:
        """ServiceAccount, Role, RoleBinding, the peer-token Secret (exactly as the operator
        builds them), the Lease (empty, or with `lease_spec`) and the plan ConfigMap."""
        self.core.create_namespaced_service_account(
            self.namespace, unowned(builders.build_service_account(self.quota))
        )
        self.rbac.create_namespaced_role(
            self.namespace, unowned(builders.build_role(self.quota, 1))
        )
        self.create_role_binding()
        self.core.create_namespaced_secret(
            self.namespace, unowned(builders.build_peer_secret(self.quota))
        )
        lease = unowned(builders.build_lease(self.quota, 0))
        if lease_spec:
            lease["spec"] = dict(lease_spec)
        self.coordination.create_namespaced_lease(self.namespace, lease)
        self.recorder = LeaseRecorder(self.api_client, self.namespace, self.lease_name)
        self.publish_plan(plan)

    def create_role_binding(self) -> None:
        """The operator's RoleBinding of the gateways' Role to their ServiceAccount."""
        self.rbac.create_namespaced_role_binding(
            self.namespace, unowned(builders.build_role_binding(self.quota))
        )

    def delete_role_binding(self) -> None:
        """Revoke every right of the gateway (its Lease and plan become unreadable)."""
        self.rbac.delete_namespaced_role_binding(self.role_binding_name, self.namespace)

    def pod_body(self) -> dict[str, Any]:
        """A Pod from the operator's StatefulSet template, with test timings as arguments."""
        sts = builders.build_statefulset(self.quota, 1, [])
        template = copy.deepcopy(sts["spec"]["template"])
        container = template["spec"]["containers"][0]
        container["args"] = [
            "--lease-duration",
            str(LEASE_DURATION_S),
            "--backoff-base",
            "0.1",
            "--backoff-cap",
            "0.5",
            "--linger",
            "0.3",
            "--log-format",
            "text",
        ]
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod_name,
                "namespace": self.namespace,
                "labels": template["metadata"]["labels"],
            },
            "spec": template["spec"],
        }

    def start(self) -> None:
        """Create the pod and wait until the harness runs it (its HTTP server answers)."""
        self.started_mono = time.monotonic()
        self.core.create_namespaced_pod(self.namespace, self.pod_body())

        def running() -> bool:
            pod = self.core.read_namespaced_pod(self.pod_name, self.namespace)
            self.pod_ip = pod.status.pod_ip
            self.root = self.harness.pod_root(self.namespace, self.pod_name)
            return bool(self.pod_ip and self.root and self.status() is not None)

        wait_for(running, 30, f"gateway pod {self.pod_name} serving", interval_s=0.2)

    def stop(self) -> None:
        """Delete the pod (SIGTERM) and wait until its process exited."""
        if self.recorder is not None:
            self.recorder.stop()
        with contextlib.suppress(client.ApiException):
            self.core.delete_namespaced_pod(self.pod_name, self.namespace, grace_period_seconds=10)
        with contextlib.suppress(BaseException):
            wait_for(
                lambda: all(
                    r.exited_at is not None
                    for r in self.harness.processes(self.namespace, self.pod_name)
                ),
                20,
                "the gateway process to exit",
                interval_s=0.2,
            )

    # -- observation
    def status(self) -> dict[str, Any] | None:
        """The gateway's /status, or None while it does not answer."""
        if not self.pod_ip:
            return None
        url = f"http://{self.pod_ip}:{GATEWAY_PORT}/status"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def lease(self) -> Any:
        """The Lease as the API server has it now."""
        return self.coordination.read_namespaced_lease(self.lease_name, self.namespace)

    def report(self) -> GatewayReport | None:
        """The GatewayReport on the Lease now, or None."""
        text = (self.lease().metadata.annotations or {}).get(REPORT_ANNOTATION)
        return GatewayReport.model_validate_json(text) if text else None

    def log(self, lines: int = 60) -> str:
        """The end of the gateway's log (stdout and stderr)."""
        if self.root is None:
            return "(no pod root)"
        path = self.root / "container.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def full_log(self) -> str:
        """The whole gateway log."""
        if self.root is None or not (self.root / "container.log").exists():
            return ""
        return (self.root / "container.log").read_text(errors="replace")

    def wait_live(self, connections: int, streams: int, timeout_s: float = 30) -> dict[str, Any]:
        """Wait until the mock exchange sees `connections` WebSockets with `streams` streams."""

        def live() -> dict[str, frozenset[str]] | None:
            open_ = self.mock.open_websockets()
            subscribed = sum(len(s) for s in open_.values())
            return open_ if len(open_) == connections and subscribed == streams else None

        try:
            return wait_for(live, timeout_s, f"{connections} connections, {streams} streams")
        except BaseException:
            print(self.log())
            raise


@pytest.fixture
def gateway(
    api_client: Any, pod_harness: PodHarness, namespace: str, mock_exchange: MockThread
) -> Iterator[InClusterGateway]:
    """The in-cluster gateway of one test (objects created by the test, pod deleted after)."""
    gw = InClusterGateway(api_client, pod_harness, namespace, mock_exchange)
    try:
        yield gw
    finally:
        # Shown when the test failed:
        print(f"--- gateway status ---\n{json.dumps(gw.status(), indent=1)[:6000]}")
        print(f"--- gateway log (end) ---\n{gw.log(120)}")
        gw.stop()


def connections(count: int, streams_each: int, tag: str = "s") -> list[ConnectionPlan]:
    """`count` connections on a0 with `streams_each` distinct Binance streams each."""
    return [
        ConnectionPlan(
            id=f"c{i}",
            address="a0",
            streams=[f"{tag}{i}x{j}usdt@trade" for j in range(streams_each)],
        )
        for i in range(count)
    ]
