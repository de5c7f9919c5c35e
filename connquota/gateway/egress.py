"""Egress: leave from the plan's address, to exactly one resolved IP, and verify that address.

One aiohttp ClientSession per pool address. `bind` mode binds the socket's source address
(`TCPConnector(local_addr=(bindAddress, 0))`); `podLabel` connects plainly (the CNI policy
NATs it); `proxy` tunnels every connection through the address's HTTP CONNECT or SOCKS5
proxy (`proxy_tunnel`: the proxy resolves the exchange host, TLS runs inside the tunnel) and
keeps the proxy's health per address (`proxy_health`). Every direct connect goes to one
resolved address: the resolver returns a single IP and happy-eyeballs racing is off, so one
attempt is one SYN; through a proxy, one attempt is one CONNECT / SOCKS5 connect command.

Before the first attempt on an address, the gateway verifies what the outside world sees of
that address with the check the pool gives it (`EgressAddress.egressCheck`, the pool's default
filled in by the planner): `url` GETs an IP-echo service through the address — the same
session, so the same source address — and compares the answer with `publicAddress`; `none`
lets attempts go out unverified and says why. The check never goes to the exchange (real
exchanges serve no such path, and every connection there is an attempt on their per-IP
budget), and it is not a limiter attempt. It runs once per address per process and again when
the address changes in a new plan; a failed or mismatched check blocks that address only, and
is retried with a capped backoff, once for every connection waiting on it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from connquota.api.plan import PROXY_CREDENTIALS_MOUNT_DIR
from connquota.api.pool import (
    UNCONFIGURED_EGRESS_CHECK,
    EgressAddress,
    EgressCheckMethod,
    EgressMode,
)
from connquota.api.report import EgressCheckResult, EgressCheckState
from connquota.gateway.podroot import pod_path
from connquota.gateway.proxy_health import ProxyHealth
from connquota.gateway.proxy_tunnel import (
    ProxyConfigError,
    ProxyCredentialFiles,
    ProxyFault,
    ProxyFaultKind,
    make_tunnel_session,
    parse_proxy_url,
)

log = logging.getLogger(__name__)


class EgressError(RuntimeError):
    """An address cannot be used: unsupported mode, or the outside world sees another address."""


class SingleAddressResolver(AbstractResolver):
    """Resolves a host once per connect and returns only its first address (no racing)."""

    def __init__(self, family: int = socket.AF_INET) -> None:
        self._inner = aiohttp.ThreadedResolver()
        self._family = family

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The first address getaddrinfo gives for `host` (IPv4 when binding IPv4)."""
        results = await self._inner.resolve(host, port, socket.AddressFamily(self._family))
        return results[:1]

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def _family_of(address: str | None) -> int:
    if not address:
        return socket.AF_INET
    try:
        return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def default_proxy_credentials_dir() -> Path:
    """Where proxy Secrets are mounted: $CONNQUOTA_PROXY_CREDENTIALS_DIR, else the pod's mount."""
    configured = os.environ.get("CONNQUOTA_PROXY_CREDENTIALS_DIR")
    return Path(configured) if configured else pod_path(PROXY_CREDENTIALS_MOUNT_DIR)


def make_session(
    address: EgressAddress, proxy_credentials_dir: Path | None = None
) -> aiohttp.ClientSession:
    """A ClientSession whose every connection leaves from `address` (one resolved IP, or one
    tunnel through its proxy)."""
    if address.mode == EgressMode.PROXY:
        if not address.proxyUrl:
            raise EgressError(f"address {address.name}: proxy mode without proxyUrl")
        try:
            return make_tunnel_session(
                address, proxy_credentials_dir or default_proxy_credentials_dir()
            )
        except ProxyConfigError as exc:
            raise EgressError(str(exc)) from None
    local_addr = None
    if address.mode == EgressMode.BIND:
        if not address.bindAddress:
            raise EgressError(f"address {address.name}: bind mode without bindAddress")
        local_addr = (address.bindAddress, 0)
    connector = aiohttp.TCPConnector(
        local_addr=local_addr,
        resolver=SingleAddressResolver(_family_of(address.bindAddress)),
        happy_eyeballs_delay=None,
        use_dns_cache=False,
        limit=0,
        force_close=True,
        family=socket.AddressFamily(_family_of(address.bindAddress) if local_addr else 0),
    )
    return aiohttp.ClientSession(connector=connector)


