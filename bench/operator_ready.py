"""Time from `kubectl apply` to Ready for a 1,000-stream quota, with real gateway pods.

Starts the test control plane (real kube-apiserver + controller-manager), the pod harness
(playing kubelet and scheduler: each gateway pod runs as a local `connquota gateway`
process), the mock exchange on loopback in a thread, a pool of loopback `bind` addresses and
`connquota operator` as a subprocess; then `kubectl apply --server-side -f quota.yaml` and
polls every 0.2 s until the quota's Ready condition holds, every stream is live and the mock
sees every stream subscribed. Prints when each of these was first seen (seconds after the
apply started):

    first plan published   plan ConfigMap `NAME-plan-0` and StatefulSet `NAME-gw` exist
    pods Running           every pod of the StatefulSet's replicas is Running
    pods Ready             ... and has condition Ready (the gateway's /readyz: plan applied)
    first connection       the mock exchange has a first WebSocket connection open
    streams at the mock    the mock sees every stream subscribed
    status streams.live    the quota's status says every stream is live
    Ready                  condition Ready=True for the quota's generation

then `kubectl wait --for=condition=Ready` as a check, the mock's violations (must be 0) and
the load average before and after.

The exchange: binance-spot's limits (published and assumed values, see
docs/exchange-limits.md) with streamsPerConnection overridden to 200, every duration divided
by the time scale (20: the 300-per-5-minutes attempt window lasts 15 s, 5 messages per
50 ms), served as a `custom` exchange so the operator, the gateways and the referee agree on
every limit. 1,000 streams at 200 per connection and headroom 1.0 are 5 connections; with 2
connections per pod that is 3 pods, on a pool of 2 addresses (each run its own pool and addresses).

    .venv/bin/python bench/operator_ready.py [--streams 1000] [--runs 1] [--time-scale 1]
        [--faults [--steady-s 30]] [--rollout]

`--time-scale 1` runs Binance's real limits (300 attempts per 5 minutes per IP: a gateway
that had to wait one full hold would connect after about 5 min 12 s). `--faults` then counts
Lease writes per gateway in steady state, deletes pod 0 gracefully, SIGKILLs the replacement's
process and force-deletes its Pod (wiped state: the successor waits out the Lease), drops every
connection at the mock, and prints how long streams were missing each time and the violations.

`--rollout` then sets `connectionsPerPod` 1 (the 5 connections on 5 pods), waits for Ready and
rolls a new pod template out (a `podOverrides` annotation) while the mock is sampled every
50 ms and a `/v1/ws` consumer on pod 0 reads every stream until pod 0's own turn: prints the
rollout's duration, the most declared streams without a subscription at the mock in any
sample (the streams down at that moment), the consumer's gaps in the gateway's `seq` and in
the exchange's trade ids, the most connections open at once (the copies' overlap), the peak
attempt use of any pod slice's address, and the violations.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, watch

from connquota.api.limits import LimitName, LimitScope
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.threaded import ThreadedMockExchange
from connquota.testing.controlplane import (
    expected_bin_dir,
    find_binaries,
    free_port,
    start_control_plane,
)
from connquota.testing.podharness import PodHarness
from connquota.testing.resources import custom_exchange, loopback_pool

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "connquota.io", "v1alpha1"
HARNESS_LABEL = "connquota.io/test-harness"
TIME_SCALE = 20.0
STREAMS_PER_CONNECTION = 200
CONNECTIONS_PER_POD = 2
ADDRESSES = 2
RATE_PER_STREAM_HZ = 0.5
T = TypeVar("T")

MILESTONES = [
    ("plan", "first plan published"),
    ("running", "pods Running"),
    ("pods_ready", "pods Ready"),
    ("first_conn", "first upstream connection"),
    ("mock_streams", "all streams at the mock"),
    ("live", "status streams.live == all"),
    ("ready", "Ready condition"),
]


class MockThread(ThreadedMockExchange[MockExchange]):
    """The mock exchange served by its own event loop in a daemon thread."""

    def __init__(self, time_scale: float = TIME_SCALE) -> None:
        self.time_scale = time_scale
        base = get_profile("binance-spot")
        per_conn = base.limit(LimitName.STREAMS_PER_CONNECTION)
        assert per_conn is not None
        super().__init__(
            MockExchange(
                base,
                "127.0.0.1",
                0,
                time_scale=time_scale,
                rate_per_stream_hz=RATE_PER_STREAM_HZ,
                limits=[per_conn.model_copy(update={"value": float(STREAMS_PER_CONNECTION)})],
            )
        )

    def connections_and_streams(self, ips: set[str]) -> tuple[int, int]:
        """Open WebSocket connections from `ips` and the streams subscribed over them."""

        def count() -> tuple[int, int]:
            conns = [c for c in self.mock.websockets() if c.ip in ips]
            return len(conns), sum(len(c.streams) for c in conns)

        return self.sync(count)

    def subscribed(self, ips: set[str]) -> tuple[set[str], int]:
        """The distinct streams subscribed from `ips`, and the connections open from them."""

        def read() -> tuple[set[str], int]:
            conns = [c for c in self.mock.websockets() if c.ip in ips]
            return {s for c in conns for s in c.streams}, len(conns)

        return self.sync(read)

    def exchange(self, domain: str) -> dict[str, Any]:
        """`spec.custom` of a quota pointing at the mock, durations in wall-clock seconds."""
        profile = scaled_profile(self.mock.profile, self.time_scale, self.mock.url)
        return custom_exchange(profile, domain)


def _pool(name: str, first: int) -> dict[str, Any]:
    """Loopback `bind` addresses 127.0.0.<first>.. on the harness's node."""
    return loopback_pool(name, ADDRESSES, first=first)


