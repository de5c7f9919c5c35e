"""`ExchangeEgressPool`: the platform team's public egress addresses and how gateways reach them."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar

from pydantic import Field

from connquota.api.base import ApiModel
from connquota.api.common import (
    Condition,
    DnsLabel,
    DomainName,
    Fraction,
    NamespaceName,
    ObjectMeta,
    UnitFraction,
)
from connquota.api.rules import Rule, is_ip, is_ipv6_prefix, list_map

MAX_POOL_ADDRESSES = 256
MAX_ALLOWED_NAMESPACES = 256
MAX_RESERVATIONS = 32


class EgressMode(StrEnum):
    """How a gateway pod makes its traffic leave from a given public address."""

    BIND = "bind"
    """Bind the socket to a local source address held by a node (`bindAddress` on `node`)."""
    PROXY = "proxy"
    """Connect through an HTTP CONNECT or SOCKS5 proxy (`proxyUrl`)."""
    POD_LABEL = "podLabel"
    """Label the pod (`podLabel`) so a CNI egress-gateway policy NATs it to the address."""


class ProxySecretRef(ApiModel):
    """Proxy credentials: a Secret that must exist in the namespace of every quota using the
    pool (pods mount only Secrets of their own namespace; the operator never reads or copies
    Secret data). Its two keys are mounted read-only as files in each gateway pod."""

    name: DnsLabel = Field(
        description="Secret name. A Secret of this name must exist in the namespace of every "
        "quota that uses the pool (like a quota's credential Secrets); a quota whose namespace "
        "lacks it is Stalled with reason SecretMissing."
    )
    usernameKey: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="username", description="Key of the proxy username in the Secret."
    )
    passwordKey: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="password", description="Key of the proxy password in the Secret."
    )


class EgressCheckMethod(StrEnum):
    """How a gateway verifies that an address's traffic leaves from its `publicAddress`."""

    URL = "url"
    """GET an IP-echo URL through the address (same egress mode); compare its answer."""
    NONE = "none"
    """Do not verify; `reason` says why (shown in status)."""


class EgressCheck(ApiModel):
    """How gateways verify an egress address: never against the exchange itself.

    Real exchanges serve no "what is my IP" path, and any request to them costs a connection
    attempt on their per-IP budget, so the check goes to an IP-echo service the platform team
    runs or trusts. It runs once per address per gateway process start and again when the
    address's egress settings change, never per connection.
    """

    RULES: ClassVar[tuple[Rule, ...]]

    method: EgressCheckMethod = Field(description="url: GET `url` through the address; none.")
    url: Annotated[str, Field(min_length=8, max_length=2048)] | None = Field(
        default=None,
        description="url method: http:// or https:// IP-echo URL, reached through the address "
        "and its egress mode. It must answer the caller's address as plain text or JSON "
        '({"ip": ...}, {"address": ...} or {"origin": ...}). Counted against this host, '
        "never against the exchange.",
    )
    reason: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None,
        description="none method: why the address is not verified (shown in status).",
    )
    timeoutSeconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0, description="Seconds one check may take."
    )


EgressCheck.RULES = (
    Rule(
        cel="self.method != 'url' || has(self.url)",
        message="url is required when method is url",
        check=lambda c: c.method != EgressCheckMethod.URL or c.url is not None,
        field_path=".url",
        reason="FieldValueRequired",
    ),
    Rule(
        cel="!has(self.url) || self.url.startsWith('http://') || self.url.startsWith('https://')",
        message="url must start with http:// or https://",
        check=lambda c: c.url is None or c.url.startswith(("http://", "https://")),
        field_path=".url",
    ),
    Rule(
        cel="self.method != 'none' || has(self.reason)",
        message="reason is required when method is none (say why the address is not verified)",
        check=lambda c: c.method != EgressCheckMethod.NONE or c.reason is not None,
        field_path=".reason",
        reason="FieldValueRequired",
    ),
)

UNCONFIGURED_EGRESS_CHECK = EgressCheck(
    method=EgressCheckMethod.NONE,
    reason="the pool sets no egressCheck (spec.egressCheck or addresses[].egressCheck)",
)
"""The effective check of an address when neither the pool nor the address sets one."""


