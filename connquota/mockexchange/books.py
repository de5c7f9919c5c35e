"""The mock exchange's order books: one per book stream, moved one step per event.

Every connection subscribed to a book stream sees the same book: the first push it gets is a
snapshot of the book at that event, every later one the change of one event (levels whose size
changed, new levels, removed levels with size 0), so a client that merges them as the exchange
documents holds the mock's book, and OKX's checksum of it matches. The steps are drawn from a
generator seeded by the stream name: the same stream moves the same way in every run.

Prices stay in two bands that never cross (bids below asks); a book holds at most
`MAX_LEVELS` per side (fewer when the stream carries fewer: ``books5``, ``bbo-tbt``,
``orderbook.1``), so a client that truncates to the stream's depth never loses a level the mock
still has.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from connquota.exchanges.dialects.base import MarketPrices
from connquota.exchanges.orderbook import L2Book, Level

if TYPE_CHECKING:
    from connquota.mockexchange.feeds import FeedBook

MAX_LEVELS = 40
"""Levels per side of a mock book (real books are deeper; 40 keeps every step cheap)."""


@dataclass
class MockBook:
    """The book of one stream and the change of its latest event."""

    stream: str
    depth: int
    """Levels per side the stream carries."""
    okx_levels: bool
    """OKX levels ``[price, size, "0", orders]`` with 0.1 ticks; else Bybit ``[price, size]``
    with 0.01 ticks written with two decimals."""
    seq: int | None = None
    """The event whose change was applied last (None: not started)."""
    book: L2Book = field(default_factory=L2Book)
    changed_bids: list[Level] = field(default_factory=list)
    changed_asks: list[Level] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(zlib.crc32(self.stream.encode()))
        self._cap = max(1, min(self.depth, MAX_LEVELS))
        self._span = 3 * self._cap + 10
        self._mid = 100_000 + self._rng.randrange(400_000)

    @property
    def cap(self) -> int:
        """Most levels per side this book holds."""
        return self._cap

    def advance(self, seq: int) -> None:
        """Move the book to event ``seq``: one step per call (events nobody received while the
        stream had no subscriber are one step); an event already reached changes nothing."""
        if self.seq is None:
            self._fill()
        elif seq > self.seq:
            self._step()
        else:
            return
        self.seq = seq

    def top_bids(self) -> list[Level]:
        """Bids, best first, at most the stream's depth."""
        return self.book.sorted_bids(self.depth)

    def top_asks(self) -> list[Level]:
        """Asks, best first, at most the stream's depth."""
        return self.book.sorted_asks(self.depth)

    def okx_checksum(self) -> int:
        """OKX's checksum of the book now."""
        return self.book.okx_checksum()

    # -- the generator ----------------------------------------------------------------------

    def _price(self, tick: int) -> str:
        if self.okx_levels:
            whole, tenth = divmod(tick, 10)
            return str(whole) if tenth == 0 else f"{whole}.{tenth}"
        whole, cents = divmod(tick, 100)
        return f"{whole}.{cents:02d}"

    def _size(self) -> str:
        return f"{self._rng.randint(1, 50_000) / 1000:.3f}"

    def _level(self, price: str, size: str) -> Level:
        if self.okx_levels:
            return [price, size, "0", "0" if size == "0" else str(self._rng.randint(1, 20))]
        return [price, size]

    def _band(self, bid: bool) -> range:
        if bid:
            return range(self._mid - self._span, self._mid)
        return range(self._mid + 1, self._mid + 1 + self._span)

    def _free_price(self, bid: bool) -> str | None:
        side = self.book.bids if bid else self.book.asks
        for _ in range(8):
            price = self._price(self._rng.choice(self._band(bid)))
            if price not in side:
                return price
        return None

    def _fill(self) -> None:
        self.book.clear()
        count = self._cap if self._cap <= 5 else self._cap - 5
        for bid in (True, False):
            side = self.book.bids if bid else self.book.asks
            while len(side) < count:
                price = self._free_price(bid)
                if price is not None:
                    side[price] = self._level(price, self._size())
        self.changed_bids = self.book.sorted_bids()
        self.changed_asks = self.book.sorted_asks()

    def _step(self) -> None:
        changes: dict[bool, dict[str, Level]] = {True: {}, False: {}}
        for _ in range(self._rng.randint(1, 3)):
            bid = self._rng.random() < 0.5
            side = self.book.bids if bid else self.book.asks
            roll = self._rng.random()
            low = max(1, self._cap - 10)
            if not side or (len(side) < self._cap and roll < 0.3):
                self._insert(bid, changes[bid])
            elif len(side) > low and roll < 0.55:
                self._remove(bid, changes[bid])
            elif self._cap <= 5 and roll < 0.7:
                self._remove(bid, changes[bid])
                self._insert(bid, changes[bid])
            else:
                price = self._rng.choice(sorted(side))
                level = side[price] = self._level(price, self._size())
                changes[bid][price] = level
        self.changed_bids = list(changes[True].values())
        self.changed_asks = list(changes[False].values())

    def _insert(self, bid: bool, changes: dict[str, Level]) -> None:
        price = self._free_price(bid)
        if price is not None:
            level = self._level(price, self._size())
            (self.book.bids if bid else self.book.asks)[price] = level
            changes[price] = level

    def _remove(self, bid: bool, changes: dict[str, Level]) -> None:
        side = self.book.bids if bid else self.book.asks
        price = self._rng.choice(sorted(side))
        del side[price]
        changes[price] = self._level(price, "0")


