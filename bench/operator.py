"""Operator figures on the test control plane (real kube-apiserver + controller-manager).

Prints, for the issue note:

- time from creating a 1,000-stream quota to its first published plan generation (plan
  ConfigMaps and the StatefulSet written) - no gateways run here, so not to Ready;
- API requests per pool reconcile: the API server's own `apiserver_request_total`, counted
  for the operator's user agent is not a label there, so the bench counts every request the
  server saw while only the operator talks to it (the bench itself only reads metrics), divided
  by the operator's `connquota_operator_reconciles_total` delta;
- the operator's RSS (VmRSS of its process) with 200 quotas reconciled.

Baseline in the same run: the same requests count for an idle minute-less window (the watch
and lease traffic of an operator with nothing to do) is printed beside it.

    .venv/bin/python bench/operator.py [--quotas 200] [--streams 1000]
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
from pathlib import Path

from connquota.testing.controlplane import (
    expected_bin_dir,
    find_binaries,
    free_port,
    start_control_plane,
)

REPO = Path(__file__).resolve().parents[1]


def _requests(plane) -> int:
    text = plane.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def _wait(pred, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quotas", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    args = parser.parse_args()
    plane = start_control_plane(find_binaries(expected_bin_dir(REPO)))
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
        idle_before = _requests(plane)
        time.sleep(10)
        idle = _requests(plane) - idle_before

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
        plane.kubectl("apply", "-f", str(files / "many.json"))
        last = f"q{args.quotas - 1}"
        _wait(
            lambda: (
                plane.kubectl("get", "sts", "-n", "many", f"{last}-gw", check=False).returncode == 0
            ),
            600,
            "every quota planned",
        )
        time.sleep(5)
        before_req = _requests(plane)
        before_rec = _metric(port, "connquota_operator_reconciles_total")
        for i in range(5):
            plane.kubectl("annotate", "--overwrite", "ecp", "bench", f"bench/touch={i}")
            _wait(
                lambda n=i: (
                    _metric(port, "connquota_operator_reconciles_total") >= before_rec + n + 1
                ),
                300,
                "a reconcile",
            )
        requests = _requests(plane) - before_req
        reconciles = _metric(port, "connquota_operator_reconciles_total") - before_rec
        status = Path(f"/proc/{operator.pid}/status").read_text()
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        print(
            f"quota of {args.streams} streams: apply -> first plan published  {apply_to_plan:.2f} s"
        )
        print(
            f"pool of {args.quotas + 1} quotas: API requests per pool reconcile "
            f"{requests / max(reconciles, 1):.1f} ({requests} over {reconciles:.0f}); "
            f"baseline idle 10 s: {idle} requests"
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
