"""Egress: leave from the plan's address, to exactly one resolved IP, and check what the exchange sees.

One aiohttp ClientSession per pool address. `bind` mode binds the socket's source address
(`TCPConnector(local_addr=(bindAddress, 0))`); `podLabel` connects plainly (the CNI policy
NATs it); `proxy` is not supported yet. Every connect goes to one resolved address: the
resolver returns a single IP and happy-eyeballs racing is off, so one attempt is one SYN.

Before the first attempt on an address, the gateway GETs the profile's `whoamiPath` on the
endpoint's host from that address and compares the answer with the plan's `publicAddress`;
on a mismatch it refuses to connect from that address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from connquota.api.pool import EgressAddress, EgressMode
from connquota.gateway.limiter import Limiter
from connquota.gateway.protocol import http_base

log = logging.getLogger(__name__)


class EgressError(RuntimeError):
    """An address cannot be used: unsupported mode, or the exchange sees another address."""


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


def make_session(address: EgressAddress) -> aiohttp.ClientSession:
    """A ClientSession whose every connection leaves from `address`, to one resolved IP."""
    if address.mode == EgressMode.PROXY:
        raise EgressError(f"address {address.name}: proxy egress is not supported yet")
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
        family=_family_of(address.bindAddress) if local_addr else 0,
    )
    return aiohttp.ClientSession(connector=connector)


def parse_whoami(body: str) -> str:
    """The caller's address from a /whoami answer: JSON {"address"|"ip"|"remote": ...} or text."""
    body = body.strip()
    try:
        doc = json.loads(body)
    except ValueError:
        return body.split()[0] if body else ""
    if isinstance(doc, dict):
        for key in ("address", "ip", "remote", "remoteAddress", "publicAddress"):
            if isinstance(doc.get(key), str):
                return doc[key]
    if isinstance(doc, str):
        return doc
    return ""


def address_matches(seen: str, public: str) -> bool:
    """Whether the address the exchange saw is the plan's public address (or inside its prefix)."""
    try:
        seen_ip = ipaddress.ip_address(seen)
        if "/" in public:
            return seen_ip in ipaddress.ip_network(public, strict=False)
        return seen_ip == ipaddress.ip_address(public)
    except ValueError:
        return seen == public


@dataclass
class EgressCheck:
    """The outcome of one /whoami check."""

    address: str
    seen: str
    ok: bool
    message: str


async def check_egress(
    session: aiohttp.ClientSession,
    base_url: str,
    path: str,
    address: EgressAddress,
    timeout_s: float,
) -> EgressCheck:
    """GET `path` on the exchange host from `address` and compare with its publicAddress."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(base_url + path) as resp:
                body = await resp.text()
                if resp.status != 200:
                    return EgressCheck(
                        address.name, "", False, f"whoami answered HTTP {resp.status}"
                    )
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return EgressCheck(address.name, "", False, f"whoami failed: {type(exc).__name__}")
    seen = parse_whoami(body)
    if address_matches(seen, address.publicAddress):
        return EgressCheck(address.name, seen, True, "egress address confirmed")
    return EgressCheck(
        address.name,
        seen,
        False,
        f"egress mismatch: the exchange sees {seen or '?'} but the plan says "
        f"{address.publicAddress}; refusing to connect from {address.name}",
    )


class EgressPool:
    """The pod's sessions per address and their egress checks (each check is an attempt)."""

    def __init__(self, limiter: Limiter, whoami_timeout_s: float = 5.0) -> None:
        self.limiter = limiter
        self.whoami_timeout_s = whoami_timeout_s
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.addresses: dict[str, EgressAddress] = {}
        self.checks: dict[str, EgressCheck] = {}
        self.whoami_attempts = 0
        self._locks: dict[str, asyncio.Lock] = {}

    def set_addresses(self, addresses: list[EgressAddress]) -> None:
        """The plan's addresses; a changed address is checked again before its next attempt."""
        for a in addresses:
            old = self.addresses.get(a.name)
            if old is not None and old != a:
                self.checks.pop(a.name, None)
                session = self.sessions.pop(a.name, None)
                if session is not None:
                    asyncio.get_running_loop().create_task(session.close())
            self.addresses[a.name] = a

    def session(self, name: str) -> aiohttp.ClientSession:
        """The ClientSession leaving from address `name`."""
        session = self.sessions.get(name)
        if session is None:
            session = make_session(self.addresses[name])
            self.sessions[name] = session
        return session

    async def ensure_checked(self, name: str) -> EgressCheck:
        """Check address `name` once (GET whoamiPath through the limiter); cached when it passed."""
        cached = self.checks.get(name)
        if cached is not None and cached.ok:
            return cached
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self.checks.get(name)
            if cached is not None and cached.ok:
                return cached
            address = self.addresses.get(name)
            plan = self.limiter.plan
            if address is None or plan is None:
                return EgressCheck(name, "", False, f"address {name} is not in the plan")
            path = plan.profile.whoamiPath
            if not path:
                check = EgressCheck(name, "", True, "egress check disabled by the profile")
                self.checks[name] = check
                return check
            try:
                session = self.session(name)
            except EgressError as exc:
                check = EgressCheck(name, "", False, str(exc))
                self.checks[name] = check
                return check
            # The check is a TCP connection to the exchange: it counts as an attempt.
            slot = await self.limiter.acquire_attempt(f"whoami:{name}", name)
            self.whoami_attempts += 1
            try:
                check = await check_egress(
                    session, http_base(plan.profile), path, address, self.whoami_timeout_s
                )
            finally:
                slot.release(clean=True)
            self.checks[name] = check
            level = logging.INFO if check.ok else logging.ERROR
            log.log(level, "%s", check.message, extra={"address": name, "seen": check.seen})
            return check

    async def close(self) -> None:
        """Close every session."""
        for session in self.sessions.values():
            await session.close()
        self.sessions.clear()
