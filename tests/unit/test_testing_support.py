"""connquota.testing: the shared test support builds what the hand-written copies built."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from connquota.api.pool import EgressCheck, EgressCheckMethod, ExchangeEgressPool
from connquota.api.quota import CustomProfile
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.testing.resources import custom_exchange, loopback_pool
from connquota.testing.waiting import wait_for, wait_until


def test_loopback_pool_is_the_pool_the_tests_wrote_by_hand() -> None:
    body = loopback_pool("p", addresses=2, first=5, node="n1")
    assert body["apiVersion"] == "connquota.io/v1alpha1"
    assert body["kind"] == "ExchangeEgressPool"
    assert body["metadata"] == {"name": "p"}
    assert body["spec"]["addresses"] == [
        {
            "name": f"lo-{octet}",
            "publicAddress": f"127.0.0.{octet}",
            "mode": "bind",
            "bindAddress": f"127.0.0.{octet}",
            "node": "n1",
        }
        for octet in (5, 6)
    ]
    assert "egressCheck" not in body["spec"]
    assert ExchangeEgressPool.model_validate(body).to_wire() == body


def test_loopback_pool_carries_the_egress_check() -> None:
    check = EgressCheck(method=EgressCheckMethod.URL, url="http://127.0.0.1:8099/ip")
    body = loopback_pool("p", egress_check=check)
    assert body["spec"]["egressCheck"] == {
        "method": "url",
        "url": "http://127.0.0.1:8099/ip",
        "timeoutSeconds": 5.0,
    }
    assert body["spec"]["addresses"][0]["node"] == "connquota-harness"


@pytest.mark.parametrize("name", ["binance-spot", "okx", "bybit"])
def test_custom_exchange_declares_the_scaled_profile_in_wall_clock_seconds(name: str) -> None:
    profile = scaled_profile(get_profile(name), 60.0, "ws://127.0.0.1:9001")
    spec = custom_exchange(profile, "mock.test")
    # What tests/cluster/operator/fleet.py and bench/operator_ready.py wrote by hand.
    assert spec == {
        "endpoint": "ws://127.0.0.1:9001",
        "dialect": profile.dialect.value,
        "domain": "mock.test",
        "limits": [limit.to_wire() for limit in profile.limits],
        "heartbeat": profile.heartbeat.to_wire(),
        "deadConnectionTimeoutSeconds": profile.deadConnectionTimeoutSeconds,
    }
    CustomProfile.model_validate(spec)


def test_wait_for_returns_the_first_truthy_value_and_retries_errors() -> None:
    calls = itertools.count()

    def appears_on_the_third_call() -> str:
        n = next(calls)
        if n == 0:
            raise LookupError("not there yet")
        return "there" if n >= 2 else ""

    assert wait_for(appears_on_the_third_call, 5, "the value", interval_s=0.001) == "there"


def test_wait_for_fails_with_what_it_waited_for_and_the_last_error() -> None:
    def never() -> bool:
        raise LookupError("still missing")

    with pytest.raises(AssertionError, match=r"waiting for the pod .*still missing"):
        wait_for(never, 0.05, "the pod", interval_s=0.01)


def test_wait_for_does_not_retry_a_failed_assertion() -> None:
    calls = itertools.count()

    def broken() -> bool:
        next(calls)
        raise AssertionError("wrong")

    with pytest.raises(AssertionError, match="wrong"):
        wait_for(broken, 5, "anything")
    assert next(calls) == 1


async def test_wait_until_takes_plain_and_async_predicates() -> None:
    state = {"n": 0}

    async def bump() -> int:
        await asyncio.sleep(0)
        state["n"] += 1
        return state["n"] if state["n"] >= 3 else 0

    assert await wait_until(bump, 5, "three") == 3
    assert await wait_until(lambda: state["n"], 5, "already") == 3
    with pytest.raises(AssertionError, match="waiting for nothing ever"):
        await wait_until(lambda: False, 0.03, "nothing ever")


def test_the_pod_harness_package_keeps_its_public_names() -> None:
    import connquota.testing.podharness as podharness

    assert podharness.PodHarness.__module__ == "connquota.testing.podharness.harness"
    assert podharness.POD_ROOT_ENV == "CONNQUOTA_POD_ROOT"
    assert podharness.DEFAULT_NODE_NAME == "connquota-harness"
    assert podharness.expand_vars("$(A)-$$(A)-$(B)", {"A": "x"}) == "x-$(A)-$(B)"
    guaranteed = {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    burstable = {"requests": {"cpu": "100m"}}
    pod = {"spec": {"containers": [{"name": "c", "resources": guaranteed}]}}
    assert podharness.qos_class(pod) == "Guaranteed"
    pod["spec"]["containers"][0]["resources"] = burstable
    assert podharness.qos_class(pod) == "Burstable"
    assert podharness.qos_class({"spec": {"containers": [{"name": "c"}]}}) == "BestEffort"


def test_the_service_proxy_sends_connections_only_to_ready_pods_its_service_selects() -> None:
    from types import SimpleNamespace

    from connquota.testing.service_proxy import ready_pod_ips

    def pod(ip: str | None, ready: str, deleting: bool = False) -> SimpleNamespace:
        return SimpleNamespace(
            metadata=SimpleNamespace(deletion_timestamp="now" if deleting else None),
            status=SimpleNamespace(
                pod_ip=ip, conditions=[SimpleNamespace(type="Ready", status=ready)]
            ),
        )

    asked: list[str] = []

    class Core:
        def read_namespaced_service(self, name: str, namespace: str) -> SimpleNamespace:
            return SimpleNamespace(spec=SimpleNamespace(selector={"b": "2", "a": "1"}))

        def list_namespaced_pod(self, namespace: str, label_selector: str) -> SimpleNamespace:
            asked.append(label_selector)
            pods = [pod("10.0.0.1", "True"), pod("10.0.0.2", "False"), pod(None, "False"),
                    pod("10.0.0.3", "True", deleting=True), pod("10.0.0.4", "True")]  # fmt: skip
            return SimpleNamespace(items=pods)

    assert ready_pod_ips(Core(), "ns", "md-gw") == ["10.0.0.1", "10.0.0.4"]
    assert asked == ["a=1,b=2"]
