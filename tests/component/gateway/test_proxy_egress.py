"""Proxy egress through real proxies: tinyproxy and squid (HTTP CONNECT, Basic auth) and
microsocks (SOCKS5, username/password), installed by hack/install-proxies.sh.

Every scenario runs through each of the three; the start-up with a mass disconnect (ws and wss)
runs tinyproxy and microsocks side by side in one gateway, and squid on its own.

Each proxy listens on its own loopback address and binds its outgoing connections to another,
so the mock exchange sees one source IP per proxy. Every limit is the exchange's per-IP attempt
limit, shrunk so start-up and a mass disconnect drive it to >= 90%.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import (
    TIME_SCALE,
    Consumer,
    Harness,
    _path_of,
    mock_attempts,
    shrunk,
    stream_names,
    wait_for,
)

from connquota.api.limits import LimitName, LimitScope
from connquota.api.plan import ConnectionPlan
from connquota.api.pool import EgressAddress, EgressMode, ProxySecretRef
from connquota.demo.scaling import scaled_profile
from connquota.exchanges import get_profile
from connquota.mockexchange.server import MockExchange
from connquota.testing.gateway_plans import pod_plan
from connquota.testing.proxies import ProxyProcess, free_port
from connquota.testing.tlsca import TestCA

ATTEMPTS = 10
WINDOW_PROFILE_S = 40.0  # 2 s at the test's time scale
CONNS = 12
USER, PASSWORD = "connquota", "tunnel-pass-1"
KINDS = ["http", "socks5", "squid"]  # tinyproxy, microsocks, squid (a second HTTP CONNECT)
# Proxy listen and egress addresses: 127.0.0.3x listen, 127.0.0.4x egress (one per proxy).
LISTEN = {"http": "127.0.0.31", "socks5": "127.0.0.32", "squid": "127.0.0.33"}
EGRESS = {"http": "127.0.0.41", "socks5": "127.0.0.42", "squid": "127.0.0.43"}


class ProxyRig:
    """The proxies of one test and the Secret files the gateway reads their credentials from."""

    def __init__(
        self, harness: Harness, proxy_servers: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.harness = harness
        self.proxy_servers = proxy_servers
        self.secrets = harness.tmp_path / "proxy-secrets"
        monkeypatch.setenv("CONNQUOTA_PROXY_CREDENTIALS_DIR", str(self.secrets))
        self.proxies: list[ProxyProcess] = []

    async def start(self, kind: str, password: str | None = PASSWORD) -> ProxyProcess:
        """A proxy of `kind`; `password=None` starts it without authentication."""
        proxy = ProxyProcess(
            kind,
            self.proxy_servers,
            LISTEN[kind],
            EGRESS[kind],
            self.harness.tmp_path / "proxies",
            USER if password is not None else None,
            password,
        )
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    def write_secret(self, address: str, password: str) -> None:
        """The mounted Secret of `address`: files written atomically, as the kubelet swaps them."""
        directory = self.secrets / address
        directory.mkdir(parents=True, exist_ok=True)
        for key, value in (("username", USER), ("password", password)):
            tmp = directory / f".{key}.tmp"
            tmp.write_text(value)
            tmp.replace(directory / key)

    def address(self, name: str, proxy: ProxyProcess, public: str | None = None) -> EgressAddress:
        secret = ProxySecretRef(name="egress-proxy-credentials") if proxy.username else None
        return EgressAddress(
            name=name,
            publicAddress=public or proxy.egress_ip,
            mode=EgressMode.PROXY,
            proxyUrl=proxy.url,
            proxySecretRef=secret,
            egressCheck=self.harness.egress_check(),
        )

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.kill()


@pytest.fixture
async def rig(harness, proxy_servers, monkeypatch):
    r = ProxyRig(harness, proxy_servers, monkeypatch)
    try:
        yield r
    finally:
        await r.close()


def attempt_limits(profile: str):
    return shrunk(profile, connectionAttempts=(ATTEMPTS, WINDOW_PROFILE_S))


async def start_mock(
    harness: Harness,
    tls: bool,
    monkeypatch: pytest.MonkeyPatch | None = None,
    profile: str = "binance-spot",
):
    """The mock exchange; over TLS its certificate names `localhost` only (the exchange host
    the gateway must check through the tunnel, never the proxy's address)."""
    kw = {}
    ca = None
    if tls:
        ca = TestCA.create()
        kw["ssl_context"] = ca.server_context(["localhost"])
    mock = await harness.start_mock(profile, attempt_limits(profile), **kw)
    if ca is None:
        return mock, harness.gateway_profile()
    ca_file = harness.tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    assert monkeypatch is not None
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))  # the gateway's default context trusts it
    port = mock.url.rsplit(":", 1)[1]
    endpoint = f"wss://localhost:{port}" + _path_of(mock.profile.endpoint)
    return mock, scaled_profile(mock.profile, TIME_SCALE, endpoint)


