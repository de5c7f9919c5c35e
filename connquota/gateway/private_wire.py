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
- **deribit**: `public/auth` with `client_credentials` (the key is the client_id, the secret
  the client_secret), then `private/subscribe` of user channels (`user.orders.any.any.raw`,
  `user.trades.BTC-PERPETUAL.100ms`, `user.portfolio.btc`). The token is renewed with the
  `refresh_token` grant once half its `expires_in` has passed. The session sends frames only
  when asked, so the renewal rides on the heartbeat: the `public/test` answering a
  `test_request` is followed, once its answer arrives, by the `refresh_token` request (the
  answer is turned into a `Ping` the session replies to); with heartbeats every 30 s and
  tokens of 900 s that renews at about 450 s.
- **kraken**: no login frame; `prepare` asks REST `GetWebSocketsToken` (signed with the key,
  from the connection's own address) for a token, and every private subscribe (`executions`,
  `balances`, on `wss://ws-auth.kraken.com/v2`) carries it in `params.token`. The token must
  be used within 15 minutes and then lasts while the connection does: one per session. NOTE:
  the session must await `prepare` before it subscribes (see `prepare`).
- **coinbase**: no login; the private endpoint (`advanced-trade-ws-user`) takes `user`
  subscribes (`user:BTC-USD`), each carrying a fresh ES256 JWT (the key name is the key file,
  the EC private key PEM the secret file) built when the limiter lets the frame go. A refused
  JWT is `{"type":"error","message":"authentication failure"}`.

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
import json
import secrets
import time
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import aiohttp

from connquota.api.plan import PlanCredential
from connquota.exchanges.dialects import binance, bybit, coinbase, deribit, kraken
from connquota.exchanges.dialects.base import (
    Ack,
    ApiCredentials,
    Data,
    Error,
    LoginResult,
    Ping,
    Pong,
    RequestId,
    ServerEvent,
    WireFormatError,
)
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
    "deribit": deribit.AUTH_ERROR_CODES,
}
"""Error codes that mean the exchange refused the key, its signature or its timestamp."""


