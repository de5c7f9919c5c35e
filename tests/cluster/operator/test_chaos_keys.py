"""Chaos scenario 7 (issue 17): a key revoked at the exchange and rotated in its Secret; a
credential removed from the quota.

One quota on the mock exchange serves 8 public streams (4 connections) and two private
`userData` streams, one per credential (`main`: key-a of acct-1; `second`: key-c of acct-2): 6
connections of the IP's 8, opened at once with the IP's whole attempt rate (6 per 2 s: the
tightest limit, 100% at the start). Once `second` is gone, each pod's slice leaves it room for
one more connection, so a pod of two connections drains make-before-break into the two others
(with 7 per IP the pod holding only `main` would get no room and the public pods would go
break-before-make). The exchange revokes key-a: the private
connection is refused and waits for its Secret to change (no retry storm); the quota says so
(`CredentialRefused`). The Secret is rotated to key-b (same account): the stream is back within
the Secret refresh and the recovery bound. Then `second` and its stream leave the quota in one
edit: acct-2's session closes, the pod template loses the Secret volume, and the operator rolls
every pod make-before-break with no public stream down and consecutive consumer `seq`.

Marked `chaos`: `make chaos` runs it beside tests/cluster/operator/test_chaos.py.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
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
    get_quota,
    pod_ips,
    pool_body,
    quota_body,
    shrunk_limits,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.mockexchange.settings import MockSettings, TestAccount
from connquota.testing.chaos import ChaosRow, SeqConsumer, StreamWatch, record_row
from connquota.testing.ipecho import ThreadedIpEcho
from connquota.testing.podharness import PodHarness

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

QUOTA = "keys"
STREAMS = [f"s{i}usdt@trade" for i in range(8)]
KEY_A = TestAccount("key-a", "secret-a-0123456789", account_id="acct-1")
KEY_B = TestAccount("key-b", "secret-b-0123456789", account_id="acct-1")
KEY_C = TestAccount("key-c", "secret-c-0123456789", account_id="acct-2")
CONNECTIONS = 8
"""The IP's concurrent limit: 4 public connections, 2 private ones and the spare room the
make-before-break moves of the rollout use (a drained pod's two connections, once `second` is
gone)."""
ATTEMPTS = 6
"""Attempts per 2 s (wall) per IP: the fleet's 6 connections use all of it when they open."""
SECRET_REFRESH_S = 2.0
"""How often the pod harness rewrites Secret files (the kubelet's sync period, scaled down)."""


@pytest.fixture
def key_mock() -> Iterator[MockThread]:
    """concurrentConnections 8 per IP, six attempts per 2 s, two streams per connection; the
    three test keys (key-a and key-b on acct-1, key-c on acct-2), private events at 2 Hz."""
    mock = MockThread(
        shrunk_limits(
            concurrentConnections=(CONNECTIONS, None),
            connectionAttempts=(ATTEMPTS, 2 * TIME_SCALE),
            streamsPerConnection=(2, None),
        ),
        settings=MockSettings(
            accounts=(KEY_A, KEY_B, KEY_C), private_rate_hz=2.0, ban_after_violations=100
        ),
    )
    try:
        yield mock
    finally:
        mock.stop()


