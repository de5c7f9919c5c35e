"""Deribit book replays: the snapshot merged from the exchange's snapshot and changes carries the
last change_id, so the next live change's prev_change_id follows it."""

from __future__ import annotations

import json

from connquota.exchanges.dialects import deribit
from connquota.gateway.books import DERIBIT, BookReplays, book_dialect

STREAM = "book.BTC-PERPETUAL.100ms"


def _msg(kind: str, change_id: int, bids: list, asks: list) -> str:
    prev = None if kind == "snapshot" else change_id - 1
    return deribit.build_book(STREAM, kind, change_id, prev, bids, asks, 1_000 + change_id)


def test_deribit_book_streams_are_recognised() -> None:
    assert book_dialect(STREAM) == DERIBIT
    assert book_dialect("book.BTC-PERPETUAL.agg2") == DERIBIT
    assert book_dialect("trades.BTC-PERPETUAL.100ms") is None
    assert book_dialect("book.25:BTC/USD") == "kraken"


def test_compacted_replay_is_a_snapshot_at_the_last_change_id() -> None:
    books = BookReplays(max_deltas=2)
    frames = [
        _msg("snapshot", 10, [["new", 100.0, 5.0], ["new", 99.5, 1.0]], [["new", 101.0, 2.0]]),
        _msg("change", 11, [["delete", 99.5, 0.0]], [["new", 101.5, 3.0]]),
        _msg("change", 12, [["change", 100.0, 7.0]], []),
    ]
    for seq, text in enumerate(frames, start=1):
        books.record(STREAM, seq, text, json.loads(text), None)
    (base,) = books.replay(STREAM)
    assert base[0] == 3, "the snapshot stands for the last change"
    data = json.loads(base[1])["params"]["data"]
    assert data["type"] == "snapshot" and data["change_id"] == 12
    assert "prev_change_id" not in data and data["timestamp"] == 1_012
    assert data["bids"] == [["new", 100.0, 7.0]]
    assert data["asks"] == [["new", 101.0, 2.0], ["new", 101.5, 3.0]]
    nxt = json.loads(_msg("change", 13, [], []))
    assert deribit.continuity(nxt) == (data["change_id"], 13)
