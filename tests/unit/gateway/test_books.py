"""Order-book replays: a late joiner gets the newest snapshot and the updates since, then live
updates; kept updates are bounded and merged into a snapshot in the exchange's format."""

from __future__ import annotations

import json

from connquota.exchanges.dialects import bybit, okx
from connquota.exchanges.orderbook import L2Book
from connquota.gateway.books import BookReplays, book_dialect
from connquota.gateway.hub import FMT_ENVELOPE, FMT_PAYLOAD, FMT_PEER, StreamHub
from connquota.gateway.wsframe import frame_payload
from connquota.mockexchange.books import MockBooks

OKX_STREAM = "books:BTC-USDT"
BYBIT_STREAM = "orderbook.50.BTCUSDT"


def okx_frames(first: int, count: int) -> list[str]:
    """A snapshot at ``first`` then ``count - 1`` updates, as the mock exchange builds them."""
    book = MockBooks().book(OKX_STREAM, 400, okx_levels=True)
    book.advance(first)
    out = [
        okx.build_book(
            OKX_STREAM,
            book.top_bids(),
            book.top_asks(),
            7,
            first,
            "snapshot",
            -1,
            book.okx_checksum(),
        )
    ]
    for seq in range(first + 1, first + count):
        book.advance(seq)
        out.append(
            okx.build_book(
                OKX_STREAM,
                book.changed_bids,
                book.changed_asks,
                7,
                seq,
                "update",
                seq - 1,
                book.okx_checksum(),
            )
        )
    return out


def bybit_frames(first: int, count: int) -> list[str]:
    book = MockBooks().book(BYBIT_STREAM, 50, okx_levels=False)
    book.advance(first)
    out = [
        bybit.build_orderbook(
            BYBIT_STREAM, "snapshot", book.top_bids(), book.top_asks(), 7, first, first
        )
    ]
    for seq in range(first + 1, first + count):
        book.advance(seq)
        out.append(
            bybit.build_orderbook(
                BYBIT_STREAM, "delta", book.changed_bids, book.changed_asks, 7, seq, seq
            )
        )
    return out


def record_all(replays: BookReplays, stream: str, frames: list[str], useq0: int) -> None:
    for i, text in enumerate(frames):
        replays.record(stream, i + 1, text, json.loads(text), useq0 + i)


def merged_okx(texts: list[str]) -> tuple[L2Book, int]:
    """A client's book after ``texts`` (first a snapshot), checking every checksum and seqId."""
    book = L2Book()
    last = None
    for text in texts:
        msg = json.loads(text)
        item = msg["data"][0]
        if msg["action"] == "snapshot":
            book.clear()
            assert item["prevSeqId"] == -1
        else:
            assert item["prevSeqId"] == last
        book.apply(item["bids"], item["asks"])
        assert book.okx_checksum() == item["checksum"]
        last = item["seqId"]
    assert last is not None
    return book, last


def test_book_streams_are_recognised_by_name() -> None:
    assert book_dialect("books:BTC-USDT") == "okx"
    assert book_dialect("bbo-tbt:BTC-USDT") == "okx"
    assert book_dialect("orderbook.1.BTCUSDT") == "bybit"
    assert book_dialect("trades:BTC-USDT") is None
    assert book_dialect("publicTrade.BTCUSDT") is None
    assert book_dialect("btcusdt@depth") is None


def test_replay_is_the_snapshot_then_every_update_as_sent() -> None:
    replays = BookReplays()
    frames = okx_frames(100, 10)
    record_all(replays, OKX_STREAM, frames, 100)
    kept = replays.replay(OKX_STREAM)
    assert [k[0] for k in kept] == list(range(1, 11))
    assert [k[1] for k in kept] == frames, "the exchange's bytes, never re-encoded"
    assert [k[2] for k in kept] == list(range(100, 110))


def test_updates_before_any_snapshot_are_not_kept() -> None:
    replays = BookReplays()
    frames = okx_frames(100, 5)[1:]
    record_all(replays, OKX_STREAM, frames, 101)
    assert replays.replay(OKX_STREAM) == [] and not replays.has(OKX_STREAM)