class OverlapWatch(StreamWatch):
    """A StreamWatch that also keeps every span in which a stream was subscribed twice
    upstream (a make-before-break move's overlap): (stream, since, until), monotonic."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.overlaps: list[tuple[str, float, float]] = []
        self._double: dict[str, float] = {}

    def _observe(self, subs: dict[str, frozenset[str]], now: float) -> None:
        super()._observe(subs, now)
        counts: dict[str, int] = {}
        for streams in subs.values():
            for stream in streams:
                counts[stream] = counts.get(stream, 0) + 1
        for stream in self.planned:
            if counts.get(stream, 0) > 1:
                self._double.setdefault(stream, now)
            elif stream in self._double:
                self.overlaps.append((stream, self._double.pop(stream), now))

    def longest_overlap_s(self) -> float:
        return max((until - since for _, since, until in self.overlaps), default=0.0)


def _secret(name: str, account: TestAccount) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "stringData": {"apiKey": account.api_key, "apiSecret": account.secret},
    }


def _private_spec(with_second: bool) -> dict[str, Any]:
    """The quota's credentials and streams: `main` always, `second` when `with_second`."""
    credentials = [{"name": "main", "secretRef": {"name": "key-main"}, "accountId": "acct-1"}]
    streams: list[dict[str, Any]] = [{"name": s} for s in STREAMS]
    streams.append({"name": "userData", "credential": "main"})
    if with_second:
        credentials.append(
            {"name": "second", "secretRef": {"name": "key-second"}, "accountId": "acct-2"}
        )
        streams.append({"name": "userData#second", "credential": "second"})
    return {"credentials": credentials, "streams": streams}


@contextlib.contextmanager
def _key_fleet(
    api_client: Any,
    namespace: str,
    operator: OperatorProcess,
    harness: PodHarness,
    mock: MockThread,
    echo_url: str,
) -> Iterator[None]:
    """The two Secrets, a fresh pool and the quota (3 pods of 2 connections), Ready; the quota
    and the pool deleted afterwards."""
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    core.create_namespaced_secret(namespace, _secret("key-main", KEY_A))
    core.create_namespaced_secret(namespace, _secret("key-second", KEY_C))
    pool = f"p-{uuid.uuid4().hex[:8]}"
    objects.create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", pool_body(pool, echo_url=echo_url)
    )
    quotas = (GROUP, VERSION, namespace, "exchangeconnectionquotas")
    body = quota_body(
        namespace, QUOTA, pool, mock.quota_exchange(f"{pool}.test"), STREAMS, max_replicas=3
    )
    body["spec"].update(_private_spec(with_second=True))
    objects.create_namespaced_custom_object(*quotas, body)
    try:
        wait_ready(
            api_client, namespace, QUOTA, 120, lambda: _logs(core, operator, harness, namespace)
        )
        yield
    finally:
        with contextlib.suppress(client.ApiException):
            objects.delete_namespaced_custom_object(*quotas, QUOTA)
        wait_for(lambda: get_quota(api_client, namespace, QUOTA) is None, 180, "deletion")
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)


def _logs(core: Any, operator: OperatorProcess, harness: PodHarness, namespace: str) -> str:
    """The operator's log and the last lines of every gateway pod's."""
    gateways = [
        f"--- {name}\n" + "\n".join(harness.logs(namespace, name).splitlines()[-30:])
        for name in _pods(core, namespace)
    ]
    return operator.log() + "\n" + "\n".join(gateways)


def _gateway_connections(api_client: Any, namespace: str) -> list[dict[str, Any]]:
    """Every upstream connection of the quota's pods, from each pod's /status."""
    import urllib.request

    out = []
    for ip in pod_ips(api_client, namespace, QUOTA).values():
        url = f"http://{ip}:8080/status"
        with contextlib.suppress(OSError, ValueError), urllib.request.urlopen(url, timeout=2) as r:
            out.extend(json.loads(r.read())["connections"])
    return out


def _private(api_client: Any, namespace: str, credential: str) -> dict[str, Any] | None:
    """The private connection of `credential` as its gateway's /status shows it."""
    for conn in _gateway_connections(api_client, namespace):
        if conn["credential"] == credential:
            return conn
    return None


def _state_is(api_client: Any, ns: str, credential: str, state: str) -> dict[str, Any] | None:
    conn = _private(api_client, ns, credential)
    return conn if conn and conn["state"] == state else None


def _refused_condition(api_client: Any, ns: str) -> dict[str, Any] | None:
    cond = condition(get_quota(api_client, ns, QUOTA), "CredentialRefused")
    return cond if cond and cond["status"] == "True" else None