def _quota(ns: str, name: str, pool: str, exchange: dict[str, Any], streams: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "exchange": "custom",
            "custom": exchange,
            "headroom": 1.0,
            "egressPoolRef": {"name": pool},
            "streams": [{"name": f"s{i}usdt@trade"} for i in range(streams)],
            "gateway": {
                "maxReplicas": 8,
                "minReplicas": 1,
                "connectionsPerPod": CONNECTIONS_PER_POD,
                "podOverrides": {"labels": {HARNESS_LABEL: "true"}},
            },
        },
    }


def _reconciles(port: int) -> float:
    """The operator's connquota_operator_reconciles_total (0 while it is not serving yet)."""
    name = "connquota_operator_reconciles_total"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Observer:
    """Polls the API server and the mock; records when each milestone was first seen."""

    def __init__(
        self, api: Any, mock: MockThread, ns: str, name: str, streams: int, ips: set[str]
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.objects = client.CustomObjectsApi(api)
        self.mock = mock
        self.ips = ips
        self.ns, self.name, self.streams = ns, name, streams
        self.seen: dict[str, float] = {}
        self.last: dict[str, Any] = {}

    def _mark(self, key: str, holds: bool, now: float) -> None:
        if holds and key not in self.seen:
            self.seen[key] = now

    def poll(self, started: float) -> None:
        """One look at everything; milestones are timed from `started`."""
        now = time.monotonic() - started
        sts = None
        with contextlib.suppress(client.ApiException):
            sts = self.apps.read_namespaced_stateful_set(f"{self.name}-gw", self.ns)
        if "plan" not in self.seen:
            cms = self.core.list_namespaced_config_map(
                self.ns, field_selector=f"metadata.name={self.name}-plan-0"
            ).items
            self._mark("plan", bool(cms) and sts is not None, now)
        if sts is not None and sts.spec.replicas:
            pods = self.core.list_namespaced_pod(
                self.ns, label_selector=f"connquota.io/quota={self.name}"
            ).items
            pods = [p for p in pods if p.metadata.deletion_timestamp is None]
            running = [p for p in pods if p.status.phase == "Running"]
            ready = [
                p
                for p in running
                if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            ]
            self._mark("running", len(running) >= sts.spec.replicas, now)
            self._mark("pods_ready", len(ready) >= sts.spec.replicas, now)
            self.last["pods"] = f"{len(running)} running, {len(ready)} ready of {sts.spec.replicas}"
        conns, subscribed = self.mock.connections_and_streams(self.ips)
        self.last["mock"] = f"{conns} connections, {subscribed} streams"
        self._mark("first_conn", conns > 0, now)
        self._mark("mock_streams", subscribed >= self.streams, now)
        quota = self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, "exchangeconnectionquotas", self.name
        )
        status = quota.get("status") or {}
        self.last["status"] = {
            k: status.get(k) for k in ("replicas", "readyReplicas", "streams", "connections")
        }
        self._mark("live", (status.get("streams") or {}).get("live", 0) >= self.streams, now)
        ready_cond = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        self.last["ready"] = ready_cond[0] if ready_cond else None
        self._mark(
            "ready",
            bool(ready_cond)
            and ready_cond[0]["status"] == "True"
            and status.get("observedGeneration") == quota["metadata"]["generation"],
            now,
        )

    def done(self) -> bool:
        return all(key in self.seen for key, _ in MILESTONES)