def plan_on(
    profile,
    addresses: list[EgressAddress],
    conns: int = CONNS,
    per_conn: int = 2,
    dialect_of: str = "binance-spot",
):
    names = stream_names(dialect_of, conns * per_conn * len(addresses))
    connections = [
        ConnectionPlan(
            id=f"c{a.name}{i}",
            address=a.name,
            streams=names[(k * conns + i) * per_conn : (k * conns + i + 1) * per_conn],
        )
        for k, a in enumerate(addresses)
        for i in range(conns)
    ]
    return pod_plan(profile, connections, addresses=addresses, margin_s=0.2), names


def proxy_state(status: dict | None, address: str) -> dict:
    """The gateway's view of `address`'s proxy in its /status ({} before the plan that names it
    is applied: under load the status may be read first)."""
    return ((status or {}).get("proxies") or {}).get(address) or {}


async def gateway_attempts(harness: Harness, gw, address: str) -> int:
    st = await harness.status(gw)
    assert st is not None
    return int(st["limiterCounts"]["attempts"].get(f"ip/{address}", 0))


# The proxies of one start-up run: each kind with its address's name in the pool.
START_UP_SETS = {
    "tinyproxy+microsocks": {"http": "p-http", "socks5": "p-socks"},
    "squid": {"squid": "p-squid"},
}
# Binance through every proxy set; each other dialect through tinyproxy and microsocks.
START_UP_CASES = [
    pytest.param("binance-spot", kinds, id=f"binance-spot-{name}")
    for name, kinds in START_UP_SETS.items()
] + [
    pytest.param(
        dialect, START_UP_SETS["tinyproxy+microsocks"], id=f"{dialect}-tinyproxy+microsocks"
    )
    for dialect in ("okx", "bybit", "kraken")
]


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize(("dialect", "kinds"), START_UP_CASES)
async def test_start_up_and_a_mass_disconnect_through_http_and_socks5_proxies_stay_in_each_proxy_ips_limit(
    harness, rig, tls, dialect, kinds, monkeypatch
):
    mock, profile = await start_mock(harness, tls, monkeypatch, dialect)
    proxies = {kind: await rig.start(kind) for kind in kinds}
    for name in kinds.values():
        rig.write_secret(name, PASSWORD)
    plan, names = plan_on(
        profile,
        [rig.address(name, proxies[kind]) for kind, name in kinds.items()],
        dialect_of=dialect,
    )
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    # Every connection left through its proxy: the exchange sees each proxy's egress address.
    for kind in kinds:
        assert len(mock.websockets(EGRESS[kind])) == CONNS
    for kind in kinds:  # /whoami-style check through the proxy
        assert harness.echo.requests[EGRESS[kind]] >= 1
    consumer = Consumer(harness.http, gw.ws_url)
    await consumer.connect(names)
    await wait_for(
        lambda: consumer.streams_seen() >= set(names), 20, "every stream at the consumer"
    )
    before = {name: await gateway_attempts(harness, gw, name) for name in kinds.values()}
    dropped = await mock.disconnect(abrupt=True)
    assert dropped == len(kinds) * CONNS

    async def all_attempted_again() -> bool:
        # Each dropped connection is attempted again before the live streams are counted: the
        # gateway may not have seen the drop yet when the exchange's disconnect returns.
        granted = {name: await gateway_attempts(harness, gw, name) for name in kinds.values()}
        return all(granted[name] >= before[name] + CONNS for name in kinds.values())

    await wait_for(all_attempted_again, 30, "an attempt per dropped connection")
    await harness.wait_live(gw, len(names), timeout_s=40)
    for kind in kinds:
        assert mock.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, EGRESS[kind]) >= 0.9

    async def counts_match():
        # The exchange is read first: whatever it counted, the gateway's log granted before.
        seen = {k: mock_attempts(mock, EGRESS[k]) for k in kinds}
        granted = {k: await gateway_attempts(harness, gw, name) for k, name in kinds.items()}
        assert all(seen[k] <= granted[k] for k in kinds), (seen, granted)
        return seen == granted

    await wait_for(counts_match, 15, "the exchange's attempts per proxy IP to equal the log")
    # The HTTP CONNECT proxy of the set (tinyproxy, or squid).
    http_name = next(name for kind, name in kinds.items() if kind != "socks5")

    async def outcomes_match():
        # Every attempt has one outcome: a tunnel opened, or the fault that ended it after
        # the CONNECT was sent (under load a tunnel may time out after the exchange counted it).
        st = await harness.status(gw)
        return sum(
            proxy_state(st, http_name).get("attempts", {}).values()
        ) == await gateway_attempts(harness, gw, http_name)

    await wait_for(outcomes_match, 15, "one outcome per attempt through the http proxy")
    st = await harness.status(gw)
    assert st["proxies"][http_name]["attempts"]["opened"] >= 2 * CONNS
    assert st["proxies"][http_name]["faults"].get("tunnel-closed", 0) >= 1  # the mass disconnect
    harness.assert_no_violation()
    assert PASSWORD not in harness.logs()
    await consumer.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_proxy_without_credentials_needs_no_secret_and_counts_the_same(harness, rig, kind):
    mock, profile = await start_mock(harness, tls=False)
    proxy = await rig.start(kind, password=None)
    plan, names = plan_on(profile, [rig.address("p0", proxy)], conns=4)
    assert plan.addresses[0].proxySecretRef is None
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=30)
    assert len(mock.websockets(EGRESS[kind])) == 4

    async def counts_match():
        return mock_attempts(mock, EGRESS[kind]) == await gateway_attempts(harness, gw, "p0")

    await wait_for(counts_match, 10, "the exchange's attempts to equal the gateway's log")
    harness.assert_no_violation()


