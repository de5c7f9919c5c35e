"""Proxy egress: every socket of a `proxy` address goes through its HTTP CONNECT or SOCKS5 proxy.

`TunnelConnector` is an aiohttp connector whose connections are tunnels opened by
`python-socks` (HTTP CONNECT, or SOCKS5 with remote name resolution: the proxy resolves the
exchange host, the pod never does). TLS to the exchange runs inside the tunnel, with SNI and
the certificate checked against the exchange host, exactly as aiohttp does for a direct
connection. One tunnel is one attempt, in this order:

1. a TCP connect to the proxy alone: when it fails no request reached the proxy, so no
   exchange attempt is spent (`ProxyFaultKind.UNREACHABLE`, the address's proxy backoff);
2. the caller's tunnel gate (`TUNNEL_GATE`, set by the session around its `ws_connect`) takes
   the exchange attempt from the limiter;
3. the CONNECT request / SOCKS5 connect command: from here on it is an attempt, whatever the
   proxy answers (407, 502, 503, SOCKS reply 0x05 ...), because the proxy opens the exchange's
   TCP connection as soon as it gets it.

Requests made without a gate (the egress check's GET to the IP-echo service) spend no attempt.
Proxy credentials are read from their mounted files for every tunnel (a rotated Secret takes
effect at once) and never appear in a message, log line or metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
from python_socks.async_.asyncio import Proxy

from connquota.api.pool import EgressAddress


@dataclass(frozen=True)
class TunnelGate:
    """What a session hands the connector for one connect: how to take the exchange attempt
    (between steps 1 and 3), and whom to tell that the proxy opened the tunnel."""

    take_attempt: Callable[[], Awaitable[None]]
    opened: Callable[[], None]


TUNNEL_GATE: ContextVar[TunnelGate | None] = ContextVar("connquota_tunnel_gate", default=None)
"""Set by a session around its connect (unset: no attempt is taken, e.g. the egress check)."""

SOCKS5_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class ProxyFaultKind(StrEnum):
    """What went wrong with a proxy, as reported per address."""

    UNREACHABLE = "unreachable"
    """The proxy itself did not accept a TCP connection: no exchange attempt was spent."""
    AUTH_REFUSED = "auth-refused"
    """407 (401 from tinyproxy), or SOCKS5 username/password refused: waits for the Secret files to change."""
    CREDENTIALS_UNREADABLE = "credentials-unreadable"
    """The mounted proxy Secret files are missing or empty: no request was sent."""
    UPSTREAM_REFUSED = "upstream-refused"
    """The proxy could not (or would not) reach the exchange: 502/503/403, SOCKS 0x01-0x05."""
    UPSTREAM_TIMEOUT = "upstream-timeout"
    """The proxy timed out reaching the exchange (504, SOCKS 0x06) or did not answer in time."""
    PROTOCOL = "protocol"
    """The proxy answered something that is not HTTP CONNECT / SOCKS5."""
    TUNNEL_CLOSED = "tunnel-closed"
    """An established tunnel ended uncleanly mid-session."""


class ProxyFault(aiohttp.ClientConnectionError):
    """A tunnel could not be opened; `attempt_spent` says whether the request reached the proxy."""

    def __init__(self, kind: ProxyFaultKind, message: str, attempt_spent: bool) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.attempt_spent = attempt_spent


class ProxyConfigError(ValueError):
    """A proxyUrl the gateway cannot use (the message names the address, never credentials)."""


@dataclass(frozen=True)
class ProxyEndpoint:
    """Where a proxy listens and which protocol it speaks (from `proxyUrl`)."""

    proxy_type: ProxyType
    host: str
    port: int

    @property
    def label(self) -> str:
        """`http://host:port` or `socks5://host:port`, for messages (no credentials)."""
        scheme = "http" if self.proxy_type == ProxyType.HTTP else "socks5"
        return f"{scheme}://{self.host}:{self.port}"


def parse_proxy_url(address: EgressAddress) -> ProxyEndpoint:
    """The address's proxy: http:// (CONNECT) or socks5:// / socks5h:// (remote resolution).

    Credentials in the URL are refused: they belong in `proxySecretRef`, mounted as files.
    """
    url = address.proxyUrl or ""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    types = {"http": ProxyType.HTTP, "socks5": ProxyType.SOCKS5, "socks5h": ProxyType.SOCKS5}
    if scheme not in types:
        raise ProxyConfigError(
            f"address {address.name}: proxyUrl must start with http://, socks5:// or socks5h://"
        )
    if parts.username or parts.password:
        raise ProxyConfigError(
            f"address {address.name}: proxyUrl carries credentials; put them in proxySecretRef"
        )
    if not parts.hostname:
        raise ProxyConfigError(f"address {address.name}: proxyUrl has no host")
    default_port = 3128 if scheme == "http" else 1080
    try:
        port = parts.port or default_port
    except ValueError as exc:
        raise ProxyConfigError(f"address {address.name}: proxyUrl has a bad port") from exc
    return ProxyEndpoint(types[scheme], parts.hostname, port)


@dataclass(frozen=True)
class ProxyCredentialFiles:
    """The mounted `proxySecretRef` of one address: two files, read on every tunnel."""

    directory: Path
    username_key: str
    password_key: str

    def read(self) -> tuple[str, str]:
        """(username, password); ProxyFault CREDENTIALS_UNREADABLE names files, never values."""
        values = []
        for key in (self.username_key, self.password_key):
            path = self.directory / key
            try:
                value = path.read_text().strip()
            except OSError:
                raise ProxyFault(
                    ProxyFaultKind.CREDENTIALS_UNREADABLE, f"cannot read {path}", False
                ) from None
            if not value:
                raise ProxyFault(ProxyFaultKind.CREDENTIALS_UNREADABLE, f"{path} is empty", False)
            values.append(value)
        return values[0], values[1]

    def fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        """Modification times and sizes of the files (never their contents)."""
        out = []
        for key in (self.username_key, self.password_key):
            try:
                st = os.stat(self.directory / key)
            except OSError:
                out.append((key, -1, -1))
            else:
                out.append((key, st.st_mtime_ns, st.st_size))
        # The kubelet swaps a `..data` symlink on rotation: include its target.
        with contextlib.suppress(OSError):
            out.append(("..data", hash(os.readlink(self.directory / "..data")), 0))
        return tuple(out)


class RemoteNameResolver(AbstractResolver):
    """Resolves nothing: the proxy resolves the exchange host (socks5h semantics, no DNS leak).

    aiohttp hands the returned "address" to the connector, which tunnels to the host name.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The host name itself, unresolved."""
        return [ResolveResult(hostname=host, host=host, port=port, family=family, proto=0, flags=0)]

    async def close(self) -> None:
        """Nothing to release."""


def _fault_of(exc: ProxyError, endpoint: ProxyEndpoint) -> ProxyFault:
    code = exc.error_code
    text = str(exc)
    if endpoint.proxy_type == ProxyType.HTTP:
        if code in (401, 407):  # 407 by the standard; tinyproxy 1.11 answers 401
            return ProxyFault(
                ProxyFaultKind.AUTH_REFUSED,
                f"{endpoint.label} answered {code}: it refused the credentials",
                True,
            )
        if code == 504:
            return ProxyFault(
                ProxyFaultKind.UPSTREAM_TIMEOUT, f"{endpoint.label} answered 504", True
            )
        if code is not None:
            return ProxyFault(
                ProxyFaultKind.UPSTREAM_REFUSED, f"{endpoint.label} answered {code}", True
            )
        return ProxyFault(ProxyFaultKind.PROTOCOL, f"{endpoint.label}: {text[:120]}", True)
    if code is None:
        lowered = text.lower()
        if "authentication" in lowered:
            return ProxyFault(
                ProxyFaultKind.AUTH_REFUSED,
                f"{endpoint.label} refused the username/password",
                True,
            )
        return ProxyFault(ProxyFaultKind.PROTOCOL, f"{endpoint.label}: {text[:120]}", True)
    reply = SOCKS5_REPLIES.get(code, "unknown reply")
    kind = ProxyFaultKind.UPSTREAM_TIMEOUT if code == 6 else ProxyFaultKind.UPSTREAM_REFUSED
    return ProxyFault(kind, f"{endpoint.label} replied {code:#04x} ({reply})", True)


class TunnelConnector(aiohttp.TCPConnector):
    """An aiohttp connector whose every connection is a tunnel through one proxy."""

    def __init__(
        self,
        endpoint: ProxyEndpoint,
        credentials: ProxyCredentialFiles | None,
        connect_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolver=RemoteNameResolver(), use_dns_cache=False, **kwargs)
        self.endpoint = endpoint
        self.credentials = credentials
        self.connect_timeout_s = connect_timeout_s

    async def _reach_proxy(self) -> None:
        """Step 1: a TCP connect to the proxy alone (no request sent, no attempt spent)."""
        ep = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, writer = await asyncio.open_connection(ep.host, ep.port)
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or "refused")
            raise ProxyFault(
                ProxyFaultKind.UNREACHABLE, f"{ep.label} unreachable ({why})", False
            ) from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: aiohttp.ClientRequest,
        timeout: aiohttp.ClientTimeout,
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> tuple[asyncio.Transport, aiohttp.client_proto.ResponseHandler]:
        """Open the tunnel to the request's host and run the connection (and TLS) inside it."""
        ep = self.endpoint
        dest_host = req.url.raw_host or ""
        dest_port = req.url.port or (443 if req.url.scheme in ("https", "wss") else 80)
        username = password = None
        if self.credentials is not None:
            username, password = await asyncio.to_thread(self.credentials.read)
        await self._reach_proxy()
        gate = TUNNEL_GATE.get()
        if gate is not None:
            await gate.take_attempt()
        proxy = Proxy(ep.proxy_type, ep.host, ep.port, username, password, rdns=True)
        try:
            sock = await proxy.connect(dest_host, dest_port, timeout=self.connect_timeout_s)
        except ProxyTimeoutError:
            raise ProxyFault(
                ProxyFaultKind.UPSTREAM_TIMEOUT, f"{ep.label} did not answer in time", True
            ) from None
        except ProxyConnectionError as exc:
            # The proxy vanished between step 1 and the request: counted (conservatively).
            raise ProxyFault(
                ProxyFaultKind.UNREACHABLE,
                f"{ep.label} unreachable ({exc.strerror or 'refused'}) after the attempt was taken",
                True,
            ) from None
        except ProxyError as exc:
            raise _fault_of(exc, ep) from None
        if gate is not None:
            gate.opened()
        try:
            # TLS (for wss://) inside the tunnel: aiohttp's context, SNI = the exchange host.
            return await self._loop.create_connection(*args, **kwargs, sock=sock)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise aiohttp.ClientConnectorCertificateError(req.connection_key, exc) from exc
        except ssl.SSLError as exc:
            sock.close()
            raise aiohttp.ClientConnectorSSLError(req.connection_key, exc) from exc
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            raise client_error(req.connection_key, exc) from exc


def make_tunnel_session(
    address: EgressAddress, credentials_dir: Path, connect_timeout_s: float = 10.0
) -> aiohttp.ClientSession:
    """A ClientSession whose every connection is a tunnel through the address's proxy."""
    endpoint = parse_proxy_url(address)
    creds = None
    if address.proxySecretRef is not None:
        ref = address.proxySecretRef
        creds = ProxyCredentialFiles(
            credentials_dir / address.name, ref.usernameKey, ref.passwordKey
        )
    connector = TunnelConnector(
        endpoint, creds, connect_timeout_s, limit=0, force_close=True, happy_eyeballs_delay=None
    )
    return aiohttp.ClientSession(connector=connector)
