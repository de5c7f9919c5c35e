"""An OKX quota declared with `streamSets`, planned by the operator and served to a consumer:
stream names spelled the OKX way (`tickers:BTC-USDT`), every published pod plan the one
`connquota plan` prints for the same quota and pool, and a one-stream edit planned from the
operator's kept plan index into the plan `connquota plan --previous` prints."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
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
    MockThread,
    consume,
    get_quota,
    pod_ips,
    pool_body,
    streams_by_pod,
    wait_ready,
)
from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import PodPlan, QuotaPlan
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.mockexchange.threaded import ThreadedMockExchange
from connquota.testing.podharness import PodHarness
from connquota.testing.resources import custom_exchange

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

TIME_SCALE = 4.0
SYMBOLS = ["BTC-USDT", "ETH-USDT", "SOL-USDT"]
CHANNELS = ["tickers", "trades"]


class OkxMock(MockThread):
    """The mock exchange speaking OKX: 3 connections per IP, 2 streams per connection."""

    def __init__(self) -> None:
        base = get_profile("okx")
        limits = []
        for name, value in (
            (LimitName.CONCURRENT_CONNECTIONS, 3),
            (LimitName.STREAMS_PER_CONNECTION, 2),
        ):
            limit = next(
                lim for lim in base.limits if lim.name == name and lim.scope != LimitScope.ACCOUNT
            )
            limits.append(limit.model_copy(update={"value": value}))
        ThreadedMockExchange.__init__(
            self,
            MockExchange(
                base, "127.0.0.1", 0, time_scale=TIME_SCALE, rate_per_stream_hz=5.0, limits=limits
            ),
        )

    def quota_exchange(self, domain: str) -> dict[str, Any]:
        """`spec.custom` pointing at this mock (OKX's public path), durations scaled."""
        endpoint = self.mock.url + urlsplit(self.mock.profile.endpoint).path
        profile = scaled_profile(self.mock.profile, TIME_SCALE, endpoint)
        return custom_exchange(profile, domain)


@pytest.fixture
def okx_mock() -> Iterator[OkxMock]:
    mock = OkxMock()
    try:
        yield mock
    finally:
        mock.stop()


def okx_quota(namespace: str, pool: str, exchange: dict[str, Any], symbols: list[str]) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": "okx", "namespace": namespace},
        "spec": {
            "exchange": "custom",
            "custom": exchange,
            "headroom": 1.0,
            "egressPoolRef": {"name": pool},
            "streamSets": [{"symbols": symbols, "channels": CHANNELS}],
            "gateway": {
                "maxReplicas": 2,
                "minReplicas": 1,
                "connectionsPerPod": 4,
                "podOverrides": {"labels": {HARNESS_LABEL: "true"}},
            },
        },
    }


