"""Hypothesis-generated ExchangeConnectionQuota and ExchangeEgressPool objects sent to the real
API server with the operator running (issue 17, "Bad input"): each one is either rejected by the
API server with a message naming the field (schema bounds, CEL rules), or accepted and then
planned by the operator (a `Ready` condition with a reason) or reported `Stalled` with a reason;
never an operator exception (its log has no traceback).

Each example mutates one to three fields of a valid object into hostile values (wrong types,
out-of-range numbers, long or odd strings, unknown enum values, duplicate or empty lists).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from cluster.conftest import wait_for
from cluster.operator.conftest import OperatorProcess, custom_object
from connquota.testing.resources import loopback_pool

pytestmark = pytest.mark.cluster

GROUP, VERSION = "connquota.io", "v1alpha1"
EXAMPLES = 50
OUTCOMES: dict[str, list[str]] = {"quota": [], "pool": []}

hostile = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False),
    st.text(max_size=80),
    st.booleans(),
    st.lists(st.text(max_size=10), max_size=3),
    st.just({}),
    st.just({"unexpected": 1}),
    st.just(""),
    st.just("x" * 3000),
)
"""Values of every kind for any field."""

small_numbers = st.one_of(
    st.integers(min_value=-5, max_value=20_000),
    st.floats(min_value=-2, max_value=5, allow_nan=False),
)
stream_items = st.lists(
    st.fixed_dictionaries(
        {"name": st.sampled_from(["btcusdt@trade", "ethusdt@trade", "", "x" * 300, "a b", "é"])},
        optional={"priority": small_numbers, "credential": st.sampled_from(["main", "UPPER", ""])},
    ),
    max_size=4,
)
limit_items = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(
                ["connectionAttempts", "concurrentConnections", "streamsPerConnection", "bogus"]
            ),
            "value": small_numbers,
        },
        optional={
            "windowSeconds": small_numbers,
            "scope": st.sampled_from(["ip", "connection", "account", "planet"]),
            "shape": st.sampled_from(["slidingWindow", "concurrent", "tokenBucket", "square"]),
        },
    ),
    max_size=3,
)

QUOTA_FIELDS: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {
    ("headroom",): st.one_of(small_numbers, hostile),
    ("exchange",): st.one_of(st.sampled_from(["okx", "nasdaq", "custom", "BINANCE-SPOT"]), hostile),
    ("endpoint",): st.one_of(st.sampled_from(["ws://127.0.0.1:1", "http://x", "wss://"]), hostile),
    ("egressPoolRef", "name"): st.one_of(st.sampled_from(["missing-pool", "Bad_Name"]), hostile),
    ("streams",): st.one_of(stream_items, hostile),
    ("streams", 0, "priority"): st.one_of(small_numbers, hostile),
    ("limits",): st.one_of(limit_items, hostile),
    ("shares",): st.one_of(
        st.lists(
            st.fixed_dictionaries({"address": st.text(max_size=8), "fraction": small_numbers}),
            max_size=2,
        ),
        hostile,
    ),
    ("credentials",): st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["main", "main", "X"]),
                    "secretRef": st.just({"name": "k"}),
                    "accountId": st.sampled_from(["acct", "", "a b"]),
                }
            ),
            max_size=2,
        ),
        hostile,
    ),
    ("streamSets",): st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {
                    "symbols": st.lists(st.sampled_from(["btcusdt", "", "ETH"]), max_size=3),
                    "channels": st.lists(st.sampled_from(["trade", "depth@100ms", ""]), max_size=2),
                }
            ),
            max_size=2,
        ),
        hostile,
    ),
    ("gateway", "connectionsPerPod"): st.one_of(small_numbers, hostile),
    ("gateway", "minReplicas"): st.one_of(small_numbers, hostile),
    ("gateway", "maxReplicas"): st.one_of(small_numbers, hostile),
    ("gateway", "maxUnavailable"): st.one_of(small_numbers, hostile),
    ("gateway", "consumerQueueFrames"): st.one_of(small_numbers, hostile),
    ("gateway", "slowConsumer"): st.one_of(st.sampled_from(["close", "drop", "explode"]), hostile),
    ("gateway", "image"): st.one_of(st.sampled_from(["", "img:1"]), hostile),
    ("paused",): hostile,
}

POOL_FIELDS: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {
    ("addresses",): st.one_of(st.just([]), hostile),
    ("addresses", 0, "name"): st.one_of(st.sampled_from(["lo-2", "Bad_Name", ""]), hostile),
    ("addresses", 0, "publicAddress"): st.one_of(
        st.sampled_from(["127.0.0.9", "999.1.1.1", "::1", "not-an-ip"]), hostile
    ),
    ("addresses", 0, "mode"): st.one_of(st.sampled_from(["proxy", "podLabel", "tunnel"]), hostile),
    ("addresses", 0, "bindAddress"): st.one_of(st.sampled_from(["127.0.0.2", "x"]), hostile),
    ("reserved",): st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {
                    "domain": st.sampled_from(["stream.binance.com", "", "A"]),
                    "fraction": small_numbers,
                }
            ),
            max_size=2,
        ),
        hostile,
    ),
    ("allowedNamespaces",): st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {"namespace": st.sampled_from(["*", "default", "Bad"]), "maxShare": small_numbers}
            ),
            max_size=2,
        ),
        hostile,
    ),
    ("egressCheck",): st.one_of(
        st.fixed_dictionaries(
            {"method": st.sampled_from(["url", "none", "dns"])},
            optional={
                "url": st.sampled_from(["http://127.0.0.1:9", "x"]),
                "reason": st.sampled_from(["", "no echo here"]),
                "timeoutSeconds": small_numbers,
            },
        ),
        hostile,
    ),
}


PLAUSIBLE: dict[tuple[Any, ...], st.SearchStrategy[Any]] = {
    ("headroom",): st.floats(min_value=0.01, max_value=1.0),
    ("exchange",): st.sampled_from(["okx", "bybit", "binance-usdm", "kraken"]),
    ("egressPoolRef", "name"): st.just("missing-pool"),
    ("streams",): st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["btcusdt@trade", "solusdt@depth@100ms", "nope", "X"])},
            optional={"priority": st.integers(0, 1000), "credential": st.just("absent")},
        ),
        max_size=5,
    ),
    ("gateway", "connectionsPerPod"): st.integers(1, 3),
    ("gateway", "minReplicas"): st.integers(0, 4),
    ("gateway", "maxReplicas"): st.integers(1, 4),
    ("gateway", "maxUnavailable"): st.integers(1, 3),
    ("paused",): st.booleans(),
    ("addresses", 0, "publicAddress"): st.sampled_from(["127.0.0.9", "127.0.0.2"]),
    ("reserved",): st.lists(
        st.fixed_dictionaries(
            {"domain": st.just("stream.binance.com"), "fraction": st.floats(0, 1)}
        ),
        max_size=1,
    ),
    ("allowedNamespaces",): st.just([{"namespace": "default"}]),
    ("egressCheck",): st.just({"method": "none", "reason": "no echo service here"}),
}
"""Values the schema takes, for the fields where they matter to the operator: accepted objects
the operator must plan or report as stalled."""


def mutations(fields: dict[tuple[Any, ...], st.SearchStrategy[Any]]) -> st.SearchStrategy:
    """One to three (path, value) edits of distinct fields (a value the schema takes, where
    `PLAUSIBLE` has some, about half the time)."""

    def values(path: tuple[Any, ...]) -> st.SearchStrategy[Any]:
        if path in PLAUSIBLE:
            return st.one_of(PLAUSIBLE[path], fields[path])
        return fields[path]

    return st.lists(
        st.sampled_from(sorted(fields, key=str)).flatmap(
            lambda path: st.tuples(st.just(path), values(path))
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda edit: edit[0],
    )


def apply_edits(spec: dict[str, Any], edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    """Set each path of `spec` to its value (intermediate lists and objects created)."""
    for path, value in edits:
        node: Any = spec
        for i, key in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, dict):
                if not isinstance(node.get(key), (dict, list)):
                    node[key] = [] if isinstance(nxt, int) else {}
                node = node[key]
            else:  # a list index
                while len(node) <= key:
                    node.append({})
                if not isinstance(node[key], dict):
                    node[key] = {}
                node = node[key]
        if isinstance(node, list):
            while len(node) <= path[-1]:
                node.append({})
            node[path[-1]] = value
        else:
            node[path[-1]] = value


def names_a_field(message: str, edits: list[tuple[tuple[Any, ...], Any]]) -> bool:
    """Whether the API server's message names one of the edited fields (or a field in it)."""
    return any(
        f"spec.{path[0]}" in message or any(isinstance(k, str) and f".{k}" in message for k in path)
        for path, _ in edits
    )


