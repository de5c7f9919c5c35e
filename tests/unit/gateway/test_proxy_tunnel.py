"""Proxy URLs, proxy answers told apart, and the per-address proxy health."""

from __future__ import annotations

import asyncio
import socket

import pytest
from python_socks import ProxyError, ProxyType

from connquota.api.pool import EgressAddress, EgressMode, ProxySecretRef
from connquota.api.report import EgressCheckResult, EgressCheckState, GatewayReport
from connquota.gateway.egress import EgressPool
from connquota.gateway.proxy_health import ProxyHealth
from connquota.gateway.proxy_tunnel import (
    ProxyConfigError,
    ProxyCredentialFiles,
    ProxyEndpoint,
    ProxyFault,
    ProxyFaultKind,
    _fault_of,
    parse_proxy_url,
)
from connquota.operator.status import egress_problems
from connquota.testing.waiting import wait_until


def address(url: str) -> EgressAddress:
    return EgressAddress(
        name="p0", publicAddress="198.51.100.10", mode=EgressMode.PROXY, proxyUrl=url
    )


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://10.0.0.5:3128", ProxyEndpoint(ProxyType.HTTP, "10.0.0.5", 3128)),
        ("http://proxy.egress.svc", ProxyEndpoint(ProxyType.HTTP, "proxy.egress.svc", 3128)),
        ("socks5://10.0.0.6:1081", ProxyEndpoint(ProxyType.SOCKS5, "10.0.0.6", 1081)),
        ("socks5://10.0.0.6", ProxyEndpoint(ProxyType.SOCKS5, "10.0.0.6", 1080)),
    ],
)
def test_proxy_urls_name_the_protocol_host_and_port(url, endpoint):
    assert parse_proxy_url(address(url)) == endpoint


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://10.0.0.5:3128", "must start with"),
        ("socks4://10.0.0.5:1080", "must start with"),
        ("http://user:secret@10.0.0.5:3128", "proxySecretRef"),
    ],
)
def test_unusable_proxy_urls_are_refused_without_echoing_credentials(url, message):
    # The API server refuses the first two already; the gateway does not rely on it.
    unchecked = EgressAddress.model_construct(
        name="p0", publicAddress="198.51.100.10", mode=EgressMode.PROXY, proxyUrl=url
    )
    with pytest.raises(ProxyConfigError) as info:
        parse_proxy_url(unchecked)
    assert message in str(info.value) and "secret" not in str(info.value).replace("Secret", "")


HTTP = ProxyEndpoint(ProxyType.HTTP, "10.0.0.5", 3128)
SOCKS = ProxyEndpoint(ProxyType.SOCKS5, "10.0.0.6", 1080)


@pytest.mark.parametrize(
    ("endpoint", "error", "kind"),
    [
        (HTTP, ProxyError("407 Proxy Authentication Required", 407), ProxyFaultKind.AUTH_REFUSED),
        (HTTP, ProxyError("401 Unauthorized", 401), ProxyFaultKind.AUTH_REFUSED),
        (HTTP, ProxyError("502 Bad Gateway", 502), ProxyFaultKind.UPSTREAM_REFUSED),
        (HTTP, ProxyError("503 Service Unavailable", 503), ProxyFaultKind.UPSTREAM_REFUSED),
        (HTTP, ProxyError("504 Gateway Timeout", 504), ProxyFaultKind.UPSTREAM_TIMEOUT),
        (HTTP, ProxyError("Invalid status line"), ProxyFaultKind.PROTOCOL),
        (
            SOCKS,
            ProxyError("Username and password authentication failure"),
            ProxyFaultKind.AUTH_REFUSED,
        ),
        (SOCKS, ProxyError("Connection refused", 5), ProxyFaultKind.UPSTREAM_REFUSED),
        (SOCKS, ProxyError("TTL expired", 6), ProxyFaultKind.UPSTREAM_TIMEOUT),
    ],
)
def test_proxy_answers_after_the_request_are_attempts_of_a_known_kind(endpoint, error, kind):
    fault = _fault_of(error, endpoint)
    assert fault.kind == kind
    assert fault.attempt_spent  # the request reached the proxy: it may have reached the exchange


