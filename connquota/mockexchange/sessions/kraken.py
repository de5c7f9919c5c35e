"""Kraken spot WebSocket v2 on the mock: ``/v2`` (public market data, and the private channels
``executions`` / ``balances`` with a token from the mock's ``GetWebSocketsToken``)."""

from __future__ import annotations

import time
import zlib
from typing import Any

from connquota.api.limits import LimitName
from connquota.exchanges.dialects import kraken
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    OtherRequest,
    PingRequest,
    SubscribeRequest,
    WireFormatError,
)
from connquota.mockexchange import connection as cstate
from connquota.mockexchange.books import MockBook
from connquota.mockexchange.rest import kraken_tokens
from connquota.mockexchange.sessions.base import DialectSession

STREAMS_OVER = "Exceeded subscription limit"
"""The error ack of a symbol over the streams-per-connection limit (Kraken publishes none: the
profile's assumed limit, answered in Kraken's error-ack shape)."""
TOKEN_REQUIRED = "EGeneral:Permission denied"
"""A private or authenticated channel asked on the public endpoint."""


def _qty(size: str) -> str:
    """The mock book's size (``12.345``) as Kraken writes quantities (8 decimals; 0 as ``0``)."""
    value = float(size)
    return "0" if value == 0 else f"{value:.8f}"


def _kraken_levels(levels: list[list[str]]) -> list[list[str]]:
    return [[level[0], _qty(level[1])] for level in levels]