def _run_once(plane: Any, api: Any, mock: MockThread, files: Path, run: int, streams: int) -> int:
    """Apply one quota in a fresh namespace and time it to Ready; 0 when every milestone and
    no violation was seen."""
    ns, name = f"ready{run}", "big"
    plane.kubectl("create", "namespace", ns)
    path = files / f"quota-{run}.yaml"
    pool = f"bench-{run}"
    path.write_text(yaml.safe_dump(_quota(ns, name, pool, mock.exchange(f"{pool}.test"), streams)))
    first = 2 + ADDRESSES * run
    ips = {f"127.0.0.{first + i}" for i in range(ADDRESSES)}
    observer = Observer(api, mock, ns, name, streams, ips)
    load_before = _loadavg()
    started = time.monotonic()
    plane.kubectl("apply", "--server-side", "-f", str(path))
    applied = time.monotonic() - started
    deadline = started + 300
    while not observer.done() and time.monotonic() < deadline:
        with contextlib.suppress(client.ApiException):
            observer.poll(started)
        time.sleep(0.2)
    waited = plane.kubectl(
        "wait",
        "--for=condition=Ready",
        f"ecq/{name}",
        "-n",
        ns,
        "--timeout=5s",
        check=False,
    )
    violations = mock.violations()
    print(
        f"run {run}: quota of {streams} streams "
        f"({STREAMS_PER_CONNECTION} per connection, {CONNECTIONS_PER_POD} connections per pod), "
        f"load average before {load_before}, after {_loadavg()}"
    )
    print(f"  kubectl apply returned                 {applied:6.2f} s")
    for key, label in sorted(MILESTONES, key=lambda m: observer.seen.get(m[0], 1e9)):
        at = observer.seen.get(key)
        print(f"  {label:<38} {at:6.2f} s" if at is not None else f"  {label:<38}  never")
    print(f"  pods: {observer.last.get('pods')}; mock: {observer.last.get('mock')}")
    print(f"  status: {json.dumps(observer.last.get('status'))}")
    print(f"  kubectl wait --for=condition=Ready: {waited.stdout.strip() or waited.stderr.strip()}")
    print(f"  mock violations: {len(violations)}")
    for v in violations[:5]:
        print(f"    {json.dumps(v)[:300]}")
    ok = observer.done() and waited.returncode == 0 and not violations
    return 0 if ok else 1


