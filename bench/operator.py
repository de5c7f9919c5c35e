"""Operator figures on the test control plane (real kube-apiserver + controller-manager).

Prints, for the issue note:

- time from creating a 1,000-stream quota to its first published plan generation (plan
  ConfigMaps and the StatefulSet written) - no gateways run here, so not to Ready (apply ->
  Ready with real gateway pods and the mock exchange: bench/operator_ready.py);
- API requests per pool reconcile with 201 quotas: the API server's audit log, counted for the
  operator's User-Agent (`connquota-operator/<version>`, its client and kopf's session) over
  five forced reconciles (the pool's annotation touched), after every quota was planned and
  its status written; broken down by verb and resource;
- the same count while creating the 200 quotas (per quota), for scale;
- the operator's RSS (VmRSS of its process) with 201 quotas reconciled;
- the operator's own planning time for +1 stream on a 100,000-stream quota (`--plus-one`,
  in-process, no control plane): `connquota.operator.planning` as a reconcile calls it
  (streams expanded from the ConfigMap, shares divided, the target planned from the kept plan
  index), against the full replan of the same input in the same run, with the ratio.

Baseline in the same run: the operator's requests over 10 idle seconds before any quota.

    .venv/bin/python bench/operator.py [--quotas 200] [--streams 1000]
    .venv/bin/python bench/operator.py --plus-one [--plus-one-streams 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from connquota.testing.controlplane import (
    expected_bin_dir,
    find_binaries,
    free_port,
    start_control_plane,
)
from connquota.testing.waiting import wait_for as _wait

REPO = Path(__file__).resolve().parents[1]


AGENT = "connquota-operator/"


def _mark(plane, after: int = 0) -> int:
    """An audit-log offset after every request completed so far (a marker request is logged)."""
    marker = f"bench-{time.monotonic_ns()}"
    plane.kubectl("get", "--raw", f"/version?mark={marker}")
    offset = after
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events, end = plane.audit_events(offset)
        if any(marker in e.get("requestURI", "") for e in events):
            return end
        offset = end
        time.sleep(0.05)
    raise SystemExit("the audit log did not show the marker request")


def _agents(plane, start: int, end: int) -> Counter:
    """Every client's requests between two marks, by User-Agent (up to its first space)."""
    with plane.audit_log.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    return Counter(
        json.loads(line).get("userAgent", "").split(" ")[0].split("/")[0]
        for line in data.splitlines()
    )


def _operator_requests(plane, start: int, end: int) -> Counter:
    """The operator's requests between two marks, by (verb, resource/subresource)."""
    with plane.audit_log.open("rb") as f:
        f.seek(start)
        data = f.read(end - start)
    out: Counter = Counter()
    for line in data.splitlines():
        event = json.loads(line)
        if event.get("userAgent", "").startswith(AGENT):
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "")[:40])
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            out[(event.get("verb"), resource)] += 1
    return out


def _breakdown(counts: Counter) -> str:
    return ", ".join(f"{verb} {res} {n}" for (verb, res), n in counts.most_common(8)) or "none"


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _quota(ns: str, name: str, pool: str, streams: int) -> dict:
    return {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "exchange": "binance-spot",
            "endpoint": "ws://127.0.0.1:9",
            "egressPoolRef": {"name": pool},
            "streamSets": [],
            "streams": [{"name": f"s{i}usdt@trade"} for i in range(streams)],
            "gateway": {"maxReplicas": 8, "minReplicas": 1, "resources": {}},
        },
    }


