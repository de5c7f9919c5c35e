"""Cross-field rules: declared once, checked by the models, rendered as CEL for the API server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from connquota.api import ExchangeConnectionQuota, ExchangeEgressPool
from connquota.api.base import ApiModel
from connquota.api.crd import CRDS, openapi_schema
from connquota.api.quota import declared_stream_count
from connquota.api.rules import is_ip, is_ipv6_prefix


def _all_models() -> list[type[ApiModel]]:
    seen: list[type[ApiModel]] = []
    stack: list[type] = [ApiModel]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def test_every_rule_has_cel_a_python_check_and_a_message_naming_a_field() -> None:
    rules = [(m, r) for m in _all_models() for r in m.RULES]
    assert len(rules) >= 15
    for model, rule in rules:
        assert rule.cel and callable(rule.check), model
        field = (rule.field_path or "").lstrip(".")
        assert field and field in rule.message, (model, rule.message)


def test_every_rule_of_a_crd_model_reaches_the_rendered_schema() -> None:
    rendered = " ".join(str(openapi_schema(crd.model)) for crd in CRDS)
    for model in _all_models():
        for rule in model.RULES:
            if model.__module__.endswith(("pool", "quota")) or model.__name__ == "Limit":
                assert rule.cel in rendered.replace("\\'", "'"), rule.message


def _quota(**spec: object) -> dict:
    return {
        "metadata": {"name": "q", "namespace": "ns"},
        "spec": {"exchange": "binance-spot", "egressPoolRef": {"name": "pool"}, **spec},
    }


def test_duplicate_explicit_stream_names_are_refused_by_the_models() -> None:
    with pytest.raises(ValidationError, match="streams: duplicate entry"):
        ExchangeConnectionQuota.model_validate(
            _quota(streams=[{"name": "btcusdt@trade"}, {"name": "btcusdt@trade", "priority": 1}])
        )


def test_private_stream_with_a_declared_credential_is_accepted() -> None:
    quota = ExchangeConnectionQuota.model_validate(
        _quota(
            credentials=[{"name": "k", "secretRef": {"name": "s"}, "accountId": "1"}],
            streams=[{"name": "user", "credential": "k"}],
        )
    )
    assert quota.spec.credential("k") is not None


def test_quota_at_the_largest_stream_count_its_spec_can_declare_is_accepted() -> None:
    sets = [
        {"symbols": [f"s{k}-{i:03d}" for i in range(125)], "channels": [f"c{j}" for j in range(32)]}
        for k in range(8)
    ]
    streams = [{"name": f"x{i}"} for i in range(5000)]
    quota = ExchangeConnectionQuota.model_validate(_quota(streamSets=sets, streams=streams))
    assert declared_stream_count(quota.spec) == 5000 + 1000 * 32


def test_one_symbol_too_many_across_stream_sets_is_refused() -> None:
    sets = [{"symbols": [f"s{k}-{i:03d}" for i in range(501)], "channels": ["t"]} for k in range(2)]
    with pytest.raises(ValidationError, match="streamSets: at most 1000 symbols"):
        ExchangeConnectionQuota.model_validate(_quota(streamSets=sets))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("127.0.0.2", True),
        ("2001:db8::1", True),
        ("::ffff:1.2.3.4", False),
        ("fe80::1%eth0", False),
        ("01.2.3.4", False),
        ("2001:db8::/32", False),
        ("localhost", False),
    ],
)
def test_is_ip_accepts_what_kubernetes_cel_isip_accepts(text: str, ok: bool) -> None:
    assert is_ip(text) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [("2001:db8:1::/48", True), ("2001:db8:1::1/48", False), ("10.0.0.0/8", False)],
)
def test_is_ipv6_prefix_needs_a_masked_ipv6_cidr(text: str, ok: bool) -> None:
    assert is_ipv6_prefix(text) is ok


def test_pool_with_ipv6_prefix_and_every_mode_is_accepted() -> None:
    pool = ExchangeEgressPool.model_validate(
        {
            "spec": {
                "addresses": [
                    {
                        "name": "a",
                        "publicAddress": "2001:db8:1::/48",
                        "mode": "podLabel",
                        "podLabel": "a",
                    },
                    {
                        "name": "b",
                        "publicAddress": "198.51.100.1",
                        "mode": "proxy",
                        "proxyUrl": "socks5://127.0.0.1:1080",
                    },
                    {
                        "name": "c",
                        "publicAddress": "127.0.0.2",
                        "mode": "bind",
                        "bindAddress": "127.0.0.2",
                        "node": "n",
                    },
                ]
            }
        }
    )
    assert [a.name for a in pool.spec.addresses] == ["a", "b", "c"]