class LeaseWrites:
    """Counts writes to the quota's gateway Leases (watch events), per Lease."""

    def __init__(self, api: Any, ns: str) -> None:
        self.coordination = client.CoordinationV1Api(api)
        self.ns = ns
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rv = self.coordination.list_namespaced_lease(self.ns).metadata.resource_version
        while not self._stop.is_set():
            w = watch.Watch()
            with contextlib.suppress(Exception):
                for ev in w.stream(
                    self.coordination.list_namespaced_lease,
                    self.ns,
                    resource_version=rv,
                    timeout_seconds=2,
                ):
                    obj = ev["object"]
                    rv = obj.metadata.resource_version
                    if ev["type"] == "MODIFIED":
                        name = obj.metadata.name
                        self.counts[name] = self.counts.get(name, 0) + 1
                    if self._stop.is_set():
                        break

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _per_minute(before: dict[str, int], after: dict[str, int], seconds: float) -> str:
    rates = [
        (after.get(k, 0) - before.get(k, 0)) * 60 / seconds
        for k in sorted(set(after) | set(before))
    ]
    return ", ".join(f"{r:.1f}" for r in rates) or "none"


def _outage(mock: MockThread, ips: set[str], streams: int, action: Any, limit_s: float) -> str:
    """Run `action`, then poll the mock every 50 ms until every stream is subscribed again
    after having been missing; the first missing and the return, in seconds after `action`."""
    started = time.monotonic()
    action()
    dipped = back = None
    deadline = started + limit_s
    while time.monotonic() < deadline:
        _, subscribed = mock.connections_and_streams(ips)
        now = time.monotonic() - started
        if subscribed < streams and dipped is None:
            dipped = now
        if dipped is not None and subscribed >= streams:
            back = now
            break
        time.sleep(0.05)
    if dipped is None:
        return "no stream missing"
    if back is None:
        return f"streams missing from {dipped:.2f} s, not back within {limit_s:.0f} s"
    return f"streams missing from {dipped:.2f} s, all back at {back:.2f} s ({back - dipped:.2f} s)"


def _faults(
    plane: Any, api: Any, harness: Any, mock: MockThread, run: int, streams: int, steady_s: float
) -> int:
    """After Ready: Lease writes in steady state, a pod deleted gracefully, a pod SIGKILLed and
    force-deleted (state wiped, successor waits out its Lease), a mass disconnect."""
    ns, name = f"ready{run}", "big"
    core = client.CoreV1Api(api)
    first = 2 + ADDRESSES * run
    ips = {f"127.0.0.{first + i}" for i in range(ADDRESSES)}
    writes = LeaseWrites(api, ns)
    try:
        time.sleep(1.0)
        before, t0 = writes.snapshot(), time.monotonic()
        time.sleep(steady_s)
        steady = _per_minute(before, writes.snapshot(), time.monotonic() - t0)
        print(f"  Lease writes per gateway, steady state ({steady_s:.0f} s): {steady}")
        pod = f"{name}-gw-0"

        def delete() -> None:
            core.delete_namespaced_pod(pod, ns)

        print(f"  pod deleted gracefully: {_outage(mock, ips, streams, delete, 120)}")

        def kill() -> None:
            live = [r for r in harness.processes(ns, pod) if r.exited_at is None]
            for r in live:
                os.kill(r.pid, signal.SIGKILL)
            core.delete_namespaced_pod(pod, ns, grace_period_seconds=0)

        print(f"  pod SIGKILLed and force-deleted: {_outage(mock, ips, streams, kill, 120)}")
        before, t0 = writes.snapshot(), time.monotonic()

        def storm() -> None:
            mock.call(mock.mock.disconnect(abrupt=True))

        print(f"  mass disconnect (TCP dropped): {_outage(mock, ips, streams, storm, 120)}")
        spent = time.monotonic() - t0
        print(
            f"  Lease writes per gateway, mass disconnect to full recovery ({spent:.1f} s): "
            f"{_per_minute(before, writes.snapshot(), spent)}"
        )
    finally:
        writes.stop()
    violations = mock.violations()
    print(f"  mock violations after the faults: {len(violations)}")
    for v in violations[:5]:
        print(f"    {json.dumps(v)[:300]}")
    return 1 if violations else 0