def assert_no_traceback(operator_process: OperatorProcess) -> None:
    """The operator logged no exception (the line, and the end of its traceback, if it did)."""
    bad = [line for line in operator_process.log(100_000).splitlines() if "Traceback" in line]
    assert not bad, "\n".join(line[:300] + " ... " + line[-2500:] for line in bad[:2])


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


@pytest.fixture(scope="module")
def bad_input_env(api_client: Any, operator_process: OperatorProcess) -> Iterator[tuple[str, str]]:
    """A namespace (with the Secret the credentials name) and a valid pool."""
    core = client.CoreV1Api(api_client)
    ns = f"bad-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "k"}, "stringData": {"apiKey": "k", "apiSecret": "s"}}
    )
    pool = f"bad-{uuid.uuid4().hex[:8]}"
    body = loopback_pool(pool)
    body["spec"]["allowedNamespaces"] = [{"namespace": "*"}]
    custom_object(api_client).create_cluster_custom_object(
        GROUP, VERSION, "exchangeegresspools", body
    )
    try:
        yield ns, pool
    finally:
        objects = custom_object(api_client)
        for kind in ("exchangeconnectionquotas",):
            for item in objects.list_namespaced_custom_object(GROUP, VERSION, ns, kind)["items"]:
                objects.delete_namespaced_custom_object(
                    GROUP, VERSION, ns, kind, item["metadata"]["name"]
                )
        objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
        core.delete_namespace(ns)