class MockBooks:
    """Every book stream of one mock exchange."""

    def __init__(self) -> None:
        self.books: dict[str, MockBook] = {}
        self.binance_books: dict[str, BinanceBook] = {}
        self.last_trades: dict[str, str] = {}
        """Instrument -> the price of the latest trade the mock pushed for it (OKX, Bybit)."""
        self._prices: dict[str, tuple[int, MarketPrices]] = {}
        """Trade or ticker stream -> (seq, prices) of its latest event."""

    def started(self, stream: str, depth: int, okx_levels: bool, feeds: FeedBook) -> MockBook:
        """The book of ``stream``, started if no push started it yet (at the stream's last
        event, or the feeds' first sequence when nobody subscribed): a REST snapshot or a
        ticker reads it, a later subscriber's snapshot and updates continue from it."""
        book = self.book(stream, depth, okx_levels)
        if book.seq is None:
            feed = feeds.feeds.get(stream)
            book.advance(feed.last_sent if feed is not None else feeds.first_seq)
        return book

    def prices(
        self, stream: str, seq: int, instrument: str, book: MockBook, trade: bool
    ) -> MarketPrices:
        """Prices of event ``seq`` of trade or ticker ``stream`` of ``instrument`` from
        ``book`` (the same for every connection that asks again for ``seq``): the best bid and
        ask; a trade takes the best ask (a buy, even ``seq``) or the best bid (a sell) and
        becomes the instrument's last price; a ticker's last is the latest trade's price while
        it lies within the best bid and ask, else the nearer of them (the best bid when nothing
        traded yet)."""
        cached = self._prices.get(stream)
        if cached is not None and cached[0] == seq:
            return cached[1]
        bid, ask = book.top_bids()[0], book.top_asks()[0]
        if trade:
            last = ask[0] if seq % 2 == 0 else bid[0]
            self.last_trades[instrument] = last
        else:
            last = self.last_trades.get(instrument, bid[0])
            if float(last) < float(bid[0]):
                last = bid[0]
            elif float(last) > float(ask[0]):
                last = ask[0]
        prices = MarketPrices(list(bid), list(ask), last)
        self._prices[stream] = (seq, prices)
        return prices

    def book(self, stream: str, depth: int, okx_levels: bool) -> MockBook:
        """The book of ``stream`` (created, not yet started, the first time)."""
        book = self.books.get(stream)
        if book is None:
            book = self.books[stream] = MockBook(stream, depth, okx_levels)
        return book

    def binance(self, symbol: str) -> BinanceBook:
        """The book of Binance symbol ``symbol`` (upper case), created the first time."""
        book = self.binance_books.get(symbol)
        if book is None:
            book = self.binance_books[symbol] = BinanceBook(symbol)
        return book


BINANCE_LEVELS = 200
"""Most levels per side of a Binance symbol's book (a REST ``limit`` above it returns them
all); it keeps between 180 and 200."""
BINANCE_TOUCH_MEMORY = 100_000
"""Update ids a price change is remembered for (a diff covers at most this many)."""


@dataclass
class BinanceDiff:
    """One diff event of a Binance depth stream: first and final update id, changed levels."""

    seq: int
    first_id: int
    final_id: int
    prev_final_id: int
    """The final update id of the stream's previous event (USD-M ``pu``)."""
    bids: list[Level]
    asks: list[Level]


