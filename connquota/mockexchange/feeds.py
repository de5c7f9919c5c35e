"""Market-data feeds: one gapless sequence per stream, shared by every subscriber.

A stream's events happen at ``rate_hz`` per wall-clock second from the moment it is first
subscribed, whether or not anyone listens (so a client that unsubscribes and subscribes again
sees the gap, as on a real exchange). Every subscriber of a stream gets the same sequence
numbers for the same events, so a make-before-break overlap shows identical messages on both
connections. A stalled stream produces no events (and its sequence does not advance) until the
stall ends.

Private feeds (an account's user data, order or wallet updates) have their own rate
(``private_rate_hz``) so a test can run quiet user data beside busy market data, or the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


class Subscriber(Protocol):
    """A connection that receives data frames."""

    def deliver(self, stream: str, seq: int, event_time_ms: int) -> None:
        """Queue one event of ``stream`` for sending."""
        ...


@dataclass
class StreamFeed:
    """The event clock of one stream."""

    name: str
    rate_hz: float
    origin: float
    base_seq: int = 0
    stalled_until: float = 0.0
    last_sent: int = 0
    subscribers: dict[int, Subscriber] = field(default_factory=dict)
    private: bool = False
    """An account's feed (user data, private topics): runs at the book's private rate."""

    def current_seq(self, now: float) -> int:
        """The sequence number of the latest event that has happened by ``now``."""
        if now < self.stalled_until:
            return self.base_seq
        return self.base_seq + math.floor((now - self.origin) * self.rate_hz)

    def stall(self, now: float, duration_s: float) -> None:
        """No events until ``now + duration_s``; the sequence resumes without a gap."""
        self.base_seq = self.current_seq(now)
        self.stalled_until = max(self.stalled_until, now + duration_s)
        self.origin = self.stalled_until

    def set_rate(self, now: float, rate_hz: float) -> None:
        """Change the event rate from ``now`` on, keeping the sequence continuous."""
        if now >= self.stalled_until:
            self.base_seq = self.current_seq(now)
            self.origin = now
        self.rate_hz = rate_hz


class FeedBook:
    """Every stream ever subscribed on one mock exchange."""

    def __init__(
        self, rate_hz: float, first_seq: int = 1000, private_rate_hz: float | None = None
    ) -> None:
        self.rate_hz = rate_hz
        self.private_rate_hz = rate_hz if private_rate_hz is None else private_rate_hz
        self.first_seq = first_seq
        self.feeds: dict[str, StreamFeed] = {}
        self.active: dict[str, StreamFeed] = {}
        self.events_sent = 0

    def feed(self, stream: str, now: float, private: bool = False) -> StreamFeed:
        """The feed of ``stream``, started now if it never was (``private``: an account's feed
        at the private rate)."""
        feed = self.feeds.get(stream)
        if feed is None:
            rate_hz = self.private_rate_hz if private else self.rate_hz
            feed = StreamFeed(stream, rate_hz, origin=now, base_seq=self.first_seq, private=private)
            feed.last_sent = self.first_seq
            self.feeds[stream] = feed
        return feed

    def subscribe(
        self, stream: str, subscriber: Subscriber, now: float, private: bool = False
    ) -> None:
        """``subscriber`` gets every event of ``stream`` that happens after now."""
        feed = self.feed(stream, now, private)
        if not feed.subscribers:
            feed.last_sent = feed.current_seq(now)
            self.active[stream] = feed
        feed.subscribers[id(subscriber)] = subscriber

    def unsubscribe(self, stream: str, subscriber: Subscriber) -> None:
        """Stop sending ``stream`` to ``subscriber``."""
        feed = self.feeds.get(stream)
        if feed is None:
            return
        feed.subscribers.pop(id(subscriber), None)
        if not feed.subscribers:
            self.active.pop(stream, None)

    def set_rate(self, rate_hz: float, now: float) -> None:
        """Change the rate of every public stream (and of streams started later)."""
        self.rate_hz = rate_hz
        for feed in self.feeds.values():
            if not feed.private:
                feed.set_rate(now, rate_hz)

    def set_private_rate(self, rate_hz: float, now: float) -> None:
        """Change the rate of every private feed (and of private feeds started later)."""
        self.private_rate_hz = rate_hz
        for feed in self.feeds.values():
            if feed.private:
                feed.set_rate(now, rate_hz)

    def pump(self, now: float, wall_ms: int) -> int:
        """Deliver every event that happened since the last pump; returns how many events."""
        delivered = 0
        for feed in list(self.active.values()):
            target = feed.current_seq(now)
            if target <= feed.last_sent:
                continue
            subscribers = list(feed.subscribers.values())
            for seq in range(feed.last_sent + 1, target + 1):
                for subscriber in subscribers:
                    subscriber.deliver(feed.name, seq, wall_ms)
            delivered += (target - feed.last_sent) * len(subscribers)
            feed.last_sent = target
        self.events_sent += delivered
        return delivered
