"""The stream hub: one upstream subscription fanned out to every local consumer.

Each stream has *holders*: the upstream sessions whose subscription the exchange acknowledged
(or that already deliver its data). Normally one; two during a make-before-break move. While
two hold a stream, a message is delivered once: by the exchange's own sequence number when the
dialect gives one (so the switch has neither gap nor duplicate), else from the older holder
only. The hub numbers every delivered message per stream, so consumers see consecutive
sequence numbers across rotations and reconnects. A consumer that subscribes to an order-book
stream first gets the newest snapshot and the updates since (`books.py`), queued in the same
step that registers it for live messages: no gap, no duplicate between the two.

Each delivered message is encoded once per frame format some subscriber reads (JSON, then
one WebSocket frame) and the same bytes go to every subscriber of that format: connquota's
tagged envelope (`/v1/ws`), the exchange's payload as is, or Binance's combined wrapper
(`native.py` serves the last two in the exchange's own protocol). Consumers hold bounded queues drained by their own writer task: a
consumer that falls behind is closed (policy `close`) or loses its oldest frames (policy
`drop`); the others and the upstream reader never wait on it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from connquota.gateway.books import DEFAULT_MAX_DELTAS, BookReplays
from connquota.gateway.wsframe import frame_payload, text_frame

RESET_JUMP = 100_000
"""A backward jump of the exchange's sequence larger than this is a reset, not a duplicate."""
DIRECT_GAP_S = 0.001
"""A consumer's frames are written directly (in the publishing step) at most once per this
interval; frames closer together queue and leave in one write per batch, so a busy stream
keeps its batching (one `send` per frame at saturation would cost more than the wake-up it
saves)."""
SLOW_CONSUMER_CLOSE = "close"
SLOW_CONSUMER_DROP = "drop"

FMT_ENVELOPE = 0
"""`{"stream":..,"seq":..,"rxMs":..,"data":<payload>}`: connquota's tagged frame (`/v1/ws`)."""
FMT_PAYLOAD = 1
"""The exchange's payload alone, as its own raw endpoint sends it (Binance `/ws`, OKX, Bybit)."""
FMT_COMBINED = 2
"""`{"stream":..,"data":<payload>}`: Binance's combined-stream wrapper (`/stream`)."""
FMT_PEER = 3
"""The envelope plus `"useq"`, the exchange's own sequence when the dialect has one: what a
pod relays to its peers (`peers.py`), so a relaying pod can switch owners without a gap."""
FORMATS = 4


class Router(Protocol):
    """Where streams this pod does not hold come from (`relay.Relay`)."""

    def has(self, stream: str) -> bool:
        """Whether some peer announces `stream`."""
        ...

    def want(self, stream: str) -> None:
        """The first local consumer of `stream` subscribed: relay it here."""
        ...

    def unwant(self, stream: str) -> None:
        """The last local consumer of `stream` left: stop relaying it."""
        ...


_encode = json.JSONEncoder(separators=(",", ":")).encode
"""`json.dumps(..., separators=(",", ":"))` without building an encoder per call."""