class EgressAddress(ApiModel):
    """One public egress address (or IPv6 prefix) as the exchanges see it."""

    RULES: ClassVar[tuple[Rule, ...]]  # set below the class: the rules refer to EgressMode

    name: DnsLabel = Field(description="Short name quotas and status use for this address.")
    publicAddress: Annotated[str, Field(min_length=2, max_length=64)] = Field(
        description="The address the exchange sees after NAT: an IPv4/IPv6 address, or an "
        "IPv6 prefix in CIDR form (exchanges that count per prefix). Budgets are keyed by it."
    )
    mode: EgressMode = Field(description="How gateways reach this address: bind, proxy, podLabel.")
    bindAddress: Annotated[str, Field(min_length=2, max_length=45)] | None = Field(
        default=None, description="bind mode: the local source address to bind sockets to."
    )
    node: Annotated[str, Field(min_length=1, max_length=253)] | None = Field(
        default=None,
        description="bind mode: the node holding `bindAddress`; gateway pods using this "
        "address are scheduled there.",
    )
    proxyUrl: Annotated[str, Field(min_length=8, max_length=2048)] | None = Field(
        default=None,
        description="proxy mode: http://host:port (HTTP CONNECT) or socks5://host:port.",
    )
    proxySecretRef: ProxySecretRef | None = Field(
        default=None,
        description="proxy mode: optional proxy credentials (HTTP Basic or SOCKS5 "
        "username/password), from a Secret in each using quota's namespace.",
    )
    podLabel: Annotated[str, Field(min_length=1, max_length=63)] | None = Field(
        default=None,
        description="podLabel mode: value of the connquota.io/egress label that the CNI "
        "egress policy maps to this address.",
    )
    egressCheck: EgressCheck | None = Field(
        default=None,
        description="How gateways verify this address (overrides the pool's egressCheck).",
    )


def _canonical_address(text: str) -> bool:
    """True when `text` is an address or prefix written the way ipaddress (and Go) print it."""
    if is_ip(text):
        return str(ipaddress.ip_address(text)) == text
    if is_ipv6_prefix(text):
        return str(ipaddress.ip_network(text)) == text
    return True  # not an address at all: the validity rule reports it


EgressAddress.RULES = (
    Rule(
        cel="isIP(self.publicAddress) || (isCIDR(self.publicAddress) "
        "&& cidr(self.publicAddress).ip().family() == 6 "
        "&& cidr(self.publicAddress).masked() == cidr(self.publicAddress))",
        message="publicAddress must be an IPv4 or IPv6 address, or an IPv6 prefix in CIDR form "
        "with no host bits set (e.g. 2001:db8:1::/48)",
        check=lambda a: is_ip(a.publicAddress) or is_ipv6_prefix(a.publicAddress),
        field_path=".publicAddress",
    ),
    Rule(
        cel="isIP(self.publicAddress) ? string(ip(self.publicAddress)) == self.publicAddress "
        ": (!isCIDR(self.publicAddress) || string(cidr(self.publicAddress)) == self.publicAddress)",
        message="publicAddress must be written in canonical form (lower case, shortest IPv6 "
        "form, e.g. 2001:db8::1) so that one address is one budget",
        check=lambda a: _canonical_address(a.publicAddress),
        field_path=".publicAddress",
    ),
    Rule(
        cel="self.mode != 'bind' || has(self.bindAddress)",
        message="bindAddress is required when mode is bind",
        check=lambda a: a.mode != EgressMode.BIND or a.bindAddress is not None,
        field_path=".bindAddress",
        reason="FieldValueRequired",
    ),
    Rule(
        cel="self.mode != 'bind' || has(self.node)",
        message="node is required when mode is bind (the node that holds bindAddress)",
        check=lambda a: a.mode != EgressMode.BIND or a.node is not None,
        field_path=".node",
        reason="FieldValueRequired",
    ),
    Rule(
        cel="!has(self.bindAddress) || isIP(self.bindAddress)",
        message="bindAddress must be an IPv4 or IPv6 address",
        check=lambda a: a.bindAddress is None or is_ip(a.bindAddress),
        field_path=".bindAddress",
    ),
    Rule(
        cel="self.mode != 'proxy' || has(self.proxyUrl)",
        message="proxyUrl is required when mode is proxy",
        check=lambda a: a.mode != EgressMode.PROXY or a.proxyUrl is not None,
        field_path=".proxyUrl",
        reason="FieldValueRequired",
    ),
    Rule(
        cel="!has(self.proxyUrl) || self.proxyUrl.startsWith('http://') "
        "|| self.proxyUrl.startsWith('socks5://')",
        message="proxyUrl must start with http:// (HTTP CONNECT) or socks5://",
        check=lambda a: a.proxyUrl is None or a.proxyUrl.startswith(("http://", "socks5://")),
        field_path=".proxyUrl",
    ),
    Rule(
        cel="self.mode != 'podLabel' || has(self.podLabel)",
        message="podLabel is required when mode is podLabel",
        check=lambda a: a.mode != EgressMode.POD_LABEL or a.podLabel is not None,
        field_path=".podLabel",
        reason="FieldValueRequired",
    ),
)


