"""The stream hub: one upstream subscription fanned out to every local consumer.

Each stream has *holders*: the upstream sessions whose subscription the exchange acknowledged
(or that already deliver its data). Normally one; two during a make-before-break move. While
two hold a stream, a message is delivered once: by the exchange's own sequence number when the
dialect gives one (so the switch has neither gap nor duplicate), else from the older holder
only. The hub numbers every delivered message per stream, so consumers see consecutive
sequence numbers across rotations and reconnects.

Consumers hold bounded queues: a consumer that falls behind is closed (policy `close`) or
loses its oldest frames (policy `drop`); the others and the upstream reader never wait on it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

RESET_JUMP = 100_000
"""A backward jump of the exchange's sequence larger than this is a reset, not a duplicate."""
SLOW_CONSUMER_CLOSE = "close"
SLOW_CONSUMER_DROP = "drop"


@dataclass(eq=False)
class Consumer:
    """One local consumer: its streams and its bounded queue of frames (JSON text)."""

    id: int
    queue: asyncio.Queue[str]
    policy: str = SLOW_CONSUMER_CLOSE
    streams: set[str] = field(default_factory=set)
    dropped: int = 0
    too_slow: bool = False
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: str) -> None:
        """Queue `frame` without waiting; apply the slow-consumer policy when full."""
        if self.too_slow:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            if self.policy == SLOW_CONSUMER_DROP:
                self.queue.get_nowait()
                self.queue.put_nowait(frame)
                self.dropped += 1
            else:
                self.too_slow = True
                self.wakeup.set()


class StreamHub:
    """Streams this pod serves, who consumes them, which session delivers them."""

    def __init__(self, queue_frames: int = 10_000, policy: str = SLOW_CONSUMER_CLOSE) -> None:
        self.queue_frames = queue_frames
        self.policy = policy
        self.known: set[str] = set()
        self.subscribers: dict[str, set[Consumer]] = {}
        self.seq: dict[str, int] = {}
        self.holders: dict[str, dict[object, None]] = {}
        self.last_upstream_seq: dict[str, int] = {}
        self.consumers: set[Consumer] = set()
        self.messages_in = 0
        self.frames_out = 0
        self.last_data_mono: float | None = None
        self._ids = itertools.count(1)

    # -- upstream side ------------------------------------------------------------------------

    def set_known(self, streams: Iterable[str]) -> None:
        """The streams this pod's plan serves (consumers may subscribe only these)."""
        self.known = set(streams)

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

    def live_streams(self) -> int:
        """Streams with an acknowledged upstream subscription."""
        return len(self.holders)

    def publish(
        self, stream: str, payload: Any, source: object, upstream_seq: int | None = None
    ) -> bool:
        """Deliver one upstream message to the stream's consumers, once; True if delivered."""
        self.messages_in += 1
        self.last_data_mono = time.monotonic()
        holders = self.holders.get(stream)
        if not holders:
            holders = self.holders[stream] = {source: None}  # data before the ack: it holds
        elif source not in holders:
            return False  # subscribed, not yet acknowledged, while another session delivers
        last = self.last_upstream_seq.get(stream)
        if upstream_seq is None:
            if len(holders) > 1 and next(iter(holders)) is not source:
                return False
        elif last is not None and last - RESET_JUMP < upstream_seq <= last:
            return False  # already delivered (by the other session of a switch)
        if upstream_seq is not None:
            self.last_upstream_seq[stream] = upstream_seq
        seq = self.seq.get(stream, 0) + 1
        self.seq[stream] = seq
        subscribers = self.subscribers.get(stream)
        if not subscribers:
            return True
        frame = json.dumps(
            {"stream": stream, "seq": seq, "rxMs": int(time.time() * 1000), "data": payload},
            separators=(",", ":"),
        )
        for consumer in subscribers:
            consumer.offer(frame)
        self.frames_out += len(subscribers)
        return True

    # -- consumer side ------------------------------------------------------------------------

    def add_consumer(self) -> Consumer:
        """A new consumer with an empty bounded queue."""
        consumer = Consumer(next(self._ids), asyncio.Queue(self.queue_frames), self.policy)
        self.consumers.add(consumer)
        return consumer

    def remove_consumer(self, consumer: Consumer) -> None:
        """Forget `consumer` and its subscriptions."""
        for stream in consumer.streams:
            subs = self.subscribers.get(stream)
            if subs is not None:
                subs.discard(consumer)
                if not subs:
                    del self.subscribers[stream]
        consumer.streams.clear()
        self.consumers.discard(consumer)

    def subscribe(self, consumer: Consumer, streams: list[str]) -> tuple[list[str], list[str]]:
        """Subscribe `consumer` to the known ones of `streams`; returns (accepted, unknown)."""
        accepted, unknown = [], []
        for stream in streams:
            if stream not in self.known:
                unknown.append(stream)
                continue
            self.subscribers.setdefault(stream, set()).add(consumer)
            consumer.streams.add(stream)
            accepted.append(stream)
        return accepted, unknown

    def unsubscribe(self, consumer: Consumer, streams: list[str]) -> list[str]:
        """Unsubscribe `consumer` from `streams`; returns those it had."""
        done = []
        for stream in streams:
            if stream in consumer.streams:
                consumer.streams.discard(stream)
                subs = self.subscribers.get(stream)
                if subs is not None:
                    subs.discard(consumer)
                    if not subs:
                        del self.subscribers[stream]
                done.append(stream)
        return done
