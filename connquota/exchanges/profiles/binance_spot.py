"""Binance spot market streams (stream.binance.com)."""

from __future__ import annotations

from connquota.api.limits import (
    AlternateEndpoint,
    Confidence,
    Dialect,
    EndpointDomain,
    ExchangeProfile,
    Heartbeat,
    HeartbeatDirection,
    Limit,
    LimitName,
    LimitScope,
    LimitShape,
)

STREAMS_DOC = "https://github.com/binance/binance-spot-api-docs/blob/master/web-socket-streams.md"
WS_API_DOC = "https://github.com/binance/binance-spot-api-docs/blob/master/web-socket-api.md"
CHANGELOG = "https://github.com/binance/binance-spot-api-docs/blob/master/CHANGELOG.md"
MARKET_DATA_ONLY_DOC = (
    "https://github.com/binance/binance-spot-api-docs/blob/master/faqs/market_data_only.md"
)

PROFILE = ExchangeProfile(
    name="binance-spot",
    displayName="Binance spot",
    # Spot streams and the spot WS API both allow "300 connections requests every 5 minutes per
    # IP"; the changelog does not say whether they share one budget, so we treat them as one
    # domain (stream.binance.com) and plan as if they do.
    domain="stream.binance.com",
    endpoint="wss://stream.binance.com:9443",
    # User data goes over the WebSocket API (session.logon / userDataStream.subscribe); the
    # listenKey streams on stream.binance.com were removed on 2026-02-20 -- WS_API_DOC, CHANGELOG.
    privateEndpoint="wss://ws-api.binance.com:443/ws-api/v3",
    dialect=Dialect.BINANCE,
    # "The base endpoint is: wss://stream.binance.com:9443 or wss://stream.binance.com:443";
    # "wss://data-stream.binance.vision can be subscribed to receive only market data
    # messages" -- STREAMS_DOC, MARKET_DATA_ONLY_DOC. Neither is said to have limits of its own.
    alternateEndpoints=[
        AlternateEndpoint(
            url="wss://stream.binance.com:443",
            limitDomain=EndpointDomain.SHARED,
            source=STREAMS_DOC,
            note="The same host on port 443.",
        ),
        AlternateEndpoint(
            url="wss://data-stream.binance.vision",
            limitDomain=EndpointDomain.UNKNOWN,
            source=MARKET_DATA_ONLY_DOC,
            note="Market data only (no user data); its limits are not published apart.",
        ),
    ],
    limits=[
        # 300 connection attempts per 5 minutes per IP -- STREAMS_DOC "WebSocket Limits".
        Limit(
            name=LimitName.CONNECTION_ATTEMPTS,
            value=300,
            windowSeconds=300,
            scope=LimitScope.IP,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
            note="Shared with the spot WS API (ws-api.binance.com) per the 2023-02-17 changelog "
            "wording; treated as one budget.",
        ),
        # No published cap on concurrent connections (exchange-limits.md: "not found").
        Limit(
            name=LimitName.CONCURRENT_CONNECTIONS,
            value=300,
            scope=LimitScope.IP,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.ASSUMED,
            source=STREAMS_DOC,
            note="Not published. Assumed 300 per IP: what one 5-minute attempt window can reopen "
            "after a mass disconnect, so recovery stays within one window.",
        ),
        # 1024 streams per connection -- STREAMS_DOC.
        Limit(
            name=LimitName.STREAMS_PER_CONNECTION,
            value=1024,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.CONCURRENT,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
        ),
        # 5 incoming messages per second per connection; PING, PONG and JSON control messages
        # all count -- STREAMS_DOC.
        Limit(
            name=LimitName.MESSAGES_PER_CONNECTION,
            value=5,
            windowSeconds=1,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.SLIDING_WINDOW,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
            note="Pings, pongs and subscribe/unsubscribe messages all count. Violators are "
            "disconnected; repeatedly disconnected IPs may be banned.",
        ),
        # Max args per SUBSCRIBE: not found in STREAMS_DOC.
        Limit(
            name=LimitName.ARGS_PER_SUBSCRIBE,
            value=200,
            scope=LimitScope.MESSAGE,
            shape=LimitShape.SIZE,
            confidence=Confidence.ASSUMED,
            source=STREAMS_DOC,
            note="Not published. Assumed 200 streams per SUBSCRIBE so a full 1024-stream "
            "connection subscribes in 6 messages, well inside 5 messages/s.",
        ),
        # Connections are dropped after 24 hours -- STREAMS_DOC, WS_API_DOC.
        Limit(
            name=LimitName.MAX_CONNECTION_AGE,
            value=86400,
            scope=LimitScope.CONNECTION,
            shape=LimitShape.DURATION,
            confidence=Confidence.PUBLISHED,
            source=STREAMS_DOC,
        ),
    ],
    # Server pings every 20 s; no pong within 1 minute -> disconnect (changed from 3 min / 10 min
    # on 2025-01-28) -- STREAMS_DOC, CHANGELOG.
    heartbeat=Heartbeat(
        direction=HeartbeatDirection.SERVER_PING,
        intervalSeconds=20,
        timeoutSeconds=60,
        countsAsMessage=True,
    ),
    connectTimeoutSeconds=10,
    deadConnectionTimeoutSeconds=60,
    notes="Pongs must echo the ping payload; unsolicited pongs do not keep the connection alive. "
    "A serverShutdown event precedes planned shutdowns. WS-API request weight is per IP: 429 "
    "then 418 bans of 2 minutes to 3 days. Market-data-only host: wss://data-stream.binance.vision. "
    "User data rides WS-API sessions (listenKey removed 2026-02-20).",
)
