"""Peers come from the headless Service's EndpointSlices: every address but the pod's own."""

from __future__ import annotations

from types import SimpleNamespace

from connquota.gateway.peer_source import peer_urls, slice_addresses


def _slice(*endpoints: list[str]) -> SimpleNamespace:
    return SimpleNamespace(endpoints=[SimpleNamespace(addresses=a) for a in endpoints])


def test_every_address_of_every_slice_but_the_own_one_is_a_peer() -> None:
    slices = {
        "a": slice_addresses(_slice(["10.0.0.2"], ["10.0.0.3"])),
        "b": slice_addresses(_slice(["10.0.0.4"], ["10.0.0.3"])),
        "empty": slice_addresses(SimpleNamespace(endpoints=None)),
    }
    assert peer_urls(slices, "10.0.0.3", 8080) == ["http://10.0.0.2:8080", "http://10.0.0.4:8080"]
    assert peer_urls({"v6": {"fd00::5", "fd00::6"}}, "fd00::6", 8080) == ["http://[fd00::5]:8080"]
    assert peer_urls({}, "10.0.0.3", 8080) == []