def test_at_the_bound_the_book_becomes_a_snapshot_with_the_documented_checksum() -> None:
    replays = BookReplays(max_deltas=50)
    frames = okx_frames(1000, 131)
    record_all(replays, OKX_STREAM, frames, 1000)
    kept = replays.replay(OKX_STREAM)
    assert replays.compactions == 2 and replays.diverged == 0
    assert len(kept) == 1 + 30 and kept[0][0] == 101 and kept[0][2] == 1100
    snapshot = json.loads(kept[0][1])
    assert snapshot["action"] == "snapshot" and snapshot["arg"] == {
        "channel": "books",
        "instId": "BTC-USDT",
    }
    assert snapshot["data"][0]["seqId"] == 1100 and snapshot["data"][0]["prevSeqId"] == -1
    replayed_book, last = merged_okx([k[1] for k in kept])
    full_book, full_last = merged_okx(frames)
    assert (replayed_book, last) == (full_book, full_last)


def test_the_byte_bound_also_compacts() -> None:
    replays = BookReplays(max_deltas=10_000, max_bytes=2_000)
    record_all(replays, OKX_STREAM, okx_frames(1, 100), 1)
    assert replays.compactions > 0
    assert sum(len(k[1]) for k in replays.replay(OKX_STREAM)[1:]) < 2_000


def test_bybit_compaction_carries_u_and_seq_of_the_last_delta() -> None:
    replays = BookReplays(max_deltas=20)
    frames = bybit_frames(5000, 45)
    record_all(replays, BYBIT_STREAM, frames, 5000)
    kept = replays.replay(BYBIT_STREAM)
    snapshot = json.loads(kept[0][1])
    assert snapshot["type"] == "snapshot" and snapshot["topic"] == BYBIT_STREAM
    assert snapshot["data"]["u"] == snapshot["data"]["seq"] == 5040 and "cts" in snapshot
    replayed, full = L2Book(), L2Book()
    for book, texts in ((replayed, [k[1] for k in kept]), (full, frames)):
        for text in texts:
            data = json.loads(text)["data"]
            if json.loads(text)["type"] == "snapshot":
                book.clear()
            book.apply(data["b"], data["a"])
    assert replayed == full


def test_a_new_upstream_snapshot_resets_the_book() -> None:
    replays = BookReplays()
    record_all(replays, OKX_STREAM, okx_frames(100, 8), 100)
    again = okx_frames(500, 3)
    for i, text in enumerate(again):
        replays.record(OKX_STREAM, 20 + i, text, json.loads(text), 500 + i)
    assert [k[0] for k in replays.replay(OKX_STREAM)] == [20, 21, 22]


def test_a_merged_book_that_disagrees_with_the_exchange_is_dropped() -> None:
    replays = BookReplays(max_deltas=5)
    frames = okx_frames(100, 12)
    del frames[3]  # an update lost: the merged book no longer matches the checksums
    record_all(replays, OKX_STREAM, frames, 100)
    assert replays.diverged >= 1
    assert not replays.has(OKX_STREAM), "nothing is served until the exchange's next snapshot"


def test_books5_keeps_only_the_newest_push() -> None:
    replays = BookReplays()
    book = MockBooks().book("books5:BTC-USDT", 5, okx_levels=True)
    for seq in range(1, 6):
        book.advance(seq)
        text = okx.build_book("books5:BTC-USDT", book.top_bids(), book.top_asks(), 7, seq)
        replays.record("books5:BTC-USDT", seq, text, None, seq)
    assert [k[0] for k in replays.replay("books5:BTC-USDT")] == [5]


def test_a_late_consumer_gets_the_replay_then_live_updates_without_gap_or_duplicate() -> None:
    hub = StreamHub()
    hub.set_known([OKX_STREAM])
    source = object()
    frames = okx_frames(100, 30)
    early = hub.add_consumer(FMT_PAYLOAD)
    hub.subscribe(early, [OKX_STREAM])
    for i, text in enumerate(frames[:20]):
        hub.publish(OKX_STREAM, json.loads(text), source, 100 + i, text)
    late = hub.add_consumer(FMT_PAYLOAD)
    hub.subscribe(late, [OKX_STREAM])
    hub.subscribe(late, [OKX_STREAM])  # subscribing again replays nothing more
    for i, text in enumerate(frames[20:], start=20):
        hub.publish(OKX_STREAM, json.loads(text), source, 100 + i, text)
    assert late.queued_texts() == frames == early.queued_texts()
    merged_okx(late.queued_texts())


