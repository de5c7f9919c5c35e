"""Order-book replays: what a consumer that joins a book stream late gets first.

For every order-book stream the hub delivers (OKX ``books``, ``books-l2-tbt``,
``books50-l2-tbt``, ``books5``, ``bbo-tbt``; Bybit ``orderbook.<depth>.<symbol>``; Kraken
``book``; Coinbase ``level2``, the whole book; Deribit ``book.<instrument>.<interval>``, the
whole book), `BookReplays`
keeps the newest snapshot the exchange sent and the exchange's updates since, as the exchange
sent them (payload JSON, never re-encoded), with the hub's sequence numbers and the exchange's
own. A new consumer of the stream gets them, in order, before any live message: snapshot, then
every update, then the live updates that follow without a gap or a duplicate (the hub takes the
replay and registers the consumer in one step, see `hub.StreamHub.subscribe`).

The updates kept are bounded (`max_deltas` messages, `max_bytes` of JSON). At the bound the
gateway's own copy of the book, merged from the snapshot and every update as the exchanges
document it, becomes a snapshot in the exchange's format: OKX ``action: snapshot`` with
``prevSeqId`` -1, the ``seqId`` and ``ts`` of the last update and the checksum of the merged book
(checked against the last update's own checksum: a book that disagrees is dropped, not served);
Bybit ``type: snapshot`` with the ``u``, ``seq``, ``ts`` and ``cts`` of the last update. Its
sequence numbers are those of the last update it contains, so the updates after it follow on.
Coinbase: an ``l2_data`` ``snapshot`` of every level, with the last update's ``timestamp``.
Deribit: a ``type: snapshot`` of every level (``["new", price, amount]``) with the ``change_id``
and ``timestamp`` of the last change, so the next change's ``prev_change_id`` follows it.

A new snapshot from the exchange (a reconnected upstream connection starts with one; Bybit
re-sends one after a problem on its side) replaces everything kept. ``books5`` and ``bbo-tbt``
are a snapshot every push: the newest is the replay. Updates that arrive before any snapshot are
not kept (there is nothing to replay them onto). Pure: no I/O, no clock.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

from connquota.exchanges.dialects import bybit, coinbase, deribit, kraken, okx
from connquota.exchanges.dialects.base import loads_object
from connquota.exchanges.orderbook import L2Book, as_levels

log = logging.getLogger(__name__)

DEFAULT_MAX_DELTAS = 500
"""Updates kept per stream before they are merged into a snapshot."""
DEFAULT_MAX_BYTES = 512 * 1024
"""JSON bytes of updates kept per stream before they are merged into a snapshot."""

OKX = "okx"
BYBIT = "bybit"
KRAKEN = "kraken"
COINBASE = "coinbase"
COINBASE_DEPTH = 1_000_000
"""Coinbase level2 is the whole book (no depth): every level is kept."""
DERIBIT = "deribit"
DERIBIT_DEPTH = 1_000_000
"""Deribit ``book.<instrument>.<interval>`` is the whole book: every level is kept."""

Kept = tuple[int, str, int | None]
"""(hub sequence, payload JSON as sent, exchange sequence) of one message."""


def book_dialect(stream: str) -> str | None:
    """``okx``, ``bybit`` or ``kraken`` when ``stream`` is an order-book stream of that exchange
    (by its name: ``books:BTC-USDT``, ``orderbook.50.BTCUSDT``, ``book.25:BTC/USD``), else
    None."""
    if bybit.orderbook_depth(stream) is not None:
        return BYBIT
    channel, sep, rest = stream.partition(":")
    if sep and rest and "=" not in rest and channel in okx.BOOK_DEPTHS:
        return OKX
    if sep and rest and (channel == "book" or channel.startswith("book.")):
        return KRAKEN
    if sep and rest and channel == "level2":
        return COINBASE
    if not sep and stream.startswith("book."):
        try:
            deribit.stream_parts(stream)
        except ValueError:
            return None
        return DERIBIT
    return None


@dataclass
class StreamBook:
    """What is kept of one book stream: the base snapshot, the updates since, the merged book."""

    dialect: str
    depth: int
    base: Kept | None = None
    deltas: deque[Kept] = field(default_factory=deque)
    delta_bytes: int = 0
    book: L2Book = field(default_factory=L2Book)
    last: dict[str, Any] = field(default_factory=dict)
    """The last update's payload (its sequence fields and timestamps go into a snapshot)."""

    def replay(self) -> list[Kept]:
        """Snapshot, then every update since, oldest first (nothing before a snapshot)."""
        if self.base is None:
            return []
        return [self.base, *self.deltas]


