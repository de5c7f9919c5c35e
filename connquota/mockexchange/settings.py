"""How a mock exchange instance behaves: time scale, data rate, penalties, test accounts, limits.

Durations here are in the exchange's (profile) seconds unless the name says ``real``; the mock
divides every profile duration by ``time_scale`` to get wall-clock seconds (see ``scaled_s``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from connquota.api.limits import Limit, LimitName, LimitScope, LimitShape


@dataclass(frozen=True)
class TestAccount:
    """An API key the mock accepts, and the account it counts sessions by."""

    __test__ = False  # not a pytest test class

    api_key: str
    secret: str = field(repr=False)
    passphrase: str = field(default="test-passphrase", repr=False)
    account_id: str = ""
    public_key: str | None = None
    """PEM public key of an RSA or Ed25519 API key (Binance): signatures are verified with it
    and ``secret`` is unused. None: an HMAC key whose secret is ``secret``."""

    @property
    def account(self) -> str:
        """The account id the exchange counts by (the key itself when none is given)."""
        return self.account_id or self.api_key


def default_accounts() -> tuple[TestAccount, ...]:
    """Four test keys: ``test-key-N`` / ``test-secret-N`` / ``test-passphrase``, account ``acct-N``."""
    return tuple(
        TestAccount(f"test-key-{n}", f"test-secret-{n}", "test-passphrase", f"acct-{n}")
        for n in range(1, 5)
    )


@dataclass
class MockSettings:
    """Behaviour knobs of one mock exchange; defaults follow the exchanges' documentation."""

    time_scale: float = 1.0
    """Profile seconds per wall-clock second: 60 makes a 5-minute window last 5 s."""
    rate_per_stream_hz: float = 1.0
    """Market-data messages per wall-clock second on every subscribed stream (not scaled)."""
    private_rate_hz: float | None = None
    """Events per wall-clock second of every account's private feed (Binance user data, Bybit
    and OKX private topics); None: ``rate_per_stream_hz``."""
    ban_after_violations: int = 3
    """Penalised violations by one IP within ``violation_memory_s`` that trigger an IP ban."""
    violation_memory_s: float = 300.0
    """How long (profile seconds) a penalised violation counts towards a ban."""
    ban_s: float = 120.0
    """Length of an IP ban (profile seconds); Binance documents 2 minutes to 3 days."""
    serve_whoami: bool = False
    """Serve ``GET /whoami`` (the caller's address). Real exchanges serve no such path, so it
    is off by default: gateways verify egress through an IP-echo service, never the exchange.
    Turned on, it is a test convenience that is never counted as an attempt."""
    notice_lead_s: float = 5.0
    """Profile seconds between the max-age notice (serverShutdown, OKX 64008) and the close."""
    handshake_timeout_s: float | None = None
    """Profile seconds a TCP connection may stay without an HTTP request before it is dropped
    (default: the profile's connectTimeoutSeconds); scaled, but never below 2 s of wall time
    (`accept.HANDSHAKE_FLOOR_S`)."""
    outbox_max_frames: int = 20_000
    """Frames queued for one slow client before the mock drops it (OKX: close 4005)."""
    enforce_assumed: bool = True
    """Enforce limits whose confidence is ``assumed`` (the gateway plans with them anyway)."""
    accounts: tuple[TestAccount, ...] = field(default_factory=default_accounts)
    """API keys the mock accepts for login/auth."""
    tick_real_s: float = 0.005
    """Wall-clock seconds between two passes of the data and housekeeping loops (upper bound)."""

    def scaled_s(self, profile_s: float) -> float:
        """Wall-clock seconds for ``profile_s`` exchange seconds."""
        return profile_s / self.time_scale

    def account_for_key(self, api_key: str) -> TestAccount | None:
        """The test account holding ``api_key``, or None."""
        for account in self.accounts:
            if account.api_key == api_key:
                return account
        return None


_RATE_SHAPE = LimitShape.SLIDING_WINDOW

_DEFAULT_SHAPES = {
    LimitName.CONNECTION_ATTEMPTS: (LimitScope.IP, _RATE_SHAPE),
    LimitName.CONCURRENT_CONNECTIONS: (LimitScope.IP, LimitShape.CONCURRENT),
    LimitName.STREAMS_PER_CONNECTION: (LimitScope.CONNECTION, LimitShape.CONCURRENT),
    LimitName.MESSAGES_PER_CONNECTION: (LimitScope.CONNECTION, _RATE_SHAPE),
    LimitName.CONTROL_MESSAGES_PER_CONNECTION: (LimitScope.CONNECTION, _RATE_SHAPE),
    LimitName.MESSAGES_PER_ACCOUNT: (LimitScope.ACCOUNT, _RATE_SHAPE),
    LimitName.MESSAGES_PER_IP: (LimitScope.IP, _RATE_SHAPE),
    LimitName.ARGS_PER_SUBSCRIBE: (LimitScope.MESSAGE, LimitShape.SIZE),
    LimitName.SUBSCRIBE_PAYLOAD_BYTES: (LimitScope.MESSAGE, LimitShape.SIZE),
    LimitName.MAX_CONNECTION_AGE: (LimitScope.CONNECTION, LimitShape.DURATION),
}


def parse_limit_spec(spec: str) -> Limit:
    """``connectionAttempts:ip=10/5`` (10 per 5 s), ``concurrentConnections:ip=4``,
    ``maxConnectionAge=30`` -> a Limit. The scope defaults to the limit's usual one."""
    head, sep, value_text = spec.partition("=")
    if not sep:
        raise ValueError(f"limit {spec!r}: expected NAME[:SCOPE]=VALUE[/WINDOW_S]")
    name_text, _, scope_text = head.partition(":")
    name = LimitName(name_text.strip())
    default_scope, shape = _DEFAULT_SHAPES[name]
    scope = LimitScope(scope_text.strip()) if scope_text else default_scope
    value, _, window = value_text.partition("/")
    if window and shape not in (_RATE_SHAPE,):
        raise ValueError(f"limit {spec!r}: {name} takes no window")
    if shape == _RATE_SHAPE and not window:
        raise ValueError(f"limit {spec!r}: {name} needs a window, e.g. {name}={value}/1")
    return Limit(
        name=name,
        scope=scope,
        shape=shape,
        value=float(value),
        windowSeconds=float(window) if window else None,
        note="override",
    )


def load_limits_file(path: Path) -> list[Limit]:
    """Limits from a JSON file: a list of Limit objects (the API's camelCase fields)."""
    data = json.loads(path.read_text())
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of limits")
    return [Limit.model_validate(item) for item in data]