def _egress_path(address: EgressAddress) -> EgressAddress:
    """The parts of an address that decide how its sockets leave (not how it is verified)."""
    return address.model_copy(update={"egressCheck": None})


def parse_echo(body: str) -> str:
    """The caller's address from an IP-echo answer: plain text, or JSON with ip/address/origin."""
    body = body.strip()
    try:
        doc = json.loads(body)
    except ValueError:
        return body.split()[0] if body else ""
    if isinstance(doc, dict):
        for key in ("ip", "address", "origin", "remote", "remoteAddress", "publicAddress"):
            value = doc.get(key)
            if isinstance(value, str):
                return value.split(",")[0].strip()
    if isinstance(doc, str):
        return doc
    return ""


def address_matches(seen: str, public: str) -> bool:
    """Whether the address the echo service saw is the plan's public address (or in its prefix)."""
    try:
        seen_ip = ipaddress.ip_address(seen)
        if "/" in public:
            return seen_ip in ipaddress.ip_network(public, strict=False)
        return seen_ip == ipaddress.ip_address(public)
    except ValueError:
        return seen == public


RETRY_FIRST_S = 2.0
"""The first retry of a failed or mismatched check; doubled per failure up to RETRY_CAP_S."""
RETRY_CAP_S = 60.0


@dataclass
class AddressCheck:
    """The last egress check of one address, and when the next may run."""

    address: str
    public_address: str
    state: EgressCheckState
    seen: str = ""
    reason: str = ""
    checked_at: float | None = None
    failures: int = 0
    retry_at_mono: float = 0.0
    proxy_blocked: bool = False
    """The proxy refused the credentials: checked again as soon as its Secret files change."""

    @property
    def usable(self) -> bool:
        """Whether attempts may go out through the address."""
        return self.state in (EgressCheckState.VERIFIED, EgressCheckState.UNVERIFIED)

    @property
    def message(self) -> str:
        """One line for status and logs."""
        if self.state == EgressCheckState.VERIFIED:
            return f"egress verified: the echo service sees {self.seen}"
        return f"egress {self.state.value}: {self.reason}"

    def retry_in_s(self) -> float:
        """Seconds until this check may run again (0 when it may run now)."""
        return max(0.0, self.retry_at_mono - time.monotonic())

    def to_result(self) -> EgressCheckResult:
        """The check as the report carries it."""
        return EgressCheckResult(
            address=self.address,
            publicAddress=self.public_address,
            state=self.state,
            seenAddress=self.seen,
            reason=self.reason,
            checkedAt=self.checked_at,
        )


