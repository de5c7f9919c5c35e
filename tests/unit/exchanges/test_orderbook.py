"""The L2 book and OKX's checksum, as documented; the mock exchange's books agree with both."""

from __future__ import annotations

import json

from connquota.exchanges.dialects import bybit, okx
from connquota.exchanges.orderbook import L2Book, okx_checksum, okx_checksum_string
from connquota.mockexchange.books import MockBooks

# OKX, "Checksum" of the order book channel (docs/exchange-dialects.md, section 3.4): the check
# strings are OKX's; the signed CRC32 values are the ones OKX's v3 documentation printed
# beside the same two books ("checksum": -1881014294 and 831078360).
DOC_BIDS_1 = [["3366.1", "7", "0", "3"], ["3366", "6", "3", "4"]]
DOC_ASKS_1 = [["3366.8", "9", "10", "3"], ["3368", "8", "3", "4"]]
DOC_BIDS_2 = [["3366.1", "7", "0", "3"]]
DOC_ASKS_2 = [["3366.8", "9", "10", "3"], ["3368", "8", "3", "4"], ["3372", "8", "3", "4"]]


def test_okx_checksum_of_the_documented_examples() -> None:
    assert okx_checksum_string(DOC_BIDS_1, DOC_ASKS_1) == "3366.1:7:3366.8:9:3366:6:3368:8"
    assert okx_checksum(DOC_BIDS_1, DOC_ASKS_1) == -1881014294
    assert okx_checksum_string(DOC_BIDS_2, DOC_ASKS_2) == "3366.1:7:3366.8:9:3368:8:3372:8"
    assert okx_checksum(DOC_BIDS_2, DOC_ASKS_2) == 831078360


def test_okx_checksum_takes_25_levels_per_side_and_prices_as_sent() -> None:
    book = L2Book()
    book.apply(
        [[f"{1000 - i}.50", "1"] for i in range(30)], [[f"{1001 + i}.50", "2"] for i in range(30)]
    )
    text = okx_checksum_string(book.sorted_bids(25), book.sorted_asks(25))
    assert text.startswith("1000.50:1:1001.50:2:999.50:1:1002.50:2")
    assert text.count(":") == 25 * 4 - 1
    assert "975.50" not in text and "1026.50" not in text


def test_merging_deletes_size_zero_replaces_and_inserts_in_price_order() -> None:
    book = L2Book()
    book.apply([["100", "1"], ["99", "2"]], [["101", "1"], ["102", "5"]])
    book.apply([["99", "0"], ["99.5", "3"]], [["101", "4"], ["100.5", "1"]])
    assert book.sorted_bids() == [["100", "1"], ["99.5", "3"]]
    assert book.sorted_asks() == [["100.5", "1"], ["101", "4"], ["102", "5"]]


def test_mock_okx_book_updates_agree_with_its_snapshot_and_checksums() -> None:
    stream = "books:BTC-USDT"
    book = MockBooks().book(stream, okx.BOOK_DEPTHS["books"], okx_levels=True)
    book.advance(10)
    snapshot = json.loads(
        okx.build_book(
            stream, book.top_bids(), book.top_asks(), 1, 10, "snapshot", -1, book.okx_checksum()
        )
    )
    assert snapshot["action"] == "snapshot" and snapshot["data"][0]["prevSeqId"] == -1
    client = L2Book()
    item = snapshot["data"][0]
    client.apply(item["bids"], item["asks"])
    assert client.okx_checksum() == item["checksum"]
    removed = 0
    for seq in range(11, 600):
        book.advance(seq)
        text = okx.build_book(
            stream,
            book.changed_bids,
            book.changed_asks,
            1,
            seq,
            "update",
            seq - 1,
            book.okx_checksum(),
        )
        item = json.loads(text)["data"][0]
        removed += sum(1 for level in item["bids"] + item["asks"] if level[1] == "0")
        client.apply(item["bids"], item["asks"])
        assert client.okx_checksum() == item["checksum"], seq
        assert float(client.sorted_bids(1)[0][0]) < float(client.sorted_asks(1)[0][0])
    assert removed > 20, "updates remove levels (size 0), not only change them"


def test_mock_books5_and_bybit_level_1_keep_their_depth() -> None:
    books = MockBooks()
    five = books.book("books5:BTC-USDT", 5, okx_levels=True)
    one = books.book("orderbook.1.BTCUSDT", 1, okx_levels=False)
    for seq in range(1, 200):
        five.advance(seq)
        one.advance(seq)
        assert len(five.top_bids()) <= 5 and len(five.top_asks()) <= 5
        assert len(one.book.bids) == 1 and len(one.book.asks) == 1
    pushed = json.loads(okx.build_book("books5:BTC-USDT", five.top_bids(), five.top_asks(), 1, 199))
    assert "action" not in pushed and set(pushed["data"][0]) == {
        "asks",
        "bids",
        "instId",
        "ts",
        "seqId",
    }
    delta = json.loads(
        bybit.build_orderbook(
            "orderbook.1.BTCUSDT", "delta", one.changed_bids, one.changed_asks, 1, 199, 199
        )
    )
    assert (
        delta["type"] == "delta" and delta["data"]["u"] == 199 and delta["data"]["s"] == "BTCUSDT"
    )
