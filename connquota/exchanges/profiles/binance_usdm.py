"""Binance USD-M futures market streams (fstream.binance.com)."""

from __future__ import annotations

from connquota.api.limits import (
    Confidence,
    Dialect,
    ExchangeProfile,
    Heartbeat,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
    LimitShape,
)

STREAMS_DOC = (
    "https://developers.binance.com/docs/derivatives/usds-margined-futures/websocket-market-streams"
)
URL_CHANGE_DOC = (
    "https://developers.binance.com/docs/derivatives/usds-margined-futures/"
    "websocket-market-streams/Important-WebSocket-Change-Notice"
)
SPOT_STREAMS_DOC = (
    "https://github.com/binance/binance-spot-api-docs/blob/master/web-socket-streams.md"
)

PROFILE = ExchangeProfile(
    name="binance-usdm",
    displayName="Binance USD-M futures",
    # A separate host from spot with its own published per-connection limits: its own domain.
    domain="fstream.binance.com",
    # Legacy fstream URLs were retired 2026-04-23; regular market data lives under /market
    # (combined streams: /market/stream; depth and bookTicker under /public/stream).
    # -- URL_CHANGE_DOC
    endpoint="wss://fstream.binance.com/market/stream",
    dialect=Dialect.BINANCE,
    limits=[
        # No published new-connection rate for fstream (exchange-limits.md: "not found").
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=300,
            windowSeconds=300,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=SPOT_STREAMS_DOC,
            note="Not published for USD-M. Assumed the spot figure (300 per 5 minutes per IP).",
        ),
        # No published concurrent-connection cap.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=300,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=STREAMS_DOC,
            note="Not published. Assumed 300 per IP: one assumed attempt window's worth, so a "
            "full reconnect fits in one window.",
        ),
        # 1024 streams per connection (200 until the 2025-07-02 change) -- STREAMS_DOC.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=1024,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
            note="Raised from 200 to 1024 by the 2025-07-02 change log; older mirrors still "
            "show 200 (superseded, not a conflict).",
        ),
        # 10 incoming messages per second per connection -- STREAMS_DOC.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=10,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
            note="Violators are disconnected; repeatedly disconnected IPs may be banned.",
        ),
        # Max args per SUBSCRIBE: not published.
        Limit(
            name=LimitName.ARGS_PER_SUBSCRIBE,
            value=200,
            scope=LimitScope.MESSAGE,
            shape=LimitShape.SIZE,
            confidence=Confidence.ASSUMED,
            source=STREAMS_DOC,
            note="Not published. Assumed 200 streams per SUBSCRIBE (the pre-2025 per-connection "
            "cap, known to be accepted).",
        ),
        # Connections are dropped after 24 hours -- STREAMS_DOC.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
        ),
    ],
    # Server pings every 3 minutes; no pong within 10 minutes -> disconnect -- STREAMS_DOC.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.SERVER_PING,
        intervalSeconds=180,
        timeoutSeconds=600,
        countsAsMessage=True,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=600,
    notes="Base URLs: /public (high-frequency book data), /market (regular market data), "
    "/private (user data via listenKey, valid 60 min, one active key per account). Legacy "
    "wss://fstream.binance.com/ws and /stream were retired 2026-04-23. Unsolicited pongs allowed.",
)