class Consumer:
    """One local consumer: its streams and its bounded queue of ready-to-send frames.

    `offer` never waits: it appends (or applies the slow-consumer policy when the queue is
    full) and wakes the consumer's writer, which takes whole batches with `take`. While the
    writer is idle (nothing queued) and its socket takes data, it lends `offer` a `direct`
    write: the frame goes to the socket at once, with no queue and no task wake-up (waking
    one writer task per consumer per message cost more than the write itself at 1,000
    consumers: docs/gateway.md).
    """

    __slots__ = (
        "_alarm",
        "_waiter",
        "direct",
        "direct_at",
        "dropped",
        "fmt",
        "frames",
        "id",
        "max_frames",
        "policy",
        "since",
        "stopped",
        "streams",
        "too_slow",
    )

    def __init__(
        self,
        consumer_id: int,
        max_frames: int,
        policy: str = SLOW_CONSUMER_CLOSE,
        fmt: int = FMT_ENVELOPE,
    ) -> None:
        self.id = consumer_id
        self.fmt = fmt
        """The frame format this consumer reads (FMT_*); it may change between messages."""
        self.max_frames = max_frames
        self.policy = policy
        self.streams: set[str] = set()
        self.frames: deque[bytes] = deque()
        self.dropped = 0
        self.too_slow = False
        self.stopped = False
        self.since = 0.0
        """Monotonic time the oldest queued frame was published (for the delivery latency)."""
        self._waiter: asyncio.Future[None] | None = None
        self._alarm: asyncio.Future[None] | None = None
        self.direct: Callable[[bytes], bool] | None = None
        """Set by the idle writer: writes a frame to the socket now; False when it could not
        (the frame is then queued)."""
        self.direct_at = -DIRECT_GAP_S
        """Publish time of the last frame written directly."""

    def offer(self, frame: bytes, now: float = 0.0) -> None:
        """Queue `frame` (published at monotonic `now`) without waiting; apply the
        slow-consumer policy when full."""
        if self.too_slow or self.stopped:
            return
        frames = self.frames
        if not frames:
            direct = self.direct
            if direct is not None and now - self.direct_at >= DIRECT_GAP_S and direct(frame):
                self.direct_at = now
                return
            self.since = now
        if len(frames) >= self.max_frames:
            if self.policy == SLOW_CONSUMER_DROP:
                frames.popleft()
                self.dropped += 1
            else:
                self.too_slow = True
                frames.clear()
                self._wake()
                self._sound_alarm()
                return
        frames.append(frame)
        if self._waiter is not None:
            self._wake()

    def take(self, max_bytes: int) -> list[bytes]:
        """Remove and return queued frames, oldest first, about `max_bytes` (at least one)."""
        frames = self.frames
        if len(frames) == 1:
            return [frames.popleft()]
        batch: list[bytes] = []
        size = 0
        while frames and size < max_bytes:
            frame = frames.popleft()
            batch.append(frame)
            size += len(frame)
        return batch

    async def wait(self) -> None:
        """Return once frames are queued, the consumer is too slow, or it was stopped."""
        while not self.frames and not self.too_slow and not self.stopped:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def alarm(self) -> asyncio.Future[None]:
        """A future done once the consumer is too slow or stopped (for a writer that waits on
        its socket rather than on `wait`)."""
        if self._alarm is None:
            self._alarm = asyncio.get_running_loop().create_future()
            if self.too_slow or self.stopped:
                self._alarm.set_result(None)
        return self._alarm

    def stop(self) -> None:
        """No more frames: the writer's `wait` returns and nothing is queued any more."""
        self.stopped = True
        self.frames.clear()
        self._wake()
        self._sound_alarm()

    def _sound_alarm(self) -> None:
        alarm = self._alarm
        if alarm is not None and not alarm.done():
            alarm.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def queued_texts(self) -> list[str]:
        """The queued frames' JSON texts, oldest first (for tests and diagnostics)."""
        return [frame_payload(f).decode() for f in self.frames]