def _events(core: client.CoreV1Api, ns: str, reason: str) -> list[Any]:
    """Events of the quota with `reason`."""
    return [
        e
        for e in core.list_namespaced_event(ns).items
        if e.reason == reason and e.involved_object.name == QUOTA
    ]


def _bound_s(api_client: Any, ns: str) -> float:
    quota = get_quota(api_client, ns, QUOTA) or {}
    bounds = (quota.get("status") or {}).get("recoveryBounds") or []
    return max((b["seconds"] for b in bounds), default=0.0)


def _pods(core: client.CoreV1Api, ns: str) -> dict[str, str]:
    """name -> uid of the quota's pods that are not terminating."""
    return {
        p.metadata.name: p.metadata.uid
        for p in core.list_namespaced_pod(ns, label_selector=f"connquota.io/quota={QUOTA}").items
        if p.metadata.deletion_timestamp is None
    }


def test_a_key_revoked_and_rotated_and_a_credential_removed(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    key_mock: MockThread,
    ip_echo: ThreadedIpEcho,
) -> None:
    """Scenario 7: revoke -> refused, reported, no retry storm; rotate -> back within the
    Secret refresh plus the recovery bound; remove -> the session closed and a make-before-break
    rollout; public streams never down, 0 violations."""
    mock, api, ns = key_mock, api_client, namespace
    core = client.CoreV1Api(api)

    def log() -> str:
        return _logs(core, operator_process, pod_harness, ns)

    objects = custom_object(api)
    with _key_fleet(api, ns, operator_process, pod_harness, mock, ip_echo.url):
        bound = _bound_s(api, ns)
        consumer = SeqConsumer.on_pod(pod_ips(api, ns, QUOTA)[0], STREAMS)
        try:
            with OverlapWatch(mock.open_streams, STREAMS) as watch:
                wait_for(
                    lambda: watch.samples > 0 and not watch.down_now(), 30, "public streams up"
                )
                wait_for(
                    lambda: mock.user_data_accounts() == {"acct-1", "acct-2"},
                    30,
                    f"both private streams subscribed at the exchange\n{log()}",
                )
                wait_for(lambda: consumer.frames > 0, 30, "the consumer's first frames")
                assert len(mock.open_connections()) == 6

                # 1. The exchange revokes key-a.
                assert mock.revoke_key(KEY_A.api_key) == 1
                refused = wait_for(
                    lambda: _state_is(api, ns, "main", "auth-refused"),
                    20,
                    f"the private connection reported auth-refused\n{log()}",
                )
                assert "-2015" in refused["status"], refused
                cond = wait_for(
                    lambda: _refused_condition(api, ns),
                    30,
                    f"CredentialRefused=True on the quota\n{log()}",
                )
                assert "main" in cond["message"] and "-2015" in cond["message"], cond
                assert "key-a" not in json.dumps(get_quota(api, ns, QUOTA)), "a key in status"
                wait_for(
                    lambda: _events(core, ns, "CredentialRefused"),
                    30,
                    "a CredentialRefused Event",
                )
                attempts = mock.attempts()
                flat_until = time.monotonic() + 5
                wait_for(lambda: time.monotonic() >= flat_until, 10, "5 s after the refusal")
                assert mock.attempts() == attempts, "a refused key was retried"
                assert not watch.down_now() and watch.max_down == 0
                assert "acct-1" not in mock.user_data_accounts()

                # 2. The Secret is rotated to key-b (same account).
                rotated_at = time.monotonic()
                core.patch_namespaced_secret(
                    "key-main", ns, {"stringData": {"apiKey": "key-b", "apiSecret": KEY_B.secret}}
                )
                wait_for(
                    lambda: (
                        _state_is(api, ns, "main", "live") and "acct-1" in mock.user_data_accounts()
                    ),
                    SECRET_REFRESH_S + bound + 10,
                    f"the private stream live again with key-b\n{log()}",
                )
                rotate_s = time.monotonic() - rotated_at
                assert rotate_s <= SECRET_REFRESH_S + bound + 5, (rotate_s, bound)
                wait_for(
                    lambda: _refused_condition(api, ns) is None,
                    30,
                    f"CredentialRefused cleared\n{log()}",
                )
                wait_for(
                    lambda: _events(core, ns, "CredentialAccepted"),
                    30,
                    "a CredentialAccepted Event",
                )

                # 3. `second` and its private stream leave the quota in one edit.
                old_pods = _pods(core, ns)
                frames_before = consumer.counts()
                removed_at = time.monotonic()
                objects.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    "exchangeconnectionquotas",
                    QUOTA,
                    {"spec": _private_spec(with_second=False)},
                )
                wait_for(
                    lambda: "acct-2" not in mock.user_data_accounts(),
                    30,
                    f"acct-2's session closed\n{log()}",
                )

                def rolled_out() -> bool:
                    q = get_quota(api, ns, QUOTA) or {}
                    cond = condition(q, "RolledOut") or {}
                    pods = _pods(core, ns)
                    return bool(
                        cond.get("status") == "True"
                        and (q.get("status") or {}).get("observedGeneration")
                        == q["metadata"]["generation"]
                        and pods
                        and not set(pods.values()) & set(old_pods.values())
                    )

                wait_for(rolled_out, 240, f"the rollout to finish\n{log()}", interval_s=0.3)
                roll_s = time.monotonic() - removed_at
                wait_ready(api, ns, QUOTA, 120, log)
                wait_for(
                    lambda: not watch.down_now() and "acct-1" in mock.user_data_accounts(),
                    60,
                    f"every stream upstream after the rollout\n{log()}",
                )
        finally:
            consumer.stop()
        for name in _pods(core, ns):
            root = pod_harness.pod_root(ns, name)
            assert root is not None
            assert not any("second" in str(p) for p in root.rglob("*")), name
        assert mock.user_data_accounts() == {"acct-1"}
        mock.assert_no_violation()
        assert watch.max_down == 0, watch.episodes
        # A drain's copy overlaps its original until the pods acknowledge the next step; a copy
        # that waits for the receiving pod's attempt slice (the copies and reopens of the pod
        # drained before it spent it) keeps the other copy's overlap going: within the bound.
        overlaps = [(s, round(a - removed_at, 1), round(b - a, 1)) for s, a, b in watch.overlaps]
        assert watch.longest_overlap_s() <= bound + 5, (overlaps, bound)
        assert consumer.gaps == 0
        # the consumer's pod was replaced last: every stream grew before it went away
        assert consumer.all_grew(frames_before, 1), (frames_before, consumer.counts())
        concurrent = mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP)
        attempts_peak = mock.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP)
        peak = max(concurrent, attempts_peak)
        assert peak >= 0.9, (concurrent, attempts_peak)
    record_row(
        ChaosRow(
            scenario="7. key revoked and rotated, credential removed",
            tightestLimit=(
                f"connectionAttempts per IP ({ATTEMPTS} / 2 s)"
                if attempts_peak >= concurrent
                else f"concurrentConnections per IP ({CONNECTIONS})"
            ),
            peakPercent=100 * peak,
            violations=len(mock.violations()),
            maxStreamsDown=watch.max_down,
            longestOutageSeconds=watch.longest_outage_s,
            boundSeconds=SECRET_REFRESH_S + bound,
            upstreamDuplicates=watch.duplicates,
            consumerGaps=consumer.gaps,
            notes=(
                f"revoked key refused with no retry (attempts flat for 5 s), CredentialRefused "
                f"on the quota; rotated key live in {rotate_s:.1f} s; credential removed: "
                f"rollout of {len(old_pods)} pods in {roll_s:.1f} s, no public stream down, "
                f"{consumer.frames} frames; longest make-before-break overlap "
                f"{watch.longest_overlap_s():.1f} s (a copy waiting for an attempt slice); "
                f"concurrentConnections peak "
                f"{100 * concurrent:.0f}% of {CONNECTIONS}"
            ),
        )
    )