class BookReplays:
    """Book streams' replays for late joiners (see the module text)."""

    def __init__(
        self, max_deltas: int = DEFAULT_MAX_DELTAS, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_deltas = max_deltas
        self.max_bytes = max_bytes
        self.streams: dict[str, StreamBook | None] = {}
        """stream -> its book, or None for a stream that is not an order book."""
        self.compactions = 0
        self.diverged = 0
        """Merged books whose checksum disagreed with the exchange's (dropped)."""

    def _book(self, stream: str) -> StreamBook | None:
        try:
            return self.streams[stream]
        except KeyError:
            pass
        dialect = book_dialect(stream)
        book = None
        if dialect == OKX:
            book = StreamBook(OKX, okx.BOOK_DEPTHS[stream.partition(":")[0]])
        elif dialect == BYBIT:
            book = StreamBook(BYBIT, bybit.orderbook_depth(stream) or 0)
        elif dialect == KRAKEN:
            try:
                depth = kraken.stream_parts(stream)[2] or kraken.DEFAULT_BOOK_DEPTH
            except ValueError:
                depth = None
            book = StreamBook(KRAKEN, depth) if depth is not None else None
        elif dialect == COINBASE:
            book = StreamBook(COINBASE, COINBASE_DEPTH)
        elif dialect == DERIBIT:
            book = StreamBook(DERIBIT, DERIBIT_DEPTH)
        self.streams[stream] = book
        return book

    def tracks(self, stream: str) -> bool:
        """Whether ``stream`` is an order-book stream (kept here)."""
        return self._book(stream) is not None

    def has(self, stream: str) -> bool:
        """Whether a replay (starting with a snapshot) is ready for ``stream``."""
        book = self.streams.get(stream)
        return book is not None and book.base is not None

    def replay(self, stream: str) -> list[Kept]:
        """What a new consumer of ``stream`` gets before live messages (may be empty)."""
        book = self.streams.get(stream)
        return [] if book is None else book.replay()

    def forget(self, stream: str) -> None:
        """Drop what is kept of ``stream`` (it is no longer delivered here)."""
        book = self.streams.get(stream)
        if book is not None:
            self.streams[stream] = StreamBook(book.dialect, book.depth)

    def restarts(self, stream: str, payload: Any, data: str | None) -> bool:
        """Whether this message is a snapshot of a book stream with nothing kept: it starts
        the book over even when the exchange's sequence says it was seen (a relayed stream
        wanted again gets its owner's replay, older than what was delivered before)."""
        book = self._book(stream)
        if book is None or book.base is not None:
            return False
        message = _message(payload, data)
        return message is not None and _is_snapshot(book, message)

    def record(
        self, stream: str, seq: int, data: str | None, payload: Any, useq: int | None
    ) -> None:
        """Keep one delivered message of ``stream`` (hub sequence ``seq``, payload JSON ``data``
        as sent, parsed ``payload`` when the caller has it, exchange sequence ``useq``)."""
        book = self._book(stream)
        if book is None:
            return
        # Kraken: the checksum needs the numbers as sent
        exact = book.dialect == KRAKEN
        message = _exact(payload, data) if exact else _message(payload, data)
        if message is None:
            return
        text = data if data is not None else orjson.dumps(message).decode()
        kept: Kept = (seq, text, useq)
        if _is_snapshot(book, message):
            book.base = kept
            book.deltas.clear()
            book.delta_bytes = 0
            book.book.clear()
            _apply(book, message)
            if book.dialect == KRAKEN:
                book.last = message
                self._verify(stream, book, message)
            return
        if book.base is None:
            return
        _apply(book, message)
        if book.dialect == KRAKEN and not self._verify(stream, book, message):
            return
        book.deltas.append(kept)
        book.delta_bytes += len(text)
        book.last = message
        if len(book.deltas) >= self.max_deltas or book.delta_bytes >= self.max_bytes:
            self._compact(stream, book)

    def _verify(self, stream: str, book: StreamBook, message: dict[str, Any]) -> bool:
        """Kraken: the merged book's checksum against the message's own (every snapshot and
        update carries one); a book that disagrees is counted, dropped and not served to late
        joiners until the exchange's next snapshot. True when it agrees."""
        sent = _item(message).get("checksum")
        try:
            expected = int(sent) if sent is not None else None
        except (TypeError, ValueError):
            expected = None
        got = kraken.book_checksum(book.book.sorted_bids(), book.book.sorted_asks())
        if expected is None or expected == got:
            return True
        self.diverged += 1
        log.warning(
            "order book %s: checksum %s from the exchange, %s computed: the book is corrupt; "
            "not served to late joiners until the exchange's next snapshot",
            stream,
            expected,
            got,
            extra={"stream": stream},
        )
        self.forget(stream)
        return False

    def compact(self, stream: str) -> None:
        """Merge the updates kept for ``stream`` into its snapshot now (a consumer whose queue
        could not take them all gets one message instead)."""
        book = self.streams.get(stream)
        if book is not None and book.base is not None and book.deltas:
            self._compact(stream, book)

    def _compact(self, stream: str, book: StreamBook) -> None:
        seq, _, useq = book.deltas[-1]
        text = _snapshot_text(stream, book)
        if text is None:
            self.diverged += 1
            log.warning(
                "the merged order book of %s disagrees with the exchange's checksum: not served "
                "to late joiners until the exchange's next snapshot",
                stream,
                extra={"stream": stream},
            )
            self.forget(stream)
            return
        book.base = (seq, text, useq)
        book.deltas.clear()
        book.delta_bytes = 0
        self.compactions += 1


def _message(payload: Any, data: str | None) -> dict[str, Any] | None:
    if isinstance(payload, dict):
        return payload
    return loads_object(data) if data is not None else None


def _exact(payload: Any, data: str | None) -> dict[str, Any] | None:
    """A Kraken book message with its numbers as the exchange wrote them."""
    if data is None:
        return payload if isinstance(payload, dict) else None
    try:
        obj = kraken.loads_exact(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _item(message: dict[str, Any]) -> dict[str, Any]:
    """OKX's (and Kraken's) ``data[0]``."""
    data = message.get("data")
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return {}


def _is_snapshot(book: StreamBook, message: dict[str, Any]) -> bool:
    if book.dialect == OKX:
        return message.get("action") != "update"  # books5, bbo-tbt: no action, whole each time
    if book.dialect == COINBASE:
        return coinbase.is_snapshot(message)
    if book.dialect == DERIBIT:
        return _deribit_data(message).get("type") == "snapshot"
    return message.get("type") == "snapshot"


def _deribit_data(message: dict[str, Any]) -> dict[str, Any]:
    """Deribit's ``params.data``."""
    params = message.get("params")
    data = params.get("data") if isinstance(params, dict) else None
    return data if isinstance(data, dict) else {}


def _deribit_levels(value: Any) -> list[list[str]]:
    """``[["new"|"change"|"delete", price, amount], ..]`` -> ``[[price, amount]]`` (a deleted
    level's amount is ``0``); malformed entries are skipped."""
    out: list[list[str]] = []
    for level in value if isinstance(value, list) else ():
        if isinstance(level, list) and len(level) == 3:
            action, price, amount = level
            if isinstance(price, (int, float)) and isinstance(amount, (int, float)):
                out.append([str(price), "0" if action == "delete" else str(amount)])
    return out


def _apply(book: StreamBook, message: dict[str, Any]) -> None:
    if book.dialect == DERIBIT:
        change = _deribit_data(message)
        book.book.apply(_deribit_levels(change.get("bids")), _deribit_levels(change.get("asks")))
        return
    if book.dialect == COINBASE:  # level2 ``updates``: side, price_level, new_quantity
        book.book.apply(*coinbase.levels_of(message))
        return
    if book.dialect == KRAKEN:
        item = _item(message)
        book.book.apply(kraken.levels_of(item.get("bids")), kraken.levels_of(item.get("asks")))
        # "the book should be truncated to your subscribed depth as you won't receive
        # "qty": 0 for price levels that fall out of scope"
        for side, best in ((book.book.bids, book.book.sorted_bids),
                           (book.book.asks, book.book.sorted_asks)):  # fmt: skip
            if len(side) > book.depth:
                for level in best()[book.depth :]:
                    side.pop(level[0], None)
        return
    if book.dialect == OKX:
        item = _item(message)
        book.book.apply(as_levels(item.get("bids")), as_levels(item.get("asks")))
        return
    data = message.get("data")
    if isinstance(data, dict):
        book.book.apply(as_levels(data.get("b")), as_levels(data.get("a")))


def _snapshot_text(stream: str, book: StreamBook) -> str | None:
    """The merged book as the exchange's snapshot after the last update, or None when an OKX
    checksum disagrees."""
    bids = book.book.sorted_bids(book.depth)
    asks = book.book.sorted_asks(book.depth)
    last = book.last
    if book.dialect == KRAKEN:
        checksum = kraken.book_checksum(bids, asks)
        return kraken.build_book(stream, bids, asks, checksum, None, "snapshot")
    if book.dialect == DERIBIT:  # the change_id of the last change: the next one follows it
        newest = _deribit_data(last)
        change_id = newest.get("change_id")
        stamp = newest.get("timestamp")
        return deribit.build_book(
            stream,
            "snapshot",
            change_id if isinstance(change_id, int) else 0,
            None,
            [["new", float(p), float(q)] for p, q, *_ in bids],
            [["new", float(p), float(q)] for p, q, *_ in asks],
            stamp if isinstance(stamp, int) else 0,
        )
    if book.dialect == COINBASE:
        event_ms = coinbase.parse_time_ms(last.get("timestamp")) or 0
        return coinbase.build_level2(stream, bids, asks, event_ms, "snapshot")
    if book.dialect == OKX:
        item = _item(last)
        checksum = book.book.okx_checksum()
        sent = item.get("checksum")
        if isinstance(sent, int) and sent != 0 and sent != checksum:
            return None
        snapshot_item: dict[str, Any] = {"asks": asks, "bids": bids, "ts": item.get("ts")}
        snapshot_item.update({"checksum": checksum, "prevSeqId": -1, "seqId": item.get("seqId")})
        body = {"arg": last.get("arg"), "action": "snapshot", "data": [snapshot_item]}
        return orjson.dumps(body).decode()
    data = last.get("data")
    data = data if isinstance(data, dict) else {}
    book_data = {"s": data.get("s"), "b": bids, "a": asks, "u": data.get("u"),
                 "seq": data.get("seq")}  # fmt: skip
    body = {"topic": last.get("topic", stream), "type": "snapshot", "ts": last.get("ts"),
            "data": book_data}  # fmt: skip
    if "cts" in last:
        body["cts"] = last["cts"]
    return orjson.dumps(body).decode()