def test_envelope_and_peer_consumers_get_consecutive_hub_sequence_numbers() -> None:
    hub = StreamHub()
    hub.set_known([BYBIT_STREAM])
    source = object()
    frames = bybit_frames(7000, 12)
    for i, text in enumerate(frames[:8]):
        hub.publish(BYBIT_STREAM, json.loads(text), source, 7000 + i, text)
    envelope = hub.add_consumer(FMT_ENVELOPE)
    peer = hub.add_consumer(FMT_PEER)
    hub.subscribe(envelope, [BYBIT_STREAM])
    hub.subscribe(peer, [BYBIT_STREAM], own_only=True)
    for i, text in enumerate(frames[8:], start=8):
        hub.publish(BYBIT_STREAM, json.loads(text), source, 7000 + i, text)
    got = [json.loads(t) for t in envelope.queued_texts()]
    assert [m["seq"] for m in got] == list(range(1, 13))
    assert got[0]["data"]["type"] == "snapshot" and all(
        m["data"]["type"] == "delta" for m in got[1:]
    )
    assert [json.loads(frame_payload(f))["useq"] for f in peer.frames] == list(range(7000, 7012))


class PeerRouter:
    """A peer announces every stream; the test plays the relay link."""

    def __init__(self) -> None:
        self.wanted: list[str] = []

    def has(self, stream: str) -> bool:
        return True

    def want(self, stream: str) -> None:
        self.wanted.append(stream)

    def unwant(self, stream: str) -> None:
        self.wanted.remove(stream)


def test_a_relayed_book_wanted_again_starts_over_from_the_owners_replay() -> None:
    hub = StreamHub()  # relays OKX_STREAM: it is not one of its own (known) streams
    hub.router = PeerRouter()
    link = object()
    frames = okx_frames(100, 40)
    first = hub.add_consumer(FMT_PAYLOAD)
    hub.subscribe(first, [OKX_STREAM])
    for i, text in enumerate(frames[:30]):
        hub.publish(OKX_STREAM, None, link, 100 + i, text)
    hub.remove_consumer(first)  # the last local consumer left: the relayed book goes stale
    assert not hub.books.has(OKX_STREAM)
    again = hub.add_consumer(FMT_PAYLOAD)
    hub.subscribe(again, [OKX_STREAM])
    assert again.queued_texts() == []
    owner = BookReplays(max_deltas=25)  # the owner's replay: a merged snapshot, older updates
    record_all(owner, OKX_STREAM, frames, 100)
    replay = owner.replay(OKX_STREAM)
    assert replay[0][2] < 129, "the owner's snapshot is older than what was relayed before"
    for _, text, useq in replay:
        hub.publish(OKX_STREAM, None, link, useq, text)
    texts = again.queued_texts()
    assert json.loads(texts[0])["action"] == "snapshot"
    book, last = merged_okx(texts)
    assert last == 139 and book == merged_okx(frames)[0]


def test_a_consumer_subscribing_many_books_at_once_gets_one_snapshot_each() -> None:
    hub = StreamHub(queue_frames=400)  # keeps up to 100 updates per stream
    streams = [f"books:C{i}-USDT" for i in range(8)]
    hub.set_known(streams)
    source = object()
    for stream in streams:
        book = MockBooks().book(stream, 400, okx_levels=True)
        book.advance(1)
        snap = okx.build_book(
            stream, book.top_bids(), book.top_asks(), 7, 1, "snapshot", -1, book.okx_checksum()
        )
        hub.publish(stream, json.loads(snap), source, 1, snap)
        for seq in range(2, 91):
            book.advance(seq)
            text = okx.build_book(
                stream,
                book.changed_bids,
                book.changed_asks,
                7,
                seq,
                "update",
                seq - 1,
                book.okx_checksum(),
            )
            hub.publish(stream, json.loads(text), source, seq, text)
    consumer = hub.add_consumer(FMT_PAYLOAD)
    hub.subscribe(consumer, streams)
    assert not consumer.too_slow
    by_stream: dict[str, list[str]] = {}
    for text in consumer.queued_texts():
        by_stream.setdefault(json.loads(text)["arg"]["instId"], []).append(text)
    assert len(by_stream) == 8
    for texts in by_stream.values():
        assert merged_okx(texts)[1] == 90
    assert sum(len(t) for t in by_stream.values()) <= 200