class DomainReservation(ApiModel):
    """A fraction of an exchange domain's budget kept back for traffic connquota does not manage."""

    domain: DomainName = Field(description="The limit domain (e.g. stream.binance.com).")
    fraction: UnitFraction = Field(
        description="Fraction of every budget of the domain on every address kept back (0..1)."
    )


class NamespaceAllowance(ApiModel):
    """A namespace that may use the pool, with an optional cap on its total share."""

    namespace: NamespaceName | Annotated[str, Field(pattern=r"^\*$")] = Field(
        description="Namespace name, or * for every namespace."
    )
    maxShare: UnitFraction | None = Field(
        default=None,
        description="Largest fraction (0..1) of each budget of the pool that all quotas of "
        "this namespace together may hold. Unset: no cap.",
    )


class ExchangeEgressPoolSpec(ApiModel):
    """The desired state of an egress pool."""

    addresses: Annotated[
        list[EgressAddress], Field(min_length=1, max_length=MAX_POOL_ADDRESSES)
    ] = Field(
        description="Public egress addresses of the pool (names and addresses unique).",
        json_schema_extra=list_map("name"),
    )
    reserved: Annotated[list[DomainReservation], Field(max_length=MAX_RESERVATIONS)] = Field(
        default_factory=list,
        description="Per-domain fraction of every budget kept back for unmanaged traffic.",
        json_schema_extra=list_map("domain"),
    )
    allowedNamespaces: Annotated[
        list[NamespaceAllowance], Field(max_length=MAX_ALLOWED_NAMESPACES)
    ] = Field(
        default_factory=lambda: [NamespaceAllowance(namespace="*")],
        description="Namespaces whose quotas may use the pool (default: every namespace).",
        json_schema_extra=list_map("namespace"),
    )
    egressCheck: EgressCheck | None = Field(
        default=None,
        description="How gateways verify every address of the pool (an address may override "
        "it). Unset: addresses are not verified, and status says so.",
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            cel="self.addresses.all(a, self.addresses.exists_one(b, "
            "b.publicAddress == a.publicAddress))",
            message="addresses: every publicAddress must be unique (one budget per address)",
            check=lambda spec: (
                len({a.publicAddress for a in spec.addresses}) == len(spec.addresses)
            ),
            field_path=".addresses",
        ),
    )

    def address(self, name: str) -> EgressAddress | None:
        """The address called `name`, or None."""
        return next((a for a in self.addresses if a.name == name), None)

    def egress_check(self, address: EgressAddress) -> EgressCheck:
        """The check that applies to `address`: its own, else the pool's, else none (unset)."""
        return address.egressCheck or self.egressCheck or UNCONFIGURED_EGRESS_CHECK

    def reserved_fraction(self, domain: str) -> float:
        """The fraction of `domain`'s budgets kept back (0 when none is declared)."""
        return next((r.fraction for r in self.reserved if r.domain == domain), 0.0)


class ShareHolder(ApiModel):
    """One quota's share of one budget."""

    quota: Annotated[str, Field(max_length=317)] = Field(description="namespace/name of the quota.")
    share: Annotated[float, Field(ge=0)] = Field(description="The amount of the budget it holds.")
    used: Annotated[float, Field(ge=0)] = Field(default=0, description="What it reports using.")


