"""Bybit v5 on the mock: ``/v5/public/<category>`` and ``/v5/private``."""

from __future__ import annotations

import hmac
import time

from connquota.api.limits import LimitName
from connquota.exchanges.dialects import bybit
from connquota.exchanges.dialects.base import (
    InvalidRequest,
    LoginRequest,
    MarketPrices,
    OtherRequest,
    PingRequest,
    RequestId,
    SubscribeRequest,
)
from connquota.mockexchange.rest import BYBIT_STREAM_DEPTHS, bybit_book_stream
from connquota.mockexchange.sessions.base import DialectSession, wall_ms

NOT_AUTHORIZED = "Request not authorized"


class BybitSession(DialectSession):
    """Bybit: replies ``success``/``ret_msg`` in the category's shape; client pings."""

    heartbeat_close = (1000, "no ping-pong and no data: connection cut")

    @property
    def category(self) -> str:
        return self.endpoint.kind

    def _reply(self, op: str, rid: RequestId, success: bool, ret_msg: str | None = None,
               topics: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.send(
            bybit.build_op_result(
                self.category, op, self.conn.conn_id, rid, success, ret_msg, topics
            )
        )

    async def on_text(self, text: str) -> None:
        request = bybit.parse_client_message(text)
        if isinstance(request, PingRequest):
            self.send(
                bybit.build_pong(self.category, self.conn.conn_id, request.request_id, wall_ms())
            )
        elif isinstance(request, InvalidRequest):
            self.mx.note_malformed(self.conn)
            self.send(request.reply.replace("{conn_id}", self.conn.conn_id))
        elif isinstance(request, SubscribeRequest):
            if self.mx.count_control(self.conn, "success=false reply"):
                self._reply("subscribe", request.request_id, False, "error:too many requests")
                return
            await self._on_subscribe(request)
        elif isinstance(request, LoginRequest):
            self._on_auth(request)
        elif isinstance(request, OtherRequest):
            pass

    async def _on_subscribe(self, request: SubscribeRequest) -> None:
        rid = request.request_id
        op = "unsubscribe" if request.unsubscribe else "subscribe"
        streams = list(dict.fromkeys(request.streams))
        if request.unsubscribe:
            missing = [s for s in streams if self._feed(s) not in self.conn.streams]
            if missing:
                self._reply(
                    op, rid, False, f"error:not subscribed,topic:{missing[0]}", tuple(missing)
                )
                return
            self.mx.unsubscribe(self.conn, [self._feed(s) for s in streams])
            self._reply(op, rid, True, topics=tuple(streams))
            return
        private = self.endpoint.private
        if private and self.conn.account is None:
            self._reply(op, rid, False, NOT_AUTHORIZED, tuple(streams))
            return
        for stream in streams:
            if not bybit.is_valid_topic(stream, private):
                self._reply(op, rid, False, bybit.handler_not_found(stream), (stream,))
                return
            if self._feed(stream) in self.conn.streams:
                self._reply(op, rid, False, f"error:already subscribed,topic:{stream}", (stream,))
                return
        if self.mx.over_args_limit(self.conn, len(streams), "success=false reply"):
            limit = self.mx.limit_value(LimitName.ARGS_PER_SUBSCRIBE)
            self._reply(op, rid, False, f"args size >{int(limit or 0)}", tuple(streams))
            return
        feeds = [self._feed(s) for s in streams]
        args_chars = sum(len(s.split("@", 1)[0]) for s in self.conn.streams | set(feeds))
        if self.mx.over_payload_limit(self.conn, args_chars, "success=false reply"):
            self._reply(op, rid, False, "error:args length exceeded", tuple(streams))
            return
        new = len(self.conn.streams | set(feeds))
        if self.mx.over_stream_limit(self.conn, new, "success=false reply"):
            self._reply(op, rid, False, "error:topics exceed limit", tuple(streams))
            return
        self.mx.subscribe(self.conn, feeds, private=private)
        self._reply(op, rid, True, topics=tuple(streams))

    def _on_auth(self, request: LoginRequest) -> None:
        rid = request.request_id
        if not self.endpoint.private:
            self._reply("auth", rid, False, "error:invalid op")
            return
        if self.conn.account is not None:
            self._reply("auth", rid, False, "error:repeat auth")
            return
        account = self.mx.settings.account_for_key(request.api_key)
        expires = int(request.fields["expires"])
        if account is None:
            self._reply("auth", rid, False, "error:API key is invalid")
            return
        if expires <= int(time.time() * 1000):
            self._reply("auth", rid, False, "Params Error")
            return
        expected = bybit.auth_signature(account.secret, expires)
        if not hmac.compare_digest(expected, str(request.fields["signature"]).lower()):
            self._reply("auth", rid, False, "error:signature verification failed")
            return
        refused = self.mx.login(self.conn, account, "success=false auth reply")
        if refused is not None:
            self._reply("auth", rid, False, "error:too many sessions")
            return
        self._reply("auth", rid, True, "")

    def _feed(self, topic: str) -> str:
        """The mock's feed of a topic: ``<topic>@<account>`` for private topics (every account
        has its own sequence), the topic itself for public ones."""
        if self.endpoint.private and topic in bybit.PRIVATE_TOPICS:
            return f"{topic}@{self.conn.account}"
        return topic

    def frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        topic = stream.split("@", 1)[0]
        if topic in bybit.PRIVATE_TOPICS:
            return bybit.build_private_data(topic, seq, event_time_ms)
        depth = bybit.orderbook_depth(stream)
        if depth is None:
            prices = self._prices(stream, seq)
            return bybit.build_data(stream, seq, event_time_ms, self.category, prices)
        book = self.mx.books.book(stream, depth, okx_levels=False)
        book.advance(seq)
        return bybit.build_orderbook(
            stream, "delta", book.changed_bids, book.changed_asks, event_time_ms, seq, seq
        )

    def _prices(self, stream: str, seq: int) -> MarketPrices | None:
        """publicTrade and tickers are priced from the symbol's ``orderbook.<depth>`` book
        that REST ``/v5/market/orderbook`` reads for 50 levels; other topics: None."""
        parsed = bybit.parse_stream(stream)
        if parsed.channel not in ("publicTrade", "tickers") or not parsed.symbol:
            return None
        category = self.category if self.category in BYBIT_STREAM_DEPTHS else "spot"
        book_stream = bybit_book_stream(self.mx, category, parsed.symbol, 50)
        depth = bybit.orderbook_depth(book_stream) or 50
        book = self.mx.books.started(book_stream, depth, False, self.mx.feeds)
        trade = parsed.channel == "publicTrade"
        return self.mx.books.prices(stream, seq, parsed.symbol, book, trade=trade)

    def opens_with_snapshot(self, stream: str) -> bool:
        return bybit.orderbook_depth(stream) is not None

    def snapshot_frame(self, stream: str, seq: int, event_time_ms: int) -> str:
        depth = bybit.orderbook_depth(stream)
        if depth is None:
            return self.frame(stream, seq, event_time_ms)
        book = self.mx.books.book(stream, depth, okx_levels=False)
        book.advance(seq)
        return bybit.build_orderbook(
            stream, "snapshot", book.top_bids(), book.top_asks(), event_time_ms, seq, seq
        )

    async def on_rate_exceeded(self, limit: LimitName) -> bool:
        self.send(
            f'{{"success":false,"ret_msg":"error:too many requests","conn_id":"{self.conn.conn_id}"}}'
        )
        return True