class RolloutConsumer:
    """A `/v1/ws` consumer on one pod, in a thread: per stream the gateway's seq and the
    exchange's trade ids."""

    def __init__(self, ip: str, streams: list[str]) -> None:
        self.url = f"ws://{ip}:8080/v1/ws"
        self.streams = streams
        self.seqs: dict[str, list[int]] = {s: [] for s in streams}
        self.trade_ids: dict[str, list[int]] = {s: [] for s in streams}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.url, open_timeout=5, max_size=None) as ws:
                ws.send(json.dumps({"op": "subscribe", "streams": self.streams, "id": 1}))
                while not self._stop.is_set():
                    try:
                        doc = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if "seq" in doc:
                        self.seqs[doc["stream"]].append(doc["seq"])
                        if "t" in doc["data"]:
                            self.trade_ids[doc["stream"]].append(doc["data"]["t"])
        except Exception as exc:
            self.errors.append(repr(exc))

    def messages(self) -> int:
        return sum(len(v) for v in self.seqs.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _gaps(values: list[int]) -> int:
    """Missing numbers between consecutive values (a duplicate or a step back counts 1)."""
    return sum((b - a - 1) if b > a else 1 for a, b in itertools.pairwise(values) if b != a + 1)


def _rollout(plane: Any, api: Any, mock: MockThread, run: int, streams: int) -> int:
    """A 5-pod fleet rolled out to a new pod template, watched from the mock and a consumer."""
    ns, name = f"ready{run}", "big"
    core = client.CoreV1Api(api)
    objects = client.CustomObjectsApi(api)
    first = 2 + ADDRESSES * run
    ips = {f"127.0.0.{first + i}" for i in range(ADDRESSES)}
    names = [f"s{i}usdt@trade" for i in range(streams)]

    def quota() -> dict[str, Any]:
        return objects.get_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", name
        )

    def patch(gateway: dict[str, Any]) -> None:
        objects.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", name, {"spec": {"gateway": gateway}}
        )

    def pods() -> dict[int, Any]:
        items = core.list_namespaced_pod(ns, label_selector=f"connquota.io/quota={name}").items
        return {
            int(p.metadata.name.rsplit("-", 1)[-1]): p
            for p in items
            if p.metadata.deletion_timestamp is None
        }

    def ready() -> bool:
        q = quota()
        status = q.get("status") or {}
        cond = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        return (
            bool(cond)
            and cond[0]["status"] == "True"
            and status.get("observedGeneration") == q["metadata"]["generation"]
        )

    def wait(predicate: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"rollout bench: {what} not within {timeout_s:.0f} s")
            time.sleep(0.3)

    patch({"connectionsPerPod": 1})
    wait(lambda: ready() and len(pods()) == 5, 300, "a Ready fleet of 5 pods")
    wait(lambda: len(mock.subscribed(ips)[0]) == streams, 60, "every stream at the mock")
    old = {o: p.metadata.uid for o, p in pods().items()}
    pod0 = pods()[0].status.pod_ip
    samples: list[int] = []
    most_open = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal most_open
        while not stop.is_set():
            up, conns = mock.subscribed(ips)
            samples.append(streams - len(names_set & up))
            most_open = max(most_open, conns)
            stop.wait(0.05)

    names_set = set(names)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    consumer = RolloutConsumer(pod0, names)
    wait(lambda: consumer.messages() > streams, 60, "the consumer's first messages")
    started = time.monotonic()
    patch(
        {
            "podOverrides": {
                "labels": {HARNESS_LABEL: "true"},
                "annotations": {"example.com/rollout": "2"},
            }
        }
    )
    try:
        wait(
            lambda: (
                ((quota().get("status") or {}).get("rollout") or {}).get("currentPod")
                == f"{name}-gw-0"
            ),
            600,
            "pods 4..1 replaced",
        )
        consumer.stop()

        def rolled_out() -> bool:
            q = quota()
            status = q.get("status") or {}
            cond = [c for c in status.get("conditions") or [] if c["type"] == "RolledOut"]
            now = pods()
            return (
                bool(cond)
                and cond[0]["status"] == "True"
                and status.get("observedGeneration") == q["metadata"]["generation"]
                and len(now) == 5
                and all(p.metadata.uid != old[o] for o, p in now.items())
            )

        wait(rolled_out, 600, "the rollout")
        elapsed = time.monotonic() - started
        wait(lambda: len(mock.subscribed(ips)[0]) == streams, 60, "every stream after it")
    finally:
        stop.set()
        sampler.join(timeout=10)
        consumer.stop()
    seq_gaps = sum(_gaps(v) for v in consumer.seqs.values())
    id_gaps = sum(_gaps(v) for v in consumer.trade_ids.values())
    violations = mock.violations()
    attempts = mock.sync(
        lambda: mock.mock.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
    )
    print(
        f"  rollout of a 5-pod fleet ({streams} streams, 1 connection per pod) to a new template:"
    )
    print(f"    rolled out in                          {elapsed:.1f} s")
    print(
        f"    streams down at any moment (mock)      max {max(samples, default=-1)} "
        f"over {len(samples)} samples every 50 ms"
    )
    print(f"    most connections open at once          {most_open} (5 planned)")
    print(
        f"    consumer on pod 0 through pods 4..1    {consumer.messages()} messages, "
        f"seq gaps {seq_gaps}, trade-id gaps {id_gaps}, errors {len(consumer.errors)}"
    )
    print(f"    peak attempts per IP (of the limit)    {attempts:.0%}")
    print(f"    mock violations                        {len(violations)}")
    for v in violations[:5]:
        print(f"      {json.dumps(v)[:300]}")
    bad = violations or max(samples, default=1) > 0 or seq_gaps or id_gaps or consumer.errors
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="quotas applied one after another")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=TIME_SCALE,
        help="every limit duration divided by this (1: Binance's real limits)",
    )
    parser.add_argument(
        "--faults",
        action="store_true",
        help="after Ready: Lease writes, a pod deleted, a pod killed, a mass disconnect",
    )
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument(
        "--rollout",
        action="store_true",
        help="after Ready: 5 pods rolled out to a new template (streams down, seq gaps)",
    )
    args = parser.parse_args()
    files = Path(tempfile.mkdtemp(prefix="bench-operator-ready-"))
    plane = start_control_plane(find_binaries(expected_bin_dir(REPO)))
    api = plane.api_client()
    harness = mock = operator = None
    code = 1
    try:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        for crd in ("exchangeconnectionquotas", "exchangeegresspools"):
            plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}.connquota.io")
        harness = PodHarness(
            api,
            f"{HARNESS_LABEL}=true",
            api_port=plane.apiserver_port,
            lease_renew_interval_s=2.0,
            node_status_interval_s=20.0,
        ).start()
        mock = MockThread(args.time_scale)
        for run in range(args.runs):  # each run's own addresses: the runs' fleets stay apart
            pool = yaml.safe_dump(_pool(f"bench-{run}", 2 + ADDRESSES * run))  # as _run_once
            plane.kubectl("apply", "--server-side", "-f", "-", input=pool)
        metrics_port = free_port()
        log_path = files / "operator.log"
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "connquota.cli",
                    "operator",
                    "--kubeconfig",
                    str(plane.kubeconfig),
                    "--liveness-port",
                    "0",
                    "--metrics-port",
                    str(metrics_port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        # The operator's start is not timed: wait for its first pool reconcile.
        deadline = time.monotonic() + 60
        while _reconciles(metrics_port) < args.runs:
            if time.monotonic() > deadline:
                raise SystemExit(f"the operator did not reconcile the pools; log: {log_path}")
            time.sleep(0.1)
        code = 0
        for run in range(args.runs):
            code |= _run_once(plane, api, mock, files, run, args.streams)
            if args.faults:
                code |= _faults(plane, api, harness, mock, run, args.streams, args.steady_s)
            if args.rollout:
                code |= _rollout(plane, api, mock, run, args.streams)
        if code:
            print(f"operator log: {log_path}; pod roots under {harness.work_dir}")
        return code
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        if harness is not None:
            harness.stop()
        if mock is not None:
            mock.stop()
        api.close()
        plane.stop()


if __name__ == "__main__":
    raise SystemExit(main())
