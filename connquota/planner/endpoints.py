"""Streams the quota's endpoint does not serve: refused at planning, reported unserved.

Some exchanges serve a channel on one of their WebSocket paths only (OKX: candles and
`trades-all` on `/ws/v5/business`, tickers, trades and books on `/ws/v5/public`; Binance USD-M:
depth and bookTicker on `/public`, the other market streams on `/market`, where a stream on the
wrong route is acknowledged and never delivers). A quota has one
endpoint, so a stream whose channel lives on another path would be subscribed upstream only to
be refused there (OKX answers 60018, 64001 or 64002). The dialect knows which channel lives
where (`endpoint_refusal` of its wire format); this module asks it before packing, so such
streams are never placed on a connection and the plan lists them unserved with the dialect's
reason (which names the endpoint that serves them). Pure: no I/O.

Only public streams (no credential) are judged: a stream with a credential goes to the
profile's private endpoint, whose channels the exchange checks after login.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from connquota.api.limits import Dialect, ExchangeProfile
from connquota.api.plan import QuotaPlan, UnservedStream
from connquota.exchanges.dialects import binance, okx
from connquota.planner.inputs import DesiredStream

ChannelOf = Callable[[str], str]
"""A stream name -> its channel."""
EndpointRule = Callable[[str, str], "str | None"]
"""(endpoint path, channel) -> why a public connection there cannot subscribe to it."""

RULES: dict[Dialect, tuple[ChannelOf, EndpointRule]] = {
    Dialect.OKX: (okx.channel_of, okx.endpoint_refusal),
    Dialect.BINANCE: (binance.channel_of, binance.endpoint_refusal),
}
"""The dialects whose channels are each served on one path of the exchange."""


@dataclass(frozen=True)
class EndpointSplit:
    """A quota's desired streams split by whether its endpoint serves them."""

    served: list[DesiredStream]
    """The streams to plan (those the endpoint serves or the dialect cannot judge), in order."""
    refused: list[UnservedStream]
    """The others, in declaration order, each with the dialect's reason."""


def split_by_endpoint(profile: ExchangeProfile, streams: Sequence[DesiredStream]) -> EndpointSplit:
    """Split `streams` by whether `profile.endpoint` serves them: the dialect judges each
    distinct channel once (10^5 OKX streams: some 15 ms on a loaded 2-core machine, nearly all
    of it finding the channels; a dialect without a rule costs a list copy)."""
    rules = RULES.get(profile.dialect)
    if rules is None:
        return EndpointSplit(list(streams), [])
    channel_of, rule = rules
    path = urlsplit(profile.endpoint).path
    channels = {channel_of(s.name) for s in streams if s.credential is None}
    reasons = {c: reason for c in channels if (reason := rule(path, c)) is not None}
    if not reasons:
        return EndpointSplit(list(streams), [])
    served: list[DesiredStream] = []
    refused: list[UnservedStream] = []
    for s in streams:
        reason = reasons.get(channel_of(s.name)) if s.credential is None else None
        if reason is None:
            served.append(s)
        else:
            refused.append(
                UnservedStream.model_construct(stream=s.name, priority=s.priority, reason=reason)
            )
    return EndpointSplit(served, refused)


def with_refused(plan: QuotaPlan, refused: Sequence[UnservedStream]) -> QuotaPlan:
    """`plan` listing the `refused` streams unserved too, ahead of those the limits left out
    (a declaration error comes before a capacity one)."""
    if not refused:
        return plan
    return plan.model_copy(update={"unserved": [*refused, *plan.unserved]})
