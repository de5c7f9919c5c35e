"""Peers are the quota's gateway Pods by Pod IP: every address but the pod's own."""

from __future__ import annotations

from types import SimpleNamespace

from connquota.api.labels import gateway_pod_selector
from connquota.gateway.peer_source import peer_urls, pod_address


def _pod(ip: str | None, phase: str = "Running") -> SimpleNamespace:
    return SimpleNamespace(status=SimpleNamespace(pod_ip=ip, phase=phase))


def test_every_pod_address_but_the_own_one_is_a_peer() -> None:
    pods = {
        "md-gw-0": pod_address(_pod("10.0.0.2")),
        "md-gw-1": pod_address(_pod("10.0.0.3")),
        "md-gw-2": pod_address(_pod("10.0.0.4")),
        "md-gw-3": pod_address(_pod(None, "Pending")),
    }
    assert peer_urls(pods, "10.0.0.3", 8080) == ["http://10.0.0.2:8080", "http://10.0.0.4:8080"]
    assert peer_urls({"a": "fd00::5", "b": "fd00::6"}, "fd00::6", 8080) == ["http://[fd00::5]:8080"]
    assert peer_urls({}, "10.0.0.3", 8080) == []


def test_a_pod_without_an_ip_or_one_that_has_finished_is_no_peer() -> None:
    assert pod_address(_pod(None, "Pending")) is None
    assert pod_address(_pod("10.0.0.9", "Failed")) is None
    assert pod_address(_pod("10.0.0.9", "Succeeded")) is None
    assert pod_address(SimpleNamespace(status=None)) is None
    assert pod_address(_pod("10.0.0.9")) == "10.0.0.9"


def test_the_selector_names_exactly_the_quotas_gateway_pods() -> None:
    assert (
        gateway_pod_selector("md")
        == "app.kubernetes.io/name=connquota-gateway,connquota.io/quota=md"
    )
