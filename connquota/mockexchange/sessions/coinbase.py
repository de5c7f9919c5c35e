"""Coinbase Advanced Trade WebSocket on the mock: the market-data host's root (public data) and
the ``user`` channel of the user-data host (every subscribe with its own ES256 JWT)."""

from __future__ import annotations

import json
import time
from typing import Any

from connquota.api.limits import LimitName
from connquota.exchanges.dialects import coinbase
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    OtherRequest,
    SubscribeRequest,
    WireFormatError,
)
from connquota.mockexchange.books import MAX_LEVELS, MockBook
from connquota.mockexchange.sessions.base import DialectSession
from connquota.mockexchange.settings import TestAccount

STREAMS_OVER = "Failed to subscribe"
STREAMS_OVER_REASON = "subscription limit exceeded"
"""The error of a subscribe over the streams-per-connection limit (Coinbase publishes none:
the profile's assumed limit, answered in Coinbase's error shape)."""
JWT_SKEW_S = 5
"""Seconds of clock skew the mock allows on ``nbf``."""


class CoinbaseSession(DialectSession):
    """Coinbase: one channel per subscribe, a ``subscriptions`` message answering each subscribe
    and unsubscribe, ``sequence_num`` counted per connection on every message, heartbeats once a
    second only on the ``heartbeats`` channel, level2 opening with a snapshot."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.sequence_num = 0
        self.heartbeats = False
        self.heartbeat_counter = 0
        self.conn.stamp = self._stamp

    def _stamp(self, text: str) -> str:
        if coinbase.SEQ_MARK not in text:
            return text  # error frames carry no sequence_num
        n = self.sequence_num
        self.sequence_num += 1
        return coinbase.stamp(text, n)

    def skip_sequence(self, count: int = 1) -> None:
        """Lose ``count`` sequence numbers (tests: a gap the client must detect)."""
        self.sequence_num += count

    def heartbeat_frame(self) -> str | None:
        if not self.heartbeats:
            return None
        self.heartbeat_counter += 1
        return coinbase.build_heartbeat(self.heartbeat_counter)

    def _subscriptions(self) -> str:
        subs: dict[str, list[str]] = {}
        for stream in sorted(self.conn.streams):
            name = coinbase.parse_stream(stream.split("@", 1)[0])
            products = subs.setdefault(name.channel, [])
            if name.symbol:  # futures_balance_summary has none: listed with []
                products.append(name.symbol)
        if self.heartbeats:
            subs[coinbase.HEARTBEATS] = [coinbase.HEARTBEATS]
        return coinbase.build_subscriptions(subs)

    async def on_text(self, text: str) -> None:
        request = coinbase.parse_client_message(text)
        if isinstance(request, SubscribeRequest) and (
            request.streams[0].startswith("user:") or request.streams[0] == coinbase.FUTURES_BALANCE
        ):
            self._on_user(request, text)
            return
        if isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply)
        elif isinstance(request, OtherRequest):
            self._on_channel(request.method, str(request.params))
        elif isinstance(request, SubscribeRequest):
            self._on_subscribe(request)

    def _on_channel(self, kind: str, channel: str) -> None:
        """``heartbeats`` / ``status`` (no products) or a whole-channel unsubscribe."""
        if channel == coinbase.HEARTBEATS:
            self.heartbeats = kind == "subscribe"
            # heartbeats keep the connection open from now on (housekeeping sends them)
            self.conn.ever_subscribed = self.conn.ever_subscribed or self.heartbeats
        elif kind == "unsubscribe":
            prefix = channel + ":"
            self.mx.unsubscribe(self.conn, [s for s in self.conn.streams if s.startswith(prefix)])
        self.send(self._subscriptions())

    def _on_subscribe(self, request: SubscribeRequest) -> None:
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            self.mx.unsubscribe(self.conn, streams)
            self.send(self._subscriptions())
            return
        bad = [s for s in streams if not coinbase.valid_product(coinbase.parse_stream(s).symbol)]
        if bad:  # the whole message is refused
            product = coinbase.parse_stream(bad[0]).symbol
            self.send(
                coinbase.build_error(coinbase.FAILED, f"{coinbase.UNKNOWN_PRODUCT} {product}")
            )
            return
        new = len(self.conn.streams | set(streams))
        if self.mx.over_stream_limit(self.conn, new, "error reply"):
            self.send(coinbase.build_error(STREAMS_OVER, STREAMS_OVER_REASON))
            return
        self.mx.subscribe(self.conn, streams)
        self.send(self._subscriptions())

    # -- the user channel --------------------------------------------------------------------

    def _on_user(self, request: SubscribeRequest, text: str) -> None:
        """A ``user`` or ``futures_balance_summary`` subscribe or unsubscribe: its JWT must
        verify (one JWT, one message); the products' orders are the account's own feeds
        ``user:<product>@<account>``, its balances ``futures_balance_summary@<account>``."""
        doc = json.loads(text)
        account = self._verify_jwt(doc.get("jwt"))
        if account is None:
            self.send(coinbase.build_error(coinbase.AUTH_FAILURE))
            return
        if self.conn.account is None:
            self.mx.login(self.conn, account, None)
        feeds = [f"{s}@{account.account}" for s in dict.fromkeys(request.streams)]
        if request.unsubscribe:
            self.mx.unsubscribe(self.conn, feeds)
        else:
            new = len(self.conn.streams | set(feeds))
            if self.mx.over_stream_limit(self.conn, new, "error reply"):
                self.send(coinbase.build_error(STREAMS_OVER, STREAMS_OVER_REASON))
                return
            self.mx.subscribe(self.conn, feeds, private=True)
        self.send(self._subscriptions())

    def _verify_jwt(self, token: Any) -> TestAccount | None:
        """The account whose EC key signed ``token`` as Coinbase documents a WebSocket JWT
        (ES256; ``kid`` = ``sub`` = the key name; ``iss`` cdp; ``nbf`` <= now < ``exp``, at
        most 120 s apart; no ``uri``; a nonce never seen before), or None."""
        parts = coinbase.jwt_parts(token) if isinstance(token, str) else None
        if parts is None:
            return None
        header, claims, signature, signing_input = parts
        kid, nonce = header.get("kid"), header.get("nonce")
        nbf, exp = claims.get("nbf"), claims.get("exp")
        now = time.time()
        shaped = (
            header.get("alg") == "ES256"
            and isinstance(kid, str)
            and isinstance(nonce, str)
            and nonce != ""
            and claims.get("sub") == kid
            and claims.get("iss") == coinbase.JWT_ISSUER
            and "uri" not in claims
            and isinstance(nbf, int)
            and isinstance(exp, int)
            and nbf <= now + JWT_SKEW_S < exp + JWT_SKEW_S
            and exp - nbf <= coinbase.JWT_LIFETIME_S
        )
        if not shaped:
            return None
        assert isinstance(kid, str)
        account = self.mx.settings.account_for_key(kid)
        if account is None or account.public_key is None:
            return None
        if not coinbase.verify_es256(account.public_key, signing_input, signature):
            return None
        seen: set[tuple[str, str]] = self.mx.__dict__.setdefault("_coinbase_nonces", set())
        if (kid, str(nonce)) in seen:  # "a different JWT for each websocket message"
            return None
        seen.add((kid, str(nonce)))
        return account

    def _book(self, stream: str) -> MockBook:
        return self.mx.books.book(stream, MAX_LEVELS, okx_levels=False)

    def _level2(self, stream: str, seq: int, event_time_ms: int, snapshot: bool) -> str:
        book = self._book(stream)
        book.advance(seq)
        if snapshot:
            bids, asks = book.book.sorted_bids(), book.book.sorted_asks()
            return coinbase.build_level2(stream, bids, asks, event_time_ms, "snapshot")
        return coinbase.build_level2(
            stream, book.changed_bids, book.changed_asks, event_time_ms, "update"
        )

    @staticmethod
    def _channel(stream: str) -> str:
        try:
            return coinbase.parse_stream(stream).channel
        except WireFormatError:
            return ""

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if "@" in stream:  # an account's user channel or futures balances
            return self._account_frame(stream.split("@", 1)[0], seq, event_time_ms, "update")
        if self._channel(stream) == "level2":
            return self._level2(stream, seq, event_time_ms, snapshot=False)
        return coinbase.build_data(stream, seq, event_time_ms)

    @staticmethod
    def _account_frame(stream: str, seq: int, event_time_ms: int, kind: str) -> str:
        if stream == coinbase.FUTURES_BALANCE:
            return coinbase.build_futures_balance_summary(seq, event_time_ms, kind)
        return coinbase.build_user(stream, seq, event_time_ms, kind)

    def opens_with_snapshot(self, stream: str) -> bool:
        return True  # every channel's first message is a ``snapshot`` event

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if "@" in stream:
            return self._account_frame(stream.split("@", 1)[0], seq, event_time_ms, "snapshot")
        if self._channel(stream) == "level2":
            return self._level2(stream, seq, event_time_ms, snapshot=True)
        return coinbase.build_data(stream, seq, event_time_ms, kind="snapshot")

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        self.send(coinbase.build_error(coinbase.RATE_LIMITED))
        return True