class StreamHub:
    """Streams this pod serves, who consumes them, which session delivers them."""

    def __init__(
        self,
        queue_frames: int = 10_000,
        policy: str = SLOW_CONSUMER_CLOSE,
        last_values: bool = False,
        books: BookReplays | None = None,
    ) -> None:
        self.queue_frames = queue_frames
        self.books = (
            books
            if books is not None
            else BookReplays(max_deltas=min(DEFAULT_MAX_DELTAS, max(1, queue_frames // 4)))
        )
        """Order-book streams' snapshots and updates since, replayed to each new consumer."""
        self.last_values: dict[str, tuple[int, str, int | None]] | None = (
            {} if last_values else None
        )
        """stream -> (seq, payload JSON, exchange sequence) of its newest message, when the
        quota keeps last values (a consumer may ask for them when it subscribes)."""
        self.policy = policy
        self.known: set[str] = set()
        self.subscribers: dict[str, set[Consumer]] = {}
        self.seq: dict[str, int] = {}
        self.holders: dict[str, dict[object, None]] = {}
        self.last_upstream_seq: dict[str, int] = {}
        self.consumers: set[Consumer] = set()
        self.messages_in = 0
        self.frames_out = 0
        self.frames_dropped_gone = 0
        """Frames dropped (policy `drop`) by consumers that have left."""
        self.last_data_mono: float | None = None
        self.router: Router | None = None
        """Peers' streams, relayed (None: this pod serves only what it holds)."""
        self.known_listeners: set[Callable[[list[str], list[str]], None]] = set()
        """Called with (added, removed) whenever this pod's own streams change (peers)."""
        self._ids = itertools.count(1)
        self._prefixes: dict[str, str] = {}
        self._plain: set[str] = set()
        """Streams known not to be order books (nothing to keep for late joiners)."""
        """stream -> the start of its frames' JSON (`{"stream":"<name>"`), encoded once."""

    # -- upstream side ------------------------------------------------------------------------

    def set_known(self, streams: Iterable[str]) -> None:
        """The streams this pod's plan holds upstream (and tells its peers of)."""
        new = set(streams)
        old, self.known = self.known, new
        for stream in old - new:
            if stream in self.subscribers:
                if self.router is not None:  # moved to another pod: its consumers stay here
                    self.router.want(stream)
            else:
                if self.last_values is not None:
                    self.last_values.pop(stream, None)
                self.books.forget(stream)
        if self.known_listeners and new != old:
            added, removed = sorted(new - old), sorted(old - new)
            for listener in list(self.known_listeners):
                listener(added, removed)

    def servable(self, stream: str) -> bool:
        """Whether a consumer may subscribe to `stream` here: held, or relayed from a peer."""
        return stream in self.known or (self.router is not None and self.router.has(stream))

    def claim(self, stream: str, source: object) -> None:
        """`source` (a session) holds an acknowledged subscription of `stream`."""
        self.holders.setdefault(stream, {})[source] = None

    def release(self, stream: str, source: object) -> None:
        """`source` no longer delivers `stream` (unsubscribed or closed)."""
        holders = self.holders.get(stream)
        if holders is not None and source in holders:
            del holders[source]
            if not holders:
                del self.holders[stream]

    def release_all(self, source: object) -> None:
        """`source` closed: it delivers nothing any more."""
        for stream in [s for s, h in self.holders.items() if source in h]:
            self.release(stream, source)

    def frames_dropped(self) -> int:
        """Frames dropped by the `drop` policy, over every consumer ever connected."""
        return self.frames_dropped_gone + sum(c.dropped for c in self.consumers)

    def live_streams(self) -> int:
        """Streams with an acknowledged upstream subscription."""
        return len(self.holders)

    def publish(
        self,
        stream: str,
        payload: Any,
        source: object,
        upstream_seq: int | None = None,
        raw: str | None = None,
    ) -> bool:
        """Deliver one upstream message to the stream's consumers, once; True if delivered.
        `raw`: the payload's JSON as the exchange sent it (spliced into every frame as is)."""
        self.messages_in += 1
        now = self.last_data_mono = time.monotonic()
        holders = self.holders.get(stream)
        if not holders:
            holders = self.holders[stream] = {source: None}  # data before the ack: it holds
        elif source not in holders:
            return False  # subscribed, not yet acknowledged, while another session delivers
        if upstream_seq is None:
            if len(holders) > 1 and next(iter(holders)) is not source:
                return False
        else:
            last = self.last_upstream_seq.get(stream)
            if (
                last is not None
                and last - RESET_JUMP < upstream_seq <= last
                and not self.books.restarts(stream, payload, raw)
            ):
                return False  # already delivered (by the other session of a switch)
            self.last_upstream_seq[stream] = upstream_seq
        seq = self.seq[stream] = self.seq.get(stream, 0) + 1
        if stream not in self._plain:
            if self.books.tracks(stream):
                self.books.record(stream, seq, raw, payload, upstream_seq)
            else:
                self._plain.add(stream)
        subscribers = self.subscribers.get(stream)
        if self.last_values is not None:
            data = raw if raw is not None else _encode(payload)
            self.last_values[stream] = (seq, data, upstream_seq)
        elif not subscribers:
            return True
        else:
            data = raw if raw is not None else _encode(payload)
        if not subscribers:
            return True
        if len(subscribers) == 1:
            for consumer in subscribers:
                consumer.offer(self._frame(consumer.fmt, stream, seq, data, upstream_seq), now)
            self.frames_out += 1
            return True
        frames: list[bytes | None] = [None] * FORMATS
        for consumer in subscribers:
            fmt = consumer.fmt
            frame = frames[fmt]
            if frame is None:
                frame = frames[fmt] = self._frame(fmt, stream, seq, data, upstream_seq)
            consumer.offer(frame, now)
        self.frames_out += len(subscribers)
        return True

    def _frame(
        self, fmt: int, stream: str, seq: int, data: str, upstream_seq: int | None = None
    ) -> bytes:
        """One message as a WebSocket text frame in format `fmt` (`data`: the payload's JSON)."""
        if fmt == FMT_PAYLOAD:
            return text_frame(data.encode())
        prefix = self._prefixes.get(stream)
        if prefix is None:
            prefix = self._prefixes[stream] = '{"stream":' + _encode(stream)
        if fmt == FMT_COMBINED:
            return text_frame(f'{prefix},"data":{data}}}'.encode())
        if fmt == FMT_PEER:
            useq = "" if upstream_seq is None else f',"useq":{upstream_seq}'
            return text_frame(f'{prefix},"seq":{seq}{useq},"data":{data}}}'.encode())
        text = f'{prefix},"seq":{seq},"rxMs":{int(time.time() * 1000)},"data":{data}}}'
        return text_frame(text.encode())

    # -- consumer side ------------------------------------------------------------------------

    def add_consumer(self, fmt: int = FMT_ENVELOPE) -> Consumer:
        """A new consumer with an empty bounded queue, reading frames in format `fmt`."""
        consumer = Consumer(next(self._ids), self.queue_frames, self.policy, fmt)
        self.consumers.add(consumer)
        return consumer

    def remove_consumer(self, consumer: Consumer) -> None:
        """Forget `consumer` and its subscriptions."""
        for stream in consumer.streams:
            self._drop_subscriber(stream, consumer)
        consumer.streams.clear()
        consumer.stop()
        self.consumers.discard(consumer)
        self.frames_dropped_gone += consumer.dropped

    def subscribe(
        self, consumer: Consumer, streams: list[str], own_only: bool = False
    ) -> tuple[list[str], list[str]]:
        """Subscribe `consumer` to the servable ones of `streams` (`own_only`: only those this
        pod holds, for peers); returns (accepted, unknown)."""
        accepted, unknown = [], []
        for stream in streams:
            if stream in self.known:
                pass
            elif own_only or not self.servable(stream):
                unknown.append(stream)
                continue
            subs = self.subscribers.get(stream)
            if subs is None:
                subs = self.subscribers[stream] = set()
            if not subs and stream not in self.known and self.router is not None:
                self.router.want(stream)
            if consumer not in subs:
                self._replay_book(consumer, stream)  # no await until it is subscribed
            subs.add(consumer)
            consumer.streams.add(stream)
            accepted.append(stream)
        return accepted, unknown

    def _replay_book(self, consumer: Consumer, stream: str) -> None:
        """Queue, for a new consumer of a book stream, its snapshot and the updates since."""
        kept = self.books.replay(stream)
        if not kept:
            return
        if len(consumer.frames) + len(kept) > consumer.max_frames // 2:
            self.books.compact(stream)  # many books at once: one snapshot each, not a flood
            kept = self.books.replay(stream)
        now = time.monotonic()
        for seq, data, useq in kept:
            consumer.offer(self._frame(consumer.fmt, stream, seq, data, useq), now)

    def _drop_subscriber(self, stream: str, consumer: Consumer) -> None:
        subs = self.subscribers.get(stream)
        if subs is None:
            return
        subs.discard(consumer)
        if not subs:
            del self.subscribers[stream]
            if stream not in self.known:  # relayed: nothing more arrives, the book goes stale
                self.books.forget(stream)
            if self.router is not None:  # also a stream relayed before this pod took it
                self.router.unwant(stream)

    def replay_last(self, consumer: Consumer, streams: list[str]) -> int:
        """Queue, for `consumer`, the newest message of each of `streams` the hub has kept
        (`/v1/ws` frames carry `"cached":true`); returns how many. Order-book streams with a
        replay are left out: their subscribe already queued the snapshot and updates since."""
        cache = self.last_values
        if cache is None:
            return 0
        now = time.monotonic()
        sent = 0
        for stream in streams:
            kept = cache.get(stream)
            if kept is None or self.books.has(stream):
                continue
            seq, data, useq = kept
            if consumer.fmt == FMT_ENVELOPE:
                text = (
                    f'{{"stream":{_encode(stream)},"seq":{seq},"rxMs":{int(time.time() * 1000)},'
                    f'"cached":true,"data":{data}}}'
                )
                frame = text_frame(text.encode())
            else:
                frame = self._frame(consumer.fmt, stream, seq, data, useq)
            consumer.offer(frame, now)
            sent += 1
        return sent

    def notice(self, stream: str, text: str) -> None:
        """Send `text` (a JSON object) to the stream's `/v1/ws` consumers (relay notices)."""
        frame = text_frame(text.encode())
        now = time.monotonic()
        for consumer in self.subscribers.get(stream, ()):
            if consumer.fmt == FMT_ENVELOPE:
                consumer.offer(frame, now)

    def unsubscribe(self, consumer: Consumer, streams: list[str]) -> list[str]:
        """Unsubscribe `consumer` from `streams`; returns those it had."""
        done = []
        for stream in streams:
            if stream in consumer.streams:
                consumer.streams.discard(stream)
                self._drop_subscriber(stream, consumer)
                done.append(stream)
        return done