def test_an_unreachable_proxy_backs_off_doubling_and_clears_on_the_next_tunnel():
    health = ProxyHealth("p0", "http://10.0.0.5:3128")
    down = ProxyFault(ProxyFaultKind.UNREACHABLE, "http://10.0.0.5:3128 unreachable", False)
    health.record_fault(down)
    first = health.wait()[0]
    health.record_fault(down)  # a connection that tried at the same time: the same step
    assert health.wait()[0] <= first
    health.retry_at_mono = 0.0  # the backoff has passed; the next try fails again
    health.record_fault(down)
    second = health.wait()[0]
    assert 0 < first <= 0.5 < second <= 1.0
    assert health.attempts == {}  # no exchange attempt was spent
    health.record_opened()
    assert health.wait() == (0.0, "") and health.to_json()["fault"] is None


def test_refused_credentials_block_until_the_secret_files_change(tmp_path):
    files = ProxyCredentialFiles(tmp_path, "username", "password")
    (tmp_path / "username").write_text("u")
    (tmp_path / "password").write_text("wrong")
    health = ProxyHealth("p0", "socks5://10.0.0.6:1080", files.fingerprint)
    health.record_fault(ProxyFault(ProxyFaultKind.AUTH_REFUSED, "refused", True))
    assert health.wait()[0] > 0 and "Secret" in health.wait()[1]
    assert health.attempts == {"auth-refused": 1}
    (tmp_path / "password").write_text("right-and-longer")
    assert health.wait() == (0.0, "")
    assert files.read() == ("u", "right-and-longer")


def test_unreadable_proxy_credentials_name_the_file_not_a_value(tmp_path):
    files = ProxyCredentialFiles(tmp_path, "username", "password")
    (tmp_path / "username").write_text("u")
    with pytest.raises(ProxyFault) as info:
        files.read()
    assert info.value.kind == ProxyFaultKind.CREDENTIALS_UNREADABLE
    assert not info.value.attempt_spent and "password" in info.value.message


def test_a_proxy_fault_on_the_report_makes_the_address_an_egress_problem():
    ok = EgressCheckResult(
        address="p0", publicAddress="198.51.100.10", state=EgressCheckState.VERIFIED
    )
    down = ok.model_copy(
        update={"proxyFault": "unreachable", "proxyFaultReason": "http://10.0.0.5:3128 down"}
    )
    base = {"quota": {"namespace": "n", "name": "q"}, "pod": "q-0", "ordinal": 0}
    healthy = GatewayReport(**base, bootId="b", planGeneration=1, egressChecks=[ok])
    faulty = GatewayReport(**base, bootId="b", planGeneration=1, egressChecks=[down])
    states = {EgressCheckState.MISMATCH, EgressCheckState.FAILED}
    assert egress_problems({0: healthy}, states) == []
    assert egress_problems({0: faulty}, states) == [
        "p0 (proxy unreachable: http://10.0.0.5:3128 down)"
    ]
    assert "proxyFault" not in healthy.to_wire()["egressChecks"][0]  # older readers unaffected


def test_a_proxy_secret_ref_names_the_files_the_gateway_reads():
    a = address("socks5://10.0.0.6:1080").model_copy(
        update={"proxySecretRef": ProxySecretRef(name="px", usernameKey="user", passwordKey="pw")}
    )
    assert a.proxySecretRef is not None and a.proxySecretRef.passwordKey == "pw"


async def test_an_unreachable_proxy_is_probed_until_it_answers_and_its_fault_clears(
    monkeypatch,
):
    """The operator plans without an address whose proxy is down, so no tunnel would find out
    it is back: the gateway probes it (TCP connect, nothing sent) and clears the fault."""
    with socket.socket() as s:  # a free port on loopback, nothing listening yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = EgressPool()
    pool.set_addresses([address(f"http://127.0.0.1:{port}")])
    name = next(iter(pool.proxies))
    pool.record_proxy_fault(
        name, ProxyFault(ProxyFaultKind.UNREACHABLE, "connection refused", False)
    )
    accepted: list[bytes] = []
    probes: list[int] = []
    open_connection = asyncio.open_connection

    async def counted(host, port_):
        probes.append(port_)
        return await open_connection(host, port_)

    monkeypatch.setattr(asyncio, "open_connection", counted)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(await reader.read(100))  # the probe sends nothing
        writer.close()

    probe = asyncio.create_task(pool.probe_unreachable_proxies(interval_s=0.05))
    try:
        await wait_until(lambda: len(probes) >= 3, 5, "three probes while nothing listens")
        assert pool.proxies[name].last_kind == ProxyFaultKind.UNREACHABLE
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        async with server:
            await wait_until(lambda: pool.proxies[name].last_kind is None, 5, "fault cleared")
            await wait_until(lambda: accepted, 5, "the probe's connection at the proxy")
            assert accepted[0] == b""
    finally:
        probe.cancel()
        await pool.close()
