"""Every example in examples/ applies as it is: valid against the models, references resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from connquota.api import ExchangeConnectionQuota, ExchangeEgressPool
from connquota.exchanges import PROFILES, effective_profile

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = sorted(EXAMPLES.glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL_DOCS = [(p.name, d) for p in FILES for d in _docs(p)]
QUOTAS = [(n, d) for n, d in ALL_DOCS if d["kind"] == "ExchangeConnectionQuota"]
POOLS = [(n, d) for n, d in ALL_DOCS if d["kind"] == "ExchangeEgressPool"]


def test_examples_are_numbered_and_cover_every_mode_and_profile() -> None:
    assert all(p.name[:2].isdigit() and p.name[2] == "-" for p in FILES)
    modes = {a["mode"] for _, d in POOLS for a in d["spec"]["addresses"]}
    assert modes == {"bind", "proxy", "podLabel"}
    exchanges = {d["spec"]["exchange"] for _, d in QUOTAS}
    assert exchanges == set(PROFILES) | {"custom"}
    specs = [d["spec"] for _, d in QUOTAS]
    assert any(s.get("streamSets") for s in specs)
    assert any(s.get("streamsFrom") for s in specs)
    assert any(s.get("credentials") for s in specs)


@pytest.mark.parametrize(("name", "doc"), POOLS, ids=[n for n, _ in POOLS])
def test_pool_example_validates_against_the_model(name: str, doc: dict[str, Any]) -> None:
    pool = ExchangeEgressPool.model_validate(doc)
    assert pool.metadata.name


@pytest.mark.parametrize(("name", "doc"), QUOTAS, ids=[n for n, _ in QUOTAS])
def test_quota_example_validates_and_resolves_its_profile_pool_and_references(
    name: str, doc: dict[str, Any]
) -> None:
    quota = ExchangeConnectionQuota.model_validate(doc)
    profile = effective_profile(quota.spec)
    assert profile.limits
    pool_names = {d["metadata"]["name"] for _, d in POOLS}
    assert quota.spec.egressPoolRef.name in pool_names
    same_file = [d for n, d in ALL_DOCS if n == name]
    for ref in quota.spec.streamsFrom:
        config_maps = [
            d
            for d in same_file
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref.configMapRef.name
        ]
        assert config_maps and config_maps[0]["metadata"]["namespace"] == quota.metadata.namespace
        assert config_maps[0]["data"][ref.key].split()
    for credential in quota.spec.credentials:
        secrets = [
            d
            for d in same_file
            if d["kind"] == "Secret" and d["metadata"]["name"] == credential.secretRef.name
        ]
        assert secrets, f"{name}: Secret {credential.secretRef.name} is not in the example"
        data = secrets[0].get("stringData", {}) | secrets[0].get("data", {})
        assert credential.secretRef.apiKeyKey in data and credential.secretRef.apiSecretKey in data


def test_quota_examples_live_in_the_example_namespace() -> None:
    namespaces = {d["metadata"]["name"] for _, d in ALL_DOCS if d["kind"] == "Namespace"}
    for _, doc in QUOTAS:
        assert doc["metadata"]["namespace"] in namespaces


def test_bind_pool_example_uses_distinct_loopback_addresses() -> None:
    pool = ExchangeEgressPool.model_validate(
        next(d for _, d in POOLS if d["spec"]["addresses"][0]["mode"] == "bind")
    )
    binds = [a.bindAddress for a in pool.spec.addresses]
    assert len(set(binds)) == len(binds)
    assert all(b and b.startswith("127.0.0.") and b != "127.0.0.1" for b in binds)