class BinanceBook:
    """The order book of one Binance symbol, shared by every depth stream of that symbol
    (``@depth``, ``@depth@100ms``, ``@depth5``...) and by REST ``/api/v3/depth``.

    Each update changes one level and takes the next update id (``lastUpdateId``). A stream's
    event covers every update since the stream's previous event: ``U`` = previous ``u`` + 1,
    ``u`` = the book's update id, levels = every price changed in between at its quantity now
    (``0`` when removed), so a client that applies Binance's "How to manage a local order book
    correctly" procedure to the stream and a REST snapshot holds this book."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self._rng = random.Random(zlib.crc32(("binance:" + symbol).encode()))
        self._mid = 2_000_000 + self._rng.randrange(4_000_000)  # in 0.01 ticks
        self.update_id = 1_000_000 + self._rng.randrange(1_000_000)
        self.book = L2Book()
        self._touched: tuple[dict[str, int], dict[str, int]] = ({}, {})
        """(bids, asks): price -> the update id that changed it last."""
        self._events: dict[str, BinanceDiff] = {}
        """Depth stream -> its latest event."""
        self.payloads: dict[str, tuple[int, dict[str, object]]] = {}
        """Other streams of the symbol (trades, tickers, klines) -> (seq, payload) of their
        latest event (the same event for every connection; a kline's next event reads it)."""
        self._fill()

    @staticmethod
    def _price(tick: int) -> str:
        whole, cents = divmod(tick, 100)
        return f"{whole}.{cents:02d}000000"

    def _qty(self) -> str:
        return f"{self._rng.randint(1, 500_000) / 100_000:.8f}"

    def _band(self, bid: bool) -> range:
        span = 3 * BINANCE_LEVELS
        return range(self._mid - span, self._mid) if bid else range(self._mid + 1, self._mid + span)

    def _fill(self) -> None:
        for bid in (True, False):
            side = self.book.bids if bid else self.book.asks
            while len(side) < BINANCE_LEVELS - 10:
                price = self._price(self._rng.choice(self._band(bid)))
                side[price] = [price, self._qty()]

    def step(self) -> None:
        """One update: a level inserted, removed or resized (the next update id)."""
        bid = self._rng.random() < 0.5
        side = self.book.bids if bid else self.book.asks
        roll = self._rng.random()
        if len(side) < BINANCE_LEVELS and (roll < 0.3 or len(side) < BINANCE_LEVELS - 20):
            price = self._price(self._rng.choice(self._band(bid)))
            side[price] = [price, self._qty()]
        elif roll < 0.55 and len(side) > BINANCE_LEVELS - 20:
            price = self._rng.choice(sorted(side))
            del side[price]
        else:
            price = self._rng.choice(sorted(side))
            side[price] = [price, self._qty()]
        self.update_id += 1
        touched = self._touched[0 if bid else 1]
        touched[price] = self.update_id
        if len(touched) > 4 * BINANCE_LEVELS:
            oldest = self.update_id - BINANCE_TOUCH_MEMORY
            for key in [k for k, v in touched.items() if v <= oldest and k not in side]:
                del touched[key]

    def changed_after(self, after_id: int) -> tuple[list[Level], list[Level]]:
        """Every level changed by an update after ``after_id``, as it is now (removed: 0)."""
        out: tuple[list[Level], list[Level]] = ([], [])
        for index, side in enumerate((self.book.bids, self.book.asks)):
            for price, uid in self._touched[index].items():
                if uid > after_id:
                    level = side.get(price)
                    out[index].append(list(level) if level else [price, "0.00000000"])
        out[0].sort(key=lambda lv: float(lv[0]), reverse=True)
        out[1].sort(key=lambda lv: float(lv[0]))
        return out

    def diff(self, stream: str, seq: int) -> BinanceDiff:
        """The event ``seq`` of diff stream ``stream``: the book moves 1-3 updates, the event
        covers every update since the stream's previous event (the same event for every
        connection that asks again for ``seq``)."""
        last = self._events.get(stream)
        if last is not None and last.seq == seq:
            return last
        start = self.update_id
        for _ in range(self._rng.randint(1, 3)):
            self.step()
        # a stream whose previous event was not the one just before (nobody listened in
        # between) starts over: its event covers the updates made now
        after = last.final_id if last is not None and seq == last.seq + 1 else start
        if self.update_id - after > BINANCE_TOUCH_MEMORY:
            after = start
        bids, asks = self.changed_after(after)
        event = BinanceDiff(seq, after + 1, self.update_id, after, bids, asks)
        self._events[stream] = event
        return event

    def partial(self, stream: str, seq: int, depth: int) -> tuple[int, list[Level], list[Level]]:
        """Event ``seq`` of partial-depth stream ``stream``: (lastUpdateId, top bids, top asks)
        after the book moved 1-3 updates."""
        last = self._events.get(stream)
        if last is None or last.seq != seq:
            for _ in range(self._rng.randint(1, 3)):
                self.step()
            last = BinanceDiff(seq, self.update_id, self.update_id, self.update_id, [], [])
            self._events[stream] = last
        return last.final_id, self.top_bids(depth), self.top_asks(depth)

    def top_bids(self, depth: int) -> list[Level]:
        """Bids, best first, at most ``depth``."""
        return self.book.sorted_bids(depth)

    def top_asks(self, depth: int) -> list[Level]:
        """Asks, best first, at most ``depth``."""
        return self.book.sorted_asks(depth)

    def best(self) -> tuple[str, str]:
        """(best bid price, best ask price)."""
        return self.top_bids(1)[0][0], self.top_asks(1)[0][0]
