"""Private (logged-in) sessions: the login frame and the frames of private streams, per dialect.

A private connection of the plan (`ConnectionPlan.credential` set) opens the profile's private
endpoint (`connect_url(profile, private=True)`), reads its key from the mounted Secret files and
wraps the dialect module in a `PrivateWire` for the session's life:

- **binance-spot** (WebSocket API): an Ed25519 key logs on (`session.logon`) and then sends
  `userDataStream.subscribe`; any other key (HMAC, RSA) skips the logon and subscribes with
  `userDataStream.subscribe.signature`. The one private stream is `userData`.
- **okx**: `login` (HMAC of timestamp + GET + /users/self/verify), then subscribe channels
  such as `orders:instType=ANY`.
- **bybit**: `auth` (HMAC of GET/realtime + expires, expires 5 s ahead), then subscribe topics
  such as `order`, `execution`, `position`, `wallet`.

A private stream's name is the exchange's name, optionally followed by `#<anything>` (e.g.
`userData#alice`), so one quota may want the same private stream with two credentials: the part
before `#` goes to the exchange, frames reach consumers under the full name.

Signed frames are built when the limiter lets them go (never before a wait), so their timestamps
are fresh. Keys live in memory only for the session; they are never logged or put in status,
metrics or the report (`ApiCredentials` hides them from `repr`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from connquota.api.plan import PlanCredential
from connquota.exchanges.dialects import binance, bybit
from connquota.exchanges.dialects.base import ApiCredentials, Data, Error, ServerEvent
from connquota.gateway.podroot import pod_path

NAME_SEPARATOR = "#"
BYBIT_EXPIRES_AHEAD_MS = 5000
"""Bybit `expires`: this far ahead of now (the docs' example uses 1 s; 5 s tolerates skew)."""
BINANCE_RECV_WINDOW_MS = 10000
"""Binance `recvWindow` of signed requests (default 5000, at most 60000)."""
AUTH_ERROR_CODES = {
    "binance": frozenset({"-2015", "-1022", "-1021", "-1102"}),
    "okx": frozenset({"60004", "60005", "60006", "60007", "60009", "60024", "4001"}),
    "bybit": frozenset({"auth", "10004", "10001"}),
}
"""Error codes that mean the exchange refused the key, its signature or its timestamp."""


def wire_name(stream: str) -> str:
    """The exchange's name of a (private) stream: the part before `#`."""
    return stream.split(NAME_SEPARATOR, 1)[0]


def _now_ms() -> int:
    return int(time.time() * 1000)


class PrivateWire:
    """A dialect module plus one credential: login and private-stream frames of one session.

    Everything else (pings, parsing) is the dialect module's; parsed data is renamed to the
    plan's stream names.
    """

    def __init__(self, fmt: ModuleType, credentials: ApiCredentials) -> None:
        self.fmt = fmt
        self.name: str = fmt.name
        self._credentials = credentials
        self.names: dict[str, str] = {}
        """Exchange name -> the plan's stream name, for streams subscribed on this session."""
        self.logs_on = self.name != "binance" or binance.supports_session_logon(credentials)
        """False for Binance keys that cannot `session.logon` (they subscribe with a signature)."""

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.fmt, attr)

    def login_frame(self, request_id: Any) -> str | None:
        """The signed login frame, or None when the session needs none (Binance HMAC/RSA)."""
        creds, now = self._credentials, _now_ms()
        if self.name == "binance":
            if not self.logs_on:
                return None
            return binance.build_login(creds, now, request_id, BINANCE_RECV_WINDOW_MS)
        if self.name == "bybit":
            return bybit.build_login(creds, now, request_id, BYBIT_EXPIRES_AHEAD_MS)
        return cast(str | None, self.fmt.build_login(creds, now, request_id))

    def serves(self, stream: str) -> bool:
        """Whether this session can subscribe `stream` (Binance: only `userData`)."""
        return self.name != "binance" or wire_name(stream) == binance.USER_DATA_STREAM

    def build_subscribe(self, streams: list[str], request_id: Any) -> str | None:
        """The subscribe frame for `streams` (plan names), or None when none can be served."""
        streams = [s for s in streams if self.serves(s)]
        if not streams:
            return None
        for stream in streams:
            self.names[wire_name(stream)] = stream
        if self.name == "binance":
            if self.logs_on:
                return binance.build_user_data_subscribe(request_id)
            return binance.build_user_data_subscribe_signature(
                self._credentials, _now_ms(), request_id, BINANCE_RECV_WINDOW_MS
            )
        return cast(
            str | None, self.fmt.build_subscribe([wire_name(s) for s in streams], request_id)
        )

    def build_unsubscribe(self, streams: list[str], request_id: Any) -> str | None:
        """The unsubscribe frame for `streams` (plan names), or None."""
        streams = [s for s in streams if self.serves(s)]
        if not streams:
            return None
        if self.name == "binance":
            return binance.build_user_data_unsubscribe(request_id)
        return cast(
            str | None, self.fmt.build_unsubscribe([wire_name(s) for s in streams], request_id)
        )

    def parse_server_message(self, text: str, default_stream: str | None = None) -> ServerEvent:
        """The dialect's parse, with data renamed to the plan's stream name."""
        event: ServerEvent = self.fmt.parse_server_message(text, default_stream)
        if isinstance(event, Data):
            name = self.names.get(event.stream)
            if name is not None and name != event.stream:
                return dataclasses.replace(event, stream=name)
        return event

    def is_auth_error(self, event: Error) -> bool:
        """Whether `event` says the exchange refused the key, signature or timestamp."""
        return event.code in AUTH_ERROR_CODES.get(self.name, frozenset())


def _fingerprint(cred: PlanCredential) -> tuple[tuple[str, float, int], ...]:
    keys = [k for k in (cred.apiKeyKey, cred.apiSecretKey, cred.passphraseKey) if k]
    out = []
    base: Path = pod_path(cred.mountPath)
    for key in keys:
        try:
            st = (base / key).stat()
        except OSError:
            out.append((key, -1.0, -1))
        else:
            out.append((key, st.st_mtime, st.st_size))
    return tuple(out)


async def credential_fingerprint(cred: PlanCredential) -> tuple[tuple[str, float, int], ...]:
    """Modification times and sizes of a credential's files (never their contents)."""
    return await asyncio.to_thread(_fingerprint, cred)


async def wait_for_credential_change(
    cred: PlanCredential, since: tuple[tuple[str, float, int], ...], timeout_s: float
) -> bool:
    """Wait until the credential's files change (a rotated Secret), at most `timeout_s`;
    True when they changed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if await credential_fingerprint(cred) != since:
            return True
    return False
