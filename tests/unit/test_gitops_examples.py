"""examples/gitops: the kustomize pool, base and overlays render (real `kubectl kustomize`)
into objects the API models accept, each quota on the pool and in a namespace it admits."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from connquota.api.pool import ExchangeEgressPool
from connquota.api.quota import ExchangeConnectionQuota

GITOPS = Path(__file__).resolve().parents[2] / "examples" / "gitops"


def render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_each_overlay_renders_valid_quotas_on_the_pool(env: str) -> None:
    (pool_doc,) = render(GITOPS / "pool")
    pool = ExchangeEgressPool.model_validate(pool_doc)
    docs = render(GITOPS / "overlays" / env)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ExchangeConnectionQuota", "ExchangeConnectionQuota", "Namespace"]
    namespace = f"trading-{env}"
    admitted = {a.namespace for a in pool.spec.allowedNamespaces}
    quotas = [
        ExchangeConnectionQuota.model_validate(d)
        for d in docs
        if d["kind"] == "ExchangeConnectionQuota"
    ]
    for quota in quotas:
        assert quota.metadata.namespace == namespace in admitted
        assert quota.spec.egressPoolRef.name == pool.metadata.name
        assert quota.metadata.labels["environment"] == env
        assert quota.metadata.labels["app.kubernetes.io/part-of"] == "market-data"
    books = next(q for q in quotas if q.metadata.name == "spot-books")
    trades = next(q for q in quotas if q.metadata.name == "spot-trades")
    if env == "staging":
        assert [s.name for s in books.spec.streams] == ["btcusdt@depth@100ms"]
        assert {q.spec.headroom for q in quotas} == {0.5}
        assert {q.spec.gateway.maxReplicas for q in quotas} == {1}
    else:
        assert len(books.spec.streams) == 2 and len(trades.spec.streamSets) == 2
        assert {q.spec.gateway.maxReplicas for q in quotas} == {4}