def _settled(plane, quotas: int) -> bool:
    """Every quota of namespace `many` has a plan generation and a status for its generation."""
    out = plane.kubectl("get", "ecq", "-n", "many", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    items = json.loads(out.stdout)["items"]
    return len(items) == quotas and all(
        (q.get("status") or {}).get("observedGeneration") == q["metadata"]["generation"]
        and (q.get("status") or {}).get("planGeneration")
        for q in items
    )


# --- +1 stream on a big quota, through the operator's door to the planner --------------------


def _big_quota(streams: int) -> tuple[dict, dict[str, dict[str, str]]]:
    """A quota whose `streams` come from a ConfigMap, and that ConfigMap's data by name."""
    body = {
        "apiVersion": "connquota.io/v1alpha1",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": "big", "namespace": "bench", "uid": "bench-big-uid"},
        "spec": {
            "exchange": "binance-spot",
            "endpoint": "ws://127.0.0.1:9",
            "egressPoolRef": {"name": "bench"},
            "streamsFrom": [{"configMapRef": {"name": "big-streams"}, "key": "streams"}],
            "gateway": {"maxReplicas": 64, "minReplicas": 1, "connectionsPerPod": 50},
        },
    }
    text = "\n".join(f"s{i:06d}usdt@trade" for i in range(streams))
    return body, {"big-streams": {"streams": text}}


def _reconcile_plan(planning, body, configmaps, pool, published, indexes, took=None):
    """What one reconcile of the quota spends in planning: read, expand, divide, plan.
    `took` (a list) gets the seconds of (read + expand + divide, plan)."""
    from connquota.api.quota import ExchangeConnectionQuota

    t0 = time.perf_counter()
    quota = ExchangeConnectionQuota.model_validate(body)
    qin = planning.quota_input(quota)
    streams = planning.desired_streams(quota, configmaps, qin)
    shares = planning.divide(pool, [qin]).quotas[qin.key]
    t1 = time.perf_counter()
    plan = planning.plan_target(qin, streams, pool, shares, published, indexes)
    if took is not None:
        took.extend((t1 - t0, time.perf_counter() - t1))
    return plan


def plus_one_stream(streams: int, repeats: int = 5) -> None:
    """Print the operator's planning time for +1 stream, indexed vs full, and the ratio."""
    from connquota.api.pool import ExchangeEgressPoolSpec
    from connquota.operator import planning
    from connquota.planner.pool_plan import plan_json

    pool = ExchangeEgressPoolSpec.model_validate(
        {
            "addresses": [
                {"name": f"a{i}", "publicAddress": f"192.0.2.{i + 1}", "mode": "proxy",
                 "proxyUrl": f"http://127.0.0.1:{3128 + i}"}
                for i in range(16)
            ]
        }
    )  # fmt: skip
    body, configmaps = _big_quota(streams - 1)  # +1 gives `streams` (the supported maximum)
    indexed: list[list[float]] = []
    full: list[list[float]] = []
    for r in range(repeats):
        indexes = planning.PlanIndexes()
        published = _reconcile_plan(planning, body, configmaps, pool, None, indexes)
        grown = {k: dict(v) for k, v in configmaps.items()}
        grown["big-streams"]["streams"] += f"\nplus{r}usdt@trade"
        indexed.append([])
        fast = _reconcile_plan(planning, body, grown, pool, published, indexes, indexed[-1])
        assert indexes.incremental == 1, "the +1 replan did not take the indexed path"
        full.append([])
        fresh = planning.PlanIndexes()
        slow = _reconcile_plan(planning, body, grown, pool, published, fresh, full[-1])
        assert plan_json(fast) == plan_json(slow), "indexed and full plans differ"
    fast_prep, fast_plan = min(indexed, key=sum)
    slow_prep, slow_plan = min(full, key=sum)
    conns = sum(len(p.connections) for p in slow.pods)
    print(
        f"+1 stream on a {streams:,}-stream quota ({conns} connections, {len(slow.pods)} pods), "
        f"the operator's planning per reconcile through connquota.operator.planning "
        f"(best of {repeats}, plans byte-identical):"
    )
    print(
        f"  target plan: indexed {fast_plan * 1e3:.1f} ms vs full replan "
        f"{slow_plan * 1e3:.1f} ms, ratio {fast_plan / slow_plan:.2f}"
    )
    print(
        f"  with reading the quota and expanding its streams ({fast_prep * 1e3:.0f} ms): "
        f"indexed {(fast_prep + fast_plan) * 1e3:.0f} ms vs full "
        f"{(slow_prep + slow_plan) * 1e3:.0f} ms, ratio "
        f"{(fast_prep + fast_plan) / (slow_prep + slow_plan):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotas", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--plus-one", action="store_true", help="only the +1-stream planning figure (no cluster)"
    )
    parser.add_argument("--plus-one-streams", type=int, default=100_000)
    args = parser.parse_args()
    if args.plus_one:
        plus_one_stream(args.plus_one_streams)
        return 0
    plane = start_control_plane(find_binaries(expected_bin_dir(REPO)), audit=True)
    operator = None
    try:
        plane.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        for crd in ("exchangeconnectionquotas", "exchangeegresspools"):
            plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}.connquota.io")
        pool = {
            "apiVersion": "connquota.io/v1alpha1",
            "kind": "ExchangeEgressPool",
            "metadata": {"name": "bench"},
            "spec": {
                "addresses": [
                    {
                        "name": f"a{i}",
                        "publicAddress": f"127.0.1.{i + 1}",
                        "mode": "bind",
                        "bindAddress": f"127.0.1.{i + 1}",
                        "node": "n",
                    }
                    for i in range(8)
                ]
            },
        }
        files = Path(tempfile.mkdtemp(prefix="bench-operator-"))
        (files / "pool.json").write_text(json.dumps(pool))
        plane.kubectl("apply", "-f", str(files / "pool.json"))
        plane.kubectl("create", "namespace", "big")
        port = free_port()
        log = (files / "operator.log").open("wb")
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
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _wait(lambda: _metric(port, "connquota_operator_reconciles_total") >= 1, 60, "start")
        idle_start = _mark(plane)
        time.sleep(10)  # a fixed idle period is the measurement here, not a wait
        idle = sum(_operator_requests(plane, idle_start, _mark(plane, idle_start)).values())

        (files / "big.json").write_text(json.dumps(_quota("big", "big", "bench", args.streams)))
        started = time.monotonic()
        plane.kubectl("apply", "-f", str(files / "big.json"))
        _wait(
            lambda: (
                plane.kubectl("get", "cm", "-n", "big", "big-plan-0", check=False).returncode == 0
                and plane.kubectl("get", "sts", "-n", "big", "big-gw", check=False).returncode == 0
            ),
            120,
            "the first plan",
        )
        apply_to_plan = time.monotonic() - started

        plane.kubectl("create", "namespace", "many")
        docs = [_quota("many", f"q{i}", "bench", 10) for i in range(args.quotas)]
        (files / "many.json").write_text(
            json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        )
        create_start = _mark(plane)
        plane.kubectl("apply", "-f", str(files / "many.json"))
        _wait(lambda: _settled(plane, args.quotas), 600, "every quota planned, with status")
        creating = _operator_requests(plane, create_start, _mark(plane, create_start))
        before_rec = _metric(port, "connquota_operator_reconciles_total")
        plane.kubectl("annotate", "--overwrite", "ecp", "bench", "bench/touch=settle")
        _wait(
            lambda: _metric(port, "connquota_operator_reconciles_total") > before_rec,
            300,
            "a settling reconcile",
        )
        start = _mark(plane)
        before_rec = _metric(port, "connquota_operator_reconciles_total")
        for i in range(5):
            done = _metric(port, "connquota_operator_reconciles_total")
            plane.kubectl("annotate", "--overwrite", "ecp", "bench", f"bench/touch={i}")
            _wait(
                lambda d=done: _metric(port, "connquota_operator_reconciles_total") > d,
                300,
                "a reconcile",
            )
        end = _mark(plane, start)
        counts = _operator_requests(plane, start, end)
        everyone = _agents(plane, start, end)
        requests = sum(counts.values())
        reconciles = _metric(port, "connquota_operator_reconciles_total") - before_rec
        status = Path(f"/proc/{operator.pid}/status").read_text()
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        print(
            f"quota of {args.streams} streams: apply -> first plan published  {apply_to_plan:.2f} s"
        )
        print(
            f"pool of {args.quotas + 1} quotas: operator API requests per pool reconcile "
            f"{requests / max(reconciles, 1):.1f} ({requests} over {reconciles:.0f}: "
            f"{_breakdown(counts)}); baseline idle 10 s: {idle} requests"
        )
        print(
            f"  every client over the same reconciles: {sum(everyone.values())} requests "
            f"({', '.join(f'{a} {n}' for a, n in everyone.most_common(5))})"
        )
        created = sum(creating.values())
        print(
            f"creating {args.quotas} quotas: {created / args.quotas:.1f} operator API requests "
            f"per quota ({_breakdown(creating)})"
        )
        print(f"operator RSS with {args.quotas + 1} quotas: {rss_kib / 1024:.0f} MiB")
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=20)
        plane.stop()


if __name__ == "__main__":
    raise SystemExit(main())
