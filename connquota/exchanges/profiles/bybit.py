"""Bybit v5 public spot WebSocket (stream.bybit.com)."""

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

RATE_LIMIT_DOC = "https://bybit-exchange.github.io/docs/v5/rate-limit"
CONNECT_DOC = "https://bybit-exchange.github.io/docs/v5/ws/connect"

PROFILE = ExchangeProfile(
    name="bybit",
    displayName="Bybit v5 (spot)",
    # New connections are "counted per WebSocket domain": every market on stream.bybit.com
    # shares one attempt budget per IP.
    domain="stream.bybit.com",
    endpoint="wss://stream.bybit.com/v5/public/spot",
    dialect=Dialect.BYBIT,
    limits=[
        # At most 500 connections per 5 minutes per IP, per WebSocket domain -- RATE_LIMIT_DOC.
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=500,
            windowSeconds=300,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=RATE_LIMIT_DOC,
            note="Counted per WebSocket domain (stream.bybit.com, and separately for regional "
            "hosts such as stream.bybit.kz). Bybit also asks not to connect and disconnect "
            "frequently.",
        ),
        # At most 1000 market-data connections per IP, counted per market -- RATE_LIMIT_DOC.
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=1000,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=RATE_LIMIT_DOC,
            note="Counted separately for spot, linear, inverse and options; one domain budget "
            "here, which is stricter when several markets share a pool.",
        ),
        # Spot: no published streams-per-connection cap; the args array of a public connection is
        # limited to 21,000 characters -- CONNECT_DOC §Args limits.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=500,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published for spot (options: 2,000). Assumed 500: the 21,000-character "
            "args cap per public connection fits about 500 topics of 40 characters.",
        ),
        # The args of one public connection, all topics together -- CONNECT_DOC §Args limits.
        Limit(
            name=LimitName.ARGS_CHARACTERS_PER_CONNECTION,
            value=21000,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SIZE,
            confidence=Confidence.PUBLISHED,
            source=CONNECT_DOC,
            note="The args array of a public connection is at most 21,000 characters; the "
            "planner counts each topic as its length plus 3 (quotes and comma).",
        ),
        # Client messages per connection: not published.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=5,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published. Assumed 5 messages/s (Binance's figure); pings go every 20 s.",
        ),
        # Spot: at most 10 args per subscription request -- CONNECT_DOC §Args limits.
        Limit(
            name=LimitName.ARGS_PER_SUBSCRIBE,
            value=10,
            scope=LimitScope.MESSAGE,
            shape=LimitShape.SIZE,
            confidence=Confidence.PUBLISHED,
            source=CONNECT_DOC,
        ),
        # Connection lifetime: not published.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.ASSUMED,
            source=CONNECT_DOC,
            note="Not published. Assumed 24 h (Binance's figure): one rotation per connection "
            "per day.",
        ),
    ],
    # Client sends {"op":"ping"}, recommended every 20 s; with no ping-pong and no data the
    # connection is cut after 10 minutes -- CONNECT_DOC.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.CLIENT_PING,
        intervalSeconds=20,
        timeoutSeconds=600,
        countsAsMessage=True,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=600,
    notes="Other markets: /v5/public/linear, /inverse, /option, /spread (same domain). Private: "
    "/v5/private (max_active_time 30-600 s). Private connection count: not published. WS "
    "trade: 3000 requests/s per IP (10403). HTTP 403 'access too frequent': wait >= 10 minutes.",
)
