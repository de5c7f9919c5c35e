"""examples/gitops applied the GitOps way: `kubectl apply -k` of the pool and both overlays on
the real API server with the operator running, every quota planned with a status that Flux's
kstatus and the Argo CD Lua read, `kubectl get` columns filled, then `kubectl delete -k`
handing every quota to its budget finalizer.

The quotas' gateway pods are not run (no pod harness label), so they plan and publish but do
not reach Ready: Flux must call them in progress, not failed. (A quota planned after another
on the pool waits at a zero share until the gateways acknowledge the first one's plan, so its
streams show as unserved meanwhile; test_fleet.py and test_shared_pool.py run real gateways.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess
from connquota.testing.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

GITOPS = Path(__file__).resolve().parents[3] / "examples" / "gitops"
ENVS = ("staging", "production")


def quotas(control_plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    out = control_plane.kubectl("get", "ecq", "-n", namespace, "-o", "json", check=False)
    return json.loads(out.stdout)["items"] if out.returncode == 0 else []


def planned(items: list[dict[str, Any]]) -> bool:
    return len(items) == 2 and all(
        (q.get("status") or {}).get("observedGeneration") == q["metadata"]["generation"]
        and (q.get("status") or {}).get("planGeneration")
        for q in items
    )


def test_the_gitops_overlays_apply_with_kubectl_apply_k_and_are_planned(
    control_plane: ControlPlane,
    operator_process: OperatorProcess,
    kstatus: Any,
    argocd_health: Any,
) -> None:
    log = operator_process.log
    control_plane.kubectl("apply", "--server-side", "-k", str(GITOPS / "pool"))
    try:
        for env in ENVS:
            control_plane.kubectl("apply", "--server-side", "-k", str(GITOPS / "overlays" / env))
        for env in ENVS:
            ns = f"trading-{env}"
            items = wait_for(
                lambda n=ns: (lambda i: i if planned(i) else None)(quotas(control_plane, n)),
                90,
                f"both {env} quotas planned\n{log()}",
                interval_s=0.5,
            )
            for quota in items:
                assert quota["metadata"]["labels"]["environment"] == env
                # No gateway pod runs: converging, never failed. Without gateways to
                # acknowledge, a quota planned after the first waits at a zero share (ordered
                # transitions), so Argo CD may show its unserved streams as Degraded.
                assert kstatus(quota)[0] == "InProgress", quota["status"]
                health, message = argocd_health(quota)
                assert health == "Progressing" or (
                    health == "Degraded" and "streams are not served" in message
                ), (health, message)
            table = control_plane.kubectl("get", "ecq", "-n", ns).stdout
            assert "spot-books" in table and "spot-trades" in table and "binance-spot" in table
        pool = json.loads(control_plane.kubectl("get", "ecp", "gitops-egress", "-o", "json").stdout)
        wait_for(
            lambda: (
                json.loads(
                    control_plane.kubectl("get", "ecp", "gitops-egress", "-o", "json").stdout
                )["status"].get("quotas")
                == 4
            ),
            60,
            f"the pool counts the four quotas\n{log()}",
        )
        assert pool["metadata"]["name"] == "gitops-egress"
        # Staging got its overlay: one stream, headroom 0.5.
        staging = {q["metadata"]["name"]: q for q in quotas(control_plane, "trading-staging")}
        assert staging["spot-books"]["status"]["streams"]["desired"] == 1
        production = {q["metadata"]["name"]: q for q in quotas(control_plane, "trading-production")}
        assert production["spot-trades"]["status"]["streams"]["desired"] == 8
    finally:
        for env in ENVS:
            control_plane.kubectl(
                "delete", "-k", str(GITOPS / "overlays" / env), "--wait=false", check=False
            )
    # `kubectl delete -k` is accepted; each quota keeps its budget finalizer until its
    # gateways are gone and one rate window has passed (Binance spot: 5 minutes), so the
    # operator releases them later (test_lifecycle.py waits for a release with short windows).
    for env in ENVS:
        for quota in quotas(control_plane, f"trading-{env}"):
            assert quota["metadata"].get("deletionTimestamp"), quota["metadata"]
            assert "connquota.io/budget" in quota["metadata"]["finalizers"]
    control_plane.kubectl("delete", "-k", str(GITOPS / "pool"), "--wait=false")