@pytest.mark.parametrize("kind", KINDS)
async def test_tls_inside_the_tunnel_refuses_a_certificate_for_another_host(
    harness, rig, kind, monkeypatch
):
    """The mock's certificate names `localhost`; reached as 127.0.0.1 through the tunnel, the
    gateway refuses it (verification is on, against the exchange host the URL names)."""
    mock, profile = await start_mock(harness, True, monkeypatch)
    wrong_host = profile.model_copy(
        update={"endpoint": profile.endpoint.replace("wss://localhost:", "wss://127.0.0.1:")}
    )
    proxy = await rig.start(kind)
    rig.write_secret("p0", PASSWORD)
    plan, _ = plan_on(wrong_host, [rig.address("p0", proxy)], conns=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def refused_twice():
        st = await harness.status(gw)
        opened = proxy_state(st, "p0").get("attempts", {}).get("opened", 0)
        return st if opened >= 2 else None

    st = await wait_for(refused_twice, 20, "two attempts ending in a refused certificate")
    assert mock.websockets() == []
    # The tunnels opened (each an attempt), then TLS refused the certificate: no WebSocket.
    assert int(st["limiterCounts"]["attempts"]["ip/p0"]) >= 2
    assert "ClientConnectorCertificateError" in harness.logs()
    harness.assert_no_violation()


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_proxy_credentials_are_reported_without_a_retry_storm_and_recover_on_rotation(
    harness, rig, kind
):
    mock, profile = await start_mock(harness, tls=False)
    proxy = await rig.start(kind)
    rig.write_secret("p0", "wrong-password")
    plan, names = plan_on(profile, [rig.address("p0", proxy)], conns=4)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def refused():
        st = await harness.status(gw)
        fault = proxy_state(st, "p0").get("fault")
        # The proxy's fault is recorded while the egress check still runs; its result (the
        # message asserted below) is stored when the check returns.
        return st if fault == "auth-refused" and "p0" in st["egress"] else None

    st = await wait_for(refused, 20, "the proxy's credential refusal in the status")
    assert "Secret" in st["egress"]["p0"]["message"] or "Secret" in st["proxies"]["p0"]["message"]
    # No retry storm: while the Secret stays as it is, nothing more is sent to the proxy. The
    # invariant is watched across 3 s, longer than a failed check's first retry (2 s) and the
    # connections' backoff cap (1 s), so a retry loop would show.
    faults_then = st["proxies"]["p0"]["faults"]["auth-refused"]

    async def refusals_unchanged() -> bool:
        now = await harness.status(gw)
        assert now["proxies"]["p0"]["faults"]["auth-refused"] == faults_then, "retried"
        return True

    await holds_for(refusals_unchanged, 3.0)
    st = await harness.status(gw)
    assert mock_attempts(mock, EGRESS[kind]) == 0
    assert all(c["state"] in ("refused", "backoff") for c in st["connections"])
    # Rotation: the right password in the Secret files, and the address comes up.
    rig.write_secret("p0", PASSWORD)
    await harness.wait_live(gw, len(names), timeout_s=30)
    assert len(mock.websockets(EGRESS[kind])) == 4
    harness.assert_no_violation()
    assert PASSWORD not in harness.logs() and "wrong-password" not in harness.logs()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_proxy_killed_and_restarted_mid_run_costs_no_attempt_while_down_and_recovers(
    harness, rig, kind
):
    mock, profile = await start_mock(harness, tls=False)
    proxy = await rig.start(kind)
    rig.write_secret("p0", PASSWORD)
    plan, names = plan_on(profile, [rig.address("p0", proxy)])
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    await proxy.kill()

    async def reported_down():
        st = await harness.status(gw)
        return st if proxy_state(st, "p0").get("fault") == "unreachable" else None

    st = await wait_for(reported_down, 20, "the dead proxy in the status")
    report = next(r for r in st["egressReport"] if r["address"] == "p0")
    assert report["proxyFault"] == "unreachable"  # what the Lease report carries
    granted_down = await gateway_attempts(harness, gw, "p0")
    assert st["proxies"]["p0"]["faults"].get("tunnel-closed", 0) >= 1
    # While it is down, reaching it fails before any request: no attempt is spent.
    await wait_for(
        lambda: _more_faults(harness, gw, st["proxies"]["p0"]["faults"]["unreachable"]),
        20,
        "another unreachable try (the backoff runs)",
    )
    assert await gateway_attempts(harness, gw, "p0") == granted_down
    await proxy.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    assert len(mock.websockets(EGRESS[kind])) == CONNS
    assert mock.peak_fraction(LimitName.CONNECTION_ATTEMPTS, LimitScope.IP, EGRESS[kind]) >= 0.9

    async def counts_match():
        seen = mock_attempts(mock, EGRESS[kind])
        granted = await gateway_attempts(harness, gw, "p0")
        assert seen <= granted
        return seen == granted

    await wait_for(counts_match, 15, "the exchange's attempts to equal the gateway's log")
    harness.assert_no_violation()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_proxy_that_fails_every_tunnel_has_each_one_counted_as_an_attempt_and_backs_off(
    harness, rig, kind
):
    """The exchange is down behind the proxy: tinyproxy answers 500 to every CONNECT, squid 503,
    microsocks replies 0x05. Each tunnel request is an attempt (the proxy tried the exchange), inside the
    slice; once the exchange is up the connections open, and it saw no more than the log."""
    port = free_port("127.0.0.1")
    mock = MockExchange(
        get_profile("binance-spot"),
        "127.0.0.1",
        port,
        time_scale=TIME_SCALE,
        limits=attempt_limits("binance-spot"),
    )
    endpoint = f"ws://127.0.0.1:{port}" + _path_of(mock.profile.endpoint)
    profile = scaled_profile(mock.profile, TIME_SCALE, endpoint)
    proxy = await rig.start(kind)
    rig.write_secret("p0", PASSWORD)
    plan, names = plan_on(profile, [rig.address("p0", proxy)], conns=4)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def refused_upstream():
        st = await harness.status(gw)
        proxies = proxy_state(st, "p0")
        return st if proxies.get("attempts", {}).get("upstream-refused", 0) >= 8 else None

    st = await wait_for(refused_upstream, 30, "tunnels refused by the proxy, counted")
    assert st["proxies"]["p0"]["fault"] == "upstream-refused"
    spent = sum(st["proxies"]["p0"]["attempts"].values())
    granted = int(st["limiterCounts"]["attempts"]["ip/p0"])
    assert granted >= spent >= 8  # every failed tunnel is in the attempt log
    usage = next(u for u in st["usage"] if u["scope"] == "ip" and u["key"] == "p0")
    assert usage["attemptsInWindow"] <= usage["attemptSlice"] == ATTEMPTS, usage
    report = next(r for r in st["egressReport"] if r["address"] == "p0")
    assert report["proxyFault"] == "upstream-refused"
    harness.mock = mock
    await mock.start()
    await harness.wait_live(gw, len(names), timeout_s=40)
    assert len(mock.websockets(EGRESS[kind])) == 4
    assert mock_attempts(mock, EGRESS[kind]) <= await gateway_attempts(harness, gw, "p0")
    harness.assert_no_violation()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_public_address_that_is_not_the_proxys_egress_is_refused_before_any_attempt(
    harness, rig, kind
):
    mock, profile = await start_mock(harness, tls=False)
    proxy = await rig.start(kind)
    rig.write_secret("p0", PASSWORD)
    plan, _ = plan_on(profile, [rig.address("p0", proxy, public="127.0.0.99")], conns=2)
    gw = harness.gateway(harness.write_plan(plan))
    gw.start()

    async def mismatch():
        st = await harness.status(gw)
        return st if st and st["egress"].get("p0", {}).get("state") == "mismatch" else None

    st = await wait_for(mismatch, 20, "the egress check to find the mismatch")
    assert EGRESS[kind] in st["egress"]["p0"]["message"]
    assert "127.0.0.99" in st["egress"]["p0"]["message"]
    await wait_for(
        lambda: _all_refused(harness, gw), 10, "every connection refused before an attempt"
    )
    assert mock_attempts(mock, EGRESS[kind]) == 0
    assert await gateway_attempts(harness, gw, "p0") == 0
    assert harness.echo.requests[EGRESS[kind]] >= 1, "the check went through the proxy"


async def _all_refused(harness: Harness, gw) -> bool:
    st = await harness.status(gw)
    return bool(st) and all(c["state"] == "refused" for c in st["connections"])


async def _more_faults(harness: Harness, gw, before: int) -> bool:
    st = await harness.status(gw)
    return proxy_state(st, "p0").get("faults", {}).get("unreachable", 0) > before


async def holds_for(invariant, duration_s: float, step_s: float = 0.2) -> None:
    """Check `invariant` (it asserts) every `step_s` for `duration_s`: a bounded observation."""
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    while loop.time() < end:
        assert await invariant()
        await asyncio.sleep(step_s)