def valid_quota(ns: str, pool: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExchangeConnectionQuota",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "exchange": "binance-spot",
            "egressPoolRef": {"name": pool},
            "streams": [{"name": "btcusdt@trade"}, {"name": "ethusdt@trade"}],
            "gateway": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


def rejected_or_none(create: Any) -> str | None:
    """The API server's refusal message, or None when it accepted the object."""
    try:
        create()
    except client.ApiException as exc:
        assert exc.status in (400, 422), f"unexpected status {exc.status}: {exc.body}"
        return str(json.loads(exc.body).get("message", exc.body))
    return None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=mutations(QUOTA_FIELDS))
def test_generated_quotas_are_rejected_naming_the_field_or_planned_or_stalled(
    api_client: Any, operator_process: OperatorProcess, bad_input_env: tuple[str, str], edits: Any
) -> None:
    ns, pool = bad_input_env
    objects = custom_object(api_client)
    name = f"q-{uuid.uuid4().hex[:8]}"
    body = valid_quota(ns, pool, name)
    apply_edits(body["spec"], edits)
    message = rejected_or_none(
        lambda: objects.create_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", body
        )
    )
    if message is not None:
        assert names_a_field(message, edits), f"{edits}: {message}"
        OUTCOMES["quota"].append("rejected")
        return

    def judged() -> tuple[str, str] | None:
        obj = objects.get_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", name
        )
        gen = obj["metadata"].get("generation")
        stalled, ready = _condition(obj, "Stalled"), _condition(obj, "Ready")
        if (obj.get("status") or {}).get("observedGeneration") != gen:
            return None
        if stalled and stalled.get("status") == "True":
            return ("stalled", stalled.get("reason") or "")
        if ready:
            return ("planned", ready.get("reason") or "")
        return None

    outcome, reason = wait_for(judged, 30, f"the operator's verdict on {edits}")
    assert reason, f"{edits}: {outcome} without a reason"
    OUTCOMES["quota"].append(f"{outcome}: {reason}")
    objects.delete_namespaced_custom_object(GROUP, VERSION, ns, "exchangeconnectionquotas", name)
    assert_no_traceback(operator_process)


@settings(
    max_examples=EXAMPLES // 2,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=mutations(POOL_FIELDS))
def test_generated_pools_are_rejected_naming_the_field_or_accepted_without_an_exception(
    api_client: Any, operator_process: OperatorProcess, bad_input_env: tuple[str, str], edits: Any
) -> None:
    ns, _ = bad_input_env
    objects = custom_object(api_client)
    pool = f"p-{uuid.uuid4().hex[:8]}"
    body = loopback_pool(pool)
    body["spec"]["allowedNamespaces"] = [{"namespace": "*"}]
    apply_edits(body["spec"], edits)
    message = rejected_or_none(
        lambda: objects.create_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", body)
    )
    if message is not None:
        assert names_a_field(message, edits), f"{edits}: {message}"
        OUTCOMES["pool"].append("rejected")
        return
    # accepted: a quota on it is planned or stalled with a reason
    quota = valid_quota(ns, pool, f"q-{uuid.uuid4().hex[:8]}")
    objects.create_namespaced_custom_object(GROUP, VERSION, ns, "exchangeconnectionquotas", quota)
    name = quota["metadata"]["name"]

    def judged() -> tuple[str, str] | None:
        obj = objects.get_namespaced_custom_object(
            GROUP, VERSION, ns, "exchangeconnectionquotas", name
        )
        if (obj.get("status") or {}).get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        stalled, ready = _condition(obj, "Stalled"), _condition(obj, "Ready")
        if stalled and stalled.get("status") == "True":
            return ("stalled", stalled.get("reason") or "")
        return ("planned", ready.get("reason") or "") if ready else None

    outcome, reason = wait_for(judged, 30, f"the operator's verdict on a quota of pool {edits}")
    assert reason, f"{edits}: {outcome} without a reason"
    OUTCOMES["pool"].append(f"{outcome}: {reason}")
    objects.delete_namespaced_custom_object(GROUP, VERSION, ns, "exchangeconnectionquotas", name)
    objects.delete_cluster_custom_object(GROUP, VERSION, "exchangeegresspools", pool)
    assert_no_traceback(operator_process)


def test_the_outcomes_of_the_generated_objects() -> None:
    """The tally of the two tests above (run after them, in file order)."""
    for kind, outcomes in OUTCOMES.items():
        tally: dict[str, int] = {}
        for outcome in outcomes:
            tally[outcome] = tally.get(outcome, 0) + 1
        print(f"{kind}: {len(outcomes)} examples: {json.dumps(tally, sort_keys=True)}")
    assert OUTCOMES["quota"] and OUTCOMES["pool"], OUTCOMES
