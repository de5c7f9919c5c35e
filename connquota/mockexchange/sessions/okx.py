"""OKX v5 on the mock: ``/ws/v5/public``, ``/ws/v5/private``, ``/ws/v5/business``."""

from __future__ import annotations

import hmac
import time

from connquota.api.limits import LimitName
from connquota.exchanges.dialects import okx
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    LoginRequest,
    MarketPrices,
    PingRequest,
    SubscribeRequest,
    dumps,
)
from connquota.mockexchange.sessions.base import DialectSession

PRICED_CHANNELS = frozenset({"trades", "trades-all", "tickers"})
"""Channels whose prices come from the mock's book."""


class OkxSession(DialectSession):
    """OKX: acks per argument, 60014 when requests are too frequent, 4004 after 30 s idle."""

    heartbeat_close = (4004, "No data received in 30s")
    overflow_close = (4005, "Buffer is full, cannot write data")
    age_close = (4006, "Abnormal disconnection")
    shutdown_close = (4006, "Abnormal disconnection")

    def _error(self, code: str, request_id: object = None, *fmt: str) -> None:
        self.send(okx.build_error(code, self.conn.conn_id, request_id, *fmt))  # type: ignore[arg-type]

    async def on_text(self, text: str) -> None:
        request = okx.parse_client_message(text)
        if isinstance(request, PingRequest):
            self.send(okx.PONG_TEXT)
            return
        if isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply.replace("{conn_id}", self.conn.conn_id))
            return
        # "The total number of 'subscribe'/'unsubscribe'/'login' requests per connection is
        # limited to 480 times per hour."
        if self.mx.count_control(self.conn, "error 60014"):
            self._error("60014", request.request_id)
            return
        if isinstance(request, LoginRequest):
            self._on_login(request)
        elif isinstance(request, SubscribeRequest):
            await self._on_subscribe(request)

    def _channel_error(self, stream: str) -> str | None:
        channel = okx.stream_to_arg(stream)["channel"]
        kind = self.endpoint.kind
        known = channel in okx.PUBLIC_CHANNELS | okx.BUSINESS_CHANNELS | okx.PRIVATE_CHANNELS
        if not known and not channel.startswith("candle"):
            return "60018"
        home = okx.endpoint_for_channel(channel)
        if home == "business" and kind != "business":
            return "64001" if kind == "public" and channel in okx.BUSINESS_CHANNELS else "60018"
        if home == "public" and kind == "business":
            return "64002"
        if home != kind:
            return "60018"
        if (home == "private" or channel in okx.LOGIN_CHANNELS) and self.conn.account is None:
            return "60011"
        return None

    async def _on_subscribe(self, request: SubscribeRequest) -> None:
        rid = request.request_id
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            self.mx.unsubscribe(self.conn, streams)
            for stream in streams:
                self.send(okx.build_ack("unsubscribe", stream, self.conn.conn_id, rid))
            return
        args_bytes = len(dumps([okx.stream_to_arg(s) for s in streams]).encode())
        if self.mx.over_payload_limit(self.conn, args_bytes, "error 60012"):
            self._error("60012", rid, dumps({"op": "subscribe", "args": "..."}))
            return
        if self.mx.over_args_limit(self.conn, len(streams), "error 60012"):
            self._error("60012", rid, dumps({"op": "subscribe", "args": "..."}))
            return
        accepted: list[str] = []
        for stream in streams:
            code = self._channel_error(stream)
            if code is not None:
                self._error(code, rid, okx.describe_arg(stream))
                continue
            channel = okx.stream_to_arg(stream)["channel"]
            if channel in okx.PRIVATE_CHANNELS and stream not in self.conn.streams:
                refused = self.mx.channel_connections_over(
                    self.conn, channel, "channel-conn-count-error"
                )
                if refused is not None:
                    self.send(
                        okx.build_channel_conn_count_error(channel, refused, self.conn.conn_id)
                    )
                    continue
            accepted.append(stream)
        new = len(self.conn.streams | set(accepted))
        if self.mx.over_stream_limit(self.conn, new, "close 4009"):
            await self.mx.close_conn(self.conn, 4009, okx.CLOSE_CODES[4009])
            return
        self.mx.subscribe(self.conn, accepted, private=self.endpoint.private)
        for stream in accepted:
            self.send(okx.build_ack("subscribe", stream, self.conn.conn_id, rid))

    def _on_login(self, request: LoginRequest) -> None:
        rid = request.request_id
        fields = request.fields
        if self.conn.account is not None:
            self._error("60031", rid)
            return
        account = self.mx.settings.account_for_key(request.api_key)
        if account is None:
            self._error("60005", rid)
            return
        if fields["passphrase"] != account.passphrase:
            self._error("60024", rid)
            return
        timestamp = fields["timestamp"]
        if not timestamp.isdigit():
            self._error("60004", rid)
            return
        if abs(time.time() - int(timestamp)) > okx.LOGIN_TIMESTAMP_VALID_S:
            self._error("60006", rid)
            return
        expected = okx.login_signature(account.secret, timestamp)
        if not hmac.compare_digest(expected, fields["sign"]):
            self._error("60007", rid)
            return
        self.mx.login(self.conn, account, None)
        self.send(okx.build_login_result(self.conn.conn_id, rid))

    def on_key_revoked(self, account: str) -> bool:
        if self.conn.account != account:
            return False
        self.mx.close_soon(self.conn, 4007, okx.CLOSE_CODES[4007])
        return True

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        channel = stream.partition(":")[0]
        depth = okx.BOOK_DEPTHS.get(channel)
        if depth is None:
            return okx.build_data(stream, seq, event_time_ms, self._prices(stream, seq))
        book = self.mx.books.book(stream, depth, okx_levels=True)
        book.advance(seq)
        if channel in okx.INCREMENTAL_BOOKS:
            return okx.build_book(
                stream, book.changed_bids, book.changed_asks, event_time_ms, seq,
                "update", seq - 1, book.okx_checksum(),
            )  # fmt: skip
        return okx.build_book(stream, book.top_bids(), book.top_asks(), event_time_ms, seq)

    def _prices(self, stream: str, seq: int) -> MarketPrices | None:
        """Trades and tickers are priced from the instrument's ``books`` book (the one REST
        ``/api/v5/market/books`` reads); other channels: None."""
        channel, _, inst = stream.partition(":")
        if channel not in PRICED_CHANNELS or not inst:
            return None
        book_stream = okx.stream_name(inst, "books")
        book = self.mx.books.started(book_stream, okx.BOOK_DEPTHS["books"], True, self.mx.feeds)
        return self.mx.books.prices(stream, seq, inst, book, trade=channel != "tickers")

    def opens_with_snapshot(self, stream: str) -> bool:
        return stream.partition(":")[0] in okx.INCREMENTAL_BOOKS

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        channel = stream.partition(":")[0]
        book = self.mx.books.book(stream, okx.BOOK_DEPTHS[channel], okx_levels=True)
        book.advance(seq)
        return okx.build_book(
            stream, book.top_bids(), book.top_asks(), event_time_ms, seq,
            "snapshot", -1, book.okx_checksum(),
        )  # fmt: skip

    def notice(self) -> str | None:
        return okx.build_upgrade_notice(self.conn.conn_id)

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        self._error("60014")
        return True
