"""An L2 order book as the exchanges send it: price levels keyed by the exchange's own price
string, merged the way OKX and Bybit document, and OKX's checksum.

Both sides use it: the mock exchange keeps one per book stream to send snapshots and updates
that agree with each other, the gateway keeps one per book stream it holds to write a snapshot
for consumers that join late (`connquota/gateway/books.py`). Nothing here does I/O.

Merging (OKX, "Merging incremental into full data"; Bybit, "size 0 means delete the price
level"): a level whose size is 0 is deleted, any other replaces the level at its price or is
inserted; bids sort by price descending, asks ascending.

OKX checksum: "Use first 25 asks and bids from full snapshot to form a string, joining price and
size with colons, alternating bid and ask pairs. Compute CRC32 (32-bit signed integer) of this
string"; when one side has fewer than 25 levels "the missing depth data will be ignored", and
prices are used as sent ("If price is '0.5000', DO NOT calculate the checksum by '0.5'").
Source: https://www.okx.com/docs-v5/en/#order-book-trading-market-data-ws-order-book-channel
(docs/exchange-dialects.md, section 3.4).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

Level = list[str]
"""One level as the exchange sends it: ``[price, size, ...]`` (OKX adds two more strings)."""

OKX_CHECKSUM_LEVELS = 25


def _price(level: Level) -> float:
    return float(level[0])


def _is_zero(size: str) -> bool:
    try:
        return float(size) == 0.0
    except ValueError:
        return False


def as_levels(value: Any) -> list[Level]:
    """The levels of a payload's ``bids``/``asks`` (``b``/``a``) list; malformed entries are
    skipped."""
    if not isinstance(value, list):
        return []
    return [
        item
        for item in value
        if isinstance(item, list)
        and len(item) >= 2
        and isinstance(item[0], str)
        and isinstance(item[1], str)
    ]


@dataclass
class L2Book:
    """Bids and asks keyed by the exchange's price string."""

    bids: dict[str, Level] = field(default_factory=dict)
    asks: dict[str, Level] = field(default_factory=dict)

    def clear(self) -> None:
        """Forget every level (a new snapshot follows)."""
        self.bids.clear()
        self.asks.clear()

    def apply(self, bids: list[Level], asks: list[Level]) -> None:
        """Merge one update: size 0 deletes the level, any other size replaces or inserts it
        (the level lists are kept as given, not copied)."""
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for level in levels:
                if _is_zero(level[1]):
                    side.pop(level[0], None)
                else:
                    side[level[0]] = level

    def sorted_bids(self, depth: int | None = None) -> list[Level]:
        """Bids, best (highest price) first, at most ``depth``."""
        return sorted(self.bids.values(), key=_price, reverse=True)[:depth]

    def sorted_asks(self, depth: int | None = None) -> list[Level]:
        """Asks, best (lowest price) first, at most ``depth``."""
        return sorted(self.asks.values(), key=_price)[:depth]

    def okx_checksum(self) -> int:
        """OKX's checksum of this book (top 25 levels of each side)."""
        return okx_checksum(
            self.sorted_bids(OKX_CHECKSUM_LEVELS), self.sorted_asks(OKX_CHECKSUM_LEVELS)
        )


def okx_checksum_string(bids: list[Level], asks: list[Level]) -> str:
    """``bid1price:bid1size:ask1price:ask1size:...`` over the top 25 of each side (sorted)."""
    parts: list[str] = []
    for i in range(OKX_CHECKSUM_LEVELS):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    return ":".join(parts)


def okx_checksum(bids: list[Level], asks: list[Level]) -> int:
    """CRC32 of `okx_checksum_string`, as a signed 32-bit integer (OKX's ``checksum``)."""
    value = zlib.crc32(okx_checksum_string(bids, asks).encode())
    return value - (1 << 32) if value >= 1 << 31 else value