def cli_plan(tmp: Path, quota: dict, pool: dict, previous: str | None = None) -> str:
    """`connquota plan QUOTA --pool POOL -o json [--previous PLAN]`, run as a user runs it."""
    (tmp / "quota.yaml").write_text(yaml.safe_dump(quota))
    (tmp / "pool.yaml").write_text(yaml.safe_dump(pool))
    args = [str(tmp / "quota.yaml"), "--pool", str(tmp / "pool.yaml"), "-o", "json"]
    if previous is not None:
        (tmp / "previous.json").write_text(previous)
        args += ["--previous", str(tmp / "previous.json")]
    out = subprocess.run(
        [sys.executable, "-m", "connquota.cli", "plan", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def published_pods(core: client.CoreV1Api, namespace: str) -> dict[int, dict]:
    """ordinal -> the pod plan the operator published, as JSON."""
    out = {}
    for cm in core.list_namespaced_config_map(
        namespace, label_selector="connquota.io/quota=okx,app.kubernetes.io/component=plan"
    ).items:
        pod = PodPlan.model_validate_json(cm.data["plan.json"])
        out[pod.ordinal] = pod.model_dump(mode="json", exclude_none=True)
    return out


def cli_pods(plan_json: str) -> dict[int, dict]:
    plan = QuotaPlan.model_validate_json(plan_json)
    return {p.ordinal: p.model_dump(mode="json", exclude_none=True) for p in plan.pods}


def test_okx_stream_sets_planned_by_the_operator_as_the_cli_plans_them_and_served(
    api_client: Any,
    namespace: str,
    pod_harness: PodHarness,
    operator_process: OperatorProcess,
    okx_mock: OkxMock,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api_client)
    objects = custom_object(api_client)
    pool_name = f"p-{uuid.uuid4().hex[:8]}"
    pool = pool_body(pool_name)
    exchange = okx_mock.quota_exchange(f"{pool_name}.okx.test")
    quota = okx_quota(namespace, pool_name, exchange, SYMBOLS[:2])
    objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
    objects.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "exchangeconnectionquotas", quota
    )

    def log() -> str:
        out = [operator_process.log()]
        for pod in ("okx-gw-0", "okx-gw-1"):
            out += [f"--- {pod}", *pod_harness.logs(namespace, pod).splitlines()[-30:]]
        coordination = client.CoordinationV1Api(api_client)
        for lease in coordination.list_namespaced_lease(namespace).items:
            out += [f"--- lease {lease.metadata.name}", str(lease.metadata.annotations)[:1500]]
        for cm in core.list_namespaced_config_map(namespace).items:
            if cm.metadata.name.endswith("ledger"):
                out += [f"--- {cm.metadata.name}", str(cm.data)[:3000]]
        return "\n".join(out)

    try:
        # 4 streams, 2 per connection: 2 connections on one pod.
        wait_ready(api_client, namespace, "okx", 120, log)
        first = cli_plan(tmp_path, quota, pool)
        assert published_pods(core, namespace) == cli_pods(first)
        planned = streams_by_pod(core, namespace, "okx")
        names = sorted(s for streams in planned.values() for s in streams)
        assert names == sorted(f"{c}:{s}" for s in SYMBOLS[:2] for c in CHANNELS)
        ips = pod_ips(api_client, namespace, "okx")
        for ordinal, streams in planned.items():
            for stream, seqs in consume(ips[ordinal], streams).items():
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (stream, seqs)

        # One symbol more (2 streams): planned from the operator's kept index, into the plan
        # the CLI makes sticking to the first one; a third connection on the same pod fills
        # the address's 3 concurrent connections (no slice moves between pods).
        quota["spec"]["streamSets"][0]["symbols"] = SYMBOLS
        objects.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "exchangeconnectionquotas",
            "okx",
            {"spec": {"streamSets": quota["spec"]["streamSets"]}},
        )
        second = cli_plan(tmp_path, quota, pool, previous=first)
        assert QuotaPlan.model_validate_json(second).generation == 2
        wait_for(
            lambda: published_pods(core, namespace) == cli_pods(second),
            90,
            f"generation 2 published as the CLI plans it\n{log()}",
            interval_s=0.3,
        )
        wait_ready(api_client, namespace, "okx", 120, log)
        assert "okx: target generation 2 planned from its kept index" in operator_process.log(4000)
        planned = streams_by_pod(core, namespace, "okx")
        assert sorted(s for v in planned.values() for s in v) == sorted(
            f"{c}:{s}" for s in SYMBOLS for c in CHANNELS
        )
        ips = pod_ips(api_client, namespace, "okx")
        for ordinal, streams in planned.items():
            consume(ips[ordinal], streams)
        okx_mock.assert_no_violation()
        assert okx_mock.peak_fraction(LimitName.CONCURRENT_CONNECTIONS, LimitScope.IP) >= 0.9
        assert (
            okx_mock.peak_fraction(LimitName.STREAMS_PER_CONNECTION, LimitScope.CONNECTION) >= 0.9
        )
    finally:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, "exchangeconnectionquotas", "okx"
        )
    wait_for(lambda: get_quota(api_client, namespace, "okx") is None, 90, f"deletion\n{log()}")
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool_name)