class PoolBudgetStatus(ApiModel):
    """One budget of the pool: a limit of a domain on an address, and who holds it."""

    address: DnsLabel = Field(description="Address name.")
    publicAddress: Annotated[str, Field(max_length=64)] = Field(description="Public address.")
    domain: DomainName = Field(description="Limit domain.")
    limit: Annotated[str, Field(max_length=64)] = Field(description="Limit name.")
    budget: Annotated[float, Field(ge=0)] = Field(description="Headroom x limit minus reserve.")
    effectiveBudget: Annotated[float, Field(ge=0)] | None = Field(
        default=None,
        description="What the shares are divided from while adaptive budgets lowered the "
        "budget after unexplained throttling (absent: the budget).",
    )
    holders: Annotated[list[ShareHolder], Field(max_length=1000)] = Field(
        default_factory=list, description="Quotas holding a share."
    )


class AdaptiveBudgetStatus(ApiModel):
    """A budget the operator lowered after the exchange throttled it although the fleet kept
    inside it (the state of the adaptive budgets, read back after a restart)."""

    domain: DomainName = Field(description="Limit domain.")
    scope: Annotated[str, Field(max_length=16)] = Field(description="ip or account.")
    key: Annotated[str, Field(max_length=128)] = Field(
        description="Public address (ip) or account id."
    )
    address: Annotated[str, Field(max_length=63)] | None = Field(
        default=None, description="Address name (ip scope)."
    )
    limit: Annotated[str, Field(max_length=64)] = Field(description="Limit name.")
    budget: Annotated[float, Field(ge=0)] = Field(description="The configured budget.")
    effectiveBudget: Annotated[int, Field(ge=1)] = Field(description="The lowered budget.")
    cuts: Annotated[int, Field(ge=0)] = Field(
        default=0, description="Cuts since the budget was last at its configured value."
    )
    lastThrottle: Annotated[str, Field(max_length=256)] = Field(
        default="", description="The newest unexplained throttle: status and pod."
    )
    lastThrottleAt: datetime = Field(description="When it came.")
    changedAt: datetime = Field(description="The last cut or raise.")
    inForceSince: datetime | None = Field(
        default=None, description="When the last cut took effect (every pod acknowledged it)."
    )
    nextRaiseAt: datetime | None = Field(
        default=None, description="When the next raise is due (absent: not in force yet)."
    )


class ExchangeEgressPoolStatus(ApiModel):
    """What the operator observed of a pool."""

    observedGeneration: Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="The spec generation this status describes."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="Standard conditions (Ready, Stalled, EgressVerified, BudgetReduced), one per type.",
        json_schema_extra=list_map("type"),
    )
    quotas: Annotated[int, Field(ge=0)] = Field(default=0, description="Quotas using the pool.")
    budgets: Annotated[list[PoolBudgetStatus], Field(max_length=4096)] = Field(
        default_factory=list, description="Per address and domain: budget, shares and use."
    )
    adaptiveBudgets: Annotated[list[AdaptiveBudgetStatus], Field(max_length=4096)] = Field(
        default_factory=list,
        description="Budgets lowered after unexplained throttling (empty: none).",
    )


class ExchangeEgressPool(ApiModel):
    """Cluster-scoped: a platform team's egress addresses, shared by quotas in many namespaces."""

    apiVersion: Annotated[str, Field(pattern=r"^connquota\.io/v1alpha1$")] = "connquota.io/v1alpha1"
    kind: Annotated[str, Field(pattern=r"^ExchangeEgressPool$")] = "ExchangeEgressPool"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ExchangeEgressPoolSpec
    status: ExchangeEgressPoolStatus | None = None


__all__ = [
    "UNCONFIGURED_EGRESS_CHECK",
    "AdaptiveBudgetStatus",
    "DomainReservation",
    "EgressAddress",
    "EgressCheck",
    "EgressCheckMethod",
    "EgressMode",
    "ExchangeEgressPool",
    "ExchangeEgressPoolSpec",
    "ExchangeEgressPoolStatus",
    "Fraction",
    "NamespaceAllowance",
    "PoolBudgetStatus",
    "ProxySecretRef",
    "ShareHolder",
]