class KrakenSession(DialectSession):
    """Kraken: one ack per symbol, ``status`` on connect, ``heartbeat`` once a second without
    other updates, snapshots first (``snapshot`` defaults to true), checksummed books."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.no_snapshot: set[str] = set()
        """Streams subscribed with ``"snapshot": false``."""

    async def on_open(self) -> None:
        connection_id = zlib.crc32(self.conn.conn_id.encode()) * 3_221_225_473
        self.send(kraken.build_status(connection_id % (1 << 64)))

    def heartbeat_frame(self) -> str | None:
        return kraken.HEARTBEAT

    async def on_text(self, text: str) -> None:
        request = kraken.parse_client_message(text)
        time_in = kraken.now_rfc3339()
        if isinstance(request, PingRequest):
            self.send(kraken.build_pong(request.request_id, time_in))
        elif isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply)
        elif isinstance(request, OtherRequest):
            params = request.params if isinstance(request.params, dict) else {}
            if params.get("channel") in kraken.PRIVATE_CHANNELS:
                self._on_private(request.method, params, request.request_id, time_in)
            else:
                self.send(kraken.build_error(request.method, TOKEN_REQUIRED, request.request_id))
        elif isinstance(request, SubscribeRequest):
            await self._on_subscribe(request, text, time_in)

    async def _on_subscribe(self, request: SubscribeRequest, text: str, time_in: str) -> None:
        rid = request.request_id
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            for stream in streams:
                symbol = kraken.stream_parts(stream)[1]
                if stream in self.conn.streams:
                    self.mx.unsubscribe(self.conn, [stream])
                    self.send(kraken.build_ack("unsubscribe", stream, rid, time_in=time_in))
                else:
                    self.send(kraken.build_error("unsubscribe", kraken.NOT_SUBSCRIBED, rid, symbol))
            return
        snapshot = '"snapshot":false' not in text.replace(" ", "")
        errors: dict[str, str] = {}
        for stream in streams:
            symbol = kraken.stream_parts(stream)[1]
            if not kraken.valid_symbol(symbol):
                errors[stream] = f"{kraken.UNSUPPORTED_PAIR} {symbol}"
            elif stream in self.conn.streams:
                errors[stream] = "Already subscribed"
        accepted = [s for s in streams if s not in errors]
        new = len(self.conn.streams | set(accepted))
        if accepted and self.mx.over_stream_limit(self.conn, new, "success=false reply"):
            errors.update(dict.fromkeys(accepted, STREAMS_OVER))
            accepted = []
        for stream in streams:  # one answer per symbol, in the request's order
            if stream in errors:
                symbol = kraken.stream_parts(stream)[1]
                self.send(kraken.build_error("subscribe", errors[stream], rid, symbol, time_in))
                continue
            if not snapshot:
                self.no_snapshot.add(stream)
            self.send(kraken.build_ack("subscribe", stream, rid, snapshot, time_in))
        self.mx.subscribe(self.conn, accepted)

    # -- private channels --------------------------------------------------------------------

    def _token_account(self, token: Any) -> str | None:
        """The API key of a usable token: issued by the mock's REST, its key not revoked, and
        either used within 15 minutes (scaled) of creation or bound to an open connection."""
        issued = kraken_tokens(self.mx).get(token) if isinstance(token, str) else None
        if issued is None or self.mx.settings.account_for_key(issued.api_key) is None:
            return None
        fresh = time.monotonic() - issued.issued_mono < self.mx.settings.scaled_s(
            kraken.TOKEN_TTL_S
        )
        open_ids = {c.conn_id for c in self.mx.websockets() if c.state == cstate.WEBSOCKET}
        if not fresh and not (issued.bound & open_ids):
            return None
        return issued.api_key

    def _on_private(self, method: str, params: dict[str, Any], rid: Any, time_in: str) -> None:
        """A private subscribe / unsubscribe: the token must be usable; the channel is the
        account's own feed ``<channel>@<account>``; the token is bound to this connection."""
        channel = str(params["channel"])
        api_key = self._token_account(params.get("token"))
        account = self.mx.settings.account_for_key(api_key) if api_key else None
        if account is None:
            self.send(kraken.build_error(method, kraken.INVALID_SESSION, rid, None, time_in))
            return
        if self.conn.account is None:
            self.mx.login(self.conn, account, None)
        kraken_tokens(self.mx)[params["token"]].bound.add(self.conn.conn_id)
        feed = f"{channel}@{account.account}"
        if method == "unsubscribe":
            self.mx.unsubscribe(self.conn, [feed])
        elif feed not in self.conn.streams:
            self.mx.subscribe(self.conn, [feed], private=True)
        self.send(kraken.build_private_ack(method, channel, rid, time_in))

    def _book(self, stream: str) -> tuple[MockBook, int]:
        _, _, depth = kraken.stream_parts(stream)
        depth = depth or kraken.DEFAULT_BOOK_DEPTH
        return self.mx.books.book(stream, depth, okx_levels=False), depth

    def _book_frame(self, stream: str, seq: int, event_time_ms: int, snapshot: bool) -> str:
        book, depth = self._book(stream)
        book.advance(seq)
        l2 = book.book
        top_bids = _kraken_levels(l2.sorted_bids(depth))
        top_asks = _kraken_levels(l2.sorted_asks(depth))
        checksum = kraken.book_checksum(top_bids, top_asks)
        if snapshot:
            return kraken.build_book(stream, top_bids, top_asks, checksum, None, "snapshot")
        bids = _kraken_levels(book.changed_bids)
        asks = _kraken_levels(book.changed_asks)
        return kraken.build_book(stream, bids, asks, checksum, event_time_ms, "update")

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if "@" in stream:  # an account's private channel
            return kraken.build_private_data(stream.split("@", 1)[0], seq, event_time_ms)
        try:
            channel = kraken.stream_parts(stream)[0]
        except WireFormatError:
            channel = ""
        if channel == "book":
            return self._book_frame(stream, seq, event_time_ms, snapshot=False)
        return kraken.build_data(stream, seq, event_time_ms)

    def opens_with_snapshot(self, stream: str) -> bool:
        return stream not in self.no_snapshot

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        if "@" in stream:
            channel = stream.split("@", 1)[0]
            return kraken.build_private_data(channel, seq, event_time_ms, "snapshot")
        if kraken.stream_parts(stream)[0] == "book":
            return self._book_frame(stream, seq, event_time_ms, snapshot=True)
        return kraken.build_data(stream, seq, event_time_ms, kind="snapshot")

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        self.send(kraken.MSG_RATE_ERROR)
        return True