DERIBIT_LOGIN_ID_BASE = 1_000_000_000
"""Deribit login ids: this plus the session generation (the session's own ids count from 1)."""
UNSIGNED_JWT = "unsigned"
"""What a Coinbase message carries when the secret is no EC key (the exchange refuses it)."""


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
        self.logs_on = self.name not in ("coinbase", "kraken") and (
            self.name != "binance" or binance.supports_session_logon(credentials)
        )
        """False for Binance keys that cannot `session.logon` (they subscribe with a signature)
        and for Coinbase and Kraken (every subscribe carries its own JWT or token)."""
        self.kraken_token: str | None = None
        """Kraken: the WebSocket token of this session (from `prepare`)."""
        self.token: DeribitToken | None = None
        """Deribit: the session's tokens (from `public/auth`)."""
        self._refresh_due = False
        self._refreshing: RequestId = None
        """The id of the renewal in flight (its answer is not a login)."""
        if self.name == "deribit":
            self.build_ping_reply = self._deribit_ping_reply
        if self.name == "coinbase":
            self.build_heartbeats_subscribe = self._coinbase_heartbeats

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.fmt, attr)

    async def prepare(self, http: aiohttp.ClientSession, ws_url: str) -> LoginResult | None:
        """What a session must do before it logs in or subscribes: Kraken's REST call
        `GetWebSocketsToken` (POST, `API-Key` / `API-Sign`, the token kept for this session);
        None for the other dialects and when the token came, a refused `LoginResult` (code:
        the exchange's error, e.g. `EAPI:Invalid key`) when the exchange refused the key.
        aiohttp errors and timeouts propagate (a transient failure, not a refusal).

        The session must call it with its egress session and the URL it connected to (the
        token URL is derived from it: `kraken.token_url`)."""
        if self.name != "kraken":
            return None
        headers, body = kraken.token_request(self._credentials, _now_ms())
        url = kraken.token_url(ws_url)
        async with http.post(url, data=body, headers=headers) as resp:
            doc = await resp.json(content_type=None)
        token, error = kraken.parse_token_answer(doc)
        if token is None:
            return LoginResult(False, None, error, "GetWebSocketsToken refused")
        self.kraken_token = token
        return None

    def login_frame(self, request_id: Any) -> str | None:
        """The signed login frame, or None when the session needs none (Binance HMAC/RSA)."""
        creds, now = self._credentials, _now_ms()
        if self.name == "binance":
            if not self.logs_on:
                return None
            return binance.build_login(creds, now, request_id, BINANCE_RECV_WINDOW_MS)
        if self.name == "bybit":
            return bybit.build_login(creds, now, request_id, BYBIT_EXPIRES_AHEAD_MS)
        if self.name == "deribit":  # a numeric JSON-RPC id, apart from the session's counter
            digits = "".join(ch for ch in str(request_id) if ch.isdigit())
            return deribit.build_login(creds, now, DERIBIT_LOGIN_ID_BASE + int(digits or 0))
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
        if self.name == "deribit":
            return deribit.build_private_subscribe([wire_name(s) for s in streams], request_id)
        if self.name == "coinbase":
            return self._coinbase_signed("subscribe", streams)
        if self.name == "kraken":  # one channel per request (`subscribe_group`)
            token = self.kraken_token or ""  # none: the exchange refuses the subscribe
            return kraken.build_private_subscribe(wire_name(streams[0]), token, request_id)
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
        if self.name == "deribit":
            return deribit.build_private_unsubscribe([wire_name(s) for s in streams], request_id)
        if self.name == "coinbase":
            return self._coinbase_signed("unsubscribe", streams)
        if self.name == "kraken":
            token = self.kraken_token or ""
            return kraken.build_private_subscribe(
                wire_name(streams[0]), token, request_id, unsubscribe=True
            )
        return cast(
            str | None, self.fmt.build_unsubscribe([wire_name(s) for s in streams], request_id)
        )

    def _coinbase_heartbeats(self, request_id: RequestId = None) -> str:
        """The `heartbeats` subscribe with a JWT, as the documented request carries one on the
        user-data endpoint."""
        doc = json.loads(coinbase.build_heartbeats_subscribe(request_id))
        doc["jwt"] = self._coinbase_jwt()
        return json.dumps(doc, separators=(",", ":"))

    def _coinbase_jwt(self) -> str:
        creds = self._credentials
        try:
            return coinbase.build_jwt(
                creds.api_key, creds.secret, int(time.time()), secrets.token_hex(16)
            )
        except (ValueError, TypeError, WireFormatError):
            # the secret file holds no EC private key: the message goes without a valid JWT,
            # the exchange answers "authentication failure" and the connection is refused
            return UNSIGNED_JWT

    def _coinbase_signed(self, kind: str, streams: list[str]) -> str:
        """A Coinbase subscribe / unsubscribe with a JWT made now (one per message)."""
        jwt = self._coinbase_jwt()
        return coinbase.build_authenticated(kind, [wire_name(s) for s in streams], jwt)

    def parse_server_message(self, text: str, default_stream: str | None = None) -> ServerEvent:
        """The dialect's parse, with data renamed to the plan's stream name."""
        event: ServerEvent = self.fmt.parse_server_message(text, default_stream)
        if isinstance(event, Data):
            name = self.names.get(event.stream)
            if name is not None and name != event.stream:
                return dataclasses.replace(event, stream=name)
        if self.name == "deribit":
            return self._deribit_event(event, text)
        if self.name in ("coinbase", "kraken") and isinstance(event, Ack):
            return dataclasses.replace(event, streams=self._plan_names(event.streams))
        return event

    def _plan_names(self, streams: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.names.get(s, s) for s in streams)

    def _deribit_event(self, event: ServerEvent, text: str) -> ServerEvent:
        """Deribit: keep the tokens of auth results (a renewal's answer is an `Ack`, the
        login's a `LoginResult`), name acked channels as the plan does, and ask for the
        renewal once a `public/test` is answered and half the token's life has passed."""
        if isinstance(event, LoginResult) and event.ok:
            raw = json.loads(text).get("result")
            tokens = deribit.auth_result(raw)
            if tokens is not None:
                self.token = DeribitToken(tokens[0], tokens[1], tokens[2], time.monotonic())
            if self._refreshing is not None and event.request_id == self._refreshing:
                self._refreshing = None
                return Ack(event.request_id, "refresh", (), raw)
            return event
        if isinstance(event, Ack) and event.op == "subscribe":
            return dataclasses.replace(event, streams=self._plan_names(event.streams))
        if isinstance(event, Pong) and self._refreshing is None:
            token = self.token
            if token is not None and token.due(time.monotonic()):
                self._refresh_due = True
                return Ping("token-refresh")
        return event

    def _deribit_ping_reply(self, request_id: RequestId = None) -> str | None:
        """What answers a `Ping`: `public/test` (a `test_request`), or the token renewal (the
        `Ping` made of a `public/test` answer once the renewal is due)."""
        if self._refresh_due and self.token is not None:
            self._refresh_due = False
            self._refreshing = request_id
            return deribit.build_refresh(self.token.refresh, request_id)
        return deribit.build_ping_reply(request_id)

    def is_auth_error(self, event: Error) -> bool:
        """Whether `event` says the exchange refused the key, signature or timestamp."""
        if self.name == "coinbase":  # every Coinbase error has the code `error`
            return event.msg.startswith(coinbase.AUTH_FAILURE)
        if self.name == "kraken":  # Kraken's code is the request's method
            return event.msg.startswith(kraken.AUTH_ERRORS)
        return event.code in AUTH_ERROR_CODES.get(self.name, frozenset())


@dataclasses.dataclass(frozen=True)
class DeribitToken:
    """A Deribit session's tokens (never logged: `repr` hides them)."""

    access: str = dataclasses.field(repr=False)
    refresh: str = dataclasses.field(repr=False)
    expires_in_s: float
    at_mono: float

    def due(self, now_mono: float) -> bool:
        """Whether half the token's life has passed (time to renew it)."""
        return now_mono - self.at_mono >= self.expires_in_s / 2


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