async def fetch_echo(
    session: aiohttp.ClientSession, url: str, timeout_s: float
) -> tuple[str | None, str]:
    """GET `url` through `session`: (the address it answers, "") or (None, why it failed)."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(url, allow_redirects=False) as resp:
                body = await resp.text()
                if resp.status != 200:
                    return None, f"the echo service {url} answered HTTP {resp.status}"
    except ProxyFault:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError) as exc:
        return None, f"the echo service {url} could not be reached ({type(exc).__name__})"
    seen = parse_echo(body)
    try:
        ipaddress.ip_address(seen)
    except ValueError:
        return None, f"the echo service {url} answered no address ({body[:60]!r})"
    return seen, ""


PROBE_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0


class EgressPool:
    """The pod's sessions per address and their egress checks (never against the exchange)."""

    def __init__(self, proxy_credentials_dir: Path | None = None) -> None:
        self.proxy_credentials_dir = proxy_credentials_dir or default_proxy_credentials_dir()
        self.proxies: dict[str, ProxyHealth] = {}
        """Proxy-mode addresses: the health of each one's proxy."""
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.addresses: dict[str, EgressAddress] = {}
        self.checks: dict[str, AddressCheck] = {}
        self.echo_requests = 0
        """Requests sent to echo services (none of them to the exchange)."""
        self._locks: dict[str, asyncio.Lock] = {}

    def set_addresses(self, addresses: list[EgressAddress]) -> None:
        """The plan's addresses; a changed address is checked again before its next attempt."""
        for a in addresses:
            old = self.addresses.get(a.name)
            if old is not None and old != a:
                self.checks.pop(a.name, None)
                if _egress_path(old) != _egress_path(a):
                    # The way out changed: new sockets only (a changed check alone keeps them).
                    session = self.sessions.pop(a.name, None)
                    if session is not None:
                        asyncio.get_running_loop().create_task(session.close())
                    self.proxies.pop(a.name, None)
            self.addresses[a.name] = a
            if a.mode == EgressMode.PROXY and a.name not in self.proxies:
                self.proxies[a.name] = self._proxy_health(a)

    def _proxy_health(self, address: EgressAddress) -> ProxyHealth:
        try:
            label = parse_proxy_url(address).label
        except ProxyConfigError:
            label = "(invalid proxyUrl)"
        fingerprint = None
        if address.proxySecretRef is not None:
            ref = address.proxySecretRef
            files = ProxyCredentialFiles(
                self.proxy_credentials_dir / address.name, ref.usernameKey, ref.passwordKey
            )
            fingerprint = files.fingerprint
        return ProxyHealth(address.name, label, fingerprint)

    def is_proxied(self, name: str) -> bool:
        """Whether address `name` leaves through a proxy."""
        address = self.addresses.get(name)
        return address is not None and address.mode == EgressMode.PROXY

    def proxy_wait(self, name: str) -> tuple[float, str]:
        """(seconds before a tunnel through `name`'s proxy may be tried, why); (0, "") now."""
        health = self.proxies.get(name)
        return health.wait() if health is not None else (0.0, "")

    def record_proxy_fault(self, name: str, fault: ProxyFault) -> None:
        """A tunnel through `name`'s proxy failed; an auth fault also drops the egress check
        (the next one waits for the Secret files to change)."""
        health = self.proxies.get(name)
        if health is None:
            return
        health.record_fault(fault)
        log.warning(
            "proxy fault: %s",
            fault.message,
            extra={"address": name, "proxyFault": fault.kind.value},
        )

    def record_tunnel_opened(self, name: str) -> None:
        """A tunnel through `name`'s proxy opened (its exchange attempt reached the exchange)."""
        health = self.proxies.get(name)
        if health is not None:
            health.record_opened()

    def record_tunnel_closed(self, name: str) -> None:
        """An established tunnel through `name`'s proxy ended uncleanly."""
        health = self.proxies.get(name)
        if health is not None:
            health.record_tunnel_closed()

    def session(self, name: str) -> aiohttp.ClientSession:
        """The ClientSession leaving from address `name`."""
        session = self.sessions.get(name)
        if session is None:
            session = make_session(self.addresses[name], self.proxy_credentials_dir)
            self.sessions[name] = session
        return session

    async def probe_unreachable_proxies(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        """Forever: every `interval_s`, a TCP connect to each proxy whose last fault is
        `unreachable`, closed at once with nothing sent (no tunnel, so no exchange attempt).
        When it answers, the fault clears: the report stops naming it and the operator plans
        the address again (it plans without an address whose proxy is down, so no connection
        of this pod would find out otherwise)."""
        while True:
            await asyncio.sleep(interval_s)
            for name, health in list(self.proxies.items()):
                address = self.addresses.get(name)
                if health.last_kind != ProxyFaultKind.UNREACHABLE or address is None:
                    continue
                try:
                    endpoint = parse_proxy_url(address)
                    async with asyncio.timeout(PROBE_TIMEOUT_S):
                        _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                    writer.close()
                except (OSError, TimeoutError, ProxyConfigError):
                    continue
                health.record_reachable()
                log.info("proxy %s answers again", health.proxy, extra={"address": name})

    def proxy_status(self) -> dict[str, dict[str, object]]:
        """Every proxy address's health, for /status (no credential in it)."""
        return {n: self.proxies[n].to_json() for n in sorted(self.proxies)}

    def results(self) -> list[EgressCheckResult]:
        """Every address's last check, for the report (sorted by address name)."""
        out = []
        for name in sorted(self.checks):
            result = self.checks[name].to_result()
            health = self.proxies.get(name)
            if health is not None and health.last_kind is not None:
                result.proxyFault = health.last_kind.value
                result.proxyFaultReason = health.last_message
            out.append(result)
        return out

    async def ensure_checked(self, name: str) -> AddressCheck:
        """The address's check: cached once usable; a failed one runs again after its backoff.

        Every connection of the address waits on the same check (one lock per address), so a
        process checks an address once, however many connections use it.
        """
        cached = self.checks.get(name)
        health = self.proxies.get(name)
        if cached is not None and health is not None and cached.proxy_blocked:
            if health.blocked():
                return cached
            cached.retry_at_mono = 0.0  # the proxy Secret changed: check again now
        if cached is not None and (cached.usable or cached.retry_in_s() > 0):
            return cached
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self.checks.get(name)
            if cached is not None and (cached.usable or cached.retry_in_s() > 0):
                return cached
            address = self.addresses.get(name)
            if address is None:
                return AddressCheck(
                    name, "", EgressCheckState.FAILED, reason=f"address {name} is not in the plan"
                )
            check = await self._run_check(address, cached.failures if cached else 0)
            self.checks[name] = check
            level = logging.INFO if check.usable else logging.ERROR
            log.log(
                level,
                "%s",
                check.message,
                extra={"address": name, "seen": check.seen, "egressState": check.state.value},
            )
            return check

    async def _run_check(self, address: EgressAddress, failures: int) -> AddressCheck:
        spec = address.egressCheck or UNCONFIGURED_EGRESS_CHECK
        now = time.time()
        if spec.method == EgressCheckMethod.NONE:
            return AddressCheck(
                address.name,
                address.publicAddress,
                EgressCheckState.UNVERIFIED,
                reason=spec.reason or "",
                checked_at=now,
            )
        try:
            session = self.session(address.name)
        except EgressError as exc:
            seen, why = None, str(exc)
        else:
            self.echo_requests += 1
            try:
                seen, why = await fetch_echo(session, spec.url or "", spec.timeoutSeconds)
            except ProxyFault as fault:
                self.record_proxy_fault(address.name, fault)
                seen, why = None, f"through the proxy: {fault.message}"
                health = self.proxies.get(address.name)
                if health is not None and health.blocked():
                    return AddressCheck(
                        address.name,
                        address.publicAddress,
                        EgressCheckState.FAILED,
                        reason=f"{why}; no attempt until the proxy Secret changes",
                        checked_at=now,
                        failures=failures + 1,
                        retry_at_mono=time.monotonic() + RETRY_CAP_S,
                        proxy_blocked=True,
                    )
        if seen is not None and address_matches(seen, address.publicAddress):
            return AddressCheck(
                address.name,
                address.publicAddress,
                EgressCheckState.VERIFIED,
                seen=seen,
                checked_at=now,
            )
        failures += 1
        retry = time.monotonic() + min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** (failures - 1))
        if seen is None:
            return AddressCheck(
                address.name,
                address.publicAddress,
                EgressCheckState.FAILED,
                reason=why,
                checked_at=now,
                failures=failures,
                retry_at_mono=retry,
            )
        return AddressCheck(
            address.name,
            address.publicAddress,
            EgressCheckState.MISMATCH,
            seen=seen,
            reason=f"the echo service sees {seen} but the pool says {address.publicAddress}; "
            f"no attempt leaves from {address.name}",
            checked_at=now,
            failures=failures,
            retry_at_mono=retry,
        )

    async def close(self) -> None:
        """Close every session."""
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()
